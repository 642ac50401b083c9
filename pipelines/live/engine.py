"""Speech as it arrives -> frames: the audio codes, the prior's `push` and the decoder, live.

`LiveAnimator.feed` takes 16 kHz mono samples in any chunk size and returns every frame whose
audio window has fully arrived. A frame at time t needs the audio up to t + the window's end
(+100 ms with the `paper` window, +500 ms with the release's) plus half the STFT's window
(25 ms): that look-ahead, not the computation, is most of a frame's latency.

Exactness: the codes of each frame are computed by `frontend_stream.audio_codes_between` from the
samples its window spans, the prior samples them with `PriorSampler.push` and the decoder carries
its LSTM state across chunks, as `meshtalk animate` does. Two things differ from animate, because
the future is not known live: loudness normalisation uses the mean absolute amplitude of the audio
received so far (animate uses the whole clip's; it converges to it), floored at `MIN_LEVEL`; and
the release's forehead/neck smoothing is left out (it would delay every frame by 4 more frames).
Memory is flat: only the last few seconds of audio are kept.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from meshtalk.pipelines.errors import MeshtalkError

SAMPLE_RATE = 16_000
"""Rate of the audio the live commands take (every model's front end runs at 16 kHz)."""
MIN_LEVEL = 0.003
"""Floor of the running loudness estimate (mean |sample| of full scale 1): the first
silent or quiet chunks are not amplified into noise."""
KEEP_SECONDS = 2.0
"""Audio kept before the oldest sample a future frame can read."""


@dataclass
class LiveFrame:
    """One frame leaving the animator."""

    index: int
    time_s: float
    """The frame's audio time, from the first sample of the stream."""
    offsets: np.ndarray
    """(V, 3) float32 vertex offsets from the template."""
    needed_sample: int
    """The last sample its window reads (+1): it left as soon as that one arrived."""


@dataclass
class LiveStats:
    frames: int = 0
    samples: int = 0
    compute_s: float = 0.0
    seconds: dict = field(default_factory=lambda: dict.fromkeys(("codes", "prior", "decoder"), 0.0))


class LiveAnimator:
    """A run's model animating speech pushed a chunk at a time (one take).

    Args:
        run: a loaded run with a prior (`checkpoint.load_run`).
        template: (V, 3) float32 template of the run's topology.
        argmax, seed, temperature, int8: as for `meshtalk animate`.
    """

    def __init__(
        self,
        run,
        template: np.ndarray,
        *,
        argmax: bool = False,
        seed: int = 0,
        temperature: float = 1.0,
        int8: bool = False,
    ) -> None:
        import torch

        from meshtalk.models.sampler import PriorSampler

        self.run, self.front_end = run, run.front_end
        if self.front_end.sample_rate != SAMPLE_RATE:
            raise MeshtalkError(None, f"the model's audio runs at {self.front_end.sample_rate} Hz")
        self.encoder = run.latent.encoder.audio_encoder
        self.decoder = run.latent.decoder
        self.sampler = PriorSampler(
            run.prior,
            temperature=temperature,
            argmax=argmax,
            seed=seed,
            weights="int8" if int8 else "float",
        )
        parameter = next(self.decoder.parameters())
        self.template = np.ascontiguousarray(template, dtype=np.float32)
        self._template = torch.from_numpy(self.template).to(parameter.device, parameter.dtype)[None]
        self.classes = run.prior.config.classes
        self.stats = LiveStats()
        self.reset()

    # --- timing of frames ---------------------------------------------------------------------

    @property
    def fps(self) -> float:
        return float(self.front_end.frame_rate())

    def needed_samples(self, frame: int) -> int:
        """Samples [0, n) that frame `frame`'s window reads (its look-ahead included)."""
        fe = self.front_end
        if fe.framing == "release":
            return fe.step_samples * frame + fe.window_samples - fe.release_pad
        last_mel = fe.mel_index(fe._frame_times(frame, frame + 1))[0] + fe.mel_first
        last_mel += fe.window_frames - 1  # in the padded utterance (PAD_SECONDS before it)
        pad = round(0.5 * SAMPLE_RATE)
        # The STFT's window (win_length, zero-padded to n_fft) is centred on the mel frame.
        return int(last_mel * fe.mel.hop_length - pad + fe.mel.win_length // 2 + 1)

    @property
    def lookahead_s(self) -> float:
        """How long after a frame's time its last needed sample comes."""
        return self.needed_samples(0) / SAMPLE_RATE - float(self.front_end._frame_times(0, 1)[0])

    # --- the stream ---------------------------------------------------------------------------

    def reset(self, seed: int | None = None) -> None:
        """A new utterance: no audio, frame 0 next."""
        self.sampler.reset(seed)
        self.decoder_state = None
        self.buffer = np.zeros(0, dtype=np.float32)
        self.buffer_start = 0  # stream index of buffer[0]
        self.received = 0
        self.abs_sum = 0.0
        self.next_frame = 0

    def warm_up(self, seconds: float = 1.5) -> None:
        """Run the whole path once on silence and start again: the first frames of a stream do
        not pay for first-call allocations (measured: the first frame took ~1 s under load)."""
        self.feed(np.zeros(int(seconds * SAMPLE_RATE) + self.needed_samples(0), np.float32))
        self.stats = LiveStats()
        self.reset()

    def level(self) -> float:
        if self.received == 0:
            return MIN_LEVEL
        return max(MIN_LEVEL, self.abs_sum / self.received)

    def _read(self, start: int, stop: int) -> np.ndarray:
        """Samples [start, stop) of the stream, zeros where none arrived (before 0, after the
        last: those fall outside the STFT's window, so the frame does not depend on them)."""
        out = np.zeros(stop - start, dtype=np.float32)
        lo = max(start, self.buffer_start)
        hi = min(stop, self.buffer_start + self.buffer.size)
        if hi > lo:
            out[lo - start : hi - start] = self.buffer[
                lo - self.buffer_start : hi - self.buffer_start
            ]
        return out

    def feed(self, samples: np.ndarray, limit: int | None = None) -> list[LiveFrame]:
        """Append float32 samples (full scale 1) and return the frames they complete.

        Args:
            samples: (n,) mono audio at 16 kHz.
            limit: at most this many frames (None: all that are ready).
        """
        samples = np.asarray(samples, dtype=np.float32).reshape(-1)
        if samples.size and not np.isfinite(samples).all():
            raise MeshtalkError(None, "audio holds NaN or infinite samples")
        self.buffer = np.concatenate([self.buffer, samples])
        self.received += samples.size
        self.abs_sum += float(np.abs(samples).sum(dtype=np.float64))
        self.stats.samples += samples.size
        return self.ready(limit)

    def ready(self, limit: int | None = None) -> list[LiveFrame]:
        """Compute the frames whose windows have arrived."""
        last = self.next_frame
        while self.needed_samples(last) <= self.received and (
            limit is None or last - self.next_frame < limit
        ):
            last += 1
        if last == self.next_frame:
            return []
        frames = self._compute(self.next_frame, last)
        self.next_frame = last
        self._trim()
        return frames

    def _compute(self, first: int, last: int) -> list[LiveFrame]:
        import torch
        import torch.nn.functional as F

        from meshtalk.pipelines.frontend_stream import audio_codes_between

        started = time.perf_counter()
        seconds = self.stats.seconds
        with torch.inference_mode():
            huge = self.received + 10 * SAMPLE_RATE  # no end reflection: the stream goes on
            codes = audio_codes_between(
                self.front_end, self.encoder, self._read, huge, self.level(), first, last
            )
            clock = time.perf_counter()
            seconds["codes"] += clock - started
            drawn = self.sampler.push(codes)  # (1, n, H)
            seconds["prior"] += time.perf_counter() - clock
            clock = time.perf_counter()
            parameter = next(self.decoder.parameters())
            one_hot = F.one_hot(drawn, self.classes).to(parameter.dtype)
            meshes, self.decoder_state = self.decoder.decode(
                self._template, one_hot, self.decoder_state
            )
            offsets = meshes[0].float().cpu().numpy() - self.template
            seconds["decoder"] += time.perf_counter() - clock
        times = self.front_end._frame_times(first, last)
        self.stats.frames += last - first
        self.stats.compute_s += time.perf_counter() - started
        return [
            LiveFrame(k, float(times[k - first]), offsets[k - first], self.needed_samples(k))
            for k in range(first, last)
        ]

    def _trim(self) -> None:
        """Drop audio no future frame reads (its window start, less a margin)."""
        keep_from = self.needed_samples(self.next_frame) - int(
            (self.lookahead_s + 1.5 + KEEP_SECONDS) * SAMPLE_RATE
        )
        drop = keep_from - self.buffer_start
        if drop > 0:
            self.buffer = self.buffer[drop:].copy()
            self.buffer_start += drop


def run_template(model: Path, run, template_path: Path | None) -> tuple[np.ndarray, np.ndarray]:
    """(vertices (V, 3) float32, faces (F, 3) int32) of the face a live command animates: the
    given template (the model's topology), or the bundled head for the bundled model."""
    from meshtalk.pipelines.data.resources import default_model
    from meshtalk.pipelines.io.mesh import read_mesh

    if template_path is None:
        if not default_model.is_bundled(model):
            raise MeshtalkError(
                model, "give the template mesh of the model's topology (--template)"
            )
        template_path = default_model.template_path()
    mesh = read_mesh(template_path)
    if len(mesh.vertices) != run.num_vertices:
        raise MeshtalkError(
            template_path,
            f"has {len(mesh.vertices)} vertices but the model's topology has {run.num_vertices}",
        )
    if len(mesh.faces) == 0:
        raise MeshtalkError(template_path, "has no faces to draw")
    return (
        np.ascontiguousarray(mesh.vertices, dtype=np.float32),
        np.ascontiguousarray(mesh.faces, dtype=np.int32),
    )
