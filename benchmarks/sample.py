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

import numpy as np
import torch
from _measure import peak_tree_rss
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
SPEECH = ROOT.parent / "shared" / "reference" / "speech" / "example_sentence.wav"
FPS = 30
FIDELITY_WEIGHT_SCALE = 5.0


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


def cuda_graph_rows(console: Console) -> dict:
    """On CUDA, TF32 off: one frame's step replayed as a CUDA graph against eager steps (release
    10 s and 60 s, paper 10 s, 8 takes of 10 s), and the graph sampler's exactness: the logits
    used at every (t, h) against the full forward pass on the sampled codes."""
    import torch.nn.functional as F

    from meshtalk.models.sampler import PriorSampler

    device = torch.device("cuda")
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    rows = []
    for preset, seconds, takes in (
        ("release", 10.0, 1), ("release", 60.0, 1), ("paper", 10.0, 1), ("release", 10.0, 8),
    ):  # fmt: skip
        for graph in (False, True):
            console.log(f"CUDA sampler, graph={graph}: {preset}, {seconds:g} s x {takes}")
            row = linear_sampling(preset, seconds, device, takes, "float", 3, graph=graph)
            rows.append({**row, "cuda_graph": graph})
    encoder, prior = models("release", device)
    codes = audio_codes(encoder, speech(10.0), device)
    eager = PriorSampler(prior, seed=0, graph=False, record_logits=True)
    sampled = eager.sample(codes)
    graphed = PriorSampler(prior, seed=0, graph=True).sample(codes)
    full = prior(F.one_hot(sampled, prior.config.classes).float(), codes)
    used = torch.stack(eager.recorded, dim=1)
    return {
        "rows": rows,
        "graph_codes_equal_eager": bool(torch.equal(graphed, sampled)),
        "max_abs_logit_difference_tf32_off": float((used - full).abs().max()),
    }


def print_cuda_graph_rows(console: Console, figures: dict) -> None:
    table = Table(title="Sampler on CUDA: CUDA graph per frame against eager steps (TF32 off)")
    for column in ("sizes", "audio", "step", "ms per frame", "x real time (per take)", "target"):
        table.add_column(column, justify="right")
    for row in figures["rows"]:
        takes = f" x {row['takes']} takes" if row["takes"] > 1 else ""
        table.add_row(
            f"{row['preset']} H={row['heads']}",
            f"{row['audio_seconds']:g} s{takes}",
            "CUDA graph" if row["cuda_graph"] else "eager",
            f"{row['sampler_ms_per_frame']:.3f}",
            f"{row['real_time_factor_per_take']:.1f}",
            "500" if row["preset"] == "release" else "150",
        )
    console.print(table)
    console.print(
        f"graph codes equal eager codes: {figures['graph_codes_equal_eager']}; logits used "
        "against the full forward pass (release, 10 s, TF32 off): max difference "
        f"{figures['max_abs_logit_difference_tf32_off']:.2e}"
    )


SPECULATIVE_BLOCKS = (2, 8)
"""K of the speculative rows."""


def speculative_rows(console: Console, seconds_list=(10.0, 60.0)) -> list[dict]:
    """Plain against speculative sampling (`SpeculativeSampler`), one take on the CPU, same run.

    Random weights give nearly uniform distributions, which any nearly uniform draft matches (a
    meaningless acceptance); so the prior's weights are scaled by FIDELITY_WEIGHT_SCALE (as
    peaked as a trained prior's, under 1 nat) and the draft (channels_per_head 8) is distilled
    from that prior (`distil_draft`) on its samples for 10 s of the reference speech. Per row:
    K, the acceptance rate (accepted over judged draft codes), frames per pass of the prior and
    weight bytes read per frame, beside the plain sampler's.
    """
    from meshtalk.models.sampler import PriorSampler
    from meshtalk.models.speculative import SpeculativeSampler, distil_draft

    device, rows = torch.device("cpu"), []
    for preset in ("release", "paper"):
        encoder, prior = models(preset, device)
        with torch.no_grad():
            for parameter in prior.parameters():
                parameter.mul_(FIDELITY_WEIGHT_SCALE)
        train = audio_codes(encoder, speech(10.0), device)[:, :270].reshape(3, 90, -1)
        console.log(f"distilling a draft of the {preset} prior")
        started = time.perf_counter()
        draft = distil_draft(prior, train, steps=150)
        distil_seconds = time.perf_counter() - started
        for seconds in seconds_list:
            codes = audio_codes(encoder, speech(seconds), device)
            for weights in ("float", "int8"):
                plain = PriorSampler(prior, weights=weights)
                plain.sample(codes[:, :10])
                plain.reset(seed=0)
                started = time.perf_counter()
                plain.sample(codes)
                plain_seconds = time.perf_counter() - started
                for block in SPECULATIVE_BLOCKS:
                    console.log(f"speculative: {preset}, {seconds:g} s, {weights}, K={block}")
                    sampler = SpeculativeSampler(prior, draft, block=block, weights=weights)
                    started = time.perf_counter()
                    sampler.sample(codes)
                    elapsed = time.perf_counter() - started
                    rows.append(
                        {
                            "preset": preset,
                            "weights": weights,
                            "audio_seconds": seconds,
                            "block": block,
                            "draft_distil_seconds": distil_seconds,
                            "plain_real_time_factor": seconds / plain_seconds,
                            "plain_weight_mb_per_frame": plain.weight_bytes_per_step / 1e6,
                            "speculative_real_time_factor": seconds / elapsed,
                            "speedup": plain_seconds / elapsed,
                            "acceptance_rate": sampler.acceptance_rate,
                            "frames_per_prior_pass": sampler.stats["frames"]
                            / sampler.stats["blocks"],
                            "speculative_weight_mb_per_frame": sampler.weight_bytes_per_frame / 1e6,
                        }
                    )
    return rows


def print_speculative_rows(console: Console, rows: list[dict]) -> None:
    table = Table(title="Plain against speculative sampling, one take on the CPU (sampler only)")
    for column in (
        "sizes", "weights", "audio", "K", "acceptance", "frames per pass", "MB per frame",
        "plain MB per frame", "x real time", "plain x real time", "speedup (target 3)",
    ):  # fmt: skip
        table.add_column(column, justify="right")
    for row in rows:
        table.add_row(
            row["preset"],
            row["weights"],
            f"{row['audio_seconds']:g} s",
            str(row["block"]),
            f"{row['acceptance_rate']:.3f}",
            f"{row['frames_per_prior_pass']:.2f}",
            f"{row['speculative_weight_mb_per_frame']:.1f}",
            f"{row['plain_weight_mb_per_frame']:.1f}",
            f"{row['speculative_real_time_factor']:.2f}",
            f"{row['plain_real_time_factor']:.1f}",
            f"{row['speedup']:.3f}",
        )
    console.print(table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--long-minutes", type=float, default=10.0)
    parser.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    parser.add_argument("--child-seconds", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--child-weights", default="float", help=argparse.SUPPRESS)
    parser.add_argument(
        "--speculative-only", action="store_true", help="only the speculative rows (10 s)"
    )
    args = parser.parse_args()
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
        args.json.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
