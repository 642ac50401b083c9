"""Target meshes for registration and transfer tests, built from a template (no scan data).

Every head is made from a template of the MeshTalk topology (front +Z, up +Y, millimetres) and
comes with `truth`, the similarity (4, 4) that takes the template's coordinates to the head's, so
that a test can tell where the template's landmarks truly are on it. Subdivisions carry a motion
of the template along (`motion`, barycentric like the new vertices). The non-faces (a cube, a
sphere, a hand-like blob) are what a registration must refuse.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import trimesh

from meshtalk.pipelines.io.mesh import Mesh

EYE_HOLE = 0.55
"""Eye holes of the face mask: faces within this fraction of half the eye's landmark width."""
MOUTH_HOLE = 0.35
"""Mouth hole of the face mask: faces within this fraction of the mouth's half width of the
line between the lip corners, between the lips."""


@dataclass
class Head:
    """A target mesh and where the template truly lies on it.

    Attributes:
        name: what it is, for test ids and tables.
        mesh: the target.
        truth: (4, 4) template coordinates -> target coordinates (rotation * scale, shift).
        motion: (T, N, 3) per-vertex displacements of the target (in its own coordinates) that
            carry the template's motion exactly, or None where no exact motion is known.
    """

    name: str
    mesh: Mesh
    truth: np.ndarray
    motion: np.ndarray | None = None

    @property
    def scale(self) -> float:
        return float(np.cbrt(np.linalg.det(self.truth[:3, :3])))


def _mesh(vertices: np.ndarray, faces: np.ndarray) -> Mesh:
    return Mesh(vertices=np.asarray(vertices, np.float32), faces=np.asarray(faces, np.int64))


def subdivided(template: Mesh, times: int = 1, motion: np.ndarray | None = None) -> Head:
    """The template with every triangle split in four, `times` times; `motion` (T, V, 3) of the
    template goes along (each new vertex moves as the middle of its edge)."""
    vertices, faces = template.vertices.astype(np.float64), template.faces
    moving = None if motion is None else np.moveaxis(motion, 0, 1).reshape(len(vertices), -1)
    for _ in range(times):
        if moving is None:
            vertices, faces = trimesh.remesh.subdivide(vertices, faces)
        else:
            vertices, faces, attributes = trimesh.remesh.subdivide(
                vertices, faces, vertex_attributes={"motion": moving}
            )
            moving = attributes["motion"]
    carried = None
    if moving is not None:
        carried = np.moveaxis(moving.reshape(len(vertices), -1, 3), 1, 0).astype(np.float32)
    return Head(f"subdivided x{times}", _mesh(vertices, faces), np.eye(4), carried)


def resampled(template: Mesh, vertices: int, name: str = "") -> Head:
    """The template's surface with another topology of about `vertices` vertices: subdivided to
    enough triangles, then simplified (fast-simplification)."""
    import fast_simplification

    points, faces = template.vertices.astype(np.float64), template.faces
    while len(faces) < 4 * vertices:
        points, faces = trimesh.remesh.subdivide(points, faces)
    points, faces = fast_simplification.simplify(
        points.astype(np.float32), faces.astype(np.int32), target_count=2 * vertices
    )
    return Head(name or f"resampled {len(points)}", _mesh(points, faces), np.eye(4))


def transformed(head: Head, scale: float, rotation: np.ndarray, shift, name: str) -> Head:
    """`head` scaled, turned by `rotation` (3, 3) and shifted: another unit and pose."""
    matrix = np.eye(4)
    matrix[:3, :3] = scale * np.asarray(rotation, np.float64)
    matrix[:3, 3] = shift
    vertices = trimesh.transform_points(head.mesh.vertices.astype(np.float64), matrix)
    motion = None
    if head.motion is not None:
        motion = (head.motion.astype(np.float64) @ matrix[:3, :3].T).astype(np.float32)
    return Head(name, _mesh(vertices, head.mesh.faces), matrix @ head.truth, motion)


def turn(degrees: float, axis) -> np.ndarray:
    """(3, 3) rotation by `degrees` about `axis`."""
    return trimesh.transformations.rotation_matrix(np.radians(degrees), axis)[:3, :3]


def metres_turned(head: Head) -> Head:
    """In metres, turned 90 degrees about the vertical (looking along +X), away from the origin."""
    return transformed(head, 0.001, turn(90, [0, 1, 0]), [0.4, 1.6, -0.2], "metres, turned 90")


def z_up(head: Head) -> Head:
    """In centimetres with Z up and the face looking along -Y (as Blender and many scanners)."""
    return transformed(head, 0.1, turn(90, [1, 0, 0]), [5.0, -3.0, 160.0], "cm, Z up")


def _joined(name: str, head: Head, parts: list[trimesh.Trimesh]) -> Head:
    vertices, faces = [head.mesh.vertices.astype(np.float64)], [head.mesh.faces]
    count = len(head.mesh.vertices)
    for part in parts:
        vertices.append(np.asarray(part.vertices, np.float64))
        faces.append(np.asarray(part.faces) + count)
        count += len(part.vertices)
    return Head(name, _mesh(np.concatenate(vertices), np.concatenate(faces)), head.truth)


def bust(head: Head) -> Head:
    """The head (template coordinates) on a neck (a cylinder under the chin) and shoulders (a
    flattened ellipsoid), together several times the face's area."""
    neck = trimesh.creation.cylinder(radius=58.0, height=230.0, sections=48)
    neck.apply_transform(trimesh.transformations.rotation_matrix(np.pi / 2, [1, 0, 0]))
    neck.apply_translation([0.0, -175.0, -55.0])
    shoulders = trimesh.creation.icosphere(subdivisions=4)
    shoulders.apply_scale([250.0, 95.0, 125.0])
    shoulders.apply_translation([0.0, -330.0, -60.0])
    return _joined("bust", head, [neck, shoulders])


def with_eyes_and_teeth(head: Head, landmarks: dict[str, np.ndarray]) -> Head:
    """Eyeballs (spheres behind the eyelids) and a box of teeth behind the lips, each a separate
    component, as scanned or modelled heads often have (template coordinates)."""
    vertices = head.mesh.vertices
    parts = []
    for side in ("left_eyelid", "right_eyelid"):
        centre = vertices[landmarks[side]].mean(0) - [0.0, 0.0, 11.0]
        eye = trimesh.creation.icosphere(subdivisions=3, radius=12.0)
        eye.apply_translation(centre)
        parts.append(eye)
    lips = vertices[landmarks["lip_outer"]]
    teeth = trimesh.creation.box(extents=[38.0, 16.0, 12.0])
    teeth.apply_translation(lips.mean(0) - [0.0, 0.0, 14.0])
    parts.append(teeth)
    return _joined("eyes and teeth", head, parts)


def face_mask(template: Mesh, landmarks: dict[str, np.ndarray], vertices: int = 9000) -> Head:
    """A face-only scan: the template resampled, cut to the face in front of the ears (forehead
    to below the chin), with holes at the eyes and the mouth, centred and scaled to unit size
    (its bounding box's diagonal is 1)."""
    resample = resampled(template, vertices).mesh
    points, faces = resample.vertices.astype(np.float64), resample.faces
    centres = points[faces].mean(1)
    eyes = [points_of(template, landmarks[side]) for side in ("left_eyelid", "right_eyelid")]
    lips = points_of(template, landmarks["lip_outer"])
    middle = 0.5 * (eyes[0].mean(0) + eyes[1].mean(0))
    x, y = centres[:, 0] - middle[0], centres[:, 1] - (middle[1] - 35.0)
    keep = ((x / 78.0) ** 2 + (y / 115.0) ** 2 < 1.0) & (centres[:, 2] > -25.0)
    for eye in eyes:
        half_width = 0.5 * (eye[:, 0].max() - eye[:, 0].min())
        reach = np.linalg.norm((centres - eye.mean(0))[:, :2], axis=1)
        keep &= reach > EYE_HOLE * half_width
    corners = lips[np.argsort(lips[:, 0])[[0, -1]]]
    half_mouth = 0.5 * (corners[1, 0] - corners[0, 0])
    mouth_line = np.abs(centres[:, 1] - corners[:, 1].mean())
    inside = (np.abs(centres[:, 0] - corners[:, 0].mean()) < 0.8 * half_mouth) & (
        mouth_line < MOUTH_HOLE * 0.25 * half_mouth
    )
    keep &= ~inside
    cut = trimesh.Trimesh(points, faces[keep], process=False)
    cut.remove_unreferenced_vertices()
    largest = max(cut.split(only_watertight=False), key=lambda part: len(part.faces))
    low, high = largest.bounds
    scale = 1.0 / float(np.linalg.norm(high - low))
    return transformed(
        Head("face mask", _mesh(largest.vertices, largest.faces), np.eye(4)),
        scale,
        np.eye(3),
        -scale * 0.5 * (low + high),
        "face mask, unit size",
    )


def points_of(mesh: Mesh, indices) -> np.ndarray:
    return mesh.vertices[np.asarray(indices)].astype(np.float64)


def cube(size: float = 200.0) -> Mesh:
    """A cube, subdivided to a few thousand vertices."""
    box = trimesh.creation.box(extents=[size] * 3).subdivide_to_size(size / 24)
    return _mesh(box.vertices, box.faces)


def sphere(radius: float = 100.0) -> Mesh:
    ball = trimesh.creation.icosphere(subdivisions=5, radius=radius)
    return _mesh(ball.vertices, ball.faces)


def hand_blob(size: float = 180.0) -> Mesh:
    """A hand-like blob: a flattened ellipsoid (the palm) with five finger-like cylinders."""
    palm = trimesh.creation.icosphere(subdivisions=4)
    palm.apply_scale([0.45 * size, 0.5 * size, 0.15 * size])
    parts = [palm]
    for index, angle in enumerate(np.radians([-30, -10, 5, 20, 70])):
        length = size * (0.55 if index < 4 else 0.4)
        finger = trimesh.creation.capsule(height=length, radius=0.07 * size, count=[16, 16])
        finger.apply_transform(trimesh.transformations.rotation_matrix(np.pi / 2, [-1, 0, 0]))
        direction = np.array([np.sin(angle), np.cos(angle), 0.0])
        finger.apply_transform(trimesh.geometry.align_vectors([0, 1, 0], direction))
        finger.apply_translation(direction * 0.45 * size)
        parts.append(finger)
    blob = trimesh.util.concatenate(parts)
    return _mesh(blob.vertices, blob.faces)
