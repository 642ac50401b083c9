"""Where each target vertex sits on the registered template, and moving frames across with it.

Every target vertex is bound to a point of the fitted template (a triangle and its barycentric
coordinates). A frame's displacement from the template (frame - template) is interpolated there,
turned by the registration's rotation and scale, and added to the target's own vertex: the target
keeps its shape, vertex order and faces, and moves as the template does. Target vertices far from
the template (parts it does not cover: the back of a head, shoulders) follow less and less, and not
at all beyond `FALLOFF_END`.

Which side of a mouth a vertex is on: the template's lips may meet in a slit of coincident
vertices, so the closest point alone cannot tell the upper lip from the lower one (both are at
distance zero) and lips bound that way never part. Each target triangle therefore votes, from its
centroid (which lies inside one lip, not on the slit), for the template triangle under it, and a
target vertex is bound to the closest of the triangles its own triangles voted for: a vertex of the
upper lip is carried by the upper lip. The same holds for eyelids and for targets whose lips meet.

Rigid parts (eyeballs, teeth, lashes) move as one body each, with the region they sit in
(`parts`).

Closest points come from open3d's BVH (`closest.SurfaceQuery`): memory O(V + F) whatever the
sizes. Binding and registration are saved together (`save_transfer`, `OUT/transfer.npz`) with the
digests of both meshes, so that a file made for another mesh is refused (`load_transfer`).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from meshtalk.pipelines.errors import MeshtalkError
from meshtalk.pipelines.io.atomic import atomic_path
from meshtalk.pipelines.io.mesh import Mesh
from meshtalk.pipelines.transfer.closest import SurfaceQuery
from meshtalk.pipelines.transfer.inputs import mesh_sha256
from meshtalk.pipelines.transfer.parts import (
    ON_SKIN,
    REGION_NAMES,
    move_parts,
    parts_regions,
    rigid_parts,
    template_regions,
)
from meshtalk.pipelines.transfer.registration import Registration, register

log = logging.getLogger(__name__)

FORMAT = "meshtalk-transfer"
FORMAT_VERSION = 3
"""Version of transfer.npz; a file of another version is refused (made again in seconds).
2: the binding knows the sides of a mouth, and rigid parts (`rigid`).
3: rigid parts move with the region they sit in (`part_region`, `jaw_anchors`)."""
FALLOFF_START, FALLOFF_END = 0.03, 0.08
"""Target vertices farther from the fitted template than the first fraction of the target's
size follow its motion less, linearly, down to nothing at the second."""
SLIT = 0.05
"""Template vertices closer than this fraction of the median edge length to another vertex they
share no edge with lie on a slit (lips or eyelids meeting in coincident rows)."""
KEYS = (
    "format",
    "format_version",
    "source_sha256",
    "target_sha256",
    "source_vertices",
    "target_vertices",
    "corners",
    "weights",
    "linear",
    "similarity",
    "fitted",
    "rigid",
    "part_region",
    "jaw_anchors",
    "info",
)
"""Members of transfer.npz."""


@dataclass
class Transfer:
    """A registration of a template onto a target and the binding of every target vertex.

    Attributes:
        corners: (Nt, 3) int64 template vertices of the triangle each target vertex lies on.
        weights: (Nt, 3) float32 their barycentric weights times the vertex's falloff.
        linear: (3, 3) rotation times scale carrying a displacement into the target's frame.
        similarity: (4, 4) template -> target similarity of the registration.
        fitted: (Vs, 3) the template fitted onto the target (target coordinates).
        source_sha256, target_sha256: digests of the template and target meshes (`mesh_sha256`).
        target: (Nt, 3) float32 the target's vertices at rest.
        info: what made it (landmarks or automatic, mean fit distance), for people.
        rigid: (Nt,) int32 the rigid part each target vertex belongs to, -1 for none.
        part_region: (P,) int32 what each rigid part moves with (ON_SKIN, WITH_HEAD, WITH_JAW).
        jaw_anchors: int64 template vertices (the chin) whose rigid motion the jaw's parts follow
            (fewer than MIN_ANCHORS: they stay still).
    """

    corners: np.ndarray
    weights: np.ndarray
    linear: np.ndarray
    similarity: np.ndarray
    fitted: np.ndarray
    source_sha256: str
    target_sha256: str
    target: np.ndarray
    info: dict
    rigid: np.ndarray | None = None
    part_region: np.ndarray | None = None
    jaw_anchors: np.ndarray | None = None

    def __post_init__(self) -> None:
        import scipy.sparse

        rows = np.repeat(np.arange(len(self.corners)), 3)
        self._matrix = scipy.sparse.csr_matrix(
            (self.weights.ravel().astype(np.float32), (rows, self.corners.ravel())),
            shape=(len(self.corners), len(self.fitted)),
        )
        self._linear_t = np.ascontiguousarray(self.linear.T, dtype=np.float32)
        self._target = np.ascontiguousarray(self.target, dtype=np.float32)
        if self.rigid is None:
            self.rigid = np.full(len(self.corners), -1, dtype=np.int32)
        self.rigid = np.asarray(self.rigid, dtype=np.int32)
        self._parts = [np.flatnonzero(self.rigid == part) for part in np.unique(self.rigid)]
        self._parts = [part for part in self._parts if self.rigid[part[0]] >= 0]
        if self.part_region is None:
            self.part_region = np.full(len(self._parts), ON_SKIN, dtype=np.int32)
        self.part_region = np.asarray(self.part_region, dtype=np.int32)
        if len(self.part_region) != len(self._parts):
            raise ValueError(
                f"{len(self.part_region)} part regions for {len(self._parts)} rigid parts"
            )
        self.jaw_anchors = np.asarray(
            np.zeros(0) if self.jaw_anchors is None else self.jaw_anchors, dtype=np.int64
        )
        self._fitted = np.asarray(self.fitted, dtype=np.float64)

    @property
    def num_source(self) -> int:
        """Vs, vertices of the template."""
        return len(self.fitted)

    @property
    def num_target(self) -> int:
        """Nt, vertices of the target."""
        return len(self.corners)

    def apply(self, frames: np.ndarray, template: np.ndarray) -> np.ndarray:
        """Frames of the template -> the same motion on the target.

        Args:
            frames: (n, Vs, 3) or (Vs, 3) meshes of the template's topology.
            template: (Vs, 3) the template at rest (the frames' neutral).

        Returns:
            (n, Nt, 3) or (Nt, 3) float32 target meshes.
        """
        single = frames.ndim == 2
        frames = frames[None] if single else frames
        if frames.shape[1:] != (self.num_source, 3):
            raise ValueError(
                f"frames of {frames.shape[1]} vertices; the transfer is from {self.num_source}"
            )
        n = len(frames)
        # Turn and scale on the (smaller) template side, then one sparse product for all frames.
        moved = (frames.astype(np.float32, copy=False) - template.astype(np.float32)) @ (
            self._linear_t
        )
        columns = np.ascontiguousarray(moved.transpose(1, 0, 2)).reshape(self.num_source, n * 3)
        result = (self._matrix @ columns).reshape(self.num_target, n, 3).transpose(1, 0, 2)
        result = result + self._target
        move_parts(
            result,
            moved,
            self._target,
            self._parts,
            self.part_region,
            self._fitted,
            self.jaw_anchors,
        )
        return result[0] if single else result


def bind(
    registration: Registration,
    source: Mesh,
    target: Mesh,
    masks: dict[str, np.ndarray] | None = None,
) -> Transfer:
    """Locate every target vertex on the fitted template (see the module docstring); `masks`:
    the template's region masks (a run's `topology/masks`), which let rigid parts inside the
    head move with the head or the jaw."""
    # Bound on the fitted template as it is saved (float32), so that a saved transfer and one
    # bound again from it place every vertex alike.
    fitted = np.asarray(registration.vertices, dtype=np.float32).astype(np.float64)
    query = SurfaceQuery(fitted, source.faces)
    points = target.vertices.astype(np.float64)
    triangle, barycentric, distance = _sided_closest(
        query, points, target.faces, slit_triangles(source)
    )
    corners = source.faces[triangle].astype(np.int64)
    size = float(np.linalg.norm(points.max(0) - points.min(0)))
    start, end = FALLOFF_START * size, FALLOFF_END * size
    falloff = np.clip((end - distance) / (end - start), 0.0, 1.0)
    if (falloff < 1).any():
        log.info(
            "%d target vertices lie away from the face the model animates; they move less",
            int((falloff < 1).sum()),
        )
    rigid = rigid_parts(target)
    regions = template_regions(fitted, masks, registration.up)
    part_region = parts_regions(rigid, points, distance, regions)
    info = {
        **registration.info(),
        "mean_distance": float(distance.mean()),
        "max_distance": float(distance.max()),
        "rigid_parts": int(rigid.max(initial=-1) + 1),
        "rigid_vertices": int((rigid >= 0).sum()),
        "rigid_parts_moving_with": {
            name: int((part_region == code).sum()) for code, name in REGION_NAMES.items()
        },
        "vertices_moving_less": int((falloff < 1).sum()),
    }
    return Transfer(
        corners=corners,
        weights=(barycentric * falloff[:, None]).astype(np.float32),
        linear=registration.similarity[:3, :3].astype(np.float64),
        similarity=registration.similarity,
        fitted=fitted.astype(np.float32),
        source_sha256=mesh_sha256(source),
        target_sha256=mesh_sha256(target),
        target=target.vertices.astype(np.float32),
        info=info,
        rigid=rigid,
        part_region=part_region,
        jaw_anchors=None if regions is None else regions["jaw"],
    )


def _sided_closest(
    query: SurfaceQuery, points: np.ndarray, faces: np.ndarray, slit: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(template triangle, barycentric weights, distance) of every target vertex.

    A vertex whose closest triangle touches the template's slit (`slit`: per template triangle)
    and was voted for by none of its own target triangles goes to the nearest triangle they did
    vote for: the other side of the slit is not its side. Everywhere else the closest triangle
    stands (a coarse target triangle may span a mouth; its vote proves nothing).
    """
    # open3d's barycentric weights, not ones recomputed from the point: on a sliver triangle a
    # corner is also a mix of the other two, and its own motion would be lost.
    _, triangle, barycentric = query.locate(points)
    barycentric = barycentric / barycentric.sum(axis=1, keepdims=True)
    closest = np.einsum("nk,nkc->nc", barycentric, _corners(query, triangle))
    distance = np.linalg.norm(points - closest, axis=1)
    faces = np.asarray(faces, dtype=np.int64)
    if not len(faces) or not slit.any():
        return triangle, barycentric, distance
    _, votes, _ = query.locate(points[faces].mean(axis=1))
    pairs = np.unique(np.stack([faces.ravel(), np.repeat(votes, 3)], axis=1), axis=0)
    pairs = pairs[slit[triangle[pairs[:, 0]]]]  # vertices at the slit only
    vertex, voted = pairs[:, 0], pairs[:, 1]
    own = np.zeros(len(points), dtype=bool)
    own[vertex[voted == triangle[vertex]]] = True  # their own triangles voted for the closest
    pairs = pairs[~own[vertex]]
    if not len(pairs):
        return triangle, barycentric, distance
    vertex, voted = pairs[:, 0], pairs[:, 1]
    on_voted = _on_triangles(query, voted, points[vertex])
    gap = np.linalg.norm(points[vertex] - on_voted, axis=1)
    order = np.lexsort((gap, vertex))  # per vertex, the nearest voted triangle first
    first = order[np.r_[True, vertex[order][1:] != vertex[order][:-1]]]
    chosen = vertex[first]
    triangle[chosen], distance[chosen] = voted[first], gap[first]
    barycentric[chosen] = _barycentric(_corners(query, voted[first]), on_voted[first])
    return triangle, barycentric, distance


def slit_triangles(template: Mesh) -> np.ndarray:
    """(F,) bool: template triangles touching a slit, a vertex that lies (almost) on another
    vertex it shares no edge with (lips or eyelids that meet in coincident rows)."""
    from scipy.spatial import cKDTree

    vertices = np.asarray(template.vertices, dtype=np.float64)
    faces = np.asarray(template.faces, dtype=np.int64)
    edges = np.sort(faces[:, [0, 1, 1, 2, 2, 0]].reshape(-1, 2), axis=1)
    lengths = np.linalg.norm(vertices[edges[:, 0]] - vertices[edges[:, 1]], axis=1)
    reach = SLIT * float(np.median(lengths)) if len(lengths) else 0.0
    near = cKDTree(vertices).query_pairs(reach, output_type="ndarray") if reach > 0 else []
    on_slit = np.zeros(len(vertices), dtype=bool)
    if len(near):
        near = np.sort(near, axis=1)
        joined = {(int(a), int(b)) for a, b in edges}
        apart = np.array([(int(a), int(b)) not in joined for a, b in near], dtype=bool)
        on_slit[near[apart].ravel()] = True
    return on_slit[faces].any(axis=1)


def _on_triangles(query: SurfaceQuery, triangle: np.ndarray, points: np.ndarray) -> np.ndarray:
    """The closest point to each point on its own triangle (float64)."""
    import trimesh

    return trimesh.triangles.closest_point(_corners(query, triangle), points)


def _corners(query: SurfaceQuery, triangle: np.ndarray) -> np.ndarray:
    return query.vertices[query.faces[triangle]]


def _barycentric(corners: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Barycentric weights of points on triangles, clipped and summing to 1 (degenerate
    triangles: equal weights)."""
    import trimesh

    weights = trimesh.triangles.points_to_barycentric(corners, points, method="cramer")
    weights = np.nan_to_num(weights, nan=1.0 / 3.0)
    weights = np.clip(weights, 0.0, None)
    total = weights.sum(1, keepdims=True)
    return np.where(total > 0, weights / np.where(total > 0, total, 1.0), 1.0 / 3.0)


def make_transfer(
    source: Mesh,
    target: Mesh,
    landmarks: tuple[np.ndarray, np.ndarray] | None = None,
    landmark_file: Path | None = None,
    target_path: Path | None = None,
    masks: dict[str, np.ndarray] | None = None,
) -> Transfer:
    """Register the template `source` onto `target` and bind the target's vertices to it
    (`target_path`: the target's file, named when no face is found on it; `masks`: the
    template's region masks, see `bind`)."""
    registration = register(source, target, landmarks, landmark_file, target_path=target_path)
    return bind(registration, source, target, masks)


def save_transfer(path: str | Path, transfer: Transfer) -> None:
    """Write a transfer as an npz (atomically) that `load_transfer` reads back."""
    path = Path(path)
    members = {
        "format": np.asarray(FORMAT),
        "format_version": np.asarray(FORMAT_VERSION),
        "source_sha256": np.asarray(transfer.source_sha256),
        "target_sha256": np.asarray(transfer.target_sha256),
        "source_vertices": np.asarray(transfer.num_source),
        "target_vertices": transfer.target.astype(np.float32),
        "corners": transfer.corners.astype(np.int64),
        "weights": transfer.weights.astype(np.float32),
        "linear": transfer.linear.astype(np.float64),
        "similarity": transfer.similarity.astype(np.float64),
        "fitted": transfer.fitted.astype(np.float32),
        "rigid": np.asarray(transfer.rigid, dtype=np.int32),
        "part_region": np.asarray(transfer.part_region, dtype=np.int32),
        "jaw_anchors": np.asarray(transfer.jaw_anchors, dtype=np.int64),
        "info": np.asarray(json.dumps(transfer.info, sort_keys=True)),
    }
    with atomic_path(path, suffix=".npz") as tmp, open(tmp, "wb") as handle:
        np.savez(handle, **members)


def load_transfer(path: str | Path, source: Mesh, target: Mesh) -> Transfer:
    """A saved transfer, checked to be of this template and this target mesh.

    Raises:
        MeshtalkError: for a file that is not a transfer, of another version, or made for
            another template or target.
    """
    path = Path(path)
    if not path.is_file():
        raise MeshtalkError(path, "transfer file not found")
    try:
        with np.load(path, allow_pickle=False) as archive:
            missing = [key for key in KEYS if key not in archive.files]
            if missing:
                raise MeshtalkError(
                    path, f"not a transfer file of meshtalk (missing {', '.join(missing)})"
                )
            arrays = {key: archive[key] for key in KEYS}
    except MeshtalkError:
        raise
    except (OSError, ValueError) as error:
        raise MeshtalkError(path, f"not a readable npz file ({error})") from None
    if str(arrays["format"]) != FORMAT or int(arrays["format_version"]) != FORMAT_VERSION:
        raise MeshtalkError(
            path,
            f"transfer format {arrays['format']} v{arrays['format_version']}, this version reads "
            f"{FORMAT} v{FORMAT_VERSION}: make it again (drop --transfer)",
        )
    if str(arrays["source_sha256"]) != mesh_sha256(source):
        raise MeshtalkError(path, "was made for another model template; drop --transfer")
    if str(arrays["target_sha256"]) != mesh_sha256(target):
        raise MeshtalkError(path, "was made for another target mesh; drop --transfer")
    corners, weights = arrays["corners"], arrays["weights"]
    count, vertices = len(target.vertices), len(source.vertices)
    if (
        corners.shape != (count, 3)
        or weights.shape != (count, 3)
        or arrays["fitted"].shape != (vertices, 3)
        or arrays["linear"].shape != (3, 3)
        or corners.min(initial=0) < 0
        or corners.max(initial=0) >= vertices
        or not np.isfinite(weights).all()
        or arrays["rigid"].shape != (count,)
        or arrays["part_region"].shape != (len(np.unique(arrays["rigid"][arrays["rigid"] >= 0])),)
        or not np.isin(arrays["part_region"], list(REGION_NAMES)).all()
        or any(
            arrays[key].ndim != 1
            or arrays[key].min(initial=0) < 0
            or arrays[key].max(initial=0) >= vertices
            for key in ("jaw_anchors",)
        )
    ):
        raise MeshtalkError(path, "the transfer's arrays do not fit its meshes (damaged file?)")
    return Transfer(
        corners=corners.astype(np.int64),
        weights=weights.astype(np.float32),
        linear=arrays["linear"],
        similarity=arrays["similarity"],
        fitted=arrays["fitted"],
        source_sha256=str(arrays["source_sha256"]),
        target_sha256=str(arrays["target_sha256"]),
        target=target.vertices.astype(np.float32),
        info=json.loads(str(arrays["info"])),
        rigid=arrays["rigid"].astype(np.int32),
        part_region=arrays["part_region"].astype(np.int32),
        jaw_anchors=arrays["jaw_anchors"].astype(np.int64),
    )
