"""Speed and memory of sampling the prior from audio (random weights, the release's sizes).

Side by side in one run, on the CPU (and a GPU when there is one):

1. the full path from a waveform (a real recording from ../shared/reference, repeated to length):
   log-mel, the stage-1 audio encoder in one pass, and the linear-time sampler, for 10 s and 60 s
   of audio with the release's sizes (H=16, C=128), 10 s with the paper's (H=64), and 8 takes of
   10 s side by side (one batch: the weights are read once per frame for all of them); the
   real-time factor is seconds of audio per second of compute;
2. the way the authors' sampler works (the whole model re-run on the growing sequence for every
   frame and head) on 0.5 s and 1 s, to show its quadratic growth against our linear one;
3. peak resident memory of a process that samples 10 minutes of audio.

    python benchmarks/sample.py [--long-minutes 10] [--json results.json]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from _measure import peak_tree_rss
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
SPEECH = ROOT.parent / "shared" / "reference" / "speech" / "example_sentence.wav"
FPS = 30


def speech(seconds: float) -> np.ndarray:
    """The reference recording at 16 kHz, repeated to `seconds`."""
    from meshtalk.pipelines.audio_io import load_audio

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
    from meshtalk.pipelines.features import utterance_audio_codes

    return utterance_audio_codes(encoder, samples, FPS, -50, 101)


def synchronise(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def linear_sampling(preset: str, seconds: float, device: torch.device, takes: int = 1) -> dict:
    """Audio -> codes for `takes` samples side by side (one utterance, different noise)."""
    from meshtalk.models.sampler import PriorSampler

    encoder, prior = models(preset, device)
    samples = speech(seconds)
    warm = audio_codes(encoder, speech(1.0), device).expand(takes, -1, -1)
    PriorSampler(prior, batch=takes).sample(warm)
    synchronise(device)
    started = time.perf_counter()
    codes = audio_codes(encoder, samples, device).expand(takes, -1, -1)
    synchronise(device)
    encoded = time.perf_counter()
    sampled = PriorSampler(prior, batch=takes, seed=0).sample(codes)
    synchronise(device)
    done = time.perf_counter()
    assert sampled.shape == (takes, int(seconds * FPS), prior.config.heads)
    return {
        "preset": preset,
        "heads": prior.config.heads,
        "takes": takes,
        "device": str(device),
        "audio_seconds": seconds,
        "audio_encoder_seconds": encoded - started,
        "sampler_seconds": done - encoded,
        "total_seconds": done - started,
        "real_time_factor": seconds / (done - started),
        "real_time_factor_per_take": takes * seconds / (done - started),
        "sampler_ms_per_frame": 1e3 * (done - encoded) / codes.shape[1],
    }


@torch.no_grad()
def quadratic_sampling(seconds: float, device: torch.device) -> dict:
    """The authors' way: every (t, h) re-runs the model on the whole sequence so far."""
    import torch.nn.functional as F

    encoder, prior = models("release", device)
    config = prior.config
    started = time.perf_counter()
    codes = audio_codes(encoder, speech(seconds), device)
    frames = codes.shape[1]
    one_hot = torch.zeros(1, frames, config.heads, config.classes, device=device)
    for t in range(frames):
        for h in range(config.heads):
            logits = prior(one_hot[:, : t + 1], codes[:, : t + 1])[0, t, h]
            choice = torch.multinomial(F.softmax(logits, dim=-1), 1)
            one_hot[0, t, h, choice] = 1.0
    synchronise(device)
    elapsed = time.perf_counter() - started
    return {
        "audio_seconds": seconds,
        "total_seconds": elapsed,
        "real_time_factor": seconds / elapsed,
    }


def child(seconds: float) -> None:
    """Sample `seconds` of audio with the release's sizes on the CPU (run in its own process)."""
    torch.set_num_threads(2)
    figures = linear_sampling("release", seconds, torch.device("cpu"))
    print(json.dumps(figures))


def long_sampling(minutes: float) -> dict:
    script = [sys.executable, __file__, "--child-seconds", str(60 * minutes)]
    process = subprocess.Popen(script, stdout=subprocess.PIPE, text=True, cwd=ROOT)
    peak, elapsed = peak_tree_rss(process)
    figures = json.loads(process.stdout.read().strip().splitlines()[-1])
    return {**figures, "peak_rss_mib": peak / 2**20, "process_seconds": elapsed}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--long-minutes", type=float, default=10.0)
    parser.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    parser.add_argument("--child-seconds", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_seconds:
        child(args.child_seconds)
        return
    if not SPEECH.is_file():
        raise SystemExit(f"error: {SPEECH}: the reference recording is missing")
    console = Console()
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    linear = []
    for device in devices:
        for preset, seconds, takes in (
            ("release", 10.0, 1),
            ("release", 60.0, 1),
            ("paper", 10.0, 1),
            ("release", 10.0, 8),
        ):
            console.log(f"linear sampler: {preset}, {seconds:g} s x {takes} on {device}")
            linear.append(linear_sampling(preset, seconds, device, takes))
    quadratic = []
    for seconds in (0.5, 1.0):
        console.log(f"re-run-everything sampler: {seconds:g} s of audio on the CPU")
        quadratic.append(quadratic_sampling(seconds, torch.device("cpu")))
    console.log(f"{args.long_minutes:g} minutes of audio in a separate process (peak memory)")
    long = long_sampling(args.long_minutes)

    table = Table(title="Sampling the prior from audio (random weights)")
    for column in ("sampler", "sizes", "device", "audio", "encoder s", "sampler s", "total s"):
        table.add_column(column, justify="right")
    table.add_column("x real time (per take)", justify="right")
    for row in linear:
        takes = f" x {row['takes']} takes" if row["takes"] > 1 else ""
        table.add_row(
            "linear",
            f"{row['preset']} H={row['heads']}",
            row["device"],
            f"{row['audio_seconds']:g} s{takes}",
            f"{row['audio_encoder_seconds']:.2f}",
            f"{row['sampler_seconds']:.2f}",
            f"{row['total_seconds']:.2f}",
            f"{row['real_time_factor_per_take']:.1f}",
        )
    for row in quadratic:
        table.add_row(
            "re-run everything",
            "release H=16",
            "cpu",
            f"{row['audio_seconds']:g} s",
            "",
            "",
            f"{row['total_seconds']:.2f}",
            f"{row['real_time_factor']:.3f}",
        )
    console.print(table)
    cpu = {
        (r["preset"], r["audio_seconds"]): r
        for r in linear
        if r["device"] == "cpu" and r["takes"] == 1
    }
    ratios = {
        "linear_60s_over_10s_time": cpu[("release", 60.0)]["total_seconds"]
        / cpu[("release", 10.0)]["total_seconds"],
        "rerun_1s_over_half_s_time": quadratic[1]["total_seconds"] / quadratic[0]["total_seconds"],
        "linear_over_rerun_speedup_at_1s": (
            cpu[("release", 10.0)]["real_time_factor"] / quadratic[1]["real_time_factor"]
        ),
        "paper_over_release_time_10s": cpu[("paper", 10.0)]["total_seconds"]
        / cpu[("release", 10.0)]["total_seconds"],
    }
    console.print(
        f"60 s takes {ratios['linear_60s_over_10s_time']:.2f}x the time of 10 s (linear: 6); "
        f"re-running everything, 1 s takes {ratios['rerun_1s_over_half_s_time']:.2f}x the time "
        f"of 0.5 s (quadratic: about 4); the linear sampler is "
        f"{ratios['linear_over_rerun_speedup_at_1s']:.0f}x faster in real-time factor; H=64 "
        f"takes {ratios['paper_over_release_time_10s']:.1f}x the time of H=16."
    )
    console.print(
        f"{args.long_minutes:g} minutes of audio: peak RSS {long['peak_rss_mib']:.0f} MiB, "
        f"{long['real_time_factor']:.1f}x real time ({long['sampler_ms_per_frame']:.2f} ms "
        "per frame in the sampler)"
    )
    if args.json:
        figures = {
            "linear_sampler": linear,
            "rerun_everything_sampler": quadratic,
            "long_audio_cpu": long,
            "ratios": ratios,
            "torch_threads": torch.get_num_threads(),
        }
        args.json.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
