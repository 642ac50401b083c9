"""Mesh I/O that keeps vertex order and count exactly: PLY, OBJ and Multiface `.bin` files.

open3d's OBJ reader splits vertices at UV seams and reorders them, which destroys per-vertex
correspondence; OBJ files are therefore read and written here, while PLY goes through open3d.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from meshtalk.pipelines.errors import MeshtalkError
from meshtalk.pipelines.io.atomic import atomic_path

MESH_SUFFIXES = (".ply", ".obj")


@dataclass
class Mesh:
    """A triangle mesh.

    Attributes:
        vertices: (V, 3) float32 positions, in the file's units (millimetres for Multiface).
        faces: (F, 3) int64 vertex indices, 0-based.
        uvs: (U, 2) float32 texture coordinates, or None.
        face_uvs: (F, 3) int64 indices into `uvs`, or None.
    """

    vertices: np.ndarray
    faces: np.ndarray
    uvs: np.ndarray | None = None
    face_uvs: np.ndarray | None = None


def read_mesh(path: str | Path) -> Mesh:
    """Read a PLY or OBJ mesh keeping its vertices in file order."""
    path = Path(path)
    if not path.is_file():
        raise MeshtalkError(path, "mesh file not found")
    suffix = path.suffix.lower()
    if suffix == ".obj":
        mesh = _read_obj(path)
    elif suffix == ".ply":
        mesh = _read_ply(path)
    else:
        raise MeshtalkError(path, f"unsupported mesh format '{suffix}' (use .ply or .obj)")
    if len(mesh.vertices) == 0:
        raise MeshtalkError(path, "mesh has no vertices")
    if not np.isfinite(mesh.vertices).all():
        raise MeshtalkError(path, "mesh has NaN or infinite vertex coordinates")
    if len(mesh.faces) and (mesh.faces.min() < 0 or mesh.faces.max() >= len(mesh.vertices)):
        raise MeshtalkError(path, "a face refers to a vertex that does not exist")
    return mesh


def surface_problem(mesh: Mesh) -> str | None:
    """Why a mesh cannot be drawn (no faces, or every face of zero area), or None.

    The threshold is relative to the mesh's size, as the transfer's: a face counts if its area
    exceeds 1e-12 of the squared bounding-box diagonal.
    """
    if len(mesh.faces) == 0:
        return "has no faces (a point cloud), which the video needs: give a mesh, or --no-video"
    corners = np.asarray(mesh.vertices, dtype=np.float64)[mesh.faces]
    doubled = np.linalg.norm(
        np.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0]), axis=1
    )
    extent = np.ptp(np.asarray(mesh.vertices, dtype=np.float64), axis=0)
    size = float(np.linalg.norm(extent))
    if not (0.5 * doubled > 1e-12 * size * size).any():
        return "every face is degenerate (zero area): nothing to draw or animate"
    return None


def write_mesh(path: str | Path, mesh: Mesh) -> None:
    """Write a mesh as PLY or OBJ (chosen by suffix), atomically, keeping vertex order."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in MESH_SUFFIXES:
        raise MeshtalkError(path, f"unsupported mesh format '{suffix}' (use .ply or .obj)")
    with atomic_path(path, suffix=suffix) as tmp:
        if suffix == ".obj":
            _write_obj(tmp, mesh)
        else:
            _write_ply(tmp, mesh)


def _parse_index(token: str, count: int) -> int:
    index = int(token)
    return index - 1 if index > 0 else count + index


def _read_obj(path: Path) -> Mesh:
    vertices: list[list[float]] = []
    uvs: list[list[float]] = []
    faces: list[list[int]] = []
    face_uvs: list[list[int]] = []
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            for line_number, line in enumerate(handle, 1):
                parts = line.split()
                if not parts:
                    continue
                tag = parts[0]
                if tag == "v":
                    if len(parts) < 4:
                        raise ValueError(
                            f"line {line_number}: a vertex needs 3 coordinates, got "
                            f"{len(parts) - 1}"
                        )
                    vertices.append([float(x) for x in parts[1:4]])
                elif tag == "vt":
                    if len(parts) < 2:
                        raise ValueError(f"line {line_number}: a texture coordinate needs u")
                    uvs.append(
                        [float(x) for x in (parts[1:3] if len(parts) > 2 else [parts[1], 0])]
                    )
                elif tag == "f":
                    corners = [c.split("/") for c in parts[1:]]
                    if len(corners) < 3:
                        raise ValueError(f"line {line_number}: a face needs 3 corners")
                    v_idx = [_parse_index(c[0], len(vertices)) for c in corners]
                    has_uv = all(len(c) > 1 and c[1] for c in corners)
                    t_idx = [_parse_index(c[1], len(uvs)) for c in corners] if has_uv else None
                    for k in range(1, len(corners) - 1):  # fan-triangulate polygons
                        faces.append([v_idx[0], v_idx[k], v_idx[k + 1]])
                        if t_idx is not None:
                            face_uvs.append([t_idx[0], t_idx[k], t_idx[k + 1]])
    except (ValueError, IndexError) as error:
        raise MeshtalkError(path, f"not a valid OBJ file ({error})") from None
    vertex_array = np.asarray(vertices, dtype=np.float32).reshape(-1, 3)
    face_array = np.asarray(faces, dtype=np.int64).reshape(-1, 3)
    keep_uvs = len(uvs) > 0 and len(face_uvs) == len(faces)
    return Mesh(
        vertices=vertex_array,
        faces=face_array,
        uvs=np.asarray(uvs, dtype=np.float32).reshape(-1, 2) if keep_uvs else None,
        face_uvs=np.asarray(face_uvs, dtype=np.int64).reshape(-1, 3) if keep_uvs else None,
    )


def _write_obj(path: Path, mesh: Mesh) -> None:
    lines = [f"v {x:.6f} {y:.6f} {z:.6f}" for x, y, z in mesh.vertices.tolist()]
    if mesh.uvs is not None and mesh.face_uvs is not None:
        lines += [f"vt {u:.6f} {v:.6f}" for u, v in mesh.uvs.tolist()]
        for (a, b, c), (ta, tb, tc) in zip(mesh.faces.tolist(), mesh.face_uvs.tolist()):
            lines.append(f"f {a + 1}/{ta + 1} {b + 1}/{tb + 1} {c + 1}/{tc + 1}")
    else:
        lines += [f"f {a + 1} {b + 1} {c + 1}" for a, b, c in mesh.faces.tolist()]
    path.write_text("\n".join(lines) + "\n")


def _read_ply(path: Path) -> Mesh:
    import open3d as o3d

    triangle_mesh = o3d.io.read_triangle_mesh(str(path))
    vertices = np.asarray(triangle_mesh.vertices, dtype=np.float32)
    faces = np.asarray(triangle_mesh.triangles, dtype=np.int64).reshape(-1, 3)
    if len(vertices) == 0:  # a PLY holding only points
        vertices = np.asarray(o3d.io.read_point_cloud(str(path)).points, dtype=np.float32)
    return Mesh(vertices=vertices.reshape(-1, 3), faces=faces)


def _write_ply(path: Path, mesh: Mesh) -> None:
    import open3d as o3d

    triangle_mesh = o3d.geometry.TriangleMesh(
        o3d.utility.Vector3dVector(mesh.vertices.astype(np.float64)),
        o3d.utility.Vector3iVector(mesh.faces.astype(np.int32)),
    )
    if not o3d.io.write_triangle_mesh(str(path), triangle_mesh, write_ascii=False):
        raise MeshtalkError(path, "open3d could not write the PLY file")


# --- Multiface tracked meshes -------------------------------------------------------------------


def read_bin(path: str | Path, num_vertices: int) -> np.ndarray:
    """Read a Multiface `FRAMEID.bin` file: `num_vertices` x 3 little-endian float32 (mm).

    Raises:
        MeshtalkError: for an empty, truncated or wrongly sized file, or NaN coordinates.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as error:
        raise MeshtalkError(path, f"cannot read mesh ({error.strerror})") from None
    expected = num_vertices * 12
    if len(data) == 0:
        raise MeshtalkError(path, "mesh file is empty")
    if len(data) % 12:
        raise MeshtalkError(
            path, f"truncated mesh: {len(data)} bytes is not a whole number of vertices"
        )
    if len(data) != expected:
        raise MeshtalkError(path, f"has {len(data) // 12} vertices, expected {num_vertices}")
    vertices = np.frombuffer(data, dtype="<f4").reshape(num_vertices, 3)
    if not np.isfinite(vertices).all():
        raise MeshtalkError(path, "mesh has NaN or infinite vertex coordinates")
    return vertices


def write_bin(path: str | Path, vertices: np.ndarray) -> None:
    """Write vertices as a Multiface `.bin` file (little-endian float32)."""
    Path(path).write_bytes(np.ascontiguousarray(vertices, dtype="<f4").tobytes())


def read_transform(path: str | Path) -> np.ndarray:
    """Read a Multiface `FRAMEID_transform.txt`: a 3x4 [R|t] head pose (head space -> world)."""
    path = Path(path)
    try:
        values = np.array(path.read_text().split(), dtype=np.float64)
    except OSError as error:
        raise MeshtalkError(path, f"cannot read head pose ({error.strerror})") from None
    except ValueError:
        raise MeshtalkError(path, "head pose holds something that is not a number") from None
    if values.size != 12 or not np.isfinite(values).all():
        raise MeshtalkError(path, f"head pose must be 12 finite numbers (3x4), found {values.size}")
    return values.reshape(3, 4)


def write_transform(path: str | Path, pose: np.ndarray) -> None:
    """Write a 3x4 head pose as Multiface does (three rows of four numbers)."""
    rows = [" ".join(f"{v:.8f}" for v in row) for row in np.asarray(pose).reshape(3, 4)]
    Path(path).write_text("\n".join(rows) + "\n")
