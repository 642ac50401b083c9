"""Validation figures and pictures of both stages, on fixed validation data."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
import torch.nn.functional as F

from meshtalk.models.latent import LatentAutoencoder, partner_inputs
from meshtalk.models.prior import ContextModel
from meshtalk.pipelines.data.store import PreparedStore
from meshtalk.pipelines.eval.metrics import (
    lip_vertex_errors,
    mean_vertex_error,
    perplexity,
    weighted_mean,
)
from meshtalk.pipelines.io.atomic import atomic_path

log = logging.getLogger(__name__)


def validation_split(store: PreparedStore) -> str:
    """'val', or 'train' (with a warning) for a store that has no validation split."""
    if store.split("val"):
        return "val"
    log.warning("no validation split in %s: validating on training segments", store.root)
    return "train"


# --- stage 1 -------------------------------------------------------------------------------------


@torch.no_grad()
def latent_figures(
    model: LatentAutoencoder,
    batches: list[dict[str, torch.Tensor]],
    masks: dict[str, torch.Tensor],
    device: torch.device,
) -> dict[str, float]:
    """Validation figures with argmax codes.

    reconstruction_mm: mean vertex error; lip_vertex_error_mm and lip_vertex_error_sq_mm2: LVE
    over the lip vertices (mouth mask > 0.5); audio_swap_mouth_over_upper: decoding with the
    partner's audio moves mouth vertices this many times more than upper-face ones (mask-weighted
    mean displacements); expression_swap_upper_over_mouth: the same for the partner's expression.
    """
    model.eval()
    lips = masks["mouth"] > 0.5
    sums = dict.fromkeys(
        ("mve", "lve", "lve_sq", "audio_mouth", "audio_upper", "expr_mouth", "expr_upper"), 0.0
    )
    for batch in batches:
        batch = {k: v.to(device) for k, v in batch.items()}
        template, target = batch["template"], batch["vertices"]
        expression, audio = model.codes(target, template, batch["mel"], batch["mel_starts"])
        other_expression, other_audio = model.codes(*partner_inputs(batch))
        own = model.decode(template, expression, audio, sample=False)
        audio_swapped = model.decode(template, expression, other_audio, sample=False)
        expr_swapped = model.decode(template, other_expression, audio, sample=False)
        weight = len(target) / sum(len(b["vertices"]) for b in batches)
        sums["mve"] += weight * mean_vertex_error(own, target)
        lve, lve_sq = lip_vertex_errors(own, target, lips)
        sums["lve"] += weight * lve
        sums["lve_sq"] += weight * lve_sq
        moved_by_audio = (audio_swapped - own).norm(dim=-1)
        moved_by_expr = (expr_swapped - own).norm(dim=-1)
        sums["audio_mouth"] += weight * weighted_mean(moved_by_audio, masks["mouth"])
        sums["audio_upper"] += weight * weighted_mean(moved_by_audio, masks["upper_face"])
        sums["expr_mouth"] += weight * weighted_mean(moved_by_expr, masks["mouth"])
        sums["expr_upper"] += weight * weighted_mean(moved_by_expr, masks["upper_face"])
    return {
        "reconstruction_mm": sums["mve"],
        "lip_vertex_error_mm": sums["lve"],
        "lip_vertex_error_sq_mm2": sums["lve_sq"],
        "audio_swap_mouth_mm": sums["audio_mouth"],
        "audio_swap_upper_mm": sums["audio_upper"],
        "audio_swap_mouth_over_upper": sums["audio_mouth"] / max(sums["audio_upper"], 1e-12),
        "expression_swap_mouth_mm": sums["expr_mouth"],
        "expression_swap_upper_mm": sums["expr_upper"],
        "expression_swap_upper_over_mouth": sums["expr_upper"] / max(sums["expr_mouth"], 1e-12),
    }


@torch.no_grad()
def save_error_map(
    model: LatentAutoencoder,
    batches: list[dict[str, torch.Tensor]],
    device: torch.device,
    path: Path,
) -> None:
    """Per-vertex validation error (mean over frames) on the first validation template."""
    from meshtalk.pipelines.io.pictures import save_vertex_maps

    model.eval()
    errors, count = None, 0
    for batch in batches:
        batch = {k: v.to(device) for k, v in batch.items()}
        expression, audio = model.codes(
            batch["vertices"], batch["template"], batch["mel"], batch["mel_starts"]
        )
        own = model.decode(batch["template"], expression, audio, sample=False)
        distance = (own - batch["vertices"]).norm(dim=-1).sum(dim=(0, 1))
        errors = distance if errors is None else errors + distance
        count += own.shape[0] * own.shape[1]
    template = batches[0]["template"][0].numpy()
    save_vertex_maps(path, template, {"validation error (mm)": (errors / count).cpu().numpy()})


# --- stage 2 -------------------------------------------------------------------------------------


@torch.no_grad()
def prior_figures(
    model: ContextModel, sequences: list[tuple[torch.Tensor, torch.Tensor]], device: torch.device
) -> dict[str, float]:
    """Teacher-forced figures over whole sequences of (codes (T, H), audio codes (T, D)).

    perplexity: exp of the mean cross-entropy per code (C for a uniform prior); cross_entropy:
    that mean in nats; accuracy: share of codes that are the most likely class.
    """
    model.eval()
    nll, correct, count = 0.0, 0.0, 0
    for codes, audio in sequences:
        codes, audio = codes.to(device)[None], audio.to(device)[None]
        one_hot = F.one_hot(codes, model.config.classes).to(audio.dtype)
        logits = model(one_hot, audio).float()
        nll += float(F.cross_entropy(logits.flatten(0, 2), codes.flatten(), reduction="sum"))
        correct += float((logits.argmax(dim=-1) == codes).sum())
        count += codes.numel()
    count = max(count, 1)
    return {
        "perplexity": perplexity(nll, count),
        "cross_entropy": nll / count,
        "accuracy": correct / count,
    }


@torch.no_grad()
def save_code_picture(
    model: ContextModel, sequence: tuple[torch.Tensor, torch.Tensor], device, path: Path
) -> None:
    """The encoded codes of a validation sequence beside codes sampled from its audio alone."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from meshtalk.models.sampler import PriorSampler

    model.eval()
    codes, audio = sequence
    sampled = PriorSampler(model, seed=0).sample(audio.to(device)[None])[0].cpu()
    figure, axes = plt.subplots(2, 1, figsize=(10, 4.5), sharex=True)
    for axis, (title, values) in zip(
        axes,
        [
            ("stage-1 codes (meshes + audio)", codes),
            ("sampled from the audio by the prior", sampled),
        ],
        strict=True,
    ):
        axis.imshow(
            values.T.numpy(),
            aspect="auto",
            interpolation="nearest",
            cmap="tab20",
            vmin=0,
            vmax=model.config.classes - 1,
        )
        axis.set_title(title, fontsize=9)
        axis.set_ylabel("head")
    axes[-1].set_xlabel("frame")
    figure.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        figure.savefig(tmp, dpi=90)
    plt.close(figure)
