"""The sampler's variants in benchmarks/sample.py: CUDA graphs and speculative sampling."""

from __future__ import annotations

import time

import torch
from _sample_setup import (
    FIDELITY_WEIGHT_SCALE,
    audio_codes,
    linear_sampling,
    models,
    speech,
)
from rich.console import Console
from rich.table import Table


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
