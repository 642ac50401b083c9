"""Blendshape rigs as GLB files for the `meshtalk rig` tests and benchmark (no rig in the repo).

* `ict_rig`: ICT-FaceKit's head (USC ICT, MIT licence; `../shared/reference/ict_facekit/`) with its
  expression shapes as morph targets, in metres: its `eyeBlink_L` spellings kept (the aliases the
  reader must accept), `browInnerUp` and `cheekPuff` made whole from their `_L`/`_R` halves (ARKit's
  single shape is their sum, as the kit's README says), `tongueOut` absent, and its extra
  `cheekRaiser_*`/`PupilDilate_*` shapes kept as targets that are not ARKit's.
* `procedural_rig`: a small curved sheet with smooth random targets, for speed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

REFERENCE = Path(__file__).resolve().parents[1].parent / "shared" / "reference"
ICT = REFERENCE / "ict_facekit"
CENTIMETRE = 0.01


@dataclass
class RigData:
    """A rig's arrays as written into its GLB (positions in the GLB's units)."""

    neutral: np.ndarray
    faces: np.ndarray
    targets: np.ndarray
    names: list[str]


def write_rig_glb(
    path: Path, rig: RigData, node_scale: float | None = None, split: bool = False
) -> Path:
    """One mesh with named morph targets (mesh.extras.targetNames): one triangle primitive, or
    with `split` two (the first and second half of the vertices, each with its own triangles)
    whose morph targets are sparse accessors (only the vertices a target moves are stored)."""
    from pygltflib import (
        GLTF2,
        Accessor,
        AccessorSparseIndices,
        AccessorSparseValues,
        Attributes,
        Buffer,
        BufferView,
        Mesh,
        Node,
        Primitive,
        Scene,
        Sparse,
    )

    blob = bytearray()
    gltf = GLTF2(scene=0, scenes=[Scene(nodes=[0])], buffers=[Buffer()])

    def view(array: np.ndarray, role: int | None) -> int:
        blob.extend(b"\0" * (-len(blob) % 4))
        gltf.bufferViews.append(
            BufferView(buffer=0, byteOffset=len(blob), byteLength=array.nbytes, target=role)
        )
        blob.extend(array.tobytes())
        return len(gltf.bufferViews) - 1

    def add(array: np.ndarray, kind: str, component: int, bounds: bool) -> int:
        role = 34962 if kind == "VEC3" else 34963  # ARRAY_BUFFER, ELEMENT_ARRAY_BUFFER
        extra = {}
        if bounds:
            extra = {"min": array.min(axis=0).tolist(), "max": array.max(axis=0).tolist()}
        count = len(array) if array.ndim > 1 else array.size
        gltf.accessors.append(
            Accessor(
                bufferView=view(array, role),
                componentType=component,
                count=count,
                type=kind,
                **extra,
            )
        )
        return len(gltf.accessors) - 1

    def add_sparse(target: np.ndarray) -> int:
        target = target.astype("<f4")
        moved = np.flatnonzero(np.abs(target).max(axis=1) > 1e-6).astype("<u4")
        target[np.abs(target).max(axis=1) <= 1e-6] = 0.0
        values = np.ascontiguousarray(target[moved], "<f4")
        sparse = Sparse(
            count=len(moved),
            indices=AccessorSparseIndices(bufferView=view(moved, None), componentType=5125),
            values=AccessorSparseValues(bufferView=view(values, None)),
        )
        gltf.accessors.append(
            Accessor(
                byteOffset=None,  # no bufferView: the unstored vertices are 0
                componentType=5126,
                count=len(target),
                type="VEC3",
                sparse=sparse,
                min=target.min(axis=0).tolist(),
                max=target.max(axis=0).tolist(),
            )
        )
        return len(gltf.accessors) - 1

    parts = [np.arange(len(rig.neutral))]
    if split:
        parts = np.array_split(np.arange(len(rig.neutral)), 2)
    primitives = []
    for part in parts:
        inside = np.all((rig.faces >= part[0]) & (rig.faces <= part[-1]), axis=1)
        faces = rig.faces[inside] - part[0]
        position = add(np.ascontiguousarray(rig.neutral[part], "<f4"), "VEC3", 5126, True)
        indices = add(np.ascontiguousarray(faces, "<u4").ravel(), "SCALAR", 5125, False)
        targets = [
            {"POSITION": add_sparse(target[part])}
            if split
            else {"POSITION": add(np.ascontiguousarray(target, "<f4"), "VEC3", 5126, True)}
            for target in rig.targets
        ]
        primitives.append(
            Primitive(
                attributes=Attributes(POSITION=position), indices=indices, targets=targets, mode=4
            )
        )
    gltf.meshes.append(
        Mesh(
            name="face",
            primitives=primitives,
            weights=[0.0] * len(rig.targets),
            extras={"targetNames": rig.names},
        )
    )
    node = Node(mesh=0, name="face")
    if node_scale is not None:
        node.scale = [node_scale] * 3
    gltf.nodes.append(node)
    blob.extend(b"\0" * (-len(blob) % 4))
    gltf.buffers[0].byteLength = len(blob)
    gltf.set_binary_blob(bytes(blob))
    gltf.save_binary(str(path))
    return path


def ict_data() -> RigData:
    """ICT-FaceKit's head as a rig (metres), see the module docstring."""
    from meshtalk.pipelines.io.mesh import read_mesh

    shapes = np.load(ICT / "shapes.npz", allow_pickle=False)
    faces = read_mesh(ICT / "generic_neutral_mesh.obj").faces
    names = [str(name) for name in shapes["expression_names"]]
    expressions = shapes["expressions"]
    targets, kept = [], []
    for name, shape in zip(names, expressions, strict=True):
        if name.endswith("_R") and name[:-2] in ("browInnerUp", "cheekPuff"):
            continue
        if name.endswith("_L") and name[:-2] in ("browInnerUp", "cheekPuff"):
            shape = shape + expressions[names.index(name[:-2] + "_R")]
            name = name[:-2]
        targets.append(shape)
        kept.append(name)
    return RigData(
        neutral=shapes["neutral"] * CENTIMETRE,
        faces=faces,
        targets=np.stack(targets) * CENTIMETRE,
        names=kept,
    )


def ict_rig(path: Path) -> RigData:
    """Write `ict_data()` as a GLB at `path`; returns the arrays."""
    data = ict_data()
    write_rig_glb(path, data)
    return data


PROCEDURAL_NAMES = [
    "jawOpen",
    "eyeBlink_L",
    "EyeBlinkRight",
    "mouthSmile_L",
    "mouthSmile_R",
    "MOUTHFUNNEL",
    "browInnerUp",
    "cheekPuff",
    "mouthClose",
    "tongueOut",
    "viseme_aa",
    "blendShape.noseSneerLeft",
]
"""Spellings the reader must take as ARKit's (camel, Pascal, upper case, `_L`, a prefix), and
`viseme_aa`, which is not ARKit's."""


def procedural_data(
    grid: int = 24, seed: int = 0, names: tuple[str, ...] | list[str] = PROCEDURAL_NAMES
) -> RigData:
    """A curved sheet (grid x grid vertices, metres, facing +Z) with a smooth random target
    for each of `names`."""
    rng = np.random.default_rng(seed)
    u, v = np.meshgrid(np.linspace(-1, 1, grid), np.linspace(-1, 1, grid))
    neutral = np.stack([u * 0.08, v * 0.1, 0.05 * (1 - 0.5 * u**2 - 0.3 * v**2)], axis=-1)
    neutral = neutral.reshape(-1, 3).astype(np.float32)
    index = np.arange(grid * grid).reshape(grid, grid)
    corner = index[:-1, :-1].ravel()
    faces = np.concatenate(
        [
            np.stack([corner, corner + 1, corner + grid], axis=1),
            np.stack([corner + 1, corner + grid + 1, corner + grid], axis=1),
        ]
    )
    targets = []
    for _ in names:
        centre = rng.uniform(-0.7, 0.7, 2)
        falloff = np.exp(-((u - centre[0]) ** 2 + (v - centre[1]) ** 2) / rng.uniform(0.05, 0.3))
        direction = rng.normal(size=3) * 0.006
        targets.append((falloff.reshape(-1, 1) * direction).astype(np.float32))
    return RigData(
        neutral=neutral,
        faces=faces.astype(np.int64),
        targets=np.stack(targets),
        names=list(names),
    )


def known_weight_animation(path: Path, rig: RigData, weights: np.ndarray, fps: float = 30.0):
    """An animation npz whose frames are the rig posed by `weights` (T, M) of all its targets."""
    frames = rig.neutral[None] + np.einsum("tm,mvc->tvc", weights, rig.targets)
    np.savez(
        path,
        vertices=frames.astype(np.float32),
        template=rig.neutral.astype(np.float32),
        faces=rig.faces,
        fps=np.float64(fps),
    )
    return path


def random_weights(frames: int, targets: int, seed: int = 0) -> np.ndarray:
    """(T, M) weights in [0, 1], about half of them 0 and some exactly 1, smooth over time."""
    rng = np.random.default_rng(seed)
    time = np.linspace(0, 1, frames)[:, None]
    phase, speed = rng.uniform(0, 2 * np.pi, targets), rng.uniform(2, 9, targets)
    weights = np.clip(1.3 * np.sin(speed * 2 * np.pi * time + phase), 0.0, 1.0)
    return weights.astype(np.float64)
