"""Scores of one animated segment against the data, and their sums over many segments.

`score_animation` measures one segment (any predictor: the prior's samples, a reconstruction, a
baseline, another model); `summarise` combines segments, weighting each by its frames. The keys
and formulas are those of `METRIC_DESCRIPTIONS`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from meshtalk.pipelines.eval import metrics

METRIC_DESCRIPTIONS = {
    "lip_vertex_error_mm": "mean over frames of the largest L2 distance over the lip vertices "
    "(mm; the MeshTalk paper)",
    "lip_vertex_error_squared_mm2": "mean over frames of the largest squared L2 distance over the "
    "lip vertices (mm^2; FaceFormer/CodeTalker scripts, torchmetrics lip_vertex_error)",
    "lip_vertex_error_centred_mm": "as lip_vertex_error_mm after subtracting each frame's "
    "lip-region mean from both meshes (mm; the MeshTalk authors' snippet)",
    "mean_vertex_error_mm": "mean L2 distance over all vertices and frames (mm)",
    "upper_face_motion_std_mm": "upper-face-mask weighted mean of each vertex's standard deviation "
    "of position over time (mm; the paper's Figure 6 maps it per vertex)",
    "upper_face_dynamics_deviation_mm": "upper-face-mask weighted mean of (motion std of the "
    "prediction - motion std of the data) per vertex (mm; negative: a stiller upper face)",
    "upper_face_dynamics_deviation_abs_mm": "the same of the absolute difference (mm)",
    "blinks_per_minute": "eyelid closures past 50% of the open gap, per minute (the gap is the "
    "mean distance of upper/lower eyelid vertex pairs)",
}
"""Each figure `score_animation` gives, and how it is computed."""
COMPARED = tuple(k for k in METRIC_DESCRIPTIONS if k not in ("upper_face_motion_std_mm",))
"""Figures that compare a prediction with the data (the rest describe one animation alone)."""


@dataclass
class Regions:
    """What the metrics need of a topology, made once per store."""

    lips: np.ndarray
    """(L,) int64 lip vertex indices (mouth mask > 0.5)."""
    upper_face: np.ndarray
    """(V,) float32 upper-face weights."""
    eyelid_pairs: np.ndarray
    """(P, 2) int64 (upper lid, lower lid) vertex pairs (`metrics.eyelid_pairs`)."""

    @classmethod
    def from_masks(cls, masks: dict[str, np.ndarray], template: np.ndarray) -> Regions:
        """Regions of a topology from its masks ('mouth', 'upper_face', 'eyelids') and a neutral
        face. Raises ValueError naming what is missing."""
        missing = [name for name in ("mouth", "upper_face", "eyelids") if name not in masks]
        if missing:
            raise ValueError(f"no {', '.join(missing)} mask")
        lips = metrics.lip_vertices(masks["mouth"])
        if len(lips) == 0:
            raise ValueError(f"the mouth mask has no vertex above {metrics.LIP_THRESHOLD}")
        pairs = metrics.eyelid_pairs(template, masks["eyelids"], masks["mouth"])
        return cls(lips, np.asarray(masks["upper_face"], dtype=np.float32), pairs)


@dataclass
class Scores:
    """One animation of a segment (or the mean of several takes), scored."""

    frames: int
    """T, frames scored."""
    seconds: float
    """Length of the segment."""
    figures: dict[str, float]
    """Key of `METRIC_DESCRIPTIONS` -> value (only `upper_face_motion_std_mm` and
    `blinks_per_minute` for the data itself)."""
    blinks: float
    """Blinks counted (mean over takes)."""
    vertex_error: np.ndarray | None = None
    """(V,) mean L2 error of each vertex over frames (mm); None for the data itself."""
    motion_std: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    """(V,) per-vertex motion standard deviation (mm)."""


def score_animation(
    prediction: np.ndarray | torch.Tensor | None,
    target: np.ndarray | torch.Tensor,
    template: np.ndarray,
    regions: Regions,
    seconds: float,
) -> Scores:
    """Score one segment's animation against the data.

    Args:
        prediction: (T, V, 3) or (N, T, V, 3) for N takes (figures are the mean over takes), in
            mm; None to describe the data itself (motion std and blinks only).
        target: (T, V, 3) the data's meshes.
        template: (V, 3) the identity's neutral face (its eyelid gap is the open eye's).
        regions: `Regions` of the topology.
        seconds: length of the segment (for blinks per minute).
    """
    target = torch.from_numpy(np.array(target, dtype=np.float32))
    open_gap = float(metrics.eyelid_gap(template, regions.eyelid_pairs))
    data_std = metrics.motion_std(target)
    if prediction is None:
        blinks = len(
            metrics.blink_onsets(metrics.eyelid_gap(target, regions.eyelid_pairs), open_gap)
        )
        return Scores(
            frames=len(target),
            seconds=seconds,
            figures={
                "upper_face_motion_std_mm": metrics.weighted_mean(data_std, regions.upper_face),
                "blinks_per_minute": metrics.blinks_per_minute(blinks, seconds),
            },
            blinks=float(blinks),
            motion_std=data_std.numpy(),
        )
    prediction = torch.from_numpy(np.array(prediction, dtype=np.float32))
    takes = prediction if prediction.dim() == 4 else prediction[None]
    if takes.shape[1:] != target.shape:
        raise ValueError(
            f"prediction {tuple(takes.shape[1:])} and data {tuple(target.shape)} differ"
        )
    per_take = [_score_take(take, target, data_std, open_gap, regions, seconds) for take in takes]
    figures = {key: float(np.mean([f[key] for f, _ in per_take])) for key in per_take[0][0]}
    blinks = float(np.mean([b for _, b in per_take]))
    return Scores(
        frames=len(target),
        seconds=seconds,
        figures=figures,
        blinks=blinks,
        vertex_error=metrics.vertex_distances(takes, target[None]).mean(dim=(0, 1)).numpy(),
        motion_std=metrics.motion_std(takes).mean(dim=0).numpy(),
    )


def _score_take(take, target, data_std, open_gap, regions, seconds) -> tuple[dict, int]:
    lips = regions.lips
    take_std = metrics.motion_std(take)
    difference = take_std - data_std
    blinks = len(metrics.blink_onsets(metrics.eyelid_gap(take, regions.eyelid_pairs), open_gap))
    figures = {
        "lip_vertex_error_mm": metrics.lip_vertex_error(take, target, lips, "l2"),
        "lip_vertex_error_squared_mm2": metrics.lip_vertex_error(take, target, lips, "squared"),
        "lip_vertex_error_centred_mm": metrics.lip_vertex_error(take, target, lips, "centred"),
        "mean_vertex_error_mm": metrics.mean_vertex_error(take, target),
        "upper_face_motion_std_mm": metrics.weighted_mean(take_std, regions.upper_face),
        "upper_face_dynamics_deviation_mm": metrics.weighted_mean(difference, regions.upper_face),
        "upper_face_dynamics_deviation_abs_mm": metrics.weighted_mean(
            difference.abs(), regions.upper_face
        ),
        "blinks_per_minute": metrics.blinks_per_minute(blinks, seconds),
    }
    return figures, blinks


def summarise(scores: list[Scores]) -> dict[str, float]:
    """Figures over many segments: each a mean weighted by the segments' frames, except
    blinks_per_minute (all blinks over all minutes)."""
    if not scores:
        return {}
    frames = np.array([s.frames for s in scores], dtype=np.float64)
    summary = {
        key: float(np.average([s.figures[key] for s in scores], weights=frames))
        for key in scores[0].figures
    }
    if "blinks_per_minute" in summary:
        seconds = sum(s.seconds for s in scores)
        summary["blinks_per_minute"] = metrics.blinks_per_minute(
            sum(s.blinks for s in scores), seconds
        )
    return summary


def per_vertex(scores: list[Scores], attribute: str) -> np.ndarray | None:
    """Frame-weighted mean over segments of a (V,) attribute ('vertex_error', 'motion_std')."""
    values = [getattr(s, attribute) for s in scores]
    if not values or any(v is None for v in values):
        return None
    return np.average(np.stack(values), axis=0, weights=[s.frames for s in scores])
