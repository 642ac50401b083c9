"""The whole head from a model trained on its face area: expression weights solved per frame.

A model trained on `synth --face ict` data moves the ICT-FaceKit head's narrow face area. The rig
(`ict_rig.npz`, written by synth into `topology/` and bundled with the default model) knows every
expression shape on the whole head: each output frame's face-area motion is fitted by the
expressions' weights in [0, 1] (bounded least squares) and the weights are applied to the whole
head, so teeth, tongue, mouth socket, eyelids and lashes follow, and the eyeballs turn with the
eyeLook weights (ICT-FaceKit's shapes move the lids, not the eyeballs). The weights are ARKit's
(with `_L`/`_R`) and are kept with the animation.

`head_for(path, mesh, run)` finds a rig beside the template file (same folder, `ict_rig.npz`)
whose whole head has the template's vertices and whose face area is the model's topology.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from meshtalk.pipelines.errors import MeshtalkError
from meshtalk.pipelines.io.mesh import Mesh

RIG_FILE = "ict_rig.npz"
GAZE_DEGREES = (30.0, 25.0)
"""Eyeball rotation at full eyeLookIn/Out (horizontal) and eyeLookUp/Down (vertical) weight."""
RIDGE = 1e-4
"""Ridge on the fit's normal equations of unit-length shapes (shapes that move the face area
alike share the weight, so the parts outside it do not flip between them from frame to frame)."""


@dataclass
class HeadRig:
    """A rig of the whole head (mm): expression shapes, the neutral, parts and the face area."""

    names: tuple[str, ...]
    expressions: np.ndarray  # (E, V, 3) float32
    neutral: np.ndarray  # (V, 3) float32
    face_area: int
    parts: dict[str, tuple[int, int]]

    def pose(self, weights: np.ndarray) -> np.ndarray:
        """Heads (T, V, 3) for weights (T, E), eyeballs turned by the eyeLook weights."""
        flat = weights.astype(np.float32) @ self.expressions.reshape(len(self.names), -1)
        heads = self.neutral[None] + flat.reshape(len(weights), *self.neutral.shape)
        if "eyeballs" in self.parts:
            self._turn_eyes(heads, weights)
        return heads

    def _turn_eyes(self, heads: np.ndarray, weights: np.ndarray) -> None:
        for ids, centre, rotations in self.eye_turns(weights):
            rest = self.neutral[ids] - centre
            heads[:, ids] = np.einsum("vj,tij->tvi", rest, rotations) + centre

    def eye_turns(self, weights: np.ndarray) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Each eyeball's (vertex ids, centre, (T, 3, 3) float32 rotation per frame) for weights
        (T, E): yaw from eyeLookOut - eyeLookIn, pitch from eyeLookUp - eyeLookDown (see
        GAZE_DEGREES); the identity on frames where both are under 1e-4 rad."""
        start, end = self.parts["eyeballs"]
        rest = self.neutral[start:end]
        column = {name: weights[:, k] for k, name in enumerate(self.names)}
        zero = np.zeros(len(weights), dtype=np.float32)
        turns = []
        for side, sign in (("_L", 1.0), ("_R", -1.0)):  # the face's left eye is at +x
            ids = np.flatnonzero(np.sign(rest[:, 0]) == sign) + start
            centre = self.neutral[ids].mean(0)
            outward = column.get("eyeLookOut" + side, zero) - column.get("eyeLookIn" + side, zero)
            yaw = np.radians(GAZE_DEGREES[0]) * sign * outward
            pitch = np.radians(GAZE_DEGREES[1]) * (
                column.get("eyeLookUp" + side, zero) - column.get("eyeLookDown" + side, zero)
            )
            still = (np.abs(yaw) <= 1e-4) & (np.abs(pitch) <= 1e-4)
            yaw, pitch = np.where(still, 0.0, yaw), np.where(still, 0.0, pitch)
            cy, sy, cp, sp = np.cos(yaw), np.sin(yaw), np.cos(pitch), np.sin(pitch)
            rotations = np.zeros((len(weights), 3, 3))  # turn_y(yaw) @ turn_x(pitch)
            rotations[:, 0] = np.stack([cy, sy * sp, sy * cp], 1)
            rotations[:, 1] = np.stack([np.zeros_like(cp), cp, -sp], 1)
            rotations[:, 2] = np.stack([-sy, cy * sp, cy * cp], 1)
            turns.append((ids, centre, rotations.astype(np.float32)))
        return turns


def read_rig(path: Path) -> HeadRig:
    """Read `ict_rig.npz` (no pickles); one-line errors naming the file."""
    try:
        with np.load(path, allow_pickle=False) as data:
            rig = HeadRig(
                names=tuple(str(n) for n in data["expression_names"]),
                expressions=data["expressions"].astype(np.float32),
                neutral=data["neutral"].astype(np.float32),
                face_area=int(data["face_area"]),
                parts={
                    str(n): (int(a), int(b))
                    for n, (a, b) in zip(data["part_names"], data["part_ranges"])
                },
            )
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as error:
        raise MeshtalkError(path, f"not a readable head rig: {error}") from None
    if rig.expressions.shape[1:] != rig.neutral.shape or not 0 < rig.face_area <= len(rig.neutral):
        raise MeshtalkError(path, "the rig's shapes, neutral and face area do not agree")
    return rig


class HeadMapping:
    """Frames of the model's face area -> frames of the whole head (`TakeWriter`'s mapping).

    Attributes:
        mesh: the whole head to write (faces, UVs, materials of the template given).
        source: the model's own template (the face area of the rig's neutral), to animate.
        weights: each frame's expression weights so far, in order.
    """

    def __init__(self, rig: HeadRig, mesh: Mesh, source: Mesh) -> None:
        self.rig, self.mesh, self.source = rig, mesh, source
        self.parts = rig.parts  # named vertex ranges, for the video's colours
        self.frame_on = rig.neutral[: rig.face_area]  # the video frames the face, not the bust
        self.count = len(rig.neutral)
        from meshtalk.pipelines.export.blendshape_solver import BlendshapeSolver

        self.solver = BlendshapeSolver(rig.expressions[:, : rig.face_area], ridge=RIDGE)
        self.weights: list[np.ndarray] = []

    def __call__(self, frames: np.ndarray) -> np.ndarray:
        motion = np.asarray(frames, np.float32) - self.source.vertices[None]
        weights = self.solver.solve(motion).astype(np.float32)
        self.weights.append(weights)
        return self.rig.pose(weights)


def head_for(path: Path, mesh: Mesh, run) -> HeadMapping | None:  # noqa: ANN001
    """The mapping onto the whole head when a rig sits beside the template file `path` and fits
    both the template (`mesh`) and the model (`run.num_vertices` = its face area); else None."""
    rig_path = Path(path).parent / RIG_FILE
    if not rig_path.is_file():
        return None
    rig = read_rig(rig_path)
    if len(rig.neutral) != len(mesh.vertices) or rig.face_area != run.num_vertices:
        return None
    keep = (mesh.faces < rig.face_area).all(1)
    source = replace(
        mesh,
        vertices=rig.neutral[: rig.face_area].copy(),
        faces=mesh.faces[keep],
        uvs=None,
        face_uvs=None,
        normals=None,
        face_normals=None,
        colours=None,
        materials=(),
        material_libs=(),
        face_materials=None,
    )
    return HeadMapping(rig, replace(mesh, vertices=rig.neutral.copy()), source)


def bundled_head_for(path: Path, run) -> HeadMapping | None:  # noqa: ANN001
    """The mapping onto the bundled model's whole head when the animation file `path` (an npz
    of `animate`'s) holds frames of that head and `run` animates its face area; else None (the
    file is then read as frames of the run's own topology)."""
    from meshtalk.pipelines.data.resources import default_model
    from meshtalk.pipelines.export.npz import member_shape
    from meshtalk.pipelines.io.mesh import read_mesh

    head = default_model.head_path()
    if not head.is_file() or not (head.parent / RIG_FILE).is_file():
        return None
    try:
        count = member_shape(Path(path), "vertices")[0][1]
    except (MeshtalkError, OSError, ValueError, IndexError, zipfile.BadZipFile):
        return None
    if count == run.num_vertices:
        return None
    mapping = head_for(head, read_mesh(head), run)
    return mapping if mapping is not None and len(mapping.mesh.vertices) == count else None
