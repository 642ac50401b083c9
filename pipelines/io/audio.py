"""Audio I/O: any common sample rate, bit depth and channel count in; 16 kHz mono out.

`load_audio` reads a whole file at once. `SpeechReader` reads it in blocks, in flat memory
whatever its length: a first pass (`scan`) checks it and sums what the front end needs, later
passes give the 16 kHz signal block by block (`blocks`), equal to `load_audio`'s, and
`SampleRange` serves any forward-moving [start, stop) of it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from meshtalk.models.config import MelConfig
from meshtalk.pipelines.errors import MeshtalkError
from meshtalk.pipelines.io.atomic import atomic_path

MODEL_SAMPLE_RATE = MelConfig.sample_rate
"""Sample rate of everything the model hears."""


CANCELLING_CHANNELS = 1e-3
"""Averaged channels this much quieter than the loudest one cancel out (antiphase stereo)."""
READ_BLOCK_SECONDS = 4.0
"""Seconds of audio `SpeechReader` reads and resamples at a time."""


def read_audio(path: str | Path, channel: int | None = None) -> tuple[np.ndarray, int]:
    """Read an audio file as float32 mono at its own sample rate.

    Args:
        path: the audio file.
        channel: the channel to keep (0 = first); None averages all channels.

    Returns:
        (N,) float32 samples and the file's sample rate.

    Raises:
        MeshtalkError: for a missing, empty, corrupt or non-finite file, a channel it does not
            have, or channels that cancel out when averaged.
    """
    import soundfile

    path = _existing(path)
    try:
        samples, sample_rate = soundfile.read(str(path), dtype="float32", always_2d=True)
    except (soundfile.LibsndfileError, RuntimeError, TypeError) as error:
        raise _unreadable(path, error) from None
    if samples.shape[0] == 0:
        raise MeshtalkError(path, "audio file holds no samples")
    _check_channel(path, channel, samples.shape[1])
    mono = _mono(samples, channel)
    if not np.isfinite(mono).all():
        raise MeshtalkError(path, "audio holds NaN or infinite samples")
    if channel is None and samples.shape[1] > 1:
        _check_not_cancelling(
            path,
            np.square(samples, dtype=np.float64).mean(axis=0),
            float(np.square(mono, dtype=np.float64).mean()),
        )
    return mono, int(sample_rate)


def _existing(path: str | Path) -> Path:
    path = Path(path)
    if not path.is_file():
        raise MeshtalkError(path, "audio file not found")
    return path


def _unreadable(path: Path, error: Exception) -> MeshtalkError:
    return MeshtalkError(path, f"not a readable audio file ({error})")


def _check_channel(path: Path, channel: int | None, channels: int) -> None:
    if channel is not None and channel < 0:
        raise MeshtalkError(path, f"no channel {channel}: channels count from 0 (the first)")
    if channel is not None and channel >= channels:
        raise MeshtalkError(
            path, f"has {channels} channel(s): no channel {channel} (0 is the first)"
        )


def _mono(samples: np.ndarray, channel: int | None) -> np.ndarray:
    """(n,) float32 mono of (n, C) samples: one channel, or all averaged."""
    if channel is not None:
        return np.ascontiguousarray(samples[:, channel])
    return samples.mean(axis=1, dtype=np.float32)


def _check_not_cancelling(path: Path, channel_power: np.ndarray, mono_power: float) -> None:
    """Refuse channels whose average is far quieter than the loudest (mean squares given)."""
    loudest = float(np.sqrt(np.max(channel_power)))
    if loudest > 0 and math.sqrt(mono_power) < CANCELLING_CHANNELS * loudest:
        raise MeshtalkError(
            path, "audio is silent when its channels are averaged: channels cancel; use --channel"
        )


def resample(samples: np.ndarray, source_rate: int, target_rate: int) -> np.ndarray:
    """Resample mono float32 audio with torchaudio's band-limited sinc interpolation."""
    if source_rate == target_rate:
        return samples
    import torch
    import torchaudio.functional as F

    resampled = F.resample(
        torch.from_numpy(np.ascontiguousarray(samples)), source_rate, target_rate
    )
    return resampled.numpy()


def load_audio(
    path: str | Path, sample_rate: int = MODEL_SAMPLE_RATE, channel: int | None = None
) -> np.ndarray:
    """Read any audio file as float32 mono at `sample_rate` (16 kHz by default)."""
    samples, source_rate = read_audio(path, channel)
    return resample(samples, source_rate, sample_rate)


def write_wav(
    path: str | Path, samples: np.ndarray, sample_rate: int, subtype: str = "PCM_16"
) -> None:
    """Write mono (T,) or multichannel (T, C) float audio as WAV, atomically."""
    import soundfile

    with atomic_path(path, suffix=".wav") as tmp:
        soundfile.write(str(tmp), np.asarray(samples), sample_rate, subtype=subtype, format="WAV")


@dataclass(frozen=True)
class SpeechScan:
    """What `SpeechReader.scan`'s pass over a file found, at the reader's sample rate."""

    samples: int
    """N, samples of the resampled signal (the length of `load_audio`'s)."""
    abs_sum: float
    """Sum of |x| over the resampled signal (N times its mean absolute amplitude)."""
    nonzero: bool
    """Whether any resampled sample is not 0."""
    source_rate: int
    """The file's own sample rate."""
    channels: int
    """The file's channels."""

    @property
    def mean_abs(self) -> float:
        """Mean absolute amplitude of the resampled signal (the loudness level of the clip)."""
        return self.abs_sum / self.samples


@dataclass
class _SourceTotals:
    """Sums of a first pass at the file's rate (for the cancelling-channels check)."""

    channel_power: np.ndarray
    mono_power: float = 0.0
    samples: int = 0


class SpeechReader:
    """An audio file as float32 mono at `sample_rate`, read and resampled a block at a time.

    The blocks of `blocks()` put together equal `load_audio(path, sample_rate, channel)` to float
    rounding (torchaudio's sinc resampling, computed on blocks aligned to its period with margins
    wider than its kernel), and memory stays flat whatever the file's length. Opening checks the
    file and the channel; `scan()` is a first pass that checks the samples as `read_audio` does.

    Args:
        path: the audio file (any format, rate and channel count soundfile reads).
        sample_rate: the rate of the signal given out.
        channel: the channel to keep (0 = first); None averages all channels.
        block_seconds: audio read (and resampled) at a time, in seconds of the file (None:
            `READ_BLOCK_SECONDS`).

    Raises:
        MeshtalkError: a missing or unreadable file, or a channel it does not have.
    """

    def __init__(
        self,
        path: str | Path,
        sample_rate: int = MODEL_SAMPLE_RATE,
        channel: int | None = None,
        block_seconds: float | None = None,
    ) -> None:
        import soundfile

        self.path, self.sample_rate, self.channel = _existing(path), int(sample_rate), channel
        try:
            info = soundfile.info(str(self.path))
        except (soundfile.LibsndfileError, RuntimeError, TypeError) as error:
            raise _unreadable(self.path, error) from None
        self.source_rate, self.channels = int(info.samplerate), int(info.channels)
        _check_channel(self.path, channel, self.channels)
        gcd = math.gcd(self.source_rate, self.sample_rate)
        self.period, self.period_out = self.source_rate // gcd, self.sample_rate // gcd
        block_seconds = READ_BLOCK_SECONDS if block_seconds is None else block_seconds
        self.block = self.period * max(1, round(block_seconds * self.source_rate / self.period))
        self._scan: SpeechScan | None = None

    def scan(self) -> SpeechScan:
        """Read the whole file once: its length, loudness and checks (done once, then kept).

        Raises:
            MeshtalkError: an empty or corrupt file, NaN or infinite samples, or channels that
                cancel out when averaged (as `read_audio`).
        """
        if self._scan is None:
            self._scan = self._first_pass()
        return self._scan

    def blocks(self) -> Iterator[np.ndarray]:
        """The resampled signal, (n,) float32 blocks in order, about `block_seconds` each."""
        return self._signal(_mono(samples, self.channel) for samples in self._read())

    def sample_range(self) -> SampleRange:
        """A `SampleRange` over a new pass of the resampled signal (scans first if need be)."""
        return SampleRange(self.blocks(), self.scan().samples)

    def _first_pass(self) -> SpeechScan:
        totals = _SourceTotals(np.zeros(self.channels))
        samples, abs_sum, nonzero = 0, 0.0, False
        for block in self._signal(self._checked_source_blocks(totals)):
            samples += block.size
            abs_sum += float(np.abs(block).sum(dtype=np.float64))
            nonzero = nonzero or bool(np.any(block))
        if self.channel is None and self.channels > 1:
            _check_not_cancelling(
                self.path, totals.channel_power / totals.samples, totals.mono_power / totals.samples
            )
        return SpeechScan(samples, abs_sum, nonzero, self.source_rate, self.channels)

    def _checked_source_blocks(self, totals: _SourceTotals) -> Iterator[np.ndarray]:
        """Mono blocks at the file's rate, checked as `read_audio` does, summed into `totals`."""
        for samples in self._read():
            mono = _mono(samples, self.channel)
            if not np.isfinite(mono).all():
                raise MeshtalkError(self.path, "audio holds NaN or infinite samples")
            totals.channel_power += np.square(samples, dtype=np.float64).sum(axis=0)
            totals.mono_power += float(np.square(mono, dtype=np.float64).sum())
            totals.samples += len(mono)
            yield mono
        if totals.samples == 0:
            raise MeshtalkError(self.path, "audio file holds no samples")

    def _signal(self, source: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
        if self.source_rate == self.sample_rate:
            return iter(source)
        return self._resampled(source)

    def _read(self) -> Iterator[np.ndarray]:
        """(n, C) float32 blocks of `self.block` frames (the last may be shorter)."""
        import soundfile

        try:
            with soundfile.SoundFile(str(self.path)) as file:
                while True:
                    samples = file.read(self.block, dtype="float32", always_2d=True)
                    if len(samples) == 0:
                        return
                    yield samples
        except (soundfile.LibsndfileError, RuntimeError, TypeError) as error:
            raise _unreadable(self.path, error) from None

    def _resampled(self, source: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
        """torchaudio's `resample` of the concatenated `source` blocks, a block at a time.

        Output period b (samples [b * period_out, (b + 1) * period_out)) depends only on input
        samples [b * period - width, (b + 1) * period + width), zeros outside the signal. So a
        run of periods is resampled from its input with `margin` samples of real neighbours on
        each side (margin > width, a whole number of periods), and the margins' output dropped.
        """
        import torch
        import torchaudio

        # `Resample` keeps the kernel `F.resample` makes on every call (the same numbers).
        resampler = torchaudio.transforms.Resample(
            self.source_rate, self.sample_rate, dtype=torch.float32
        )
        period, period_out = self.period, self.period_out
        margin = period * (resampler.width // period + 1)
        skip = margin // period * period_out  # output of one margin

        def resampled(signal: np.ndarray) -> np.ndarray:
            out = resampler(torch.from_numpy(signal))
            return out[skip : len(out) - skip].numpy()

        step = self.block // period  # output periods per resampled block
        pending, first = np.zeros(margin, dtype=np.float32), 0  # pending[0]: input first - margin
        length = 0
        for block in source:
            length += len(block)
            pending = np.concatenate([pending, block])
            while len(pending) >= step * period + 2 * margin:
                yield resampled(pending[: step * period + 2 * margin])
                pending, first = pending[step * period :], first + step * period
        total = _resampled_length(length, period, period_out)
        done = first // period * period_out
        pending = np.concatenate([pending, np.zeros(2 * margin + period, dtype=np.float32)])
        while done < total:
            periods = min(step, -(-(total - done) // period_out))
            yield resampled(pending[: periods * period + 2 * margin])[: total - done]
            pending, done = pending[periods * period :], done + periods * period_out


def _resampled_length(length: int, period: int, period_out: int) -> int:
    """Samples of torchaudio's `resample` of `length` samples (its own float32 rounding kept)."""
    import torch

    target = int(torch.ceil(torch.as_tensor(period_out * length / period)).long())
    return min(target, (length // period + 1) * period_out)


class SampleRange:
    """Any [start, stop) of a signal given as blocks, zeros outside [0, length), in flat memory.

    The blocks are read as far as the ranges asked for need, and kept from the latest `start`
    on, so a range may not start before an earlier one did (ranges may overlap).

    Args:
        blocks: the signal, (n,) float32 blocks in order.
        length: N, samples of the whole signal.
    """

    def __init__(self, blocks: Iterable[np.ndarray], length: int) -> None:
        self.blocks, self.length = iter(blocks), int(length)
        self.kept = np.zeros(0, dtype=np.float32)
        self.kept_from = 0  # signal index of kept[0]

    def __call__(self, start: int, stop: int) -> np.ndarray:
        """(stop - start,) float32 samples [start, stop) of the signal."""
        inside_start, inside_stop = max(0, start), min(self.length, stop)
        out = np.zeros(max(0, stop - start), dtype=np.float32)
        if inside_stop <= inside_start:
            return out
        if inside_start < self.kept_from:
            raise ValueError(
                f"range [{start}, {stop}) starts before {self.kept_from}, read already"
            )
        while self.kept_from + len(self.kept) < inside_stop:
            block = next(self.blocks, None)
            if block is None:
                end = self.kept_from + len(self.kept)
                raise ValueError(f"the blocks end at sample {end} of {self.length}")
            self.kept = np.concatenate([self.kept, block])
        self.kept, self.kept_from = self.kept[inside_start - self.kept_from :], inside_start
        out[inside_start - start : inside_stop - start] = self.kept[: inside_stop - inside_start]
        return out
