"""One mesh file per frame (PLY or OBJ), written fast: the faces are encoded once.

Binary little-endian PLY (float32 vertices, uchar-int32 face lists) or OBJ text with the template's
texture coordinates; both keep the vertex order of the template exactly.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from meshtalk.pipelines.io.mesh import Mesh, copy_materials, corner_normals, obj_faces

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
        mesh: the template as read (`Mesh`): when given, its faces, texture coordinates, colours,
            materials (OBJ `mtllib`/`usemtl`) and normals go into every frame, the normals
            recomputed for the frame's shape with the template's hard edges.
    """

    def __init__(
        self,
        folder: str | Path,
        faces: np.ndarray,
        fmt: str,
        scale: float = 1.0,
        uvs: np.ndarray | None = None,
        face_uvs: np.ndarray | None = None,
        mesh: Mesh | None = None,
    ) -> None:
        if fmt not in FRAME_FORMATS:
            raise ValueError(f"frame format must be one of {', '.join(FRAME_FORMATS)}, got {fmt!r}")
        self.folder, self.fmt, self.scale = Path(folder), fmt, scale
        self.folder.mkdir(parents=True, exist_ok=True)
        faces = np.asarray(faces, dtype=np.int64).reshape(-1, 3)
        if mesh is None:
            mesh = Mesh(vertices=np.zeros((0, 3), np.float32), faces=faces, uvs=uvs,
                        face_uvs=face_uvs)  # fmt: skip
        self.mesh = mesh
        self.num_faces = len(mesh.faces)
        self.index = 0
        per_vertex = mesh.normals is not None and mesh.face_normals is not None
        self.normals = per_vertex and (fmt == "obj" or np.array_equal(mesh.face_normals, faces))
        self.colours = None
        if mesh.colours is not None:
            self.colours = np.clip(np.round(np.asarray(mesh.colours)[:, :3] * 255), 0, 255)
        if fmt == "ply":
            records = np.empty(len(faces), dtype=[("n", "u1"), ("v", "<i4", (3,))])
            records["n"], records["v"] = 3, faces
            self.tail = records.tobytes()
        elif not self.normals:
            self.tail = obj_faces(mesh).encode()
        if fmt == "obj" and mesh.material_libs:
            copy_materials(mesh, self.folder)

    def write(self, frames: np.ndarray) -> None:
        """Write (n, V, 3) frames, each to its own file."""
        for vertices in np.asarray(frames, dtype=np.float32):
            vertices = vertices * self.scale if self.scale != 1.0 else vertices
            path = self.folder / f"frame_{self.index:06d}.{self.fmt}"
            path.write_bytes(self._encode(vertices))
            self.index += 1

    def _encode(self, vertices: np.ndarray) -> bytes:
        normals = corner_normals(self.mesh, vertices) if self.normals else None
        if self.fmt == "ply":
            properties = "property float x\nproperty float y\nproperty float z\n"
            columns = [("x", "<f4", (3,))]
            if normals is not None:
                properties += "property float nx\nproperty float ny\nproperty float nz\n"
                columns.append(("n", "<f4", (3,)))
            if self.colours is not None:
                properties += "property uchar red\nproperty uchar green\nproperty uchar blue\n"
                columns.append(("c", "u1", (3,)))
            header = (
                "ply\nformat binary_little_endian 1.0\n"
                f"element vertex {len(vertices)}\n{properties}"
                f"element face {self.num_faces}\n"
                "property list uchar int vertex_indices\nend_header\n"
            )
            records = np.empty(len(vertices), dtype=columns)
            records["x"] = vertices
            if normals is not None:
                records["n"] = normals
            if self.colours is not None:
                records["c"] = self.colours
            return header.encode() + records.tobytes() + self.tail
        text = io.StringIO()
        for lib in self.mesh.material_libs:
            text.write(f"mtllib {lib}\n")
        if self.colours is not None:
            table = np.hstack([vertices, np.asarray(self.mesh.colours)[:, :3]])
            np.savetxt(text, table, fmt="v %.6f %.6f %.6f %.4f %.4f %.4f")
        else:
            np.savetxt(text, vertices, fmt="v %.6f %.6f %.6f")
        tail = self.tail if normals is None else obj_faces(self.mesh, normals).encode()
        return text.getvalue().encode() + tail
