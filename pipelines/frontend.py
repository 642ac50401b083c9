"""The audio front end: everything between a waveform and the audio encoder's input (SPEC 3, 7b).

One frozen `AudioFrontEnd` holds the sample rate and log-mel settings, the loudness target, the
audio window of a frame, the framing and the frame rate, and the mel statistics of the training
data. `prep` stores the log-mel of each utterance through it, training writes it into every stage-1
component's config.json, and inference rebuilds it from there, so a waveform becomes the encoder's
input in exactly one way.

Two framings:

- 'true': frame k is at k / fps s. The log-mel of the whole utterance, padded with `PAD_SECONDS` of
  silence on both sides, is computed once; frame k's window is a slice of it (the *span* form: one
  mel and one start per frame). This is what `prep` stores and training reads.
- 'release': the authors' sampler exactly (SPEC 7b). The normalised waveform is zero-padded by
  (window - step) / 2 samples on both sides (7733 at 16 kHz, 30 fps); frame k's window is the
  `window_samples` samples from `step * k` (step = 16000 // 30 = 533), each window's log-mel
  computed on its own (centred STFT, reflect padding); frame k's time is step * k / sample_rate.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from fractions import Fraction

import numpy as np

from meshtalk.models.config import MelConfig
from meshtalk.pipelines import frontend_saved as saved
from meshtalk.pipelines.errors import MeshtalkError

__all__ = [
    "FRAMINGS",
    "LOUDNESS",
    "PAD_SECONDS",
    "WINDOWS",
    "AudioFrontEnd",
    "MelConfig",
]

WINDOWS: dict[str, tuple[float, float]] = {
    "release": (-0.5, 0.5),
    "paper": (-0.5, 0.1),
}
"""Audio window of a frame, (start, end) in seconds relative to the frame's time (SPEC 3): the
release's 1 s centred on the frame, the paper's 600 ms with 100 ms of look-ahead."""
FRAMINGS = ("true", "release")
"""Where frames fall in the audio: see the module docstring."""
LOUDNESS = 0.01
"""Mean absolute amplitude the release normalises every waveform to (SPEC 3)."""
PAD_SECONDS = 0.5
"""Silence added before and after an utterance (true framing) so every frame's window exists."""
MEL_CHUNK_FRAMES = 3000
"""Mel frames computed at a time (30 s at a 10 ms hop): memory stays flat for long audio."""
WINDOW_BATCH = 256
"""Frames whose windows the release framing computes and encodes at a time."""
CODE_CHUNK_FRAMES = 4 * WINDOW_BATCH
"""Frames whose audio codes `stream_audio_codes` computes at a time (34 s at 30 fps)."""


@dataclass(frozen=True)
class AudioFrontEnd:
    """Waveform -> per-frame log-mel windows, as one value written whole into a checkpoint."""

    mel: MelConfig = field(default_factory=MelConfig)
    """Sample rate and log-mel settings (SPEC 3)."""
    loudness: float = LOUDNESS
    """Every waveform is scaled to this mean absolute amplitude first."""
    window: str = "release"
    """Audio window of a frame: 'release' (1 s centred, 101 mel frames) or 'paper' (-500 ms to
    +100 ms, 61 mel frames); see `WINDOWS`."""
    framing: str = "true"
    """'true' (frame k at k / fps, windows sliced from one mel) or 'release' (the authors'
    framing of SPEC 7b, which needs the 'release' window)."""
    fps: float = 30.0
    """Mesh frames per second."""
    mel_mean: float | None = None
    """Mean of every log-mel value of the training data (None until stage-1 training sets it).
    The audio encoder standardises with its own copy; this one records what it was trained on."""
    mel_std: float | None = None
    """Standard deviation to go with `mel_mean`."""

    def __post_init__(self) -> None:
        problems = []
        if not isinstance(self.mel, MelConfig):
            problems.append(f"mel must be a MelConfig, got {self.mel!r}")
        if self.window not in WINDOWS:
            problems.append(f"window must be one of {', '.join(WINDOWS)}, got {self.window!r}")
        if self.framing not in FRAMINGS:
            problems.append(f"framing must be one of {', '.join(FRAMINGS)}, got {self.framing!r}")
        if not _positive(self.loudness):
            problems.append(f"loudness must be a positive number, got {self.loudness!r}")
        if not _positive(self.fps) or self.fps > 1000:
            problems.append(f"fps must be a number in (0, 1000], got {self.fps!r}")
        for name in ("mel_mean", "mel_std"):
            value = getattr(self, name)
            if value is not None and not _finite(value):
                problems.append(f"{name} must be a finite number or None, got {value!r}")
        if (self.mel_mean is None) != (self.mel_std is None):
            problems.append(
                f"mel_mean and mel_std are set together, got {self.mel_mean!r} and {self.mel_std!r}"
            )
        if _finite(self.mel_std) and self.mel_std <= 0:
            problems.append(f"mel_std must be positive, got {self.mel_std}")
        if not problems and self.framing == "release":
            problems += self._release_problems()
        if problems:
            raise ValueError("; ".join(problems))

    def _release_problems(self) -> list[str]:
        if self.window != "release":
            return [
                f"framing 'release' is the authors' 1 s window; window {self.window!r} needs "
                "framing 'true'"
            ]
        if self.step_samples < 1:
            return [f"framing 'release' needs fps below the sample rate, got fps {self.fps}"]
        per_window = 1 + self.window_samples // self.mel.hop_length
        if per_window != self.window_frames:
            return [
                f"a {self.window_samples}-sample window gives {per_window} mel frames at hop "
                f"{self.mel.hop_length}, not the {self.window_frames} of the window"
            ]
        return []

    # --- the window ----------------------------------------------------------------------------

    @property
    def sample_rate(self) -> int:
        return self.mel.sample_rate

    @property
    def window_s(self) -> tuple[float, float]:
        """(start, end) of a frame's window relative to the frame, in seconds."""
        return WINDOWS[self.window]

    @property
    def mel_first(self) -> int:
        """First mel frame of a window relative to the frame's own mel index (true framing)."""
        return round(self.window_s[0] * self.mel.frames_per_second)

    @property
    def window_frames(self) -> int:
        """W, mel frames per window, both ends included as in a centred mel of the window's audio:
        1 s gives 101 at a 10 ms hop, the receptive field of the release's audio encoder."""
        return round(self.window_s[1] * self.mel.frames_per_second) - self.mel_first + 1

    @property
    def window_samples(self) -> int:
        """Samples of audio in one window (16000 for the release's)."""
        return round((self.window_s[1] - self.window_s[0]) * self.sample_rate)

    @property
    def step_samples(self) -> int:
        """Release framing: samples between frames, sample_rate // fps (533 at 16 kHz, 30 fps)."""
        return int(self.sample_rate // self.fps)

    @property
    def release_pad(self) -> int:
        """Release framing: zeros added on each side of the waveform (7733 at 16 kHz, 30 fps)."""
        return (self.window_samples - self.step_samples) // 2

    def audio_window(self) -> dict:
        """The window in the form stores and checkpoints wrote before the front end existed."""
        start, end = self.window_s
        return {
            "name": self.window,
            "start_s": start,
            "end_s": end,
            "mel_first": self.mel_first,
            "mel_frames": self.window_frames,
        }

    def with_statistics(self, mel_mean: float | None, mel_std: float | None) -> AudioFrontEnd:
        return replace(self, mel_mean=mel_mean, mel_std=mel_std)

    # --- saved forms -----------------------------------------------------------------------------

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> AudioFrontEnd:
        """From `to_dict`'s mapping (missing keys take their defaults); unknown keys and bad values
        are a ValueError."""
        return saved.from_dict(cls, values)

    @classmethod
    def from_component_config(cls, config: dict) -> AudioFrontEnd:
        """The front end of a stage-1 component's config.json (`saved.from_component_config`)."""
        return saved.from_component_config(cls, config)

    @classmethod
    def from_manifest(cls, manifest: dict) -> AudioFrontEnd:
        """The front end of a prepared store's manifest (`saved.from_manifest`)."""
        return saved.from_manifest(cls, manifest)

    # --- waveforms -------------------------------------------------------------------------------

    def check_waveform(self, samples: np.ndarray) -> int:
        """Refuse audio the models cannot animate, with a message that says why.

        Args:
            samples: (N,) mono audio at `sample_rate`.

        Returns:
            T, the frames the audio covers (at least 1).

        Raises:
            MeshtalkError: audio not mono, empty, not finite, shorter than one frame, or silent.
        """
        samples = np.asarray(samples)
        if samples.ndim != 1:
            raise MeshtalkError(None, f"audio must be mono (N,) samples, got shape {samples.shape}")
        if samples.size and not np.isfinite(samples).all():
            raise MeshtalkError(None, "audio holds NaN or infinite samples")
        return self.check_length(samples.size, samples.size > 0 and bool(np.any(samples)))

    def check_length(self, num_samples: int, nonzero: bool) -> int:
        """`check_waveform` of finite mono audio from two figures of a pass over it.

        Args:
            num_samples: N, samples of the audio at `sample_rate`.
            nonzero: whether any sample is not 0.

        Returns:
            T, the frames the audio covers (at least 1).

        Raises:
            MeshtalkError: audio empty, shorter than one frame, or silent.
        """
        if num_samples == 0:
            raise MeshtalkError(None, "audio holds no samples")
        frames = self.frame_count(num_samples)
        if frames == 0:
            if self.framing == "release":  # the first window must end inside the padded audio
                shortest = f"{2 * (self.window_samples // 2 - self.release_pad) + 1} samples"
                shortest += " with the release's framing"
            else:
                shortest = f"{1000 / self.fps:.1f} ms at {self.fps:g} fps"
            raise MeshtalkError(
                None,
                f"audio lasts {1000 * num_samples / self.sample_rate:.1f} ms, shorter than one "
                f"frame ({shortest})",
            )
        if not nonzero:
            raise MeshtalkError(None, "audio is silent (every sample is 0): nothing to animate")
        return frames

    def normalise(self, samples: np.ndarray, level: float | None = None) -> np.ndarray:
        """Scale audio to a mean absolute amplitude of `loudness`, as the authors' release does.

        Args:
            samples: (N,) float32 audio.
            level: the mean absolute amplitude to scale from; None: that of `samples` (a part of
                a longer clip is scaled by the whole clip's, `SpeechScan.mean_abs`).
        """
        if level is None:
            level = float(np.abs(samples).mean(dtype=np.float64)) if samples.size else 0.0
        if level == 0.0:
            raise MeshtalkError(None, "audio is silent (every sample is 0): nothing to animate")
        return (self.loudness * samples / level).astype(np.float32)

    def frame_rate(self) -> Fraction:
        """Frames per second exactly: fps, or sample rate / step under the release's framing."""
        if self.framing == "release":
            return Fraction(self.sample_rate, self.step_samples)
        return Fraction(self.fps).limit_denominator(10_000)

    def frame_count(self, num_samples: int) -> int:
        """Frames of a waveform of `num_samples` samples under this framing."""
        if self.framing == "release":
            half = self.window_samples // 2
            return len(range(half, num_samples + 2 * self.release_pad - half, self.step_samples))
        return int(num_samples / self.sample_rate * self.fps)

    def frame_times(self, num_samples: int) -> np.ndarray:
        """(T,) time of each frame of a waveform of `num_samples` samples, in seconds."""
        return self._frame_times(0, self.frame_count(num_samples))

    def _frame_times(self, first: int, last: int) -> np.ndarray:
        """(last - first,) times of frames [first, last), in seconds."""
        k = np.arange(first, last)
        if self.framing == "release":
            return k * self.step_samples / self.sample_rate
        return k / self.fps

    def mel_index(self, times_s: np.ndarray) -> np.ndarray:
        """True framing: index of the padded utterance's mel frame centred nearest each time."""
        self._need_true("mel_index")
        return np.rint((np.asarray(times_s) + PAD_SECONDS) * self.mel.frames_per_second).astype(
            np.int64
        )

    # --- log-mel ---------------------------------------------------------------------------------

    def log_mel(self, signal: np.ndarray, chunk_frames: int = MEL_CHUNK_FRAMES) -> np.ndarray:
        """Log power mel of signals, the one implementation every path goes through.

        Frame j is centred at sample j * hop_length (a centred STFT, reflect padding at the
        ends), log of the power mel clamped at `mel.log_floor`. No loudness normalisation here.
        The spectrogram is computed about `chunk_frames` frames at a time, so memory stays flat
        for long audio and for many windows.

        Args:
            signal: (N,) or (B, N) float32 audio at `sample_rate`, N > n_fft / 2.

        Returns:
            (M, n_mels) or (B, M, n_mels) float32, M = 1 + N // hop_length.
        """
        signal = np.asarray(signal, dtype=np.float32)
        rows = signal[None] if signal.ndim == 1 else signal
        half, hop, n_fft = self.mel.n_fft // 2, self.mel.hop_length, self.mel.n_fft
        if rows.shape[-1] <= half:
            raise ValueError(
                f"a signal of {rows.shape[-1]} samples is too short for a centred FFT of "
                f"{n_fft} (needs more than {half})"
            )
        padded = np.pad(rows, ((0, 0), (half, half)), mode="reflect")
        mel = self._framed_log_mel(padded, 1 + rows.shape[-1] // hop, chunk_frames)
        return mel[0] if signal.ndim == 1 else mel

    def _framed_log_mel(self, padded: np.ndarray, frames: int, chunk_frames: int) -> np.ndarray:
        """(B, frames, n_mels) log-mel of (B, L) rows, frame j from [j * hop, j * hop + n_fft)."""
        import torch

        hop, n_fft = self.mel.hop_length, self.mel.n_fft
        mel = np.empty((len(padded), frames, self.mel.n_mels), dtype=np.float32)
        transform = _mel_transform(self.mel)
        per_piece = max(1, chunk_frames // frames)  # whole rows at a time when they are short
        step = max(1, chunk_frames)
        with torch.no_grad():
            for row in range(0, len(padded), per_piece):
                block = slice(row, row + per_piece)
                for first in range(0, frames, step):
                    last = min(frames, first + step)
                    piece = padded[block, first * hop : (last - 1) * hop + n_fft]
                    power = transform(torch.from_numpy(np.ascontiguousarray(piece)))
                    log = torch.log(power.clamp_min(self.mel.log_floor)).transpose(-1, -2)
                    mel[block, first:last] = log.numpy()
        return mel

    def utterance_mel(
        self,
        samples: np.ndarray,
        duration_s: float | None = None,
        chunk_frames: int = MEL_CHUNK_FRAMES,
    ) -> np.ndarray:
        """True framing: log-mel of a padded utterance, what a prepared store holds.

        The audio is loudness-normalised, then padded with `PAD_SECONDS` of silence before it and
        enough after it to cover `duration_s` (default: the audio's own length) plus
        `PAD_SECONDS`. Mel frame j is centred at time j / mel fps - PAD_SECONDS of the audio.

        Args:
            samples: (N,) float32 mono audio at `sample_rate`.
            duration_s: the time span that frames must cover.

        Returns:
            (M, n_mels) float32 log-mel.
        """
        if samples.size == 0:
            raise MeshtalkError(None, "audio holds no samples")
        rate = self.sample_rate
        duration_s = samples.size / rate if duration_s is None else duration_s
        pad = round(PAD_SECONDS * rate)
        total = max(samples.size, round(duration_s * rate)) + 2 * pad
        padded = np.zeros(total, dtype=np.float32)
        padded[pad : pad + samples.size] = self.normalise(samples)
        # Its ends are silence, so the centred STFT's reflected margins are silence too.
        return self.log_mel(padded, chunk_frames)

    def span(self, samples: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """True framing: the mel of a whole utterance and where each frame's window starts.

        Args:
            samples: (N,) float32 mono audio at `sample_rate`.

        Returns:
            mel (L, n_mels) float32 and starts (T,) int64: frame k's window is
            mel[starts[k] : starts[k] + window_frames].

        Raises:
            MeshtalkError: for audio that `check_waveform` refuses.
        """
        self._need_true("span")
        self.check_waveform(samples)
        mel = self.utterance_mel(samples)
        starts = self.mel_index(self.frame_times(samples.size)) + self.mel_first
        return mel, starts

    def windows(self, samples: np.ndarray) -> np.ndarray:
        """(T, n_mels, W) log-mel window of each frame (W = `window_frames`), under the framing.

        Raises:
            MeshtalkError: for audio that `check_waveform` refuses.
        """
        if self.framing == "release":
            self.check_waveform(samples)
            return np.concatenate(list(self._release_windows(samples)), axis=0)
        mel, starts = self.span(samples)
        offsets = np.arange(self.window_frames)
        return np.ascontiguousarray(mel[starts[:, None] + offsets].transpose(0, 2, 1))

    def _release_windows(
        self, samples: np.ndarray, batch: int = WINDOW_BATCH
    ) -> Iterator[np.ndarray]:
        """Release framing: (t, n_mels, W) windows of `batch` frames at a time."""
        pad, step, width = self.release_pad, self.step_samples, self.window_samples
        padded = np.pad(self.normalise(samples), (pad, pad))
        frames = self.frame_count(samples.size)
        strided = np.lib.stride_tricks.sliding_window_view(padded, width)[::step][:frames]
        for first in range(0, frames, batch):
            yield self.log_mel(strided[first : first + batch]).transpose(0, 2, 1)

    # --- the audio encoder's input ---------------------------------------------------------------

    def audio_codes(self, audio_encoder, samples: np.ndarray):
        """Audio codes of every frame of an utterance, on the encoder's device.

        True framing runs the convolutions once over the utterance's mel (`encode_span`);
        release framing encodes each frame's own window, a batch of frames at a time.

        Args:
            audio_encoder: a stage-1 `AudioEncoder` whose window is `window_frames` long.
            samples: (N,) float32 mono audio at `sample_rate`.

        Returns:
            (1, T, code_dim) tensor, T = `frame_count(N)`.

        Raises:
            MeshtalkError: for audio that is silent, not finite, or shorter than one frame.
            ValueError: for an encoder of another window length or mel size.
        """
        import torch

        self._check_encoder(audio_encoder)
        device = next(audio_encoder.parameters()).device
        with torch.no_grad():
            if self.framing == "release":
                self.check_waveform(samples)
                codes = [
                    audio_encoder(torch.from_numpy(windows).to(device)[None])
                    for windows in self._release_windows(samples)
                ]
                return torch.cat(codes, dim=1)
            mel, starts = self.span(samples)
            return audio_encoder.encode_span(
                torch.from_numpy(mel).to(device)[None], torch.from_numpy(starts).to(device)[None]
            )

    def _check_encoder(self, audio_encoder) -> None:
        problems = []
        if audio_encoder.window != self.window_frames:
            problems.append(
                f"the audio encoder takes windows of {audio_encoder.window} mel frames, the front "
                f"end gives {self.window_frames}"
            )
        if audio_encoder.mel_config.n_mels != self.mel.n_mels:
            problems.append(
                f"the audio encoder reads {audio_encoder.mel_config.n_mels} mel bands, the front "
                f"end gives {self.mel.n_mels}"
            )
        if problems:
            raise ValueError("; ".join(problems))

    def _need_true(self, what: str) -> None:
        if self.framing != "true":
            raise ValueError(
                f"{what} needs framing 'true' (windows are slices of one mel), got {self.framing!r}"
            )


@functools.lru_cache(maxsize=4)
def _mel_transform(mel: MelConfig):
    """The power mel spectrogram of `mel`'s settings over uncentred frames (the caller pads)."""
    import torchaudio

    return torchaudio.transforms.MelSpectrogram(
        sample_rate=mel.sample_rate,
        n_fft=mel.n_fft,
        win_length=mel.win_length,
        hop_length=mel.hop_length,
        n_mels=mel.n_mels,
        power=2.0,
        center=False,
    )


def _finite(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _positive(value) -> bool:
    return _finite(value) and value > 0
