"""Audio features of MeshTalk: loudness normalisation, 80-band log-mel, one window per mesh frame.

The mel of a whole utterance is computed once and stored; the window of each mesh frame is a slice
of it (see `AudioWindow`), so no audio is duplicated per frame.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from meshtalk.models.config import MelConfig
from meshtalk.pipelines.errors import MeshtalkError

__all__ = ["AUDIO_WINDOWS", "PAD_SECONDS", "AudioWindow", "MelConfig", "utterance_mel"]


@dataclass(frozen=True)
class AudioWindow:
    """The span of audio that conditions one mesh frame, relative to the frame's time."""

    name: str
    """Preset name."""
    start_s: float
    """Window start relative to the frame, in seconds (negative: before the frame)."""
    end_s: float
    """Window end relative to the frame, in seconds (the look-ahead)."""

    def mel_offsets(self, mel: MelConfig) -> tuple[int, int]:
        """(first, count): mel frames of the window relative to the frame's own mel index.

        Both ends are included, as in a centred mel of the window's audio: 1 s of audio gives
        101 frames at a 10 ms hop, exactly the receptive field of the release's audio encoder.
        """
        fps = mel.frames_per_second
        first = round(self.start_s * fps)
        return first, round(self.end_s * fps) - first + 1


DEFAULT_MEL = MelConfig()

AUDIO_WINDOWS = {
    "paper": AudioWindow("paper", -0.5, 0.1),
    "release": AudioWindow("release", -0.5, 0.5),
}
PAD_SECONDS = 0.5
"""Silence added before and after each utterance so every window of every frame exists."""


def normalise_loudness(samples: np.ndarray) -> np.ndarray:
    """Scale audio to a mean absolute amplitude of 0.01, as the authors' release does."""
    level = float(np.abs(samples).mean())
    if level == 0.0:
        raise MeshtalkError(None, "audio is silent (every sample is 0): nothing to animate")
    return (0.01 * samples / level).astype(np.float32)


def check_waveform(samples: np.ndarray, sample_rate: int, fps: float) -> int:
    """Refuse audio the models cannot animate, with a message that says why.

    Args:
        samples: (N,) mono audio at `sample_rate`.
        fps: mesh frames per second.

    Returns:
        T, the mesh frames the audio covers (at least 1).
    """
    samples = np.asarray(samples)
    if samples.ndim != 1:
        raise MeshtalkError(None, f"audio must be mono (N,) samples, got shape {samples.shape}")
    if samples.size == 0:
        raise MeshtalkError(None, "audio holds no samples")
    if not np.isfinite(samples).all():
        raise MeshtalkError(None, "audio holds NaN or infinite samples")
    frames = int(samples.size / sample_rate * fps)
    if frames == 0:
        raise MeshtalkError(
            None,
            f"audio lasts {1000 * samples.size / sample_rate:.1f} ms, shorter than one frame "
            f"({1000 / fps:.1f} ms at {fps:g} fps)",
        )
    if not np.any(samples):
        raise MeshtalkError(None, "audio is silent (every sample is 0): nothing to animate")
    return frames


def utterance_mel(
    samples: np.ndarray,
    duration_s: float,
    config: MelConfig = DEFAULT_MEL,
    chunk_frames: int = 3000,
) -> np.ndarray:
    """Log-mel of a padded utterance.

    The audio is loudness-normalised, then padded with `PAD_SECONDS` of silence before it and
    enough after it to cover `duration_s` plus `PAD_SECONDS`. Mel frame k is centred at time
    k / frames_per_second - PAD_SECONDS of the original audio. The spectrogram is computed
    `chunk_frames` frames at a time, so memory stays flat for long audio (the result equals one
    centred STFT over the whole signal: its edges are silence, where reflection adds zeros).

    Args:
        samples: (N,) float32 mono audio at `config.sample_rate`.
        duration_s: the time span that frames must cover (at least the audio's length).

    Returns:
        (M, n_mels) float32 log-mel.
    """
    import torch
    import torchaudio

    if samples.size == 0:
        raise MeshtalkError(None, "audio holds no samples")
    pad = round(PAD_SECONDS * config.sample_rate)
    half = config.n_fft // 2
    assert pad >= half, "the silent padding must cover half an FFT"
    total = max(samples.size, round(duration_s * config.sample_rate)) + 2 * pad
    padded = np.zeros(total + 2 * half, dtype=np.float32)  # + the centring margins (silence)
    padded[half + pad : half + pad + samples.size] = normalise_loudness(samples)
    transform = torchaudio.transforms.MelSpectrogram(
        sample_rate=config.sample_rate,
        n_fft=config.n_fft,
        win_length=config.win_length,
        hop_length=config.hop_length,
        n_mels=config.n_mels,
        power=2.0,
        center=False,
    )
    frames = 1 + total // config.hop_length
    mel = np.empty((frames, config.n_mels), dtype=np.float32)
    with torch.no_grad():
        for first in range(0, frames, chunk_frames):
            last = min(frames, first + chunk_frames)
            piece = padded[
                first * config.hop_length : (last - 1) * config.hop_length + config.n_fft
            ]
            power = transform(torch.from_numpy(piece))
            mel[first:last] = torch.log(power.clamp_min(config.log_floor)).T.numpy()
    return mel


def frame_mel_index(time_s: np.ndarray, config: MelConfig = DEFAULT_MEL) -> np.ndarray:
    """Index of the mel frame centred nearest to each mesh frame time (in padded mel frames)."""
    return np.rint((np.asarray(time_s) + PAD_SECONDS) * config.frames_per_second).astype(np.int64)


def utterance_audio_codes(
    audio_encoder, samples: np.ndarray, fps: float, mel_first: int, mel_frames: int
):
    """Audio codes of every mesh frame of an utterance, the convolutions run once over it.

    Args:
        audio_encoder: a stage-1 `AudioEncoder` (its device is used).
        samples: (N,) float32 mono audio at 16 kHz.
        fps: mesh frames per second; frames cover the audio's duration.
        mel_first, mel_frames: the audio window relative to a frame's mel index (a stage-1
            checkpoint's `audio_window`, e.g. -50 and 101 for the release's 1 s window).

    Returns:
        (1, T, code_dim) tensor, T = floor(duration * fps).

    Raises:
        MeshtalkError: for audio that is silent, not finite, or shorter than one frame.
    """
    import torch

    frames = check_waveform(samples, audio_encoder.mel_config.sample_rate, fps)
    duration = samples.size / audio_encoder.mel_config.sample_rate
    device = next(audio_encoder.parameters()).device
    mel = torch.from_numpy(utterance_mel(samples, duration, audio_encoder.mel_config))
    starts = frame_mel_index(np.arange(frames) / fps, audio_encoder.mel_config) + mel_first
    with torch.no_grad():
        return audio_encoder.encode_span(
            mel.to(device)[None], torch.from_numpy(starts).to(device)[None], mel_frames
        )
