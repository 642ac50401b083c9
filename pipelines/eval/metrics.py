"""Metrics of the field (SPEC section 8), on (..., T, V, 3) meshes in millimetres."""

from __future__ import annotations

import torch


def vertex_distances(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(..., V, 3) -> (..., V) L2 distances."""
    return (prediction - target).norm(dim=-1)


def mean_vertex_error(prediction: torch.Tensor, target: torch.Tensor) -> float:
    """MVE: mean L2 distance over all vertices and frames."""
    return float(vertex_distances(prediction, target).mean())


def lip_vertex_errors(
    prediction: torch.Tensor, target: torch.Tensor, lips: torch.Tensor
) -> tuple[float, float]:
    """LVE: per frame the largest lip-vertex error, averaged over frames.

    Returns:
        (L2 distance as in the MeshTalk paper, squared distance as in later work's scripts).
    """
    worst = vertex_distances(prediction[..., lips, :], target[..., lips, :]).amax(dim=-1)
    return float(worst.mean()), float(worst.pow(2).mean())


def weighted_mean(values: torch.Tensor, weights: torch.Tensor) -> float:
    """Mean of (..., V) values over everything, each vertex weighted."""
    return float((values * weights).sum() / (weights.sum() * values[..., 0].numel()))
