"""What benchmarks/sample.py samples from (the reference speech, models of a preset, audio codes),
and the linear sampler's timing."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]


SPEECH = ROOT.parent / "shared" / "reference" / "speech" / "example_sentence.wav"


FPS = 30


def speech(seconds: float) -> np.ndarray:
    """The reference recording at 16 kHz, repeated to `seconds`."""
    from meshtalk.pipelines.io.audio import load_audio

    samples = load_audio(SPEECH)
    repeats = int(np.ceil(seconds * 16000 / samples.size))
    return np.tile(samples, repeats)[: int(seconds * 16000)]


def models(preset: str, device: torch.device):
    from meshtalk.models.config import latent_preset
    from meshtalk.models.encoders import LatentEncoder
    from meshtalk.models.prior import ContextModel, prior_preset

    torch.manual_seed(0)
    encoder = LatentEncoder(latent_preset(preset)).audio_encoder.to(device).eval()
    prior = ContextModel(prior_preset(preset)).to(device).eval()
    return encoder, prior


def audio_codes(encoder, samples: np.ndarray, device: torch.device) -> torch.Tensor:
    """Waveform -> (1, T, D) audio codes at 30 fps, the convolutions run once (1 s windows)."""
    from meshtalk.pipelines.frontend import AudioFrontEnd

    return AudioFrontEnd(fps=FPS).audio_codes(encoder, samples)


def synchronise(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


FIDELITY_WEIGHT_SCALE = 5.0


def linear_sampling(
    preset: str,
    seconds: float,
    device: torch.device,
    takes: int = 1,
    weights: str = "float",
    repeats: int = 1,
    graph: bool | None = None,
) -> dict:
    """Audio -> codes for `takes` samples side by side (one utterance, different noise).

    The sampler is prepared once per loaded model (weights sliced, packed and for int8 rounded),
    timed on its own; the real-time factor counts the audio encoder and the sampling of this
    utterance, after `reset`, as an application that animates one utterance after another does;
    the median of `repeats` runs.
    """
    from meshtalk.models.sampler import PriorSampler

    encoder, prior = models(preset, device)
    samples = speech(seconds)
    warm = audio_codes(encoder, speech(1.0), device).expand(takes, -1, -1)
    synchronise(device)
    started = time.perf_counter()
    sampler = PriorSampler(prior, batch=takes, weights=weights, graph=graph)
    synchronise(device)
    prepare = time.perf_counter() - started
    sampler.sample(warm)
    timings = []
    for _ in range(repeats):  # the median run
        sampler.reset(seed=0)
        synchronise(device)
        started = time.perf_counter()
        codes = audio_codes(encoder, samples, device).expand(takes, -1, -1)
        synchronise(device)
        encoded = time.perf_counter()
        sampled = sampler.sample(codes)
        synchronise(device)
        timings.append((time.perf_counter() - started, encoded - started))
    total, encoding = sorted(timings)[len(timings) // 2]
    frames, step_bytes = codes.shape[1], sampler.weight_bytes_per_step
    assert sampled.shape == (takes, int(seconds * FPS), prior.config.heads)
    return {
        "preset": preset,
        "heads": prior.config.heads,
        "takes": takes,
        "weights": weights,
        "device": str(device),
        "audio_seconds": seconds,
        "runs_median_of": repeats,
        "prepare_sampler_seconds_once_per_model": prepare,
        "audio_encoder_seconds": encoding,
        "sampler_seconds": total - encoding,
        "total_seconds": total,
        "real_time_factor": seconds / total,
        "real_time_factor_per_take": takes * seconds / total,
        "sampler_ms_per_frame": 1e3 * (total - encoding) / frames,
        "weight_mb_read_per_step": step_bytes / 1e6,
        "weight_gb_per_s_read_while_sampling": step_bytes * frames / (total - encoding) / 1e9,
    }
