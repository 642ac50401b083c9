"""GLB (binary glTF 2.0): the template with the clip as morph targets and a LINEAR weights track.

The container is pygltflib's (typed glTF objects, the binary chunk); this module lays out the
buffers. Positions in metres, +Y up (the template's axes; the MeshTalk heads face +Z). The first
V vertices are the template's, in its order, so a viewer's vertex i is the animation's vertex i;
where the user's mesh has UV seams, the extra corners are appended after them
(`extras.meshtalk.seamVertices` names the template vertex each one copies). Every POSITION
accessor (morph deltas too) and the animation's input carry `min`/`max` computed from the stored
data, as the Khronos validator checks.

The morph targets of an SVD basis are 16-bit (KHR_mesh_quantization, which Blender's importer,
three.js and the validator read): normalized SHORTs, 8 bytes a vertex with the 4-byte alignment
glTF asks of vertex attributes, instead of 12; each target's scale s_k (metres) goes into its
weight, which stays in [0, 1] (weight_k * s_k). See basis.py: the recorded error is measured on
exactly these values.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from meshtalk.pipelines.export.basis import Basis
from meshtalk.pipelines.io.mesh import Mesh

ARRAY_BUFFER, ELEMENT_ARRAY_BUFFER = 34962, 34963
FLOAT, UNSIGNED_INT, SHORT = 5126, 5125, 5122
QUANTIZATION = "KHR_mesh_quantization"
IMAGE_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg"}


@dataclass
class GltfMesh:
    """The template laid out as glTF wants it: one index per corner of (position, UV)."""

    positions: np.ndarray
    """(V', 3) float32, the template's V first."""
    indices: np.ndarray
    """(F, 3) uint32."""
    source: np.ndarray
    """(V',) the template vertex of each glTF vertex (identity on the first V)."""
    uvs: np.ndarray | None
    """(V', 2) float32, v flipped (glTF's origin is the top left), or None."""
    colours: np.ndarray | None
    """(V', 3) float32 in [0, 1], or None."""


def layout(mesh: Mesh) -> GltfMesh:
    """The mesh with one UV per vertex: corners whose UV differs from their vertex's first one
    become new vertices after the template's (vertex order kept)."""
    count = len(mesh.vertices)
    faces = np.asarray(mesh.faces, dtype=np.int64).reshape(-1, 3)
    source = np.arange(count)
    uvs = None
    if mesh.uvs is not None and mesh.face_uvs is not None and len(faces):
        corner_v, corner_t = faces.ravel(), np.asarray(mesh.face_uvs, np.int64).ravel()
        pairs, inverse = np.unique(np.stack([corner_v, corner_t], 1), axis=0, return_inverse=True)
        inverse = inverse.ravel()
        first_of_vertex = np.r_[True, pairs[1:, 0] != pairs[:-1, 0]]  # each vertex's first pair
        index = np.empty(len(pairs), np.int64)
        index[first_of_vertex] = pairs[first_of_vertex, 0]
        extra = np.flatnonzero(~first_of_vertex)
        index[extra] = count + np.arange(len(extra))
        faces = index[inverse].reshape(-1, 3)
        source = np.concatenate([source, pairs[extra, 0]])
        table = np.zeros((len(source), 2), np.float32)
        table[index] = np.asarray(mesh.uvs, np.float32)[pairs[:, 1]]
        uvs = table * np.float32([1, -1]) + np.float32([0, 1])
    colours = None
    if mesh.colours is not None and len(mesh.colours) == count:
        colours = np.clip(np.asarray(mesh.colours, np.float32)[:, :3], 0, 1)[source]
    positions = np.asarray(mesh.vertices, np.float32)[source]
    return GltfMesh(positions, faces.astype(np.uint32), source, uvs, colours)


def vertex_normals(positions: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """(V, 3) unit area-weighted vertex normals (+Y where a vertex has no area)."""
    corners = positions.astype(np.float64)[faces.astype(np.int64)]
    face = np.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0])
    summed = np.zeros((len(positions), 3))
    for corner in range(3):
        np.add.at(summed, faces[:, corner].astype(np.int64), face)
    length = np.linalg.norm(summed, axis=1, keepdims=True)
    unit = np.where(length > 1e-30, summed / np.maximum(length, 1e-30), [0.0, 1.0, 0.0])
    return unit.astype(np.float32)


class _Blob:
    """The binary chunk and its bufferViews/accessors, appended in order (4-byte aligned)."""

    def __init__(self, gltf) -> None:
        self.gltf, self.parts, self.size = gltf, [], 0

    def view(self, raw: bytes, target=None, stride=None) -> int:
        """A bufferView of `raw`; its index."""
        import pygltflib

        self.gltf.bufferViews.append(
            pygltflib.BufferView(
                buffer=0,
                byteOffset=self.size,
                byteLength=len(raw),
                target=target,
                byteStride=stride,
            )
        )
        self.parts.append(raw)
        self.size += len(raw)
        if self.size % 4:
            self.parts.append(b"\0" * (4 - self.size % 4))
            self.size += 4 - self.size % 4
        return len(self.gltf.bufferViews) - 1

    def add(self, data: np.ndarray, kind: str, component: int, target=None, bounds=False) -> int:
        """An accessor of `data` (in a bufferView of its own); its index."""
        import pygltflib

        view = self.view(np.ascontiguousarray(data).tobytes(), target)
        count = len(data) if kind != "SCALAR" or data.ndim == 1 else data.size
        accessor = pygltflib.Accessor(
            bufferView=view,
            componentType=component,
            count=int(count),
            type=kind,
        )
        if bounds:
            rows = np.asarray(data).reshape(int(count), -1)
            accessor.min = [float(x) for x in rows.min(axis=0)]
            accessor.max = [float(x) for x in rows.max(axis=0)]
        self.gltf.accessors.append(accessor)
        return len(self.gltf.accessors) - 1

    def add_shorts(self, q: np.ndarray) -> int:
        """A normalized SHORT VEC3 accessor of (n, 3) int16 `q` (a morph target), each element
        padded to 8 bytes; `min`/`max` in the stored integers, as the validator reads them."""
        import pygltflib

        padded = np.zeros((len(q), 4), np.int16)
        padded[:, :3] = q
        view = self.view(padded.tobytes(), ARRAY_BUFFER, stride=8)
        accessor = pygltflib.Accessor(
            bufferView=view, componentType=SHORT, normalized=True, count=len(q), type="VEC3"
        )
        accessor.min = [int(x) for x in q.min(axis=0)]
        accessor.max = [int(x) for x in q.max(axis=0)]
        self.gltf.accessors.append(accessor)
        return len(self.gltf.accessors) - 1

    def bytes(self) -> bytes:
        return b"".join(self.parts)


def build_glb(mesh: Mesh, basis: Basis, fps: float, extras: dict | None = None, material=None):
    """The glTF document (pygltflib.GLTF2 with its binary blob set) of a clip.

    Args:
        mesh: the template, in metres (UVs and colours kept).
        basis: targets (in metres) and per-frame weights.
        fps: the frame rate; frame t is at t / fps seconds.
        extras: recorded in the asset's `extras.meshtalk` (error, K, units...).
        material: (name, base colour RGBA, texture path or None), or None for none.
    """
    import pygltflib

    laid = layout(mesh)
    gltf = pygltflib.GLTF2(
        asset=pygltflib.Asset(version="2.0", generator="meshtalk"),
        scene=0,
        scenes=[pygltflib.Scene(nodes=[0])],
        nodes=[pygltflib.Node(mesh=0, name="face")],
        buffers=[],
    )
    blob = _Blob(gltf)
    attributes = pygltflib.Attributes(
        POSITION=blob.add(laid.positions, "VEC3", FLOAT, ARRAY_BUFFER, bounds=True),
        NORMAL=blob.add(vertex_normals(laid.positions, laid.indices), "VEC3", FLOAT, ARRAY_BUFFER),
    )
    if laid.uvs is not None:
        attributes.TEXCOORD_0 = blob.add(laid.uvs, "VEC2", FLOAT, ARRAY_BUFFER)
    if laid.colours is not None:
        attributes.COLOR_0 = blob.add(laid.colours, "VEC3", FLOAT, ARRAY_BUFFER)
    targets, weights = [], np.asarray(basis.weights, np.float32)
    if basis.scales is not None:
        q, scaled = basis.quantized()
        short = basis.scales <= 1  # the weight w * s_k stays in [0, 1]
        weights = np.where(short[None], scaled, weights)
        if short.any():
            gltf.extensionsUsed, gltf.extensionsRequired = [QUANTIZATION], [QUANTIZATION]
    for k, target in enumerate(basis.targets):
        if basis.scales is not None and short[k]:
            targets.append({"POSITION": blob.add_shorts(q[k][laid.source])})
            continue
        delta = np.asarray(target, np.float32)[laid.source]
        targets.append({"POSITION": blob.add(delta, "VEC3", FLOAT, ARRAY_BUFFER, bounds=True)})
    primitive = pygltflib.Primitive(
        attributes=attributes,
        indices=blob.add(laid.indices.ravel(), "SCALAR", UNSIGNED_INT, ELEMENT_ARRAY_BUFFER),
        targets=targets,
        mode=4,
    )
    if material is not None:
        primitive.material = _material(gltf, blob, *material, has_uvs=laid.uvs is not None)
    gltf.meshes = [
        pygltflib.Mesh(
            name="face",
            primitives=[primitive],
            weights=[float(w) for w in weights[0]],
            extras={"targetNames": basis.names},
        )
    ]
    times = (np.arange(len(weights)) / float(fps)).astype(np.float32)
    sampler = pygltflib.AnimationSampler(
        input=blob.add(times, "SCALAR", FLOAT, bounds=True),
        output=blob.add(weights.ravel(), "SCALAR", FLOAT),
        interpolation="LINEAR",
    )
    channel = pygltflib.AnimationChannel(
        sampler=0, target=pygltflib.AnimationChannelTarget(node=0, path="weights")
    )
    gltf.animations = [pygltflib.Animation(name="speech", samplers=[sampler], channels=[channel])]
    record = dict(extras or {})
    if len(laid.source) > len(mesh.vertices):
        record["seamVertices"] = laid.source[len(mesh.vertices) :].tolist()
    gltf.asset.extras = {"meshtalk": record}
    data = blob.bytes()
    gltf.buffers.append(pygltflib.Buffer(byteLength=len(data)))
    gltf.set_binary_blob(data)
    return gltf


def _material(gltf, blob: _Blob, name: str, colour, texture: Path | None, has_uvs: bool) -> int:
    import pygltflib

    pbr = pygltflib.PbrMetallicRoughness(
        baseColorFactor=[float(c) for c in colour], metallicFactor=0.0, roughnessFactor=0.8
    )
    suffix = None if texture is None else texture.suffix.lower()
    if has_uvs and texture is not None and suffix in IMAGE_TYPES and texture.is_file():
        view = blob.view(texture.read_bytes())
        gltf.images.append(pygltflib.Image(bufferView=view, mimeType=IMAGE_TYPES[suffix]))
        gltf.samplers.append(pygltflib.Sampler())
        gltf.textures.append(pygltflib.Texture(source=len(gltf.images) - 1, sampler=0))
        pbr.baseColorTexture = pygltflib.TextureInfo(index=len(gltf.textures) - 1)
    gltf.materials.append(pygltflib.Material(name=name, pbrMetallicRoughness=pbr))
    return len(gltf.materials) - 1


def obj_material(mesh: Mesh):
    """(name, RGBA, texture path or None) of the first material an OBJ's faces use, read from
    its `mtllib` files beside it (`Kd`, `d`, `map_Kd`), or None."""
    if not mesh.materials or mesh.folder is None:
        return None
    wanted = mesh.materials[0]
    root = Path(mesh.folder).resolve()
    for lib in mesh.material_libs:
        source = (root / lib).resolve()
        if root not in source.parents or not source.is_file():
            continue
        current, colour, texture = None, [0.8, 0.8, 0.8, 1.0], None
        for line in source.read_text(errors="replace").splitlines():
            parts = line.split()
            if not parts:
                continue
            if parts[0] == "newmtl":
                if current == wanted:
                    break
                current = " ".join(parts[1:])
                colour, texture = [0.8, 0.8, 0.8, 1.0], None
            elif current == wanted and parts[0] == "Kd" and len(parts) >= 4:
                colour[:3] = [min(max(float(x), 0.0), 1.0) for x in parts[1:4]]
            elif current == wanted and parts[0] == "d" and len(parts) >= 2:
                colour[3] = min(max(float(parts[1]), 0.0), 1.0)
            elif current == wanted and parts[0] == "map_Kd":
                found = (root / parts[-1]).resolve()
                texture = found if root in found.parents else None
        if current == wanted:
            return wanted, colour, texture
    return None


def write_glb(path: Path, gltf) -> None:
    """Save the document as one binary file (the caller makes the path atomic)."""
    gltf.save_binary(str(path))
