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

import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from meshtalk.pipelines.errors import MeshtalkError
from meshtalk.pipelines.io.mesh import Mesh, read_mesh
from meshtalk.pipelines.transfer.closest import SurfaceQuery

log = logging.getLogger(__name__)

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
SEARCH_SAMPLES, SEARCH_POINTS, SEARCH_ITERATIONS = 8000, 300, 8
"""The coarse search: surface samples of the target, points of the face, ICP steps per start."""
REFINE_STARTS, REFINE_POINTS, REFINE_ITERATIONS = 6, 1500, 40
"""The best starts refined on the surface: how many, with how many points, at most how many
steps."""
FINAL_POINTS, FINAL_ITERATIONS, FINAL_STEP = 4000, 300, 1e-7
"""The chosen placement refined further: points, at most this many steps, until no point moves
more than this fraction of the face's size (a target of the template's own surface is then met
to within micrometres, and its lips and eyelids bind to their own side)."""
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
MAX_COST = 0.09
"""No face is found when the best placement's cost is above this: measured, faces of the
template's kind cost at most 0.08 (another identity's proportions, re-meshed), a cube, a sphere
and a hand-like blob at least 0.10."""
PREFERENCE = 0.8
"""The automatic alignment leaves a face given upright and facing the viewer so unless another
pose costs less than this fraction of it."""
UPRIGHT = 0.7
"""Cosine between the placed face's front (and up) and the target's +Z (and +Y) for upright."""
NRICP_STEPS = ((0.02, 3.0, 0.5, 10), (0.007, 3.0, 0.5, 10), (0.002, 3.0, 0.0, 10))
"""The non-rigid fit's (smoothness, landmark weight, normal weight, iterations) per step, stiff to
loose, in units of the template's bounding-box diagonal."""
NRICP_EPS = 1e-4
"""A step of the non-rigid fit ends when its mean weighted distance improves less than this."""
REACH = 0.3
"""The non-rigid fit ignores matches farther than this fraction of the face's size (parts the
other mesh does not have: the back of a head, shoulders, hair)."""
UNMATCHED_WEIGHT = 1e-3
"""A vertex without a match is held where it is with this weight (keeps the system regular)."""
TARGET_SAMPLES = 20000
"""Surface samples of the target for `Registration.target_covered`."""
MIN_LANDMARKS = 3


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


def mesh_sha256(mesh: Mesh) -> str:
    """A digest of a mesh's vertices and faces (order included): what a transfer is bound to."""
    digest = hashlib.sha256()
    digest.update(np.ascontiguousarray(mesh.vertices, dtype="<f4").tobytes())
    digest.update(np.ascontiguousarray(mesh.faces, dtype="<i8").tobytes())
    return digest.hexdigest()


def read_target(path: str | Path) -> Mesh:
    """A target mesh read with its vertex order and faces exactly as in the file, checked.

    A point cloud or a mesh without triangles is refused; a non-manifold or disconnected mesh is
    accepted with a warning (every vertex still gets a place on the template).
    """
    import trimesh

    path = Path(path)
    mesh = read_mesh(path)
    if len(mesh.faces) == 0:
        raise MeshtalkError(
            path, "has no faces (a point cloud?): the target must be a triangle mesh"
        )
    surface = trimesh.Trimesh(mesh.vertices, mesh.faces, process=False, validate=False)
    if surface.area <= 0:
        raise MeshtalkError(path, "every face is degenerate (zero area): nothing to animate")
    if len(np.unique(mesh.faces)) < len(mesh.vertices):
        log.warning(
            "%s: %d vertices belong to no face; they follow the nearest part of the face",
            path,
            len(mesh.vertices) - len(np.unique(mesh.faces)),
        )
    bodies = surface.body_count
    if bodies > 1:
        log.warning("%s: the mesh has %d disconnected parts; each is fitted as is", path, bodies)
    if not surface.is_winding_consistent or _has_non_manifold_edges(mesh.faces):
        log.warning("%s: the mesh is not manifold; the transfer goes on", path)
    return mesh


def _has_non_manifold_edges(faces: np.ndarray) -> bool:
    edges = np.sort(faces[:, [0, 1, 1, 2, 2, 0]].reshape(-1, 2), axis=1)
    _, counts = np.unique(edges, axis=0, return_counts=True)
    return bool((counts > 2).any())


def read_landmark_pairs(
    path: str | Path, source_count: int, target_count: int
) -> tuple[np.ndarray, np.ndarray]:
    """(source indices, target indices) of matching points on the template and the target.

    The file is YAML, either `{source: [...], target: [...]}` (lists of equal length), or the
    sets of the MeshTalk landmark preset (`lip_outer`, `brows`, `chin`, ...) given on the target,
    each as long as the preset's, for a template of the MeshTalk topology; or text with one pair
    `SOURCE TARGET` per line (`#` starts a comment). At least 3 pairs, not all on one line.
    """
    import yaml

    path = Path(path)
    if not path.is_file():
        raise MeshtalkError(path, "landmark file not found")
    text = path.read_text(errors="replace")
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError:
        raw = None
    if isinstance(raw, dict):
        source, target = _yaml_pairs(path, raw, source_count)
    else:
        source, target = _text_pairs(path, text)
    problems = []
    if len(source) < MIN_LANDMARKS:
        problems.append(f"needs at least {MIN_LANDMARKS} landmark pairs, found {len(source)}")
    if len(source) and (source.min() < 0 or source.max() >= source_count):
        problems.append(f"source indices must be in 0..{source_count - 1} (the template's)")
    if len(target) and (target.min() < 0 or target.max() >= target_count):
        problems.append(f"target indices must be in 0..{target_count - 1} (the target mesh's)")
    if problems:
        raise MeshtalkError(path, "; ".join(problems))
    return source, target


def _yaml_pairs(path: Path, raw: dict, source_count: int) -> tuple[np.ndarray, np.ndarray]:
    if "target" in raw or "source" in raw:
        source, target = raw.get("source"), raw.get("target")
        if source is None and source_count == _preset_count():
            return _indices(path, raw, "target"), _preset_points()
        if not (_is_index_list(source) and _is_index_list(target)):
            raise MeshtalkError(path, "'source' and 'target' must be lists of vertex indices")
        if len(source) != len(target):
            raise MeshtalkError(
                path, f"'source' has {len(source)} indices but 'target' has {len(target)}"
            )
        return np.asarray(source, dtype=np.int64), np.asarray(target, dtype=np.int64)
    preset = _preset()
    if source_count != preset["num_vertices"]:
        raise MeshtalkError(
            path,
            f"named landmark sets need a template of the MeshTalk topology "
            f"({preset['num_vertices']} vertices), this one has {source_count}; "
            "give 'source' and 'target' lists",
        )
    unknown = [key for key in raw if key not in preset or key == "num_vertices"]
    if unknown:
        raise MeshtalkError(path, f"unknown landmark set(s) {', '.join(map(str, unknown))}")
    source, target = [], []
    for key, values in raw.items():
        if not _is_index_list(values) or len(values) != len(preset[key]):
            raise MeshtalkError(
                path, f"'{key}' must be a list of {len(preset[key])} vertex indices"
            )
        source += preset[key]
        target += values
    return np.asarray(source, dtype=np.int64), np.asarray(target, dtype=np.int64)


def _indices(path: Path, raw: dict, key: str) -> np.ndarray:
    values = raw.get(key)
    if not _is_index_list(values) or len(values) != len(_preset_points()):
        raise MeshtalkError(
            path,
            f"'{key}' alone must list {len(_preset_points())} target vertices, one per point of "
            "the MeshTalk landmark preset",
        )
    return np.asarray(values, dtype=np.int64)


def _is_index_list(values) -> bool:
    return isinstance(values, list) and all(
        isinstance(v, int) and not isinstance(v, bool) for v in values
    )


def _text_pairs(path: Path, text: str) -> tuple[np.ndarray, np.ndarray]:
    pairs = []
    for number, line in enumerate(text.splitlines(), 1):
        fields = line.split("#", 1)[0].replace(",", " ").split()
        if not fields:
            continue
        try:
            if len(fields) != 2:
                raise ValueError
            pairs.append((int(fields[0]), int(fields[1])))
        except ValueError:
            raise MeshtalkError(
                path, f"line {number}: expected 'SOURCE TARGET' vertex indices"
            ) from None
    array = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    return array[:, 0], array[:, 1]


def _preset() -> dict:
    from importlib import resources

    import yaml

    text = resources.files("meshtalk.pipelines.data.resources").joinpath("meshtalk_landmarks.yaml")
    return yaml.safe_load(text.read_text())


def _preset_count() -> int:
    return int(_preset()["num_vertices"])


def _preset_points() -> np.ndarray:
    preset = _preset()
    return np.asarray(
        [i for key, values in preset.items() if key != "num_vertices" for i in values],
        dtype=np.int64,
    )


# --- the target -----------------------------------------------------------------------------------


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


# --- the template's face --------------------------------------------------------------------------


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


# --- non-rigid fit --------------------------------------------------------------------------------


def non_rigid_fit(
    placed: np.ndarray,
    faces: np.ndarray,
    surface: TargetSurface,
    reach: float,
    landmarks: tuple[np.ndarray, np.ndarray] | None = None,
) -> np.ndarray:
    """The placed template's vertices fitted onto the target's surface (Amberg et al. 2007).

    Each vertex gets an affine transform; each step solves for all of them at once, trading
    closeness to the target's surface (closest points, weighted by how well the normals agree)
    against the transforms' differences across edges (stiffness), loosening as in
    `NRICP_STEPS`. Matches farther than `reach` or on the target's open edge are left out, and
    an unmatched vertex is held lightly where it is (so a part with no match, an eyeball, the
    back of a head on a face-only scan, keeps the shape of its neighbours).

    Args:
        placed: (Vs, 3) the template after the similarity, in target coordinates.
        faces: (Fs, 3) its triangles.
        surface: the target.
        reach: largest distance of a match (target units).
        landmarks: (template vertex indices, (L, 3) target positions) held with the landmark
            weight, or None.

    Returns:
        (Vs, 3) float64 fitted vertices.
    """
    import scipy.sparse as sparse
    import scipy.sparse.linalg
    import trimesh

    template = trimesh.Trimesh(placed, faces, process=False, validate=False)
    centre, unit = placed.mean(0), float(np.linalg.norm(np.ptp(placed, axis=0)))
    vertices = (placed - centre) / unit
    count = len(vertices)
    edges = template.edges_unique
    lengths = np.maximum(
        np.linalg.norm(vertices[edges[:, 0]] - vertices[edges[:, 1]], axis=1), 1e-9
    )
    rows = np.repeat(np.arange(len(edges)), 2)
    incidence = sparse.coo_matrix(
        (np.stack([1 / lengths, -1 / lengths], 1).ravel(), (rows, edges.ravel())),
        shape=(len(edges), count),
    )
    stiffness = sparse.kron(incidence, sparse.identity(4)).tocsr()
    data = _affine_rows(vertices)
    normals = _affine_rows(template.vertex_normals)
    unknowns = np.tile(np.vstack([np.eye(3), np.zeros((1, 3))]), (count, 1))
    pinned = None
    if landmarks is not None:
        pinned = (data[landmarks[0]], (landmarks[1] - centre) / unit)
    current = vertices
    for smoothness, landmark_weight, normal_weight, iterations in NRICP_STEPS:
        previous_error = np.inf
        for _ in range(iterations):
            closest, distance, on_edge, triangles = surface.match(current * unit + centre)
            weights = ((distance <= reach) & ~on_edge).astype(np.float64)
            if normal_weight > 0:
                turned = normals @ unknowns
                turned /= np.maximum(np.linalg.norm(turned, axis=1, keepdims=True), 1e-12)
                agreement = np.abs((turned * surface.normals[triangles]).sum(1))
                weights *= agreement**normal_weight
            goal = np.where(weights[:, None] > 0, (closest - centre) / unit, current)
            weights = np.maximum(weights, UNMATCHED_WEIGHT)
            blocks = [smoothness * stiffness, sparse.diags(weights) @ data]
            right = [np.zeros((stiffness.shape[0], 3)), weights[:, None] * goal]
            if pinned is not None:
                blocks.append(landmark_weight * pinned[0])
                right.append(landmark_weight * pinned[1])
            system = sparse.vstack(blocks).tocsr()
            unknowns = scipy.sparse.linalg.spsolve(
                (system.T @ system).tocsc(), system.T @ np.vstack(right)
            )
            current = data @ unknowns
            error = float((weights * np.linalg.norm(goal - current, axis=1)).mean())
            if previous_error - error < NRICP_EPS:
                break
            previous_error = error
    return current * unit + centre


def _affine_rows(points: np.ndarray):
    """(N, 4N) sparse rows [x y z 1] placing each point's homogeneous coordinates at its
    transform's 4 unknown rows."""
    import scipy.sparse as sparse

    count = len(points)
    values = np.concatenate([np.asarray(points, np.float64), np.ones((count, 1))], 1).ravel()
    return sparse.csr_matrix(
        (values, (np.repeat(np.arange(count), 4), np.arange(4 * count))), shape=(count, 4 * count)
    )


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
