"""Where each target vertex sits on the registered template, and moving frames across with it.

Every target vertex is bound to the closest point of the fitted template (a triangle and its
barycentric coordinates). A frame's displacement from the template (frame - template) is
interpolated there, turned by the registration's rotation and scale, and added to the target's
own vertex: the target keeps its shape, vertex order and faces, and moves as the template does.
Target vertices far from the template (parts it does not cover: the back of a head, shoulders)
follow less and less, and not at all beyond `FALLOFF_END`.

Binding and registration are saved together (`save_transfer`, `OUT/transfer.npz`) with the
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
from meshtalk.pipelines.transfer.registration import Registration, mesh_sha256, register

log = logging.getLogger(__name__)

FORMAT = "meshtalk-transfer"
FORMAT_VERSION = 1
"""Version of transfer.npz; a file of another version is refused (made again in seconds)."""
FALLOFF_START, FALLOFF_END = 0.03, 0.08
"""Target vertices farther from the fitted template than the first fraction of the target's
size follow its motion less, linearly, down to nothing at the second."""
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

    def __post_init__(self) -> None:
        import scipy.sparse

        rows = np.repeat(np.arange(len(self.corners)), 3)
        self._matrix = scipy.sparse.csr_matrix(
            (self.weights.ravel().astype(np.float32), (rows, self.corners.ravel())),
            shape=(len(self.corners), len(self.fitted)),
        )
        self._linear_t = np.ascontiguousarray(self.linear.T, dtype=np.float32)
        self._target = np.ascontiguousarray(self.target, dtype=np.float32)

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
        return result[0] if single else result


def bind(registration: Registration, source: Mesh, target: Mesh) -> Transfer:
    """Locate every target vertex on the fitted template (closest point, barycentric)."""
    import trimesh

    fitted = trimesh.Trimesh(registration.vertices, source.faces, process=False, validate=False)
    points = target.vertices.astype(np.float64)
    closest, distance, triangle = trimesh.proximity.closest_point(fitted, points)
    corners = source.faces[triangle].astype(np.int64)
    barycentric = trimesh.triangles.points_to_barycentric(
        registration.vertices[corners], closest, method="cramer"
    )
    barycentric = np.nan_to_num(barycentric, nan=1.0 / 3.0)  # degenerate template triangles
    barycentric = np.clip(barycentric, 0.0, None)
    barycentric /= barycentric.sum(1, keepdims=True)
    size = float(np.linalg.norm(points.max(0) - points.min(0)))
    start, end = FALLOFF_START * size, FALLOFF_END * size
    falloff = np.clip((end - distance) / (end - start), 0.0, 1.0)
    if (falloff < 1).any():
        log.info(
            "%d target vertices lie away from the face the model animates; they move less",
            int((falloff < 1).sum()),
        )
    return Transfer(
        corners=corners,
        weights=(barycentric * falloff[:, None]).astype(np.float32),
        linear=registration.similarity[:3, :3].astype(np.float64),
        similarity=registration.similarity,
        fitted=registration.vertices.astype(np.float32),
        source_sha256=mesh_sha256(source),
        target_sha256=mesh_sha256(target),
        target=target.vertices.astype(np.float32),
        info={
            "alignment": "landmarks" if registration.landmarks else "automatic",
            "scale": registration.scale,
            "mean_distance": float(distance.mean()),
            "max_distance": float(distance.max()),
        },
    )


def make_transfer(
    source: Mesh,
    target: Mesh,
    landmarks: tuple[np.ndarray, np.ndarray] | None = None,
    landmark_file: Path | None = None,
) -> Transfer:
    """Register the template `source` onto `target` and bind the target's vertices to it."""
    return bind(register(source, target, landmarks, landmark_file), source, target)


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
    )
