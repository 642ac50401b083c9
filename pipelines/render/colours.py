"""Per-part colours of a head from its material groups (and named vertex ranges), for the renderer.

A head made of parts (skin, mouth interior, teeth, tongue, eyeballs with sclera and iris, lashes)
reads as a face only when the parts are told apart: an open mouth is dark inside, eyes are white
with a dark iris. `part_colours` gives each vertex the colour of the part its faces' material
names (or a named vertex range, such as ICT-FaceKit's mouth socket) belong to, and says which
faces to leave out: thin transparent layers over the eyes (tear film, occlusion and blend shells)
that an opaque renderer would draw as grey skins over the eyeballs.
"""

from __future__ import annotations

import re

import numpy as np

from meshtalk.pipelines.io.mesh import Mesh

COLOURS = {
    "skin": (0.80, 0.64, 0.55),
    "mouth": (0.25, 0.08, 0.08),
    "socket": (0.55, 0.36, 0.32),
    "tongue": (0.62, 0.30, 0.30),
    "teeth": (0.93, 0.91, 0.84),
    "sclera": (0.95, 0.95, 0.95),
    "iris": (0.30, 0.19, 0.10),
    "pupil": (0.03, 0.03, 0.03),
    "lashes": (0.50, 0.38, 0.32),  # opaque cards without their alpha: darker reads as eyeliner
}
"""RGB in [0, 1] of each part."""
HIDDEN = "hidden"
MATERIAL_PARTS = (
    (r"lacrimal|occlusion|eye.?blend|tear|cornea", HIDDEN),
    (r"lash|brow|hair", "lashes"),
    (r"teeth|tooth", "teeth"),
    (r"tongue|gum", "tongue"),
    (r"mouth|socket|oral", "mouth"),
    (r"iris|pupil", "iris"),
    (r"sclera|eyeball|eye.?white", "sclera"),
    (r"skin|face|head|body|neck", "skin"),
)
"""(pattern, part) for material names, first match wins (case-insensitive)."""
RANGE_PARTS = {"mouth_socket": "mouth", "eye_sockets": "socket"}
IRIS_DEGREES, PUPIL_DEGREES = 32.0, 13.0
"""Half-angles of the iris and the pupil seen from the eyeball's centre."""
"""Named vertex ranges that override their material (ICT-FaceKit's mouth socket and eye sockets
share the back of the head's material but are the dark inside of the mouth and around the eyes)."""


def material_part(name: str) -> str | None:
    """The part a material name stands for, or None."""
    for pattern, part in MATERIAL_PARTS:
        if re.search(pattern, name, flags=re.IGNORECASE):
            return part
    return None


def part_colours(
    mesh: Mesh, ranges: dict[str, tuple[int, int]] | None = None
) -> tuple[np.ndarray, np.ndarray] | None:
    """Per-vertex colours (V, 3) float32 and the faces to draw (bool (F,)), or None when the
    mesh's materials name fewer than two known parts besides skin (then nothing is coloured and
    the renderer's plain face colour stays).

    Args:
        mesh: a mesh with `materials` and `face_materials` (an OBJ's `usemtl` groups).
        ranges: named vertex ranges [start, end) whose vertices take the part of `RANGE_PARTS`.
    """
    if mesh.face_materials is None or not mesh.materials:
        return None
    parts = [material_part(name) for name in mesh.materials]
    known = {part for part in parts if part not in (None, "skin", HIDDEN)}
    if len(known) < 2:
        return None
    names = (*COLOURS, HIDDEN)
    face_part = np.full(len(mesh.faces), names.index("skin"))
    for index, part in enumerate(parts):
        if part is not None:
            face_part[mesh.face_materials == index] = names.index(part)
    vertex_part = np.full(len(mesh.vertices), names.index("skin"))
    # A vertex shared by several parts takes the first in COLOURS' order that is not skin.
    for code in range(len(COLOURS) - 1, 0, -1):
        vertex_part[mesh.faces[face_part == code].ravel()] = code
    for name, (start, end) in (ranges or {}).items():
        if name in RANGE_PARTS:
            vertex_part[start:end] = names.index(RANGE_PARTS[name])
    _paint_eyeballs(mesh, face_part, vertex_part, names)
    table = np.asarray(list(COLOURS.values()) + [COLOURS["skin"]], dtype=np.float32)
    return table[vertex_part], face_part != names.index(HIDDEN)


def video_mesh(
    mesh: Mesh, ranges: dict[str, tuple[int, int]] | None = None
) -> tuple[np.ndarray, np.ndarray | None]:
    """The faces to draw and the per-vertex colours (None: plain) of `mesh` in a video."""
    painted = part_colours(mesh, ranges)
    if painted is None:
        return mesh.faces, None
    colours, visible = painted
    return mesh.faces[visible], colours


def _paint_eyeballs(
    mesh: Mesh, face_part: np.ndarray, vertex_part: np.ndarray, names: tuple[str, ...]
) -> None:
    """Eyes made of two shells (ICT-FaceKit: a clear outer sclera/cornea shell over an inner
    ball whose texture holds the iris): the outer shell is left out and the inner ball painted
    white with an iris and a pupil where it faces forward (+z). In place."""
    sclera, iris = names.index("sclera"), names.index("iris")
    outer = np.unique(mesh.faces[face_part == sclera])
    inner = np.unique(mesh.faces[face_part == iris])
    if not len(outer) or not len(inner):
        return
    low, high = mesh.vertices[outer].min(0), mesh.vertices[outer].max(0)
    inside = ((mesh.vertices[inner] >= low - 1e-3) & (mesh.vertices[inner] <= high + 1e-3)).all(1)
    if (
        inside.mean() < 0.9
        or np.ptp(mesh.vertices[inner], 0).min() < 0.5 * np.ptp(mesh.vertices[outer], 0).min()
    ):
        return  # not two shells of the same size: the materials say it all
    face_part[face_part == sclera] = names.index(HIDDEN)
    middle = float(np.median(mesh.vertices[inner, 0]))
    for side in (mesh.vertices[inner, 0] < middle, mesh.vertices[inner, 0] >= middle):
        ball = inner[side]
        offset = mesh.vertices[ball] - mesh.vertices[ball].mean(0)
        forward = offset[:, 2] / np.maximum(np.linalg.norm(offset, axis=1), 1e-9)
        vertex_part[ball] = sclera
        vertex_part[ball[forward > np.cos(np.radians(IRIS_DEGREES))]] = iris
        vertex_part[ball[forward > np.cos(np.radians(PUPIL_DEGREES))]] = names.index("pupil")
