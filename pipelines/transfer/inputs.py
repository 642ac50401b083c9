"""The target mesh and the landmark files of a transfer, read and checked (every problem one line
naming the file)."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import numpy as np

from meshtalk.pipelines.errors import MeshtalkError
from meshtalk.pipelines.io.mesh import Mesh, read_mesh, surface_problem

MIN_LANDMARKS = 3

log = logging.getLogger(__name__)


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
    problem = surface_problem(mesh)
    if problem is not None:
        raise MeshtalkError(path, problem)
    surface = trimesh.Trimesh(mesh.vertices, mesh.faces, process=False, validate=False)
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
