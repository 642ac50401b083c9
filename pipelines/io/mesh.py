"""Mesh I/O that keeps vertex order and count exactly: PLY, OBJ and Multiface `.bin` files.

open3d's OBJ reader splits vertices at UV seams and reorders them, which destroys per-vertex
correspondence; OBJ files are therefore read and written here, while PLY goes through open3d.
"""

from __future__ import annotations

import dataclasses
import shutil
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
        normals: (N, 3) float32 normals (OBJ `vn`, PLY per-vertex normals), or None.
        face_normals: (F, 3) int64 indices into `normals` of each face's corners, or None.
        colours: (V, 3) float32 per-vertex colours in [0, 1] (PLY, or OBJ `v x y z r g b`).
        material_libs: the OBJ's `mtllib` files, as written in it.
        materials: the names its `usemtl` lines use.
        face_materials: (F,) int64 index into `materials` of each face (-1: none), or None.
        folder: where the mesh was read from (its material files are found there).
    """

    vertices: np.ndarray
    faces: np.ndarray
    uvs: np.ndarray | None = None
    face_uvs: np.ndarray | None = None
    normals: np.ndarray | None = None
    face_normals: np.ndarray | None = None
    colours: np.ndarray | None = None
    material_libs: tuple[str, ...] = ()
    materials: tuple[str, ...] = ()
    face_materials: np.ndarray | None = None
    folder: Path | None = None

    def moved(self, vertices: np.ndarray) -> Mesh:
        """The same mesh (faces, UVs, colours, materials) at other vertex positions; its normals
        recomputed from them, keeping which corners share a normal (hard edges stay hard)."""
        vertices = np.asarray(vertices, dtype=np.float32)
        normals = None if self.normals is None else corner_normals(self, vertices)
        return dataclasses.replace(self, vertices=vertices, normals=normals)


def corner_normals(mesh: Mesh, vertices: np.ndarray) -> np.ndarray:
    """(N, 3) the mesh's normals recomputed at `vertices`: normal j is the area-weighted sum of
    the face normals of the corners that use it (`face_normals`), normalised."""
    corners = np.asarray(vertices, dtype=np.float64)[mesh.faces]
    face = np.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0])
    index = np.asarray(mesh.face_normals, dtype=np.int64).ravel()
    count = len(mesh.normals)
    summed = np.stack(
        [np.bincount(index, np.repeat(face[:, axis], 3), count) for axis in range(3)], axis=1
    )
    length = np.linalg.norm(summed, axis=1, keepdims=True)
    fallback = np.asarray(mesh.normals, dtype=np.float64)
    return np.where(length > 0, summed / np.maximum(length, 1e-300), fallback).astype(np.float32)


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
    colours: list[list[float]] = []
    uvs: list[list[float]] = []
    normals: list[list[float]] = []
    faces: list[list[int]] = []
    face_uvs: list[list[int]] = []
    face_normals: list[list[int]] = []
    face_materials: list[int] = []
    libs: list[str] = []
    materials: dict[str, int] = {}
    current = -1
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
                    if len(parts) >= 7:
                        colours.append([float(x) for x in parts[4:7]])
                elif tag == "vt":
                    if len(parts) < 2:
                        raise ValueError(f"line {line_number}: a texture coordinate needs u")
                    uvs.append(
                        [float(x) for x in (parts[1:3] if len(parts) > 2 else [parts[1], 0])]
                    )
                elif tag == "vn":
                    if len(parts) < 4:
                        raise ValueError(f"line {line_number}: a normal needs 3 coordinates")
                    normals.append([float(x) for x in parts[1:4]])
                elif tag == "mtllib":
                    libs.append(line.strip()[len("mtllib") :].strip())
                elif tag == "usemtl":
                    name = line.strip()[len("usemtl") :].strip()
                    current = materials.setdefault(name, len(materials))
                elif tag == "f":
                    corners = [c.split("/") for c in parts[1:]]
                    if len(corners) < 3:
                        raise ValueError(f"line {line_number}: a face needs 3 corners")
                    v_idx = [_parse_index(c[0], len(vertices)) for c in corners]
                    has_uv = all(len(c) > 1 and c[1] for c in corners)
                    has_n = all(len(c) > 2 and c[2] for c in corners)
                    t_idx = [_parse_index(c[1], len(uvs)) for c in corners] if has_uv else None
                    n_idx = [_parse_index(c[2], len(normals)) for c in corners] if has_n else None
                    for k in range(1, len(corners) - 1):  # fan-triangulate polygons
                        faces.append([v_idx[0], v_idx[k], v_idx[k + 1]])
                        face_materials.append(current)
                        if t_idx is not None:
                            face_uvs.append([t_idx[0], t_idx[k], t_idx[k + 1]])
                        if n_idx is not None:
                            face_normals.append([n_idx[0], n_idx[k], n_idx[k + 1]])
    except (ValueError, IndexError) as error:
        raise MeshtalkError(path, f"not a valid OBJ file ({error})") from None
    vertex_array = np.asarray(vertices, dtype=np.float32).reshape(-1, 3)
    face_array = np.asarray(faces, dtype=np.int64).reshape(-1, 3)
    keep_uvs = len(uvs) > 0 and len(face_uvs) == len(faces)
    keep_normals = len(normals) > 0 and len(face_normals) == len(faces)
    mesh = Mesh(
        vertices=vertex_array,
        faces=face_array,
        uvs=np.asarray(uvs, dtype=np.float32).reshape(-1, 2) if keep_uvs else None,
        face_uvs=np.asarray(face_uvs, dtype=np.int64).reshape(-1, 3) if keep_uvs else None,
        normals=np.asarray(normals, dtype=np.float32).reshape(-1, 3) if keep_normals else None,
        face_normals=(
            np.asarray(face_normals, dtype=np.int64).reshape(-1, 3) if keep_normals else None
        ),
        colours=(np.asarray(colours, dtype=np.float32) if len(colours) == len(vertices) else None),
        material_libs=tuple(libs),
        materials=tuple(materials),
        face_materials=np.asarray(face_materials, dtype=np.int64) if materials else None,
        folder=path.parent,
    )
    for name, indices, table in (
        ("texture coordinate", mesh.face_uvs, mesh.uvs),
        ("normal", mesh.face_normals, mesh.normals),
    ):
        if (
            indices is not None
            and len(indices)
            and (indices.min() < 0 or indices.max() >= len(table))
        ):
            raise MeshtalkError(path, f"a face refers to a {name} that does not exist")
    return mesh


def _write_obj(path: Path, mesh: Mesh) -> None:
    path.write_text(obj_text(mesh, mesh.vertices))


def obj_text(mesh: Mesh, vertices: np.ndarray) -> str:
    """The OBJ of `mesh` at `vertices`: its material libraries, colours, texture coordinates,
    normals (as given) and faces with their materials, in the order read."""
    import io

    text = io.StringIO()
    for lib in mesh.material_libs:
        text.write(f"mtllib {lib}\n")
    vertices = np.asarray(vertices, dtype=np.float64).reshape(-1, 3)
    if mesh.colours is not None and len(mesh.colours) == len(vertices):
        np.savetxt(text, np.hstack([vertices, mesh.colours]), fmt="v %.6f %.6f %.6f %.4f %.4f %.4f")
    else:
        np.savetxt(text, vertices, fmt="v %.6f %.6f %.6f")
    text.write(obj_faces(mesh))
    return text.getvalue()


def obj_faces(mesh: Mesh, normals: np.ndarray | None = None) -> str:
    """The texture coordinates, normals (`normals`, default the mesh's) and faces of an OBJ, with
    `usemtl` wherever the material changes (1-based indices)."""
    import io

    text = io.StringIO()
    columns = [mesh.faces + 1]
    if mesh.uvs is not None and mesh.face_uvs is not None:
        np.savetxt(text, np.asarray(mesh.uvs, dtype=np.float64).reshape(-1, 2), fmt="vt %.6f %.6f")
        columns.append(np.asarray(mesh.face_uvs).reshape(-1, 3) + 1)
    normals = mesh.normals if normals is None else normals
    if normals is not None and mesh.face_normals is not None:
        np.savetxt(
            text, np.asarray(normals, dtype=np.float64).reshape(-1, 3), fmt="vn %.6f %.6f %.6f"
        )
        columns.append(np.asarray(mesh.face_normals).reshape(-1, 3) + 1)
    if len(columns) == 1:
        corner = "%d"
    elif len(columns) == 2 and mesh.face_uvs is not None:
        corner = "%d/%d"
    elif len(columns) == 2:
        corner = "%d//%d"
    else:
        corner = "%d/%d/%d"
    if not len(mesh.faces):  # a point cloud
        return text.getvalue()
    table = np.stack(columns, axis=-1).reshape(len(mesh.faces), -1)
    line = "f " + " ".join([corner] * 3)
    if mesh.face_materials is None or not mesh.materials:
        np.savetxt(text, table, fmt=line)
        return text.getvalue()
    changes = np.flatnonzero(np.diff(mesh.face_materials, prepend=-2))
    for start, stop in zip(changes, [*changes[1:], len(table)]):
        material = int(mesh.face_materials[start])
        if material >= 0:
            text.write(f"usemtl {mesh.materials[material]}\n")
        np.savetxt(text, table[start:stop], fmt=line)
    return text.getvalue()


def copy_materials(mesh: Mesh, folder: Path) -> list[str]:
    """Copy the mesh's material libraries (and the texture files they name) from where it was
    read into `folder`, so that its OBJ there shows its materials. Only files inside the mesh's
    own folder are copied (names that lead outside it are skipped). Returns the names copied."""
    if mesh.folder is None or not mesh.material_libs:
        return []
    root = Path(mesh.folder).resolve()
    copied = []
    for lib in mesh.material_libs:
        source = (root / lib).resolve()
        if root not in source.parents or not source.is_file():
            continue
        names = [lib]
        for line in source.read_text(errors="replace").splitlines():
            parts = line.split()
            if parts and parts[0].startswith("map_") or parts and parts[0] in ("bump", "disp"):
                names.append(parts[-1])
        for name in names:
            found = (root / name).resolve()
            target = Path(folder) / name
            if root not in found.parents or not found.is_file() or target.exists():
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(found, target)
            copied.append(name)
    return copied


def _read_ply(path: Path) -> Mesh:
    import open3d as o3d

    triangle_mesh = o3d.io.read_triangle_mesh(str(path))
    vertices = np.asarray(triangle_mesh.vertices, dtype=np.float32)
    faces = np.asarray(triangle_mesh.triangles, dtype=np.int64).reshape(-1, 3)
    if len(vertices) == 0:  # a PLY holding only points
        vertices = np.asarray(o3d.io.read_point_cloud(str(path)).points, dtype=np.float32)
        return Mesh(vertices=vertices.reshape(-1, 3), faces=faces, folder=path.parent)
    colours = None
    if triangle_mesh.has_vertex_colors():
        colours = np.asarray(triangle_mesh.vertex_colors, dtype=np.float32)
    normals = None
    if triangle_mesh.has_vertex_normals():
        normals = np.asarray(triangle_mesh.vertex_normals, dtype=np.float32)
    return Mesh(
        vertices=vertices.reshape(-1, 3),
        faces=faces,
        normals=normals,
        face_normals=None if normals is None else faces,
        colours=colours,
        folder=path.parent,
    )


def _write_ply(path: Path, mesh: Mesh) -> None:
    """Binary little-endian PLY through trimesh (`process=False`: vertex order kept): float32
    positions and normals, 8-bit colours. (open3d wrote the same file but its import pulls in
    scikit-learn, pandas and dash: 2.5 s before the first byte of a PC2's template.)"""
    import trimesh
    from trimesh.exchange.ply import export_ply

    kwargs = {}
    if mesh.colours is not None and len(mesh.colours) == len(mesh.vertices):
        colours = np.clip(np.asarray(mesh.colours, dtype=np.float64)[:, :3], 0.0, 1.0)
        kwargs["vertex_colors"] = np.rint(colours * 255).astype(np.uint8)
    normals = mesh.normals is not None and len(mesh.normals) == len(mesh.vertices)
    if normals:
        kwargs["vertex_normals"] = np.asarray(mesh.normals, dtype=np.float64)
    shape = trimesh.Trimesh(
        vertices=np.asarray(mesh.vertices, dtype=np.float64),
        faces=np.asarray(mesh.faces, dtype=np.int64).reshape(-1, 3),
        process=False,
        validate=False,
        **kwargs,
    )
    path.write_bytes(export_ply(shape, encoding="binary", vertex_normal=normals))


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
