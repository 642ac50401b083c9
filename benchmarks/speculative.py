"""How fast speculative sampling of the prior can be on this machine's CPU, at best.

Speculative sampling (`SpeculativeSampler`) pays when the prior's pass over K proposed frames and
the draft's K frames cost less than the plain sampler's K frames, times the frames each pass
keeps. Side by side in one run, per sizes (release H=16, paper H=64; random weights: the time
does not depend on their values) and weights of the prior (float, int8), on the CPU:

1. the plain sampler (`PriorSampler`), ms per frame over 10 s of audio (30 fps);
2. the cost of a draft frame: the cheapest autoregressive draft this code base runs (the plain
   sampler's step on a prior of the same heads and classes with 1 channel per head), and for a
   float prior the int8 prior itself (the plain int8 sampler);
3. the cost of checking K frames (K = 8 ... 128): the prior's teacher-forced pass over them
   (`WindowModel.run`, as `SpeculativeSampler` runs it) and, lower still, its matrix products
   alone with the fastest kernel at hand (float32 GEMM for float, bfloat16 GEMM of the int8
   values for int8, AVX-512 BF16 here), the smaller of the two;
4. from these, the speedup over the plain sampler if every proposed code were accepted (the
   ceiling), and the per-code acceptance rate a needed for 3x: a pass keeps
   (1 - a^(K H)) / (1 - a) codes on average (accepted ones, then one drawn from the residual)
   and costs K draft frames plus one check of K frames; the best K is reported. "free draft":
   a draft that costs nothing (e.g. one that proposes all K frames in one call);
5. acceptance rates measured with real drafts: a draft distilled from a trained prior (the
   bundled default model's, 8 heads x 16 classes) on real speech (../shared/reference/speech)
   and on synthetic speech (eSpeak NG, as `meshtalk synth` makes it), with frames per pass of
   the prior; and the int8 prior as the draft of the float one (1 - total variation per code,
   at release sizes with weights scaled to a trained prior's peakedness, and on the trained
   default prior), and a draft that costs nothing: the previous frame's codes again.

    python benchmarks/speculative.py [--json results.json]
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F
from _measure import add_json_option, check_json, run_main, write_json
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
SPEECH = ROOT.parent / "shared" / "reference" / "speech" / "example_sentence.wav"
DEFAULT_RUN = ROOT / "pipelines" / "data" / "resources" / "default_model" / "run"
FPS = 30
TARGET_SPEEDUP = 3.0
BLOCKS = (8, 16, 32, 64, 128)
PEAKED_WEIGHT_SCALE = 5.0
"""Random weights times this give distributions as peaked as a trained prior's (under 1 nat)."""
SYNTHETIC_TEXT = (
    "Speech driven animation needs a face that moves with every syllable. "
    "The prior draws the codes of each frame from what it heard and what it drew before. "
    "A draft that guesses them well lets the prior check many frames at once."
)


def ms_per_frame(sampler, audio_code: torch.Tensor) -> float:
    """Median of 3 timed runs of the whole clip, after a warm-up on its first frames."""
    sampler.sample(audio_code[:, :8])
    timings = []
    for _ in range(3):
        sampler.reset(seed=0)
        started = time.perf_counter()
        sampler.sample(audio_code)
        timings.append(time.perf_counter() - started)
    return 1e3 * sorted(timings)[1] / audio_code.shape[1]


def check_ms(prior, int8: bool, block: int) -> dict:
    """ms to check `block` frames: the prior's pass, and its products alone (fastest kernel)."""
    from meshtalk.models.speculative import WindowModel

    config = prior.config
    window = WindowModel(prior, int8=int8)
    history = window.history(1)
    codes = torch.randint(0, config.classes, (1, block, config.heads))
    pre = window.audio(torch.randn(1, block, config.audio_dim))
    products = []
    dtype = torch.bfloat16 if int8 else torch.float32
    width = config.heads * config.channels_per_head
    for _ in config.dilations:
        products.append((torch.randn(block, 3 * width), torch.randn(3 * width, width)))
    products.append((torch.randn(block, width), torch.randn(width, config.heads * config.classes)))
    if int8:  # the int8 values (exact in bfloat16) and one scale per output column
        products = [
            (x.to(dtype), w.mul(40).round().clamp(-127, 127).to(dtype)) for x, w in products
        ]

    def run_pass() -> None:
        window.run(history, codes, pre)

    def run_products() -> None:
        for x, w in products:
            y = x @ w
            if int8:
                y.mul_(0.01)

    figures = {}
    for name, function in (("pass", run_pass), ("products", run_products)):
        function()
        timings = []
        for _ in range(3):
            started = time.perf_counter()
            function()
            timings.append(time.perf_counter() - started)
        figures[name] = 1e3 * min(timings)
    return figures


def kept_frames(acceptance: float, block: int, heads: int) -> float:
    """Frames a pass keeps on average when each code is accepted with `acceptance`."""
    codes = block * heads
    if acceptance >= 1:
        return float(block)
    return (1 - acceptance**codes) / (1 - acceptance) / heads


def speedup(acceptance: float, block: int, heads: int, plain: float, draft: float, check: float):
    return kept_frames(acceptance, block, heads) * plain / (block * draft + check)


def needed_acceptance(heads: int, plain: float, draft: float, checks: dict[int, float]) -> dict:
    """Per block K: the speedup at acceptance 1 and the least acceptance that reaches the target
    (None where even 1 does not); and the best K."""
    rows = {}
    for block, check in checks.items():
        ceiling = speedup(1.0, block, heads, plain, draft, check)
        needed = None
        if ceiling >= TARGET_SPEEDUP:
            low, high = 0.0, 1.0
            for _ in range(60):
                middle = (low + high) / 2
                if speedup(middle, block, heads, plain, draft, check) >= TARGET_SPEEDUP:
                    high = middle
                else:
                    low = middle
            needed = high
        rows[block] = {"ceiling_speedup_at_acceptance_1": ceiling, "acceptance_needed": needed}
    reachable = [k for k, row in rows.items() if row["acceptance_needed"] is not None]
    if reachable:
        best = min(reachable, key=lambda k: rows[k]["acceptance_needed"])
    else:
        best = max(rows, key=lambda k: rows[k]["ceiling_speedup_at_acceptance_1"])
    return {"best_block": best, **rows[best], "per_block": rows}


def ceiling_rows(console: Console) -> list[dict]:
    from meshtalk.models.prior import ContextModel, prior_preset
    from meshtalk.models.sampler import PriorSampler

    rows = []
    for preset in ("release", "paper"):
        torch.manual_seed(0)
        config = prior_preset(preset)
        prior = ContextModel(config).eval()
        audio = torch.randn(1, int(10 * FPS), config.audio_dim)
        cheapest = ContextModel(replace(config, channels_per_head=1)).eval()
        console.log(f"{preset}: the cheapest draft and the plain samplers")
        draft_ms = ms_per_frame(PriorSampler(cheapest), audio)
        plain = {w: ms_per_frame(PriorSampler(prior, weights=w), audio) for w in ("float", "int8")}
        for weights in ("float", "int8"):
            console.log(f"{preset}, {weights}: checking K frames")
            with torch.inference_mode():
                checks = {k: check_ms(prior, weights == "int8", k) for k in BLOCKS}
            best_check = {k: min(v.values()) for k, v in checks.items()}
            drafts = {"cheapest autoregressive (1 channel per head)": draft_ms, "free": 0.0}
            if weights == "float":
                drafts["the int8 prior"] = plain["int8"]
            row = {
                "preset": preset,
                "heads": config.heads,
                "weights": weights,
                "plain_ms_per_frame": plain[weights],
                "plain_real_time_factor": 1e3 / FPS / plain[weights],
                "check_ms_per_block": {
                    k: {"prior_pass": v["pass"], "products_alone": v["products"]}
                    for k, v in checks.items()
                },
                "drafts": {},
            }
            for name, cost in drafts.items():
                row["drafts"][name] = {
                    "draft_ms_per_frame": cost,
                    **needed_acceptance(config.heads, plain[weights], cost, best_check),
                }
            rows.append(row)
    return rows


def trained_acceptance(console: Console) -> list[dict]:
    """The bundled default model's prior: distilled drafts on real and synthetic speech."""
    from meshtalk.models.sampler import PriorSampler
    from meshtalk.models.sampler_weights import quantised
    from meshtalk.models.speculative import SpeculativeSampler, distil_draft
    from meshtalk.pipelines.checkpoint import load_run
    from meshtalk.pipelines.data.synth import espeak
    from meshtalk.pipelines.io.audio import load_audio, resample

    run = load_run(DEFAULT_RUN)
    prior, encoder = run.prior, run.latent.encoder.audio_encoder
    clips = {"real speech": load_audio(SPEECH)}
    if espeak.available():
        utterance = espeak.speak(SYNTHETIC_TEXT)
        clips["synthetic speech (eSpeak NG)"] = resample(utterance.samples, utterance.rate, 16000)
    prior_name = "bundled default (trained, H=8, C=16)"
    rows = []
    for name, samples in clips.items():
        codes = run.front_end.audio_codes(encoder, samples)
        frames = codes.shape[1]
        # Distilled on the other clip's audio when there is one (the draft did not see this one).
        others = [c for n, c in clips.items() if n != name] or [samples]
        train = run.front_end.audio_codes(encoder, others[0])
        console.log(f"default prior, {name}: distilling a draft, then sampling")
        torch.manual_seed(0)
        draft = distil_draft(prior, train.expand(4, -1, -1), channels_per_head=8, steps=300)
        long = codes.repeat(1, max(1, round(60 * FPS / frames)), 1)  # about 60 s
        plain_ms = ms_per_frame(PriorSampler(prior), long)
        for block in (4, 8, 16):
            sampler = SpeculativeSampler(prior, draft, block=block, seed=1)
            started = time.perf_counter()
            sampler.sample(long)
            elapsed = time.perf_counter() - started
            rows.append(
                acceptance_row(
                    prior_name, "distilled, 8 channels per head", name, long.shape[1] / FPS,
                    sampler.acceptance_rate, block=block,
                    frames_per_pass=sampler.stats["frames"] / sampler.stats["blocks"],
                    speedup=plain_ms * long.shape[1] / 1e3 / elapsed,
                )
            )  # fmt: skip
        with torch.inference_mode():
            sampled = PriorSampler(prior, seed=0).sample(codes)
        p = distributions(prior, sampled, codes)
        # A draft that costs nothing and proposes the previous frame's codes again: it is
        # accepted with the prior's probability of them.
        repeated = float(p[:, 1:].gather(-1, sampled[:, :-1, :, None]).mean())
        rows.append(
            acceptance_row(
                prior_name, "free: the previous frame's codes again", name, frames / FPS, repeated
            )
        )
        int8 = int8_acceptance(p, quantised(prior), sampled, codes)
        rows.append(acceptance_row(prior_name, "the int8 prior", name, frames / FPS, int8))
    return rows


def acceptance_row(
    prior: str,
    draft: str,
    audio: str,
    seconds: float,
    rate: float,
    *,
    block: int | None = None,
    frames_per_pass: float | None = None,
    speedup: float | None = None,
) -> dict:
    return {
        "prior": prior,
        "draft": draft,
        "audio": audio,
        "audio_seconds": seconds,
        "block": block,
        "acceptance_rate": rate,
        "frames_per_prior_pass": frames_per_pass,
        "speedup_measured": speedup,
    }


def distributions(prior, codes: torch.Tensor, audio: torch.Tensor) -> torch.Tensor:
    """(B, T, H, C) probabilities of a prior at every (t, h) of `codes`, teacher forced."""
    with torch.no_grad():
        one_hot = F.one_hot(codes, prior.config.classes).float()
        return torch.softmax(prior(one_hot, audio).float(), dim=-1)


def int8_acceptance(p: torch.Tensor, rounded, codes: torch.Tensor, audio: torch.Tensor) -> float:
    """Mean over (t, h) of 1 - TV(p, q): the acceptance rate of the int8 prior (`rounded`) as the
    draft of the float one, whose distributions at these codes are `p`."""
    q = distributions(rounded, codes, audio)
    return float(1 - 0.5 * (p - q).abs().sum(dim=-1).mean())


def random_int8_acceptance() -> dict:
    """The int8 prior as the draft of the float one at release sizes, random weights scaled to
    a trained prior's peakedness, on 5 s of its own samples."""
    from meshtalk.models.prior import ContextModel, prior_preset
    from meshtalk.models.sampler import PriorSampler
    from meshtalk.models.sampler_weights import quantised

    torch.manual_seed(0)
    prior = ContextModel(prior_preset("release")).eval()
    with torch.no_grad():
        for parameter in prior.parameters():
            parameter.mul_(PEAKED_WEIGHT_SCALE)
    audio = torch.randn(1, 5 * FPS, prior.config.audio_dim)
    with torch.inference_mode():
        codes = PriorSampler(prior, seed=0).sample(audio)
    rate = int8_acceptance(distributions(prior, codes, audio), quantised(prior), codes, audio)
    return acceptance_row(
        f"release sizes, random weights x {PEAKED_WEIGHT_SCALE:g}",
        "the int8 prior",
        "random audio codes",
        5.0,
        rate,
    )


def print_tables(console: Console, ceilings: list[dict], measured: list[dict]) -> None:
    table = Table(
        title=f"Speculative sampling at best, one take on this CPU (target {TARGET_SPEEDUP:g}x)"
    )
    for column in (
        "sizes",
        "prior",
        "plain ms/frame",
        "draft",
        "draft ms/frame",
        "best K",
        "check ms (K frames)",
        "speedup if all accepted",
        f"acceptance needed for {TARGET_SPEEDUP:g}x",
    ):
        table.add_column(column, justify="right")
    for row in ceilings:
        for name, draft in row["drafts"].items():
            check = row["check_ms_per_block"][draft["best_block"]]
            needed = draft["acceptance_needed"]
            table.add_row(
                f"{row['preset']} H={row['heads']}",
                row["weights"],
                f"{row['plain_ms_per_frame']:.2f}",
                name,
                f"{draft['draft_ms_per_frame']:.3f}",
                str(draft["best_block"]),
                f"{min(check.values()):.1f}",
                f"{draft['ceiling_speedup_at_acceptance_1']:.2f}",
                "out of reach" if needed is None else f"{needed:.4f}",
            )
    console.print(table)
    table = Table(title="Acceptance rates measured (per code)")
    for column in ("prior", "draft", "audio", "K", "acceptance", "frames per pass", "speedup"):
        table.add_column(column, justify="right")
    for row in measured:
        table.add_row(
            row["prior"],
            row["draft"],
            f"{row['audio']} ({row['audio_seconds']:.0f} s)",
            "" if row["block"] is None else str(row["block"]),
            f"{row['acceptance_rate']:.4f}",
            "" if row["frames_per_prior_pass"] is None else f"{row['frames_per_prior_pass']:.2f}",
            "" if row["speedup_measured"] is None else f"{row['speedup_measured']:.2f}",
        )
    console.print(table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_json_option(parser)
    args = parser.parse_args()
    check_json(parser, args)
    for needed in (SPEECH, DEFAULT_RUN):
        if not needed.exists():
            raise SystemExit(f"error: {needed}: missing")
    console = Console(width=160)
    ceilings = ceiling_rows(console)
    measured = trained_acceptance(console)
    console.log("the int8 prior as the draft at release sizes")
    measured.append(random_int8_acceptance())
    print_tables(console, ceilings, measured)
    if args.json:
        figures = {
            "target_speedup": TARGET_SPEEDUP,
            "ceilings_cpu": ceilings,
            "acceptance_measured": measured,
            "torch_threads": torch.get_num_threads(),
        }
        write_json(args.json, json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    run_main(main)
