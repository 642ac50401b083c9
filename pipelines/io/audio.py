"""Audio I/O: any common sample rate, bit depth and channel count in; 16 kHz mono out."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from meshtalk.models.config import MelConfig
from meshtalk.pipelines.errors import MeshtalkError
from meshtalk.pipelines.io.atomic import atomic_path

MODEL_SAMPLE_RATE = MelConfig.sample_rate
"""Sample rate of everything the model hears."""


CANCELLING_CHANNELS = 1e-3
"""Averaged channels this much quieter than the loudest one cancel out (antiphase stereo)."""


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

    path = Path(path)
    if not path.is_file():
        raise MeshtalkError(path, "audio file not found")
    try:
        samples, sample_rate = soundfile.read(str(path), dtype="float32", always_2d=True)
    except (soundfile.LibsndfileError, RuntimeError, TypeError) as error:
        raise MeshtalkError(path, f"not a readable audio file ({error})") from None
    if samples.shape[0] == 0:
        raise MeshtalkError(path, "audio file holds no samples")
    if channel is not None and channel >= samples.shape[1]:
        raise MeshtalkError(
            path, f"has {samples.shape[1]} channel(s): no channel {channel} (0 is the first)"
        )
    if channel is not None:
        mono = np.ascontiguousarray(samples[:, channel])
    else:
        mono = samples.mean(axis=1, dtype=np.float32)
    if not np.isfinite(mono).all():
        raise MeshtalkError(path, "audio holds NaN or infinite samples")
    if channel is None and samples.shape[1] > 1:
        loudest = float(np.sqrt(np.square(samples, dtype=np.float64).mean(axis=0)).max())
        average = float(np.sqrt(np.square(mono, dtype=np.float64).mean()))
        if loudest > 0 and average < CANCELLING_CHANNELS * loudest:
            raise MeshtalkError(
                path,
                "audio is silent when its channels are averaged: channels cancel; use --channel",
            )
    return mono, int(sample_rate)


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
