"""One mesh file per frame (PLY or OBJ), written fast: the faces are encoded once.

Binary little-endian PLY (float32 vertices, uchar-int32 face lists) or OBJ text with the template's
texture coordinates; both keep the vertex order of the template exactly.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

FRAME_FORMATS = ("ply", "obj")


class FrameMeshWriter:
    """Write `frame_000000.<fmt>`, `frame_000001.<fmt>`, ... into a folder as frames come.

    Args:
        folder: where the frames go (created).
        faces: (F, 3) int vertex indices, 0-based.
        fmt: 'ply' or 'obj'.
        scale: every coordinate is multiplied by it.
        uvs: (U, 2) texture coordinates for OBJ, or None.
        face_uvs: (F, 3) indices into `uvs`, or None.
    """

    def __init__(
        self,
        folder: str | Path,
        faces: np.ndarray,
        fmt: str,
        scale: float = 1.0,
        uvs: np.ndarray | None = None,
        face_uvs: np.ndarray | None = None,
    ) -> None:
        if fmt not in FRAME_FORMATS:
            raise ValueError(f"frame format must be one of {', '.join(FRAME_FORMATS)}, got {fmt!r}")
        self.folder, self.fmt, self.scale = Path(folder), fmt, scale
        self.folder.mkdir(parents=True, exist_ok=True)
        faces = np.asarray(faces, dtype=np.int64).reshape(-1, 3)
        self.num_faces = len(faces)
        self.index = 0
        if fmt == "ply":
            records = np.empty(len(faces), dtype=[("n", "u1"), ("v", "<i4", (3,))])
            records["n"], records["v"] = 3, faces
            self.tail = records.tobytes()
        else:
            self.tail = _obj_tail(faces, uvs, face_uvs).encode()

    def write(self, frames: np.ndarray) -> None:
        """Write (n, V, 3) frames, each to its own file."""
        for vertices in np.asarray(frames, dtype=np.float32):
            vertices = vertices * self.scale if self.scale != 1.0 else vertices
            path = self.folder / f"frame_{self.index:06d}.{self.fmt}"
            path.write_bytes(self._encode(vertices))
            self.index += 1

    def _encode(self, vertices: np.ndarray) -> bytes:
        if self.fmt == "ply":
            header = (
                "ply\nformat binary_little_endian 1.0\n"
                f"element vertex {len(vertices)}\n"
                "property float x\nproperty float y\nproperty float z\n"
                f"element face {self.num_faces}\n"
                "property list uchar int vertex_indices\nend_header\n"
            )
            return (
                header.encode() + np.ascontiguousarray(vertices, dtype="<f4").tobytes() + self.tail
            )
        text = io.StringIO()
        np.savetxt(text, vertices, fmt="v %.6f %.6f %.6f")
        return text.getvalue().encode() + self.tail


def _obj_tail(faces: np.ndarray, uvs: np.ndarray | None, face_uvs: np.ndarray | None) -> str:
    """The texture coordinates and faces of every frame's OBJ (1-based indices)."""
    text = io.StringIO()
    if uvs is not None and face_uvs is not None:
        np.savetxt(text, np.asarray(uvs, dtype=np.float64).reshape(-1, 2), fmt="vt %.6f %.6f")
        pairs = np.stack([faces + 1, np.asarray(face_uvs).reshape(-1, 3) + 1], axis=-1)
        np.savetxt(text, pairs.reshape(-1, 6), fmt="f %d/%d %d/%d %d/%d")
    else:
        np.savetxt(text, faces + 1, fmt="f %d %d %d")
    return text.getvalue()
