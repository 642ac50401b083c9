"""Audio I/O: any common sample rate, bit depth and channel count in; 16 kHz mono out."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from meshtalk.models.config import MelConfig
from meshtalk.pipelines.atomic import atomic_path
from meshtalk.pipelines.errors import MeshtalkError

MODEL_SAMPLE_RATE = MelConfig.sample_rate
"""Sample rate of everything the model hears."""


def read_audio(path: str | Path) -> tuple[np.ndarray, int]:
    """Read an audio file as float32 mono (channels averaged) at its own sample rate.

    Raises:
        MeshtalkError: for a missing, empty, corrupt or non-finite file.
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
    mono = samples.mean(axis=1, dtype=np.float32)
    if not np.isfinite(mono).all():
        raise MeshtalkError(path, "audio holds NaN or infinite samples")
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


def load_audio(path: str | Path, sample_rate: int = MODEL_SAMPLE_RATE) -> np.ndarray:
    """Read any audio file as float32 mono at `sample_rate` (16 kHz by default)."""
    samples, source_rate = read_audio(path)
    return resample(samples, source_rate, sample_rate)


def write_wav(
    path: str | Path, samples: np.ndarray, sample_rate: int, subtype: str = "PCM_16"
) -> None:
    """Write mono (T,) or multichannel (T, C) float audio as WAV, atomically."""
    import soundfile

    with atomic_path(path, suffix=".wav") as tmp:
        soundfile.write(str(tmp), np.asarray(samples), sample_rate, subtype=subtype, format="WAV")
