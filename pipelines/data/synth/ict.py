"""The ICT-FaceKit head (USC ICT, MIT license) as a synthetic talking face: `synth --face ict`.

The model is read from a folder in the layout of `../shared/reference/ict_facekit` (the published
`generic_neutral_mesh.obj` and its material file, `vertex_indices.json` and `shapes.npz`: the
neutral, 57 expression shapes, 53 of them ARKit's, and 100 identity components, all offsets from
the neutral in centimetres). Everything here is in millimetres (x 10), as Multiface is.

A face with identity coefficients c and expression weights w is
`neutral + c @ identities + w @ expressions` (linear blendshapes). The head is several separate
parts (face, head and neck, mouth socket, gums and tongue, teeth, eyeballs, lashes, ...); training
uses its narrow face area (the first `FACE_AREA` vertices), and the whole head follows from the
expression weights (`pipelines/inference/ict_head.py`).
"""

from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from meshtalk.pipelines.errors import MeshtalkError
from meshtalk.pipelines.io.mesh import Mesh, read_mesh

CM_TO_MM = 10.0
FACE_AREA = 6706
"""Vertices [0, FACE_AREA) are the narrow face area (skin from brows to chin, lips, eyelids)."""
PARTS = (
    ("face", 0, 9409),
    ("head_and_neck", 9409, 11248),
    ("mouth_socket", 11248, 13294),
    ("eye_sockets", 13294, 14062),
    ("gums_and_tongue", 14062, 17039),
    ("teeth", 17039, 21451),
    ("eyeballs", 21451, 24591),
    ("lacrimal_fluid", 24591, 24999),
    ("eye_blend", 24999, 25047),
    ("eye_occlusion", 25047, 25351),
    ("eyelashes", 25351, 26719),
)
"""The published head's parts, in vertex order: (name, first vertex, end)."""
NUM_VERTICES = PARTS[-1][2]
FILES = ("generic_neutral_mesh.obj", "vertex_indices.json", "shapes.npz", "LICENSE")


@dataclass
class IctModel:
    """The ICT-FaceKit model in millimetres.

    Attributes:
        head: the whole neutral head (all parts, UVs, materials), as published.
        expression_names: (57,) shape names (ARKit's with `_L`/`_R`, and four more).
        expressions: (57, V, 3) float32 offsets of each expression at full strength.
        identities: (100, V, 3) float32 identity components (coefficients ~ standard normal).
        landmarks: (68,) vertex indices of the common 68-point landmarks.
        folder: where it was read from (its LICENSE travels with what is derived from it).
    """

    head: Mesh
    expression_names: tuple[str, ...]
    expressions: np.ndarray
    identities: np.ndarray
    landmarks: np.ndarray
    folder: Path

    @property
    def neutral(self) -> np.ndarray:
        return self.head.vertices

    def expression(self, name: str) -> int:
        """Index of the expression called `name`."""
        return self.expression_names.index(name)


def load_ict(folder: str | Path) -> IctModel:
    """Read the ICT-FaceKit model from `folder` (see the module's docstring); one-line errors."""
    folder = Path(folder)
    if not folder.is_dir():
        raise MeshtalkError(folder, "not a folder (the ICT-FaceKit model's folder is expected)")
    for name in FILES:
        if not (folder / name).is_file():
            raise MeshtalkError(folder / name, "missing (an ICT-FaceKit model folder has it)")
    head = read_mesh(folder / FILES[0])
    try:
        with np.load(folder / "shapes.npz", allow_pickle=False) as shapes:
            neutral = shapes["neutral"].astype(np.float32)
            names = tuple(str(n) for n in shapes["expression_names"])
            expressions = shapes["expressions"].astype(np.float32) * CM_TO_MM
            identities = shapes["identities"].astype(np.float32) * CM_TO_MM
        indices = json.loads((folder / "vertex_indices.json").read_text())
        landmarks = np.asarray(indices["idx_to_landmark_verts"], dtype=np.int64)
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as error:
        raise MeshtalkError(folder, f"cannot read the ICT-FaceKit model: {error}") from None
    if len(head.vertices) != NUM_VERTICES or neutral.shape != (NUM_VERTICES, 3):
        raise MeshtalkError(folder, f"the ICT-FaceKit head has {NUM_VERTICES} vertices")
    if expressions.shape[1:] != neutral.shape or identities.shape[1:] != neutral.shape:
        raise MeshtalkError(folder / "shapes.npz", "shapes do not match the neutral's vertices")
    if landmarks.shape != (68,) or landmarks.max() >= FACE_AREA:
        raise MeshtalkError(folder / "vertex_indices.json", "expected 68 face-area landmarks")
    head.vertices = neutral * CM_TO_MM
    return IctModel(head, names, expressions, identities, landmarks, folder)


def face_area(mesh: Mesh, count: int = FACE_AREA) -> Mesh:
    """The mesh's first `count` vertices and the triangles among them (UVs and materials kept)."""
    keep = (mesh.faces < count).all(1)

    def rows(array: np.ndarray | None) -> np.ndarray | None:
        return None if array is None else array[keep]

    return Mesh(
        vertices=mesh.vertices[:count].copy(),
        faces=mesh.faces[keep],
        uvs=mesh.uvs,
        face_uvs=rows(mesh.face_uvs),
        normals=None,
        face_normals=None,
        colours=None if mesh.colours is None else mesh.colours[:count],
        material_libs=mesh.material_libs,
        materials=mesh.materials,
        face_materials=rows(mesh.face_materials),
        folder=mesh.folder,
    )


def face_landmarks(model: IctModel) -> dict[str, list[int]]:
    """The mask builder's landmarks (`masks.load_landmarks` format) from the model's 68 points:
    outer lip loop 48-59, the eyes 36-41 and 42-47, brows 17-26, the jaw line 4-12."""
    lm = model.landmarks
    return {
        "lip_outer": [int(i) for i in lm[48:60]],
        "left_eyelid": [int(i) for i in lm[36:42]],
        "right_eyelid": [int(i) for i in lm[42:48]],
        "brows": [int(i) for i in lm[17:27]],
        "chin": [int(i) for i in lm[4:13]],
    }


def identity_coefficients(model: IctModel, rng: np.random.Generator) -> np.ndarray:
    """Identity coefficients as the publishers' sampler draws them (standard normal)."""
    return rng.standard_normal(len(model.identities)).astype(np.float32)


def identity_neutral(model: IctModel, coefficients: np.ndarray | None) -> np.ndarray:
    """The neutral head (V, 3) of an identity; None: the model's own neutral."""
    if coefficients is None:
        return model.neutral.copy()
    flat = coefficients @ model.identities.reshape(len(coefficients), -1)
    return model.neutral + flat.reshape(model.neutral.shape)


def apply_weights(neutral: np.ndarray, expressions: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Faces (T, V, 3) for expression weights (T, E) on a neutral (V, 3) with shapes (E, V, 3)."""
    flat = weights.astype(np.float32) @ expressions.reshape(len(expressions), -1)
    return neutral[None] + flat.reshape(len(weights), *neutral.shape)
