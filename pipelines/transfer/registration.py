"""Registering the model's template onto a mesh of another topology (a user's own head).

Two steps: a similarity transform (rotation, uniform scale, translation) from landmark pairs
(`procrustes`) or found automatically, then a non-rigid fit of the template's surface to the
target's (Amberg et al. 2007). The result is the template's vertices lying on the target, from
which `binding.bind` locates every target vertex.

The automatic alignment looks for the template's face (its front-facing half) on the target,
whatever the target is: a face-only scan with holes, a head, a bust with shoulders, in any unit
and any axis-aligned pose. Every axis-aligned rotation is tried at several face sizes relative
to the target and at several places; the placement kept is the one whose face lies closest to the
target relative to its own size and covers the most of it (a shrunken template on a cheek gains
nothing), and a target on which no placement fits well enough (a cube, a sphere, a hand) is
refused in one line that suggests `--landmarks`.

Every closest point comes from open3d's BVH (`closest.SurfaceQuery`), so memory stays O(V + F)
for any target size.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from meshtalk.pipelines.errors import MeshtalkError
from meshtalk.pipelines.io.mesh import Mesh
from meshtalk.pipelines.transfer.alignment import (
    REACH,
    TARGET_SAMPLES,
    TEMPLATE_FRONT,
    TEMPLATE_UP,
    TOLERANCE,
    Candidate,
    TargetSurface,
    _evaluate,
    _rms_radius,
    automatic_similarity,
    face_vertices,
    similarity_scale,
)
from meshtalk.pipelines.transfer.closest import SurfaceQuery
from meshtalk.pipelines.transfer.inputs import (
    MIN_LANDMARKS,
)
from meshtalk.pipelines.transfer.nonrigid import (
    non_rigid_fit,
)

log = logging.getLogger(__name__)

MAX_COST = 0.09
"""No face is found when the best placement's cost is above this: measured, faces of the
template's kind cost at most 0.08 (another identity's proportions, re-meshed), a cube, a sphere
and a hand-like blob at least 0.10."""


@dataclass
class Registration:
    """The template fitted onto a target, and what a person needs to judge the fit.

    Distances are in the target's units; the face is the template's front-facing half
    (`face_vertices`).

    Attributes:
        similarity: (4, 4) template coordinates -> target coordinates (rotation * scale, shift).
        scale: the similarity's uniform scale (target size / template size).
        vertices: (Vs, 3) the template's vertices after the non-rigid fit, in target coordinates.
        landmarks: whether the similarity came from landmarks (else found automatically).
        face_size: the placed face's RMS radius.
        tolerance: distance within which a point is on the target (`TOLERANCE` * face_size).
        aligned_coverage, aligned_distance: after the similarity alone, the fraction of the
            face within tolerance of the target, and the mean distance of its closest `TRIM`.
        coverage: after the non-rigid fit, the fraction of the face within tolerance.
        distance_mean, distance_p95, distance_max: the fitted face's distances to the target.
        target_covered: fraction of the target's surface around the fitted face (its bounding
            box) within tolerance of the fitted template.
        front, up: (3,) unit vectors, where the face looks and its up, in target coordinates.
    """

    similarity: np.ndarray
    scale: float
    vertices: np.ndarray
    landmarks: bool
    face_size: float = float("nan")
    tolerance: float = float("nan")
    aligned_coverage: float = float("nan")
    aligned_distance: float = float("nan")
    coverage: float = float("nan")
    distance_mean: float = float("nan")
    distance_p95: float = float("nan")
    distance_max: float = float("nan")
    target_covered: float = float("nan")
    front: np.ndarray = field(default_factory=lambda: TEMPLATE_FRONT.copy())
    up: np.ndarray = field(default_factory=lambda: TEMPLATE_UP.copy())

    def info(self) -> dict:
        """The fit's figures as plain JSON values (for transfer.json and logs)."""
        return {
            "alignment": "landmarks" if self.landmarks else "automatic",
            "scale": float(self.scale),
            "face_size": float(self.face_size),
            "tolerance": float(self.tolerance),
            "aligned_coverage": float(self.aligned_coverage),
            "aligned_distance_mean": float(self.aligned_distance),
            "coverage": float(self.coverage),
            "distance_mean": float(self.distance_mean),
            "distance_p95": float(self.distance_p95),
            "distance_max": float(self.distance_max),
            "target_covered": float(self.target_covered),
            "front": [float(value) for value in self.front],
            "up": [float(value) for value in self.up],
        }


# --- the target -----------------------------------------------------------------------------------


# --- the template's face --------------------------------------------------------------------------


# --- similarity -----------------------------------------------------------------------------------


def landmark_similarity(source: np.ndarray, target: np.ndarray, path: Path | None) -> np.ndarray:
    """(4, 4) rotation, uniform scale and shift taking landmark points `source` onto `target`."""
    import trimesh

    source, target = np.asarray(source, np.float64), np.asarray(target, np.float64)
    for points, side in ((source, "template"), (target, "target")):
        spread = np.linalg.svd(points - points.mean(0), compute_uv=False)
        if spread[1] <= 1e-6 * max(spread[0], 1e-12):
            raise MeshtalkError(
                path, f"the landmarks on the {side} lie on one line (or one point): no alignment"
            )
    matrix, _, _ = trimesh.registration.procrustes(
        source, target, reflection=False, translation=True, scale=True, return_cost=True
    )
    return matrix


# --- non-rigid fit --------------------------------------------------------------------------------


# --- the registration -----------------------------------------------------------------------------


def _fit_statistics(points: np.ndarray, surface: TargetSurface, face_size: float) -> dict:
    """Coverage and distances of `points` (the template's face, placed or fitted)."""
    _, distance, on_edge, _ = surface.match(points)
    covered = (distance < TOLERANCE * face_size) & ~on_edge
    return {
        "coverage": float(covered.mean()),
        "mean": float(distance.mean()),
        "p95": float(np.percentile(distance, 95)),
        "max": float(distance.max()),
    }


def _target_covered(
    fitted: np.ndarray, faces: np.ndarray, face: np.ndarray, surface: TargetSurface, size: float
) -> float:
    """Fraction of the target's surface around the fitted face (within its bounding box) that
    lies within tolerance of the fitted template."""
    rng = np.random.default_rng(2)
    samples, _ = surface.samples(TARGET_SAMPLES, rng)
    low, high = fitted[face].min(0), fitted[face].max(0)
    inside = samples[((samples >= low) & (samples <= high)).all(1)]
    if not len(inside):
        return 0.0
    _, distance, _ = SurfaceQuery(fitted, faces).closest(inside)
    return float((distance < TOLERANCE * size).mean())


def _refuse(path: Path | None, scale: float, aligned: Candidate) -> None:
    if aligned.cost <= MAX_COST:
        return
    raise MeshtalkError(
        path,
        f"no face found: the best fit of the model's face (scale {scale:.3g}) puts "
        f"{100 * aligned.coverage:.0f}% of it within {100 * TOLERANCE:.0f}% of its size of the "
        f"mesh, at a mean distance of {aligned.distance * aligned.face_size:.3g} "
        f"({100 * aligned.distance:.1f}% of its size); give --landmarks FILE",
    )


def _settled_similarity(
    vertices: np.ndarray, fitted: np.ndarray, surface: TargetSurface, tolerance: float
) -> np.ndarray:
    """The similarity that best takes the template onto its fitted self, over the vertices
    that lie on the target: the template's size and pose on the whole target (the alignment's
    came from the face's surface alone, which a face of other proportions biases)."""
    import trimesh

    _, distance, on_edge, _ = surface.match(fitted)
    on = (distance < tolerance) & ~on_edge
    points = np.flatnonzero(on) if on.sum() >= 3 * MIN_LANDMARKS else np.arange(len(fitted))
    matrix, _, _ = trimesh.registration.procrustes(
        vertices[points], fitted[points], reflection=False, scale=True, return_cost=True
    )
    return matrix


def register(
    source: Mesh,
    target: Mesh,
    landmarks: tuple[np.ndarray, np.ndarray] | None = None,
    landmark_file: Path | None = None,
    *,
    target_path: Path | None = None,
) -> Registration:
    """Fit the template `source` onto `target`: a similarity, then a non-rigid fit.

    Args:
        source: the model's template (its vertices and faces; front +Z, up +Y).
        target: the mesh to animate.
        landmarks: (source indices, target indices) of matching points, or None to align
            automatically.
        landmark_file: where the landmarks came from (named in errors).
        target_path: the target's file, named when no face is found on it.

    Raises:
        MeshtalkError: when the automatic alignment finds no face (too little of the template's
            face on the target, or too far from it).
    """
    surface = TargetSurface(target)
    vertices = np.asarray(source.vertices, np.float64)
    face = face_vertices(vertices, source.faces)
    face_radius = _rms_radius(vertices[face])
    if landmarks is not None:
        matrix = landmark_similarity(
            vertices[landmarks[0]], target.vertices[landmarks[1]], landmark_file
        )
        scale = similarity_scale(matrix)
        aligned = _evaluate(
            vertices[face], face_radius, matrix[None, :3, :3], matrix[None, :3, 3], surface
        )[0]
    else:
        aligned = automatic_similarity(source, surface, face)
        scale = similarity_scale(aligned.linear)
        _refuse(target_path, scale, aligned)
        matrix = aligned.matrix
    placed = vertices @ matrix[:3, :3].T + matrix[:3, 3]
    pins = None if landmarks is None else (landmarks[0], target.vertices[landmarks[1]])
    fitted = non_rigid_fit(placed, source.faces, surface, REACH * aligned.face_size, pins)
    if not np.isfinite(fitted).all():
        log.warning("the non-rigid fit failed; the template keeps its similarity placement")
        fitted = placed
    elif landmarks is None:
        matrix = _settled_similarity(vertices, fitted, surface, TOLERANCE * aligned.face_size)
        scale = similarity_scale(matrix)
    rotation = matrix[:3, :3] / scale
    statistics = _fit_statistics(fitted[face], surface, aligned.face_size)
    return Registration(
        similarity=matrix,
        scale=scale,
        vertices=fitted,
        landmarks=landmarks is not None,
        face_size=aligned.face_size,
        tolerance=TOLERANCE * aligned.face_size,
        aligned_coverage=aligned.coverage,
        aligned_distance=aligned.distance * aligned.face_size,
        coverage=statistics["coverage"],
        distance_mean=statistics["mean"],
        distance_p95=statistics["p95"],
        distance_max=statistics["max"],
        target_covered=_target_covered(fitted, source.faces, face, surface, aligned.face_size),
        front=rotation @ TEMPLATE_FRONT,
        up=rotation @ TEMPLATE_UP,
    )
