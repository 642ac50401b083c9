"""Speed and memory of sampling the prior from audio (random weights, the release's sizes).

Side by side in one run, on the CPU (and a GPU when there is one):

1. the full path from a waveform (a real recording from ../shared/reference, repeated to length):
   log-mel, the stage-1 audio encoder in one pass, and the linear-time sampler, for 10 s and 60 s
   of audio with the release's sizes (H=16, C=128), 10 s with the paper's (H=64), and 8 takes of
   10 s side by side (one batch: the weights are read once per frame for all of them); the
   real-time factor is seconds of audio per second of compute (audio encoder and sampling; the
   sampler's one-time preparation per loaded model is its own column; the median of 3 runs with the
   release's sizes, one run with the paper's); on the CPU also with int8
   weights (`PriorSampler(weights="int8")`), and how far its distributions are from the float
   model's (KL divergence and argmax agreement at every (t, h) of a 10 s sample);
2. the way the authors' sampler works (the whole model re-run on the growing sequence for every
   frame and head) on 0.5 s and 1 s, to show its quadratic growth against our linear one;
3. peak resident memory of a process that samples 10 minutes of audio (float and int8 weights);
4. weight traffic: with one sequence every step reads all of the sampler's weights
   (`PriorSampler.weight_bytes_per_step`); where they do not fit in the last-level cache they
   stream from memory: at least (bytes per step - cache size) each step, even if the cache held
   nothing but weights. So the machine's memory read bandwidth (measured here: a streaming sum
   over 1 GiB) over that bounds the frames per second of any kernel. For each CPU row: bytes
   per step, the read rate while sampling, that bound as a real-time factor and the memory
   bandwidth the issue's target (50x for the release's sizes, 15x for the paper's) needs.

    python benchmarks/sample.py [--long-minutes 10] [--json results.json]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch
from _measure import add_json_option, check_json, peak_tree_rss, run_main, write_json
from _sample_setup import (
    FIDELITY_WEIGHT_SCALE,
    FPS,
    ROOT,
    SPEECH,
    audio_codes,
    linear_sampling,
    models,
    speech,
    synchronise,
)
from _sample_variants import (
    cuda_graph_rows,
    print_cuda_graph_rows,
    print_speculative_rows,
    speculative_rows,
)
from rich.console import Console
from rich.table import Table


def memory_read_bandwidth(gib: float = 1.0, repeats: int = 5) -> float:
    """Bytes per second of a streaming read (a sum over `gib` GiB of float32), the best run."""
    data = torch.ones(int(gib * 2**30) // 4)
    data.sum()
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        data.sum()
        best = min(best, time.perf_counter() - started)
    return data.numel() * 4 / best


def last_level_cache_bytes() -> int | None:
    """Size of the CPU's largest cache (Linux sysfs), or None where it cannot be read."""
    units, sizes = {"K": 2**10, "M": 2**20, "G": 2**30}, []
    for path in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*/size"):
        text = path.read_text().strip()
        sizes.append(int(text[:-1]) * units[text[-1]] if text[-1] in units else int(text))
    return max(sizes) if sizes else None


TARGETS = {"release": 50.0, "paper": 15.0}
"""The issue's real-time targets per preset."""


def weight_traffic(linear: list[dict], bandwidth: float, cache: int | None) -> list[dict]:
    """Per CPU row of one take: the memory-bandwidth bound on its real-time factor."""
    rows, cached = [], cache or 0
    for row in linear:
        if row["device"] != "cpu" or row["takes"] != 1 or row["audio_seconds"] != 10.0:
            continue
        step_bytes = row["weight_mb_read_per_step"] * 1e6
        from_memory = max(step_bytes - cached, 0.0)  # at least, each step
        target = TARGETS[row["preset"]]
        rows.append(
            {
                "preset": row["preset"],
                "weights": row["weights"],
                "weight_mb_read_per_step": row["weight_mb_read_per_step"],
                "weight_mb_from_memory_per_step_at_least": from_memory / 1e6,
                "weight_gb_per_s_read_while_sampling": row["weight_gb_per_s_read_while_sampling"],
                "real_time_factor_measured": row["real_time_factor"],
                "real_time_factor_bound_by_memory_bandwidth": (
                    bandwidth / from_memory / FPS if from_memory else None
                ),
                "target_real_time_factor": target,
                "memory_gb_per_s_needed_for_target": target * FPS * from_memory / 1e9,
            }
        )
    return rows


@torch.no_grad()
def int8_fidelity(seconds: float = 10.0) -> dict:
    """How far the int8 sampler's distributions are from the float model's, on its own samples.

    The random weights are scaled by FIDELITY_WEIGHT_SCALE so that the distributions are as
    peaked as a trained prior's (under 1 nat of entropy; the unscaled ones are nearly uniform,
    which would hide any difference).
    """
    import torch.nn.functional as F

    from meshtalk.models.sampler import PriorSampler

    device = torch.device("cpu")
    encoder, prior = models("release", device)
    for parameter in prior.parameters():
        parameter.mul_(FIDELITY_WEIGHT_SCALE)
    codes = audio_codes(encoder, speech(seconds), device)
    sampler = PriorSampler(prior, seed=0, weights="int8", record_logits=True)
    sampled = sampler.sample(codes)
    used = torch.stack(sampler.recorded, dim=1).float().log_softmax(dim=-1)
    one_hot = F.one_hot(sampled, prior.config.classes).float()
    exact = prior(one_hot, codes).log_softmax(dim=-1)
    kl = (exact.exp() * (exact - used)).sum(dim=-1)
    return {
        "audio_seconds": seconds,
        "weight_scale": FIDELITY_WEIGHT_SCALE,
        "positions": int(kl.numel()),
        "mean_kl_float_to_int8_nats": kl.mean().item(),
        "max_kl_float_to_int8_nats": kl.max().item(),
        "max_abs_log_probability_difference": (exact - used).abs().max().item(),
        "argmax_agreement": (exact.argmax(-1) == used.argmax(-1)).float().mean().item(),
        "float_mean_entropy_nats": -(exact.exp() * exact).sum(-1).mean().item(),
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


def child(seconds: float, weights: str) -> None:
    """Sample `seconds` of audio with the release's sizes on the CPU (run in its own process)."""
    torch.set_num_threads(2)
    figures = linear_sampling("release", seconds, torch.device("cpu"), weights=weights)
    print(json.dumps(figures))


def long_sampling(minutes: float, weights: str) -> dict:
    script = [sys.executable, __file__, "--child-seconds", str(60 * minutes)]
    script += ["--child-weights", weights]
    process = subprocess.Popen(script, stdout=subprocess.PIPE, text=True, cwd=ROOT)
    peak, elapsed = peak_tree_rss(process)
    figures = json.loads(process.stdout.read().strip().splitlines()[-1])
    return {**figures, "peak_rss_mib": peak / 2**20, "process_seconds": elapsed}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--long-minutes", type=float, default=10.0)
    add_json_option(parser)
    parser.add_argument("--child-seconds", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--child-weights", default="float", help=argparse.SUPPRESS)
    parser.add_argument(
        "--speculative-only", action="store_true", help="only the speculative rows (10 s)"
    )
    args = parser.parse_args()
    check_json(parser, args)
    if args.child_seconds:
        child(args.child_seconds, args.child_weights)
        return
    if not SPEECH.is_file():
        raise SystemExit(f"error: {SPEECH}: the reference recording is missing")
    console = Console(width=150)
    if args.speculative_only:
        print_speculative_rows(console, speculative_rows(console, (10.0,)))
        return
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    linear = []
    for device in devices:
        runs = [
            ("release", 10.0, 1, "float"),
            ("release", 60.0, 1, "float"),
            ("paper", 10.0, 1, "float"),
            ("release", 10.0, 8, "float"),
        ]
        if device.type == "cpu":
            runs += [
                ("release", 10.0, 1, "int8"),
                ("release", 60.0, 1, "int8"),
                ("paper", 10.0, 1, "int8"),
            ]
        for preset, seconds, takes, weights in runs:
            console.log(
                f"linear sampler: {preset}, {seconds:g} s x {takes}, {weights} weights on {device}"
            )
            repeats = 3 if preset == "release" else 1
            linear.append(linear_sampling(preset, seconds, device, takes, weights, repeats))
    graphs = cuda_graph_rows(console) if torch.cuda.is_available() else None
    speculative = speculative_rows(console)
    console.log("int8 against float distributions (release sizes, 10 s)")
    fidelity = int8_fidelity()
    quadratic = []
    for seconds in (0.5, 1.0):
        console.log(f"re-run-everything sampler: {seconds:g} s of audio on the CPU")
        quadratic.append(quadratic_sampling(seconds, torch.device("cpu")))
    long = {}
    for weights in ("float", "int8"):
        console.log(
            f"{args.long_minutes:g} minutes of audio, {weights} weights, in a separate process "
            "(peak memory)"
        )
        long[weights] = long_sampling(args.long_minutes, weights)
    console.log("memory read bandwidth (a streaming sum over 1 GiB)")
    bandwidth, cache = memory_read_bandwidth(), last_level_cache_bytes()
    traffic = weight_traffic(linear, bandwidth, cache)

    table = Table(title="Sampling the prior from audio (random weights)")
    columns = ("sampler", "sizes", "weights", "device", "audio")
    for column in (*columns, "prepare s (once)", "encoder s", "sampler s", "total s"):
        table.add_column(column, justify="right")
    table.add_column("x real time (per take)", justify="right")
    for row in linear:
        takes = f" x {row['takes']} takes" if row["takes"] > 1 else ""
        table.add_row(
            "linear",
            f"{row['preset']} H={row['heads']}",
            row["weights"],
            row["device"],
            f"{row['audio_seconds']:g} s{takes}",
            f"{row['prepare_sampler_seconds_once_per_model']:.2f}",
            f"{row['audio_encoder_seconds']:.2f}",
            f"{row['sampler_seconds']:.2f}",
            f"{row['total_seconds']:.2f}",
            f"{row['real_time_factor_per_take']:.1f}",
        )
    for row in quadratic:
        table.add_row(
            "re-run everything",
            "release H=16",
            "float",
            "cpu",
            f"{row['audio_seconds']:g} s",
            "",
            "",
            "",
            f"{row['total_seconds']:.2f}",
            f"{row['real_time_factor']:.3f}",
        )
    console.print(table)
    cpu = {
        (r["preset"], r["audio_seconds"], r["weights"]): r
        for r in linear
        if r["device"] == "cpu" and r["takes"] == 1
    }
    ratios = {
        "linear_60s_over_10s_time": cpu[("release", 60.0, "float")]["total_seconds"]
        / cpu[("release", 10.0, "float")]["total_seconds"],
        "rerun_1s_over_half_s_time": quadratic[1]["total_seconds"] / quadratic[0]["total_seconds"],
        "linear_over_rerun_speedup_at_1s": (
            cpu[("release", 10.0, "float")]["real_time_factor"] / quadratic[1]["real_time_factor"]
        ),
        "paper_over_release_time_10s": cpu[("paper", 10.0, "float")]["total_seconds"]
        / cpu[("release", 10.0, "float")]["total_seconds"],
        "int8_over_float_speedup_release_10s": cpu[("release", 10.0, "float")]["total_seconds"]
        / cpu[("release", 10.0, "int8")]["total_seconds"],
        "int8_over_float_speedup_paper_10s": cpu[("paper", 10.0, "float")]["total_seconds"]
        / cpu[("paper", 10.0, "int8")]["total_seconds"],
    }
    console.print(
        f"60 s takes {ratios['linear_60s_over_10s_time']:.2f}x the time of 10 s (linear: 6); "
        f"re-running everything, 1 s takes {ratios['rerun_1s_over_half_s_time']:.2f}x the time "
        f"of 0.5 s (quadratic: about 4); the linear sampler is "
        f"{ratios['linear_over_rerun_speedup_at_1s']:.0f}x faster in real-time factor; H=64 "
        f"takes {ratios['paper_over_release_time_10s']:.1f}x the time of H=16; int8 weights are "
        f"{ratios['int8_over_float_speedup_release_10s']:.1f}x (H=16) and "
        f"{ratios['int8_over_float_speedup_paper_10s']:.1f}x (H=64) faster than float."
    )
    console.print(
        f"int8 against float at {fidelity['positions']} (t, h) of a 10 s sample: mean KL "
        f"{fidelity['mean_kl_float_to_int8_nats']:.2e} nats (max "
        f"{fidelity['max_kl_float_to_int8_nats']:.2e}; the float entropy is "
        f"{fidelity['float_mean_entropy_nats']:.2f}), same most likely class at "
        f"{100 * fidelity['argmax_agreement']:.1f}%"
    )
    for weights, row in long.items():
        console.print(
            f"{args.long_minutes:g} minutes of audio, {weights} weights: peak RSS "
            f"{row['peak_rss_mib']:.0f} MiB, {row['real_time_factor']:.1f}x real time "
            f"({row['sampler_ms_per_frame']:.2f} ms per frame in the sampler)"
        )
    table = Table(
        title=f"Weight traffic per step, one take of 10 s on the CPU (memory read bandwidth "
        f"{bandwidth / 1e9:.1f} GB/s; last-level cache "
        f"{'unknown' if cache is None else f'{cache / 2**20:.0f} MiB'})"
    )
    for column in (
        "sizes",
        "weights",
        "MB per step",
        "of them from memory (at least)",
        "GB/s read while sampling",
        "x real time",
        "bound by bandwidth",
        "target",
        "GB/s the target needs",
    ):
        table.add_column(column, justify="right")
    for row in traffic:
        bound = row["real_time_factor_bound_by_memory_bandwidth"]
        table.add_row(
            row["preset"],
            row["weights"],
            f"{row['weight_mb_read_per_step']:.1f}",
            f"{row['weight_mb_from_memory_per_step_at_least']:.1f}",
            f"{row['weight_gb_per_s_read_while_sampling']:.1f}",
            f"{row['real_time_factor_measured']:.1f}",
            "none (in cache)" if bound is None else f"{bound:.1f}",
            f"{row['target_real_time_factor']:g}",
            f"{row['memory_gb_per_s_needed_for_target']:.1f}",
        )
    console.print(table)
    if graphs is not None:
        print_cuda_graph_rows(console, graphs)
    print_speculative_rows(console, speculative)
    if args.json:
        figures = {
            "cuda_graph_sampler": graphs,
            "speculative_sampler_cpu": speculative,
            "linear_sampler": linear,
            "rerun_everything_sampler": quadratic,
            "int8_against_float": fidelity,
            "long_audio_cpu": long,
            "memory_read_bandwidth_gb_per_s": bandwidth / 1e9,
            "last_level_cache_mib": None if cache is None else cache / 2**20,
            "weight_traffic_cpu": traffic,
            "ratios": ratios,
            "torch_threads": torch.get_num_threads(),
        }
        write_json(args.json, json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    run_main(main)
