"""Metrics of the field (SPEC section 8), on (..., T, V, 3) meshes in millimetres.

Every function takes torch tensors (numpy arrays are converted) and documents its formula; the
names say what they measure. Notation: p[t, v] and g[t, v] are the predicted and the data's
position of vertex v in frame t (mm), L the lip vertices (mouth mask > 0.5), U the upper-face
weights (the `upper_face` mask), T frames.
"""

from __future__ import annotations

import math
import sys

import numpy as np
import torch

LIP_THRESHOLD = 0.5
"""Lip vertices are those whose mouth-mask weight exceeds this."""
BLINK_CLOSED = 0.5
"""A blink starts when the eyelid gap closes by more than this share of its open width ..."""
BLINK_REOPENED = 0.25
"""... and the next one can only start once the gap has reopened to within this share."""
LIP_VARIANTS = ("l2", "squared", "centred")
"""The three ways the field computes lip vertex error (see `lip_vertex_error`)."""


def _tensor(values) -> torch.Tensor:
    tensor = torch.as_tensor(values)
    return tensor if tensor.is_floating_point() else tensor.float()


def vertex_distances(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(..., V, 3) -> (..., V) L2 distances."""
    return (_tensor(prediction) - _tensor(target)).norm(dim=-1)


def mean_vertex_error(prediction: torch.Tensor, target: torch.Tensor) -> float:
    """MVE: mean L2 distance over all vertices and frames, mean_t,v |p[t,v] - g[t,v]| (mm)."""
    return float(vertex_distances(prediction, target).mean())


def lip_vertices(mouth: torch.Tensor | np.ndarray, threshold: float = LIP_THRESHOLD) -> np.ndarray:
    """(V,) mouth-mask weights -> sorted int64 indices of the lip vertices (weight > threshold)."""
    return np.flatnonzero(np.asarray(mouth) > threshold).astype(np.int64)


def lip_vertex_error_per_frame(
    prediction: torch.Tensor, target: torch.Tensor, lips, variant: str = "l2"
) -> torch.Tensor:
    """(..., T, V, 3) meshes -> (..., T) per-frame lip error (see `lip_vertex_error`)."""
    if variant not in LIP_VARIANTS:
        raise ValueError(f"variant must be one of {', '.join(LIP_VARIANTS)}, got {variant!r}")
    lips = torch.as_tensor(lips)
    if lips.dtype == torch.bool:
        lips = torch.nonzero(lips).flatten()
    if lips.numel() == 0:
        raise ValueError("no lip vertices")
    p, g = _tensor(prediction)[..., lips, :], _tensor(target)[..., lips, :]
    if variant == "centred":
        p = p - p.mean(dim=-2, keepdim=True)
        g = g - g.mean(dim=-2, keepdim=True)
    squared = (p - g).pow(2).sum(dim=-1).amax(dim=-1)
    return squared if variant == "squared" else squared.sqrt()


def lip_vertex_error(prediction: torch.Tensor, target: torch.Tensor, lips, variant: str = "l2"):
    """Lip vertex error: per frame the largest lip-vertex error, averaged over frames.

    variant 'l2' (mm, the MeshTalk paper): mean_t max_{v in L} |p[t,v] - g[t,v]|.
    variant 'squared' (mm^2, FaceFormer/CodeTalker scripts and torchmetrics'
    `lip_vertex_error`): mean_t max_{v in L} |p[t,v] - g[t,v]|^2.
    variant 'centred' (mm, the MeshTalk authors' snippet, facebookresearch/meshtalk#32): each
    frame's lip-region mean subtracted from both first, mean_t max_{v in L}
    |(p[t,v] - mean_{u in L} p[t,u]) - (g[t,v] - mean_{u in L} g[t,u])|; blind to a lip region
    that is shifted as a whole.

    Args:
        prediction, target: (..., T, V, 3).
        lips: lip vertex indices (or a (V,) bool mask).
    """
    return float(lip_vertex_error_per_frame(prediction, target, lips, variant).mean())


def lip_vertex_errors(
    prediction: torch.Tensor, target: torch.Tensor, lips: torch.Tensor
) -> tuple[float, float]:
    """LVE: per frame the largest lip-vertex error, averaged over frames.

    Returns:
        (L2 distance as in the MeshTalk paper, squared distance as in later work's scripts).
    """
    worst = lip_vertex_error_per_frame(prediction, target, lips, "l2")
    return float(worst.mean()), float(worst.pow(2).mean())


def weighted_mean(values: torch.Tensor, weights: torch.Tensor) -> float:
    """Mean of (..., V) values over everything, each vertex weighted."""
    values, weights = _tensor(values), _tensor(weights)
    return float((values * weights).sum() / (weights.sum() * values[..., 0].numel()))


def motion_std(vertices: torch.Tensor) -> torch.Tensor:
    """(..., T, V, 3) -> (..., V) standard deviation of each vertex's position over time (mm):
    s[v] = sqrt(mean_t |x[t,v] - mean_t x[t,v]|^2) (the paper's Figure 6 maps this)."""
    x = _tensor(vertices).double()  # a still vertex gets exactly 0
    return (x - x.mean(dim=-3, keepdim=True)).pow(2).sum(dim=-1).mean(dim=-2).sqrt().float()


def upper_face_dynamics_deviation(
    prediction: torch.Tensor, target: torch.Tensor, upper_face: torch.Tensor
) -> tuple[float, float]:
    """How much more (or less) the upper face moves in the prediction than in the data.

    With s the per-vertex `motion_std` over the frames: signed = sum_v U[v] (s_p[v] - s_g[v]) /
    sum_v U[v] (mm; negative: the prediction's upper face is stiller than the data's) and
    absolute = the same of |s_p[v] - s_g[v]|. (CodeTalker's FDD differs: it takes the std over
    time of the squared displacement from the template, data minus prediction, in mm^2.)

    Returns:
        (signed, absolute) in mm.
    """
    difference = motion_std(prediction) - motion_std(target)
    return weighted_mean(difference, upper_face), weighted_mean(difference.abs(), upper_face)


# --- blinks -------------------------------------------------------------------------------------


def eyelid_pairs(template: np.ndarray, eyelids: np.ndarray, mouth: np.ndarray) -> np.ndarray:
    """Pairs (upper lid vertex, lower lid vertex) facing each other across each eye.

    The eyelid vertices (eyelids mask > 0.5: the upper and lower lid margins of both eyes, as the
    landmark files give them) are split into the two eyes along their main axis. In each eye,
    the first principal axis runs along the eye and the second across its opening, oriented away
    from the mouth (lip centroid): vertices on its positive side are the upper lid, the others
    the lower lid, and each upper-lid vertex is paired with the lower-lid vertex nearest to it
    along the eye.

    Args:
        template: (V, 3) the face with open eyes.
        eyelids, mouth: (V,) mask weights.

    Returns:
        (P, 2) int64 vertex indices.

    Raises:
        ValueError: when the masks mark fewer than 4 eyelid vertices or no lips, or an eye has
            no upper or lower lid vertex.
    """
    v = np.asarray(template, dtype=np.float64)
    lids, lips = np.flatnonzero(np.asarray(eyelids) > 0.5), lip_vertices(mouth)
    if len(lids) < 4 or len(lips) == 0:
        raise ValueError("the masks mark fewer than 4 eyelid vertices or no lips")
    points = v[lids]
    lateral = np.linalg.svd(points - points.mean(0), full_matrices=False)[2][0]
    side = (points - points.mean(0)) @ lateral > 0
    pairs = []
    for eye in (lids[~side], lids[side]):
        centred = v[eye] - v[eye].mean(0)
        if len(eye) < 2:
            raise ValueError("an eye has fewer than 2 eyelid vertices")
        along, across = np.linalg.svd(centred, full_matrices=False)[2][:2]
        if across @ (v[eye].mean(0) - v[lips].mean(0)) < 0:
            across = -across
        height, position = centred @ across, centred @ along
        upper, lower = np.flatnonzero(height > 0), np.flatnonzero(height <= 0)
        if len(upper) == 0 or len(lower) == 0:
            raise ValueError("an eye has no upper or no lower eyelid vertex")
        nearest = np.abs(position[upper][:, None] - position[lower][None]).argmin(axis=1)
        pairs += [(eye[u], eye[lower[j]]) for u, j in zip(upper, nearest, strict=True)]
    return np.asarray(pairs, dtype=np.int64)


def eyelid_gap(vertices: torch.Tensor | np.ndarray, pairs: np.ndarray) -> np.ndarray:
    """(..., V, 3) -> (...) the eyelid gap: mean over `pairs` of |x[upper] - x[lower]| (mm)."""
    x = np.asarray(vertices, dtype=np.float64)
    return np.linalg.norm(x[..., pairs[:, 0], :] - x[..., pairs[:, 1], :], axis=-1).mean(-1)


def blink_onsets(
    gap: np.ndarray,
    open_gap: float,
    closed: float = BLINK_CLOSED,
    reopened: float = BLINK_REOPENED,
) -> np.ndarray:
    """Frames where a blink starts, from the eyelid gap of each frame.

    The closure of frame t is c[t] = 1 - gap[t] / open_gap. A blink starts at the first frame whose
    closure exceeds `closed`; the next blink can only start after the closure has fallen below
    `reopened` (hysteresis, so a noisy closed eye counts once).

    Args:
        gap: (T,) eyelid gap of each frame (`eyelid_gap`).
        open_gap: the gap of the open eye (the neutral template's).

    Returns:
        (B,) int64 frame indices.
    """
    closure = 1.0 - np.asarray(gap, dtype=np.float64) / max(float(open_gap), 1e-9)
    onsets, armed = [], True
    for frame, value in enumerate(closure):
        if armed and value > closed:
            onsets.append(frame)
            armed = False
        elif not armed and value < reopened:
            armed = True
    return np.asarray(onsets, dtype=np.int64)


def blinks_per_minute(blinks: int, seconds: float) -> float:
    """Blink count over a duration, per minute (0 for no time)."""
    return 60.0 * blinks / seconds if seconds > 0 else 0.0


MAX_EXPONENT = math.log(sys.float_info.max)
"""The largest x whose exp(x) is a finite float."""


def perplexity(negative_log_likelihood: float, count: int) -> float:
    """exp(sum of -log p over `count` codes / count): the prior's perplexity of the true codes
    (C, the number of classes, for a uniform prior; 1 for a certain one); infinite for a mean
    past what a float holds (a diverged prior), not an overflow error."""
    mean = negative_log_likelihood / max(count, 1)
    return math.exp(mean) if mean < MAX_EXPONENT else math.inf
