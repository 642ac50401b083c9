"""A user's blendshape rig, a GLB read through pygltflib; the same GLB with its weights animated.

The rig's face is the first mesh whose morph targets carry ARKit names (`arkit.match_targets`;
names from `mesh.extras.targetNames`, the convention of Blender's, three.js' and most exporters),
or the first mesh with morph targets. Its primitives are read as one vertex array (a primitive
sharing another's POSITION accessor adds no vertices), in the mesh's own coordinates: `scale` is
the size of one of those units in metres (glTF's unit) under the node that shows the mesh.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from meshtalk.pipelines.errors import MeshtalkError
from meshtalk.pipelines.export.arkit import match_targets
from meshtalk.pipelines.io.atomic import atomic_path

COMPONENTS = {
    5120: np.int8,
    5121: np.uint8,
    5122: np.int16,
    5123: np.uint16,
    5125: np.uint32,
    5126: np.float32,
}
"""glTF componentType -> numpy dtype."""
WIDTHS = {"SCALAR": 1, "VEC2": 2, "VEC3": 3, "VEC4": 4, "MAT4": 16}
TRIANGLES = 4
GLB_MAGIC = b"glTF"


@dataclass
class Rig:
    """The face mesh of a rig GLB and its morph targets.

    Attributes:
        path: the GLB.
        mesh_index: which of the file's meshes it is.
        nodes: the nodes showing that mesh (their weights get animated).
        neutral: (N, 3) float32 rest positions, in the mesh's units.
        faces: (F, 3) int64 triangles.
        target_names: the mesh's morph target names, in the file's order.
        targets: (M, N, 3) float32 each target's offsets from the neutral.
        scale: metres per unit of the mesh (the showing node's world scale).
        arkit: ARKit name -> index of its target (targets with other names are left out).
    """

    path: Path
    mesh_index: int
    nodes: list[int]
    neutral: np.ndarray
    faces: np.ndarray
    target_names: list[str]
    targets: np.ndarray
    scale: float
    arkit: dict[str, int] = field(default_factory=dict)


def _load(path: Path):
    from pygltflib import GLTF2

    if not path.is_file():
        raise MeshtalkError(path, "rig not found")
    with open(path, "rb") as handle:
        if handle.read(4) != GLB_MAGIC:
            raise MeshtalkError(path, "not a GLB (binary glTF) file")
    try:
        gltf = GLTF2.load_binary(path)
    except Exception as error:  # noqa: BLE001  (a damaged file can fail anywhere in the parser)
        raise MeshtalkError(path, f"not a readable GLB file ({error})") from None
    if gltf is None or not gltf.meshes:
        raise MeshtalkError(path, "holds no mesh")
    return gltf


def _buffer(gltf, path: Path, index: int) -> bytes:
    buffer = gltf.buffers[index]
    if buffer.uri is None:
        blob = gltf.binary_blob()
        if index != 0 or blob is None:
            raise MeshtalkError(path, f"buffer {index} has no data")
        return blob
    if buffer.uri.startswith("data:"):
        return gltf.decode_data_uri(buffer.uri)
    raise MeshtalkError(
        path, f"refers to an external file ({buffer.uri}); give a self-contained GLB"
    )


def _view(gltf, path: Path, view_index: int, offset: int, dtype, count: int, width: int):
    view = gltf.bufferViews[view_index]
    data = _buffer(gltf, path, view.buffer)
    itemsize = np.dtype(dtype).itemsize
    stride = view.byteStride or itemsize * width
    start = (view.byteOffset or 0) + (offset or 0)
    end = start + stride * (count - 1) + itemsize * width if count else start
    if end > (view.byteOffset or 0) + view.byteLength or end > len(data):
        raise MeshtalkError(path, f"buffer view {view_index} is shorter than its accessor")
    raw = np.frombuffer(data, dtype=np.uint8, count=end - start, offset=start)
    if stride == itemsize * width:
        return raw.view(dtype).reshape(count, width).copy()
    padded = np.zeros(stride * count, dtype=np.uint8)
    padded[: len(raw)] = raw
    rows = padded.reshape(count, stride)[:, : itemsize * width]
    return np.ascontiguousarray(rows).view(dtype).reshape(count, width)


def read_accessor(gltf, path: Path, index: int) -> np.ndarray:
    """An accessor's values (count, width), sparse substitutions applied, as float64/int64."""
    accessor = gltf.accessors[index]
    dtype = COMPONENTS.get(accessor.componentType)
    width = WIDTHS.get(accessor.type)
    if dtype is None or width is None:
        raise MeshtalkError(path, f"accessor {index} has an unknown type")
    if accessor.bufferView is None:
        values = np.zeros((accessor.count, width), dtype=dtype)
    else:
        values = _view(
            gltf, path, accessor.bufferView, accessor.byteOffset, dtype, accessor.count, width
        )
    sparse = accessor.sparse
    if sparse is not None and sparse.count:
        indices = _view(
            gltf,
            path,
            sparse.indices.bufferView,
            sparse.indices.byteOffset,
            COMPONENTS[sparse.indices.componentType],
            sparse.count,
            1,
        )[:, 0]
        substitutes = _view(
            gltf,
            path,
            sparse.values.bufferView,
            sparse.values.byteOffset,
            dtype,
            sparse.count,
            width,
        )
        if indices.size and int(indices.max()) >= accessor.count:
            raise MeshtalkError(path, f"accessor {index}: sparse indices beyond its count")
        values = values.copy()
        values[indices.astype(np.int64)] = substitutes
    if accessor.normalized and np.issubdtype(dtype, np.integer):
        return dequantize(values)
    return values.astype(np.int64 if np.issubdtype(dtype, np.integer) else np.float64)


def dequantize(values: np.ndarray) -> np.ndarray:
    """Normalized integers as glTF reads them (KHR_mesh_quantization): unsigned n-bit v / (2^n - 1),
    signed max(v / (2^(n-1) - 1), -1); float64."""
    info = np.iinfo(values.dtype)
    return np.maximum(values.astype(np.float64) / info.max, -1.0)


def _names(mesh) -> list[str] | None:
    for owner in (mesh, *(mesh.primitives or [])):
        extras = owner.extras if isinstance(owner.extras, dict) else {}
        names = extras.get("targetNames")
        if isinstance(names, list) and all(isinstance(name, str) for name in names):
            return names
    return None


def _choose_mesh(gltf, path: Path) -> tuple[int, list[str]]:
    """The face mesh: the first with ARKit targets, or else the first with morph targets."""
    with_targets = []
    for index, mesh in enumerate(gltf.meshes):
        counts = {len(primitive.targets or []) for primitive in mesh.primitives}
        if max(counts, default=0) == 0:
            continue
        if len(counts) > 1:
            raise MeshtalkError(
                path,
                f"mesh {mesh.name or index}: its primitives have different "
                "numbers of morph targets",
            )
        count = counts.pop()
        names = _names(mesh) or [f"target_{i}" for i in range(count)]
        if len(names) != count:
            raise MeshtalkError(
                path,
                f"mesh {mesh.name or index} names {len(names)} targets "
                f"(extras.targetNames) but has {count}",
            )
        if match_targets(names):
            return index, names
        with_targets.append((index, names))
    if not with_targets:
        raise MeshtalkError(
            path, "has no morph targets (blendshapes): a rig needs ARKit-named ones"
        )
    return with_targets[0]


def _node_scale(gltf, mesh_index: int) -> tuple[list[int], float]:
    """The nodes showing the mesh and the world scale of the first (1 where none)."""
    parents = {
        child: index
        for index, node in enumerate(gltf.nodes or [])
        for child in (node.children or [])
    }
    nodes = [index for index, node in enumerate(gltf.nodes or []) if node.mesh == mesh_index]
    if not nodes:
        return nodes, 1.0
    matrix, index = np.eye(4), nodes[0]
    while index is not None:
        matrix = _local_matrix(gltf.nodes[index]) @ matrix
        index = parents.get(index)
    return nodes, float(abs(np.linalg.det(matrix[:3, :3])) ** (1 / 3))


def _local_matrix(node) -> np.ndarray:
    if node.matrix is not None:
        return np.asarray(node.matrix, dtype=np.float64).reshape(4, 4).T
    x, y, z, w = node.rotation or (0.0, 0.0, 0.0, 1.0)
    rotation = np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
            [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
            [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
        ]
    )
    matrix = np.eye(4)
    matrix[:3, :3] = rotation * np.asarray(node.scale or (1.0, 1.0, 1.0))
    matrix[:3, 3] = node.translation or (0.0, 0.0, 0.0)
    return matrix


def read_rig(path: str | Path) -> Rig:
    """The rig's face mesh, its morph targets and their ARKit names, checked (one-line errors)."""
    path = Path(path)
    gltf = _load(path)
    mesh_index, names = _choose_mesh(gltf, path)
    mesh = gltf.meshes[mesh_index]
    label = mesh.name or f"mesh {mesh_index}"
    seen: dict[int, int] = {}  # POSITION accessor -> first vertex in the concatenation
    positions, faces, targets = [], [], []
    for primitive in mesh.primitives:
        if primitive.mode not in (None, TRIANGLES):
            raise MeshtalkError(
                path, f"{label}: a primitive of mode {primitive.mode}; only triangles are read"
            )
        accessor = primitive.attributes.POSITION
        if accessor is None:
            raise MeshtalkError(path, f"{label}: a primitive without POSITION")
        if accessor not in seen:
            seen[accessor] = sum(len(p) for p in positions)
            points = read_accessor(gltf, path, accessor)
            if points.shape[1] != 3:
                raise MeshtalkError(path, f"{label}: POSITION is not VEC3")
            positions.append(points)
            targets.append(_targets(gltf, path, label, primitive, names, len(points)))
        first = seen[accessor]
        count = gltf.accessors[accessor].count
        if primitive.indices is None:
            corners = np.arange(count - count % 3)
        else:
            corners = read_accessor(gltf, path, primitive.indices)[:, 0]
        if corners.size and (corners.min() < 0 or corners.max() >= count):
            raise MeshtalkError(path, f"{label}: triangle indices beyond its vertices")
        faces.append(corners[: len(corners) - len(corners) % 3].reshape(-1, 3) + first)
    neutral = np.concatenate(positions).astype(np.float32)
    deltas = np.concatenate(targets, axis=1).astype(np.float32)
    if not (np.isfinite(neutral).all() and np.isfinite(deltas).all()):
        raise MeshtalkError(
            path, f"{label}: positions or morph targets hold NaN or infinite values"
        )
    nodes, scale = _node_scale(gltf, mesh_index)
    if not nodes:
        raise MeshtalkError(path, f"{label} is shown by no node (nothing to animate)")
    return Rig(
        path=path,
        mesh_index=mesh_index,
        nodes=nodes,
        neutral=neutral,
        faces=np.concatenate(faces).astype(np.int64),
        target_names=list(names),
        targets=deltas,
        scale=scale,
        arkit=match_targets(names),
    )


def _targets(gltf, path: Path, label: str, primitive, names: list[str], count: int) -> np.ndarray:
    """(M, count, 3) the primitive's morph target offsets; a target's vertex count is checked."""
    deltas = np.zeros((len(names), count, 3))
    for index, target in enumerate(primitive.targets or []):
        accessor = target.get("POSITION") if isinstance(target, dict) else target.POSITION
        if accessor is None:
            continue  # a target moving only normals
        if gltf.accessors[accessor].count != count:
            raise MeshtalkError(
                path,
                f"{label}: morph target '{names[index]}' has "
                f"{gltf.accessors[accessor].count} vertices, its mesh {count}",
            )
        deltas[index] = read_accessor(gltf, path, accessor)
    return deltas


def write_animated_rig(rig: Rig, output: str | Path, weights: np.ndarray, fps: float) -> None:
    """The rig's GLB as given, plus an animation 'meshtalk' of its morph weights.

    Args:
        rig: the rig read by `read_rig` (its file is read again, unchanged but for the animation).
        output: the GLB to write (atomically).
        weights: (T, M) weights of all the mesh's targets, in the file's order.
        fps: frames per second (key t at t / fps seconds, LINEAR).
    """
    from pygltflib import (
        Accessor,
        Animation,
        AnimationChannel,
        AnimationChannelTarget,
        AnimationSampler,
        BufferView,
    )

    gltf = _load(rig.path)
    for accessor in gltf.accessors:  # pygltflib reads a missing byteOffset as 0; glTF forbids
        if accessor.bufferView is None:  # one without a bufferView (all-zero sparse targets)
            accessor.byteOffset = None
    blob = bytearray(_buffer(gltf, rig.path, 0) if gltf.buffers else b"")
    if not gltf.buffers:
        from pygltflib import Buffer

        gltf.buffers = [Buffer(byteLength=0)]
    times = (np.arange(len(weights)) / fps).astype("<f4")
    values = np.ascontiguousarray(weights, dtype="<f4")

    def append(array: np.ndarray, accessor_type: str, count: int, bounds: bool) -> int:
        blob.extend(b"\0" * (-len(blob) % 4))
        gltf.bufferViews.append(BufferView(buffer=0, byteOffset=len(blob), byteLength=array.nbytes))
        blob.extend(array.tobytes())
        extra = {"min": [float(array.min())], "max": [float(array.max())]} if bounds else {}
        gltf.accessors.append(
            Accessor(
                bufferView=len(gltf.bufferViews) - 1,
                componentType=5126,
                count=count,
                type=accessor_type,
                **extra,
            )
        )
        return len(gltf.accessors) - 1

    time_accessor = append(times, "SCALAR", len(times), bounds=True)
    weight_accessor = append(values, "SCALAR", values.size, bounds=False)
    blob.extend(b"\0" * (-len(blob) % 4))
    gltf.buffers[0].byteLength = len(blob)
    gltf.buffers[0].uri = None
    gltf.set_binary_blob(bytes(blob))
    sampler = AnimationSampler(input=time_accessor, output=weight_accessor, interpolation="LINEAR")
    channels = [
        AnimationChannel(sampler=0, target=AnimationChannelTarget(node=node, path="weights"))
        for node in rig.nodes
    ]
    gltf.animations = [
        *(gltf.animations or []),
        Animation(name="meshtalk", samplers=[sampler], channels=channels),
    ]
    with atomic_path(output, suffix=".glb") as tmp:
        tmp.write_bytes(b"".join(gltf.save_to_bytes()))
