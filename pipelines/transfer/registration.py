"""Registering the model's template onto a mesh of another topology (a user's own head).

Two steps, both with trimesh: a similarity transform (rotation, uniform scale, translation) from
landmark pairs (`procrustes`) or found automatically (centroid and size, then ICP from a few
starting rotations), then a non-rigid fit of the template's surface to the target's
(`nricp_amberg`, Amberg et al. 2007). The result is the template's vertices lying on the target,
from which `binding.bind` locates every target vertex.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from meshtalk.pipelines.errors import MeshtalkError
from meshtalk.pipelines.io.mesh import Mesh, read_mesh

log = logging.getLogger(__name__)

NRICP_STEPS = ((0.02, 3.0, 0.5, 10), (0.007, 3.0, 0.5, 10), (0.002, 3.0, 0.0, 10))
"""nricp_amberg's (smoothness, landmark weight, normal weight, iterations) per step, stiff to
loose, for a template in its target's frame scaled to it."""
MATCH_DISTANCE = 0.08
"""Closest-point matches farther than this fraction of the target's size are ignored by the
non-rigid fit (parts the other mesh does not have: the back of a head, shoulders, hair)."""
ICP_SAMPLES = 1500
"""Vertices of each mesh used by the automatic alignment (a fixed subsample: seconds, not more)."""
PREFERENCE = 0.8
"""The automatic alignment leaves the mesh's own orientation only for a start this much better
(faces are usually given upright and facing the viewer)."""
MIN_LANDMARKS = 3


@dataclass
class Registration:
    """The template fitted onto a target.

    Attributes:
        similarity: (4, 4) template coordinates -> target coordinates (rotation * scale, shift).
        scale: the similarity's uniform scale (target size / template size).
        vertices: (Vs, 3) the template's vertices after the non-rigid fit, in target coordinates.
        landmarks: whether the similarity came from landmarks (else found automatically).
    """

    similarity: np.ndarray
    scale: float
    vertices: np.ndarray
    landmarks: bool


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


def _rms_frame(points: np.ndarray) -> tuple[np.ndarray, float]:
    centre = points.mean(0)
    return centre, float(np.sqrt(((points - centre) ** 2).sum(1).mean()))


def _start_rotations() -> list[np.ndarray]:
    """The mesh's own orientation first, then the 23 other axis-aligned rotations."""
    import itertools

    rotations = []
    for perm in itertools.permutations(range(3)):
        for signs in itertools.product((1, -1), repeat=3):
            matrix = np.zeros((3, 3))
            matrix[np.arange(3), perm] = signs
            if np.linalg.det(matrix) > 0:
                rotations.append(matrix)
    rotations.sort(key=lambda m: -np.trace(m))  # identity first
    return rotations


def automatic_similarity(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """(4, 4) similarity taking the template's points onto the target's, found without landmarks.

    Both are centred and brought to one size (RMS radius); ICP with scale then starts from each
    axis-aligned rotation, keeping the mesh's own orientation unless another start fits clearly
    better (a head given on its side is found; a face given upright stays upright).
    """
    import trimesh

    rng = np.random.default_rng(0)
    pick = lambda points: points[  # noqa: E731
        rng.choice(len(points), min(ICP_SAMPLES, len(points)), replace=False)
    ]
    source_sample, target_sample = (
        pick(np.asarray(source, np.float64)),
        pick(np.asarray(target, np.float64)),
    )
    source_centre, source_size = _rms_frame(source_sample)
    target_centre, target_size = _rms_frame(target_sample)
    first = best = None
    best_cost, own_cost = np.inf, np.inf
    for index, rotation in enumerate(_start_rotations()):
        start = np.eye(4)
        start[:3, :3] = rotation * (target_size / source_size)
        start[:3, 3] = target_centre - start[:3, :3] @ source_centre
        matrix, _, cost = trimesh.registration.icp(
            source_sample,
            target_sample,
            initial=start,
            max_iterations=30,
            reflection=False,
            scale=True,
        )
        if index == 0:
            first, own_cost = matrix, cost
        if cost < best_cost:
            best, best_cost = matrix, cost
    if best_cost >= PREFERENCE * own_cost:
        best = first
    return best


def refine_on_surface(source: np.ndarray, surface, matrix: np.ndarray) -> np.ndarray:
    """The similarity refined by ICP against the target's surface (not its vertices, whose
    spacing would bias the scale), from the template's vertices within reach of it."""
    import trimesh

    rng = np.random.default_rng(1)
    points = np.asarray(source, np.float64)
    points = points[rng.choice(len(points), min(2 * ICP_SAMPLES, len(points)), replace=False)]
    placed = trimesh.transform_points(points, matrix)
    _, distance, _ = trimesh.proximity.closest_point(surface, placed)
    size = float(np.linalg.norm(surface.bounds[1] - surface.bounds[0]))
    near = distance < MATCH_DISTANCE * size
    if near.sum() < 3 * MIN_LANDMARKS:
        return matrix
    refined, _, _ = trimesh.registration.icp(
        points[near], surface, initial=matrix, max_iterations=30, reflection=False, scale=True
    )
    return refined


def fitting_surface(target: Mesh):
    """The target as a trimesh to fit onto, without its zero-area faces (whose closest points
    have no barycentric coordinates); the target itself is left as it is."""
    import trimesh

    surface = trimesh.Trimesh(
        target.vertices.astype(np.float64), target.faces, process=False, validate=False
    )
    size = float(np.linalg.norm(surface.bounds[1] - surface.bounds[0]))
    keep = surface.area_faces > 1e-12 * size * size
    if keep.all():
        return surface
    return trimesh.Trimesh(surface.vertices, target.faces[keep], process=False, validate=False)


def _non_rigid_fit(template, surface, landmarks, target: Mesh, reach: float) -> np.ndarray | None:
    """nricp_amberg's fit of the placed template onto the target's surface, or None.

    Parts of the template with no target point within `reach` leave its linear system singular;
    the fit is then tried again with every vertex matched to its closest point.
    """
    import trimesh

    for threshold in (reach, np.inf):
        try:
            fitted = trimesh.registration.nricp_amberg(
                template,
                surface,
                source_landmarks=None if landmarks is None else landmarks[0],
                target_positions=None if landmarks is None else target.vertices[landmarks[1]],
                steps=[list(step) for step in NRICP_STEPS],
                distance_threshold=threshold,
            )
        except (RuntimeError, ValueError, np.linalg.LinAlgError) as error:
            log.info("non-rigid fit with matches within %.3g failed (%s)", threshold, error)
            continue
        fitted = np.asarray(fitted, dtype=np.float64)
        if np.isfinite(fitted).all():
            return fitted
    return None


def similarity_scale(matrix: np.ndarray) -> float:
    """The uniform scale of a similarity transform."""
    return float(np.cbrt(abs(np.linalg.det(matrix[:3, :3]))))


def register(
    source: Mesh,
    target: Mesh,
    landmarks: tuple[np.ndarray, np.ndarray] | None = None,
    landmark_file: Path | None = None,
) -> Registration:
    """Fit the template `source` onto `target`: a similarity, then a non-rigid fit.

    Args:
        source: the model's template (its vertices and faces).
        target: the mesh to animate.
        landmarks: (source indices, target indices) of matching points, or None to align
            automatically.
        landmark_file: where the landmarks came from (named in errors).
    """
    import trimesh

    if landmarks is not None:
        matrix = landmark_similarity(
            source.vertices[landmarks[0]], target.vertices[landmarks[1]], landmark_file
        )
    surface = fitting_surface(target)
    if landmarks is None:
        matrix = refine_on_surface(
            source.vertices, surface, automatic_similarity(source.vertices, target.vertices)
        )
    scale = similarity_scale(matrix)
    placed = trimesh.transform_points(source.vertices.astype(np.float64), matrix)
    template = trimesh.Trimesh(placed, source.faces, process=False, validate=False)
    size = float(np.linalg.norm(surface.bounds[1] - surface.bounds[0]))
    fitted = _non_rigid_fit(template, surface, landmarks, target, MATCH_DISTANCE * size)
    if fitted is None:
        log.warning("the non-rigid fit failed; the template keeps its similarity placement")
        fitted = placed
    return Registration(
        similarity=matrix, scale=scale, vertices=fitted, landmarks=landmarks is not None
    )
