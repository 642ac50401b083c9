"""Finding the face on a target without landmarks: the similarity (rotation, uniform scale, shift)
that puts the template's face on the target, from many starts, with a two-sided trimmed cost
and bounded-memory closest points (`TargetSurface`)."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from meshtalk.pipelines.io.mesh import Mesh
from meshtalk.pipelines.transfer.closest import SurfaceQuery
from meshtalk.pipelines.transfer.inputs import (
    MIN_LANDMARKS,
)

log = logging.getLogger(__name__)

REACH = 0.3
"""The non-rigid fit ignores matches farther than this fraction of the face's size (parts the
other mesh does not have: the back of a head, shoulders, hair)."""

SEARCH_SAMPLES, SEARCH_POINTS, SEARCH_ITERATIONS = 8000, 300, 8
"""The coarse search: surface samples of the target, points of the face, ICP steps per start."""
REFINE_STARTS, REFINE_POINTS, REFINE_ITERATIONS = 6, 1500, 40
"""The best starts refined on the surface: how many, with how many points, at most how many
steps."""
FINAL_POINTS, FINAL_ITERATIONS, FINAL_STEP = 4000, 300, 1e-7
"""The chosen placement refined further: points, at most this many steps, until no point moves
more than this fraction of the face's size (a target of the template's own surface is then met
to within micrometres, and its lips and eyelids bind to their own side)."""

TEMPLATE_FRONT = np.array([0.0, 0.0, 1.0])


TEMPLATE_UP = np.array([0.0, 1.0, 0.0])
"""Where a template's face looks and which way is up, in its own coordinates (MeshTalk's and the
built-in head's)."""


FACING = 0.2
"""The template's face: vertices in its front half whose normal's component along the front is
above this."""


FACE_SIZES = (2.0, 1.4, 1.0, 0.7, 0.5, 0.35, 0.25)
"""Starting sizes of the face (RMS radius) relative to the target's (RMS radius of its surface):
a face-only scan is about its own size, a bust several times larger. Sizes up to 0.5 also start
at each end of the target's extent (a head on shoulders)."""


SCALE_RANGE = (0.12, 3.0)
"""The face's size relative to the target's is kept within these bounds."""


TRIM = 0.8
"""ICP and the alignment's distance use the closest fraction of the face's points (the rest may
lie over holes or past the border of a face-only scan)."""


EDGE_WEIGHT = 1e-4
"""A closest point whose barycentric weight opposite an open edge is below this lies on it."""


TOLERANCE = 0.04
"""A point of the face is on the target within this fraction of the face's size (RMS radius):
about 4 mm on a human face."""


COVERAGE_COST = 0.1
"""The alignment's cost: mean distance (face sizes) + this * (1 - coverage)."""


PREFERENCE = 0.8
"""The automatic alignment leaves a face given upright and facing the viewer so unless another
pose costs less than this fraction of it."""


UPRIGHT = 0.7
"""Cosine between the placed face's front (and up) and the target's +Z (and +Y) for upright."""


TARGET_SAMPLES = 20000
"""Surface samples of the target for `Registration.target_covered`."""


class TargetSurface:
    """The target to fit onto: closest points on its surface in bounded memory (open3d's BVH,
    `SurfaceQuery`), whether they lie on its open edge (a scan's border, the rim of an eye or
    mouth hole), and area-weighted samples of it.

    Matches on the open edge are left out of every fit: a template reaching past a face-only
    scan would otherwise be pulled in to its border and shrink.

    Args:
        target: the mesh; its zero-area faces are left out (their closest points have no
            barycentric coordinates).
    """

    def __init__(self, target: Mesh) -> None:
        self.vertices = np.asarray(target.vertices, dtype=np.float64)
        faces = np.asarray(target.faces, dtype=np.int64)
        corners = self.vertices[faces]
        normals = np.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0])
        doubled_area = np.linalg.norm(normals, axis=1)
        self.size = float(np.linalg.norm(self.vertices.max(0) - self.vertices.min(0)))
        keep = doubled_area > 2e-12 * self.size * self.size
        self.faces = faces[keep]
        self.area = 0.5 * doubled_area[keep]
        self.normals = normals[keep] / doubled_area[keep, None]
        del corners, normals
        self.open_edges = _open_edges(self.faces, len(self.vertices))
        self.query = SurfaceQuery(self.vertices, self.faces)

    def match(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(closest points (N, 3), distances (N,), on the open edge (N,) bool, triangles (N,))."""
        points, triangles, barycentric = self.query.locate(points)
        corners = self.vertices[self.faces[triangles]]
        closest = np.einsum("nk,nkc->nc", barycentric, corners)
        # The edge opposite corner k is open and the point lies on it (its weight k is ~0).
        on_edge = ((barycentric < EDGE_WEIGHT) & self.open_edges[triangles]).any(axis=1)
        return closest, np.linalg.norm(points - closest, axis=1), on_edge, triangles

    def samples(self, count: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """(count, 3) points spread over the surface by area, and whether their triangle has
        an open edge."""
        triangles = rng.choice(len(self.faces), count, p=self.area / self.area.sum())
        weights = rng.random((count, 2))
        flip = weights.sum(1) > 1
        weights[flip] = 1 - weights[flip]
        corners = self.vertices[self.faces[triangles]]
        points = (
            corners[:, 0]
            + weights[:, :1] * (corners[:, 1] - corners[:, 0])
            + weights[:, 1:] * (corners[:, 2] - corners[:, 0])
        )
        return points, self.open_edges[triangles].any(axis=1)


def _open_edges(faces: np.ndarray, vertex_count: int) -> np.ndarray:
    """(F, 3) bool: the edge opposite corner k of each triangle belongs to no other triangle."""
    low = np.minimum(faces[:, [1, 2, 0]], faces[:, [2, 0, 1]]).ravel()
    high = np.maximum(faces[:, [1, 2, 0]], faces[:, [2, 0, 1]]).ravel()
    keys = low * np.int64(vertex_count) + high
    del low, high
    _, inverse, counts = np.unique(keys, return_inverse=True, return_counts=True)
    return (counts[inverse] == 1).reshape(-1, 3)


def face_vertices(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Indices of the template's face: vertices in its front half that face the front
    (`TEMPLATE_FRONT`); what every target, a face-only scan, a head or a bust, has."""
    import trimesh

    mesh = trimesh.Trimesh(vertices, faces, process=False, validate=False)
    depth = np.asarray(vertices, np.float64) @ TEMPLATE_FRONT
    front_half = depth > 0.5 * (depth.min() + depth.max())
    facing = mesh.vertex_normals @ TEMPLATE_FRONT > FACING
    chosen = np.flatnonzero(front_half & facing)
    return chosen if len(chosen) >= 3 * MIN_LANDMARKS else np.arange(len(vertices))


def _rms_radius(points: np.ndarray) -> float:
    return float(np.sqrt(((points - points.mean(0)) ** 2).sum(1).mean()))


def _axis_rotations() -> np.ndarray:
    """(24, 3, 3) the axis-aligned rotations, the identity first."""
    import itertools

    rotations = []
    for perm in itertools.permutations(range(3)):
        for signs in itertools.product((1, -1), repeat=3):
            matrix = np.zeros((3, 3))
            matrix[np.arange(3), perm] = signs
            if np.linalg.det(matrix) > 0:
                rotations.append(matrix)
    rotations.sort(key=lambda m: -np.trace(m))
    return np.stack(rotations)


def _procrustes(
    points: np.ndarray, matches: np.ndarray, weights: np.ndarray, scale_range: tuple[float, float]
) -> tuple[np.ndarray, np.ndarray]:
    """Weighted similarities (K, 3, 3), (K, 3) taking `points` (n, 3) onto `matches` (K, n, 3).

    Kabsch with a uniform scale (Umeyama), for K fits at once; the scale is kept in
    `scale_range`. A fit with fewer than 3 weighted pairs is the identity (it scores badly).
    """
    total = np.maximum(weights.sum(1), 1e-12)[:, None]
    point_mean = weights @ points / total
    match_mean = np.einsum("kn,knc->kc", weights, matches) / total
    centred = points[None] - point_mean[:, None]
    covariance = np.einsum("kn,kni,knj->kij", weights, centred, matches - match_mean[:, None])
    u, spread, vt = np.linalg.svd(covariance)
    sign = np.sign(np.linalg.det(u @ vt))
    sign[sign == 0] = 1
    u[:, :, 2] *= sign[:, None]
    spread[:, 2] *= sign
    rotation = np.transpose(u @ vt, (0, 2, 1))
    variance = np.einsum("kn,kn->k", weights, (centred**2).sum(2))
    scale = np.clip(spread.sum(1) / np.maximum(variance, 1e-300), *scale_range)
    linear = scale[:, None, None] * rotation
    shift = match_mean - np.einsum("kij,kj->ki", linear, point_mean)
    return linear, shift


def _trimmed_weights(distance: np.ndarray, bad: np.ndarray) -> np.ndarray:
    """1 for the closest `TRIM` of each row's pairs not on the open edge, else 0."""
    good = np.where(bad, np.inf, distance)
    limit = np.quantile(good, TRIM, axis=1, method="lower")[:, None]
    return ((good <= limit) & ~bad).astype(np.float64)


@dataclass
class Candidate:
    """One placement of the template's face on the target, with how well it fits.

    Attributes:
        linear: (3, 3) rotation * scale.
        shift: (3,) translation.
        face_size: the placed face's RMS radius (target units).
        coverage: fraction of the face's points within `TOLERANCE` face sizes of the target
            (and not on its open edge).
        distance: mean distance of the best `TRIM` of them, in face sizes.
    """

    linear: np.ndarray
    shift: np.ndarray
    face_size: float
    coverage: float
    distance: float

    @property
    def cost(self) -> float:
        """What the alignment minimises: scale-free, so a shrunken face gains nothing."""
        return self.distance + COVERAGE_COST * (1.0 - self.coverage)

    @property
    def matrix(self) -> np.ndarray:
        matrix = np.eye(4)
        matrix[:3, :3], matrix[:3, 3] = self.linear, self.shift
        return matrix


def _starts(face: np.ndarray, samples: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Starting similarities (K, 3, 3), (K, 3): each axis-aligned rotation at several face sizes
    relative to the target, the face's front touching the side of the target's bounding box it
    looks out of, its centroid on the target's along the other two axes, and a small face also
    at their ends (a head on shoulders)."""
    face_radius, target_radius = _rms_radius(face), _rms_radius(samples)
    low, high = samples.min(0), samples.max(0)
    linear, shift = [], []
    for ratio in FACE_SIZES:
        scale = ratio * target_radius / face_radius
        for rotation in _axis_rotations():
            turned = scale * face @ rotation.T
            looks = int(np.argmax(np.abs(rotation @ TEMPLATE_FRONT)))
            sign = np.sign((rotation @ TEMPLATE_FRONT)[looks])
            offset = samples.mean(0) - turned.mean(0)
            offset[looks] = (
                (high[looks] - turned[:, looks].max())
                if sign > 0
                else (low[looks] - turned[:, looks].min())
            )
            offsets = [offset]
            if ratio <= 0.5:
                for axis in {0, 1, 2} - {looks}:
                    for end in (
                        high[axis] - turned[:, axis].max(),
                        low[axis] - turned[:, axis].min(),
                    ):
                        moved = offset.copy()
                        moved[axis] = end
                        offsets.append(moved)
            for moved in offsets:
                linear.append(scale * rotation)
                shift.append(moved)
    return np.stack(linear), np.stack(shift)


def _whole_starts(vertices: np.ndarray, surface: TargetSurface) -> tuple[np.ndarray, np.ndarray]:
    """Starting similarities (24, 3, 3), (24, 3): the whole template's bounding box on the
    target's, for each axis-aligned rotation (a head of the template's own kind, re-meshed or
    in another unit, is then found exactly)."""
    low, high = surface.vertices.min(0), surface.vertices.max(0)
    linear, shift = [], []
    for rotation in _axis_rotations():
        turned = vertices @ rotation.T
        scale = np.linalg.norm(high - low) / np.linalg.norm(np.ptp(turned, axis=0))
        linear.append(scale * rotation)
        shift.append(0.5 * (low + high) - scale * 0.5 * (turned.min(0) + turned.max(0)))
    return np.stack(linear), np.stack(shift)


def _coarse_icp(
    face: np.ndarray,
    linear: np.ndarray,
    shift: np.ndarray,
    samples: np.ndarray,
    sample_on_edge: np.ndarray,
    scale_range: tuple[float, float],
) -> tuple[np.ndarray, np.ndarray]:
    """A few ICP steps from every start at once, against surface samples (a KD-tree)."""
    from scipy.spatial import cKDTree

    tree = cKDTree(samples)
    for _ in range(SEARCH_ITERATIONS):
        placed = np.einsum("kij,nj->kni", linear, face) + shift[:, None]
        distance, index = tree.query(placed.reshape(-1, 3), workers=-1)
        distance, index = distance.reshape(len(linear), -1), index.reshape(len(linear), -1)
        weights = _trimmed_weights(distance, sample_on_edge[index])
        linear, shift = _procrustes(face, samples[index], weights, scale_range)
    return linear, shift


def _evaluate(
    face: np.ndarray, face_radius: float, linear: np.ndarray, shift: np.ndarray, surface
) -> list[Candidate]:
    """Each placement scored on the target's surface."""
    placed = np.einsum("kij,nj->kni", linear, face) + shift[:, None]
    _, distance, on_edge, _ = surface.match(placed.reshape(-1, 3))
    distance = distance.reshape(len(linear), -1)
    on_edge = on_edge.reshape(len(linear), -1)
    candidates = []
    for k in range(len(linear)):
        size = similarity_scale(linear[k]) * face_radius
        relative = distance[k] / size
        near = np.sort(relative)[: max(1, int(TRIM * len(relative)))]
        covered = (relative < TOLERANCE) & ~on_edge[k]
        candidates.append(
            Candidate(linear[k], shift[k], size, float(covered.mean()), float(near.mean()))
        )
    return candidates


def _surface_icp(
    face: np.ndarray,
    candidate: Candidate,
    surface: TargetSurface,
    template: TargetSurface,
    target_points: np.ndarray,
    scale_range: tuple[float, float],
    iterations: int = REFINE_ITERATIONS,
    step: float = 1e-4,
) -> tuple[np.ndarray, np.ndarray]:
    """ICP with scale on both surfaces: the face's points to their closest points on the
    target (the closest `TRIM` of them, none on its open edge), and the target's points near
    the template to their closest points on it (none on the template's open edge), the two
    directions weighted alike. The second direction keeps the face from shrinking onto part
    of a face-only scan."""
    linear, shift = candidate.linear, candidate.shift
    reach = REACH * candidate.face_size
    for _ in range(iterations):
        placed = face @ linear.T + shift
        closest, distance, on_edge, _ = surface.match(placed)
        forward = _trimmed_weights(distance[None], on_edge[None])[0]
        inverse = np.linalg.inv(linear)
        on_template, back, back_edge, _ = template.match((target_points - shift) @ inverse.T)
        backward = ((back * similarity_scale(linear) <= reach) & ~back_edge).astype(np.float64)
        weights = np.concatenate(
            [forward / max(forward.sum(), 1.0), backward / max(backward.sum(), 1.0)]
        )
        new_linear, new_shift = _procrustes(
            np.concatenate([face, on_template]),
            np.concatenate([closest, target_points])[None],
            weights[None],
            scale_range,
        )
        moved = np.abs(face @ (new_linear[0] - linear).T + new_shift[0] - shift).max()
        linear, shift = new_linear[0], new_shift[0]
        if moved < step * candidate.face_size:
            break
    return linear[None], shift[None]


def automatic_similarity(
    source: Mesh, surface: TargetSurface, face: np.ndarray | None = None
) -> Candidate:
    """The template's face placed on the target without landmarks, and how well it fits.

    Every axis-aligned rotation is tried at several face sizes and places (a coarse ICP with
    scale, all at once); the best few are refined on the surface, and the one whose face lies
    closest to the target relative to its own size, with the most of it on the target, wins.
    A face given upright and facing the viewer is kept so unless another pose fits clearly
    better.
    """
    rng = np.random.default_rng(0)
    face = face_vertices(source.vertices, source.faces) if face is None else face
    points = np.asarray(source.vertices, np.float64)[face]
    face_radius = _rms_radius(points)
    samples, sample_on_edge = surface.samples(SEARCH_SAMPLES, rng)
    target_radius = _rms_radius(samples)
    scale_range = (
        SCALE_RANGE[0] * target_radius / face_radius,
        SCALE_RANGE[1] * target_radius / face_radius,
    )
    coarse = points[rng.choice(len(points), min(SEARCH_POINTS, len(points)), replace=False)]
    linear, shift = _starts(coarse, samples)
    whole_linear, whole_shift = _whole_starts(np.asarray(source.vertices, np.float64), surface)
    linear, shift = np.concatenate([whole_linear, linear]), np.concatenate([whole_shift, shift])
    linear, shift = _coarse_icp(coarse, linear, shift, samples, sample_on_edge, scale_range)
    candidates = _evaluate(coarse, _rms_radius(coarse), linear, shift, surface)
    order = list(np.argsort([candidate.cost for candidate in candidates])[:REFINE_STARTS])
    upright = [k for k in np.argsort([c.cost for c in candidates]) if _is_upright(linear[k])]
    if upright and upright[0] not in order:
        order.append(upright[0])  # the pose the face was given in is always weighed
    fine = points[rng.choice(len(points), min(REFINE_POINTS, len(points)), replace=False)]
    template = TargetSurface(source)
    target_points, _ = surface.samples(REFINE_POINTS, rng)
    refined = []
    for index in order:
        linear, shift = _surface_icp(
            fine, candidates[index], surface, template, target_points, scale_range
        )
        refined += _evaluate(fine, _rms_radius(fine), linear, shift, surface)
    best = min(refined, key=lambda candidate: candidate.cost)
    upright = [c for c in refined if _is_upright(c.linear)]
    if upright:
        own = min(upright, key=lambda candidate: candidate.cost)
        if own.cost * PREFERENCE <= best.cost:
            best = own
    final = points[rng.choice(len(points), min(FINAL_POINTS, len(points)), replace=False)]
    linear, shift = _surface_icp(
        final,
        best,
        surface,
        template,
        surface.samples(FINAL_POINTS, rng)[0],
        scale_range,
        FINAL_ITERATIONS,
        FINAL_STEP,
    )
    best = _evaluate(points, face_radius, linear, shift, surface)[0]
    log.info(
        "automatic alignment: scale %.4g, face coverage %.2f, mean distance %.3g face sizes",
        similarity_scale(best.linear),
        best.coverage,
        best.distance,
    )
    return best


def _is_upright(linear: np.ndarray) -> bool:
    rotation = linear / similarity_scale(linear)
    return bool(
        rotation @ TEMPLATE_FRONT @ TEMPLATE_FRONT > UPRIGHT
        and rotation @ TEMPLATE_UP @ TEMPLATE_UP > UPRIGHT
    )


def similarity_scale(matrix: np.ndarray) -> float:
    """The uniform scale of a similarity transform."""
    return float(np.cbrt(abs(np.linalg.det(matrix[:3, :3]))))
