"""Faces: the built-in face, the motion fields that move it, and each identity's own shape.

A face is a template plus a weighted sum of motion fields (`MotionBasis`): one field per
articulation parameter, built from the region masks of the topology.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from meshtalk.pipelines.errors import MeshtalkError
from meshtalk.pipelines.io.mesh import Mesh

MOUTH_PARAMS = ("jaw", "round", "spread", "closure")
EVENT_PARAMS = ("blink", "brow")
MOTION_PARAMS = MOUTH_PARAMS + EVENT_PARAMS
BLINK, BROW = (MOTION_PARAMS.index(name) for name in ("blink", "brow"))
"""Columns of the blink and brow-raise parameters."""


def builtin_face(grid: int) -> tuple[Mesh, dict[str, list[int]]]:
    """A procedural neutral face (mm) on a grid, and its landmark vertices.

    Returns:
        The mesh (x right, y up, z towards the viewer) and landmarks in the format of
        `masks.load_landmarks`.
    """
    u, v = np.meshgrid(np.linspace(-1, 1, grid), np.linspace(-1, 1, grid))
    x = 72.0 * u * (1.0 - 0.25 * np.clip(-v, 0, 1))  # narrower towards the chin
    y = 105.0 * v
    z = 55.0 * np.sqrt(np.clip(1.0 - 0.75 * u**2 - 0.35 * v**2, 0.0, None))
    z += 16.0 * np.exp(-(u**2) / 0.012 - (v - 0.08) ** 2 / 0.05)  # nose
    for side in (-1, 1):  # eye sockets
        z -= 5.0 * np.exp(-((u - 0.38 * side) ** 2) / 0.02 - (v - 0.3) ** 2 / 0.004)
    z += 6.0 * np.exp(-(u**2) / 0.08 - (v + 0.32) ** 2 / 0.01)  # lips
    vertices = np.stack([x, y, z], axis=-1).reshape(-1, 3).astype(np.float32)
    index = np.arange(grid * grid).reshape(grid, grid)
    a, b, c, d = index[:-1, :-1], index[:-1, 1:], index[1:, :-1], index[1:, 1:]
    faces = np.concatenate(
        [np.stack([a, b, d], -1).reshape(-1, 3), np.stack([a, d, c], -1).reshape(-1, 3)]
    )

    def nearest(points_uv: list[tuple[float, float]]) -> list[int]:
        flat_u, flat_v = u.ravel(), v.ravel()
        ids = [int(np.argmin((flat_u - pu) ** 2 + (flat_v - pv) ** 2)) for pu, pv in points_uv]
        return list(dict.fromkeys(ids))

    angles = np.linspace(0, 2 * np.pi, 16, endpoint=False)
    landmarks = {
        "lip_outer": nearest([(0.3 * np.cos(t), -0.32 + 0.09 * np.sin(t)) for t in angles]),
        "left_eyelid": nearest(
            [(-0.38 + 0.13 * np.cos(t), 0.3 + 0.05 * np.sin(t)) for t in angles]
        ),
        "right_eyelid": nearest(
            [(0.38 + 0.13 * np.cos(t), 0.3 + 0.05 * np.sin(t)) for t in angles]
        ),
        "brows": nearest([(s * w, 0.45) for s in (-1, 1) for w in (0.2, 0.38, 0.55)]),
        "chin": nearest([(s * w, -0.72 + 0.1 * w) for s in (-1, 1) for w in (0.0, 0.25, 0.5)]),
    }
    return Mesh(vertices=vertices, faces=faces.astype(np.int64)), landmarks


# --- motion fields ------------------------------------------------------------------------------


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(x, -60, 60)))


@dataclass
class MotionBasis:
    """One displacement field (V, 3) per motion parameter: face = template + sum(p_k * field_k)."""

    names: tuple[str, ...]
    fields: np.ndarray  # (K, V, 3) float32

    def apply(self, template: np.ndarray, params: np.ndarray) -> np.ndarray:
        """Faces (T, V, 3) for parameters (T, K)."""
        flat = params.astype(np.float32) @ self.fields.reshape(len(self.names), -1)
        return template[None] + flat.reshape(len(params), *template.shape)


def motion_basis(vertices: np.ndarray, masks: dict[str, np.ndarray]) -> MotionBasis:
    """Motion fields of jaw, rounding, spreading, lip closure, blink and brow raise for a face."""
    v = vertices.astype(np.float64)
    mouth = masks["mouth"].astype(np.float64)
    lips = mouth > 0.5
    if lips.sum() < 3 or (masks["eyelids"] > 0.5).sum() < 2:
        raise MeshtalkError(None, "masks mark no lips or no eyelids: cannot animate this face")
    mouth_centre = (v[lips] * mouth[lips, None]).sum(0) / mouth[lips].sum()
    eyelid_points = v[masks["eyelids"] > 0.5]
    centred = eyelid_points - eyelid_points.mean(0)
    lateral_axis = np.linalg.svd(centred, full_matrices=False)[2][0]
    side = centred @ lateral_axis > 0
    eye_centres = [eyelid_points[~side].mean(0), eyelid_points[side].mean(0)]
    eye_mid = (eye_centres[0] + eye_centres[1]) / 2
    iod = float(np.linalg.norm(eye_centres[1] - eye_centres[0]))
    up = eye_mid - mouth_centre
    up /= np.linalg.norm(up)
    right = eye_centres[1] - eye_centres[0]
    right -= up * (right @ up)
    right /= np.linalg.norm(right)
    forward = np.cross(right, up)
    if (mouth_centre - v.mean(0)) @ forward < 0:
        forward = -forward

    rel = v - mouth_centre
    height, lateral = rel @ up, rel @ right
    lower = _sigmoid(-height / (0.02 * iod))
    broad_mouth = np.sqrt(np.clip(mouth, 0, 1))
    fields = {
        "jaw": (lower * broad_mouth)[:, None] * (-0.2 * iod * up - 0.04 * iod * forward)
        + ((1 - lower) * mouth)[:, None] * (0.03 * iod * up),
        "round": mouth[:, None]
        * (-0.3 * lateral[:, None] * right[None] + 0.08 * iod * forward[None]),
        "spread": mouth[:, None]
        * (0.15 * lateral[:, None] * right[None] - 0.02 * iod * forward[None]),
        "closure": (mouth * np.exp(-np.abs(height) / (0.1 * iod)) * -np.sign(height))[:, None]
        * (0.05 * iod * up),
    }
    blink = np.zeros_like(v)
    for centre in eye_centres:
        rel_eye = v - centre
        near = np.exp(-((np.linalg.norm(rel_eye, axis=1) / (0.16 * iod)) ** 2))
        above = _sigmoid((rel_eye @ up) / (0.01 * iod))
        blink += (near * above)[:, None] * (-0.11 * iod * up)
        blink += (near * (1 - above))[:, None] * (0.02 * iod * up)
    fields["blink"] = blink
    brow_height = (v - eye_mid) @ up
    frontal = np.exp(-((((v - eye_mid) @ right) / (0.9 * iod)) ** 4))
    brow = np.exp(-(((brow_height - 0.35 * iod) / (0.25 * iod)) ** 2)) * frontal
    fields["brow"] = brow[:, None] * (0.08 * iod * up)
    names = MOTION_PARAMS
    return MotionBasis(names, np.stack([fields[n] for n in names]).astype(np.float32))


def identity_face(template: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """An identity's neutral face: the template scaled and bent by smooth random bumps."""
    centre = template.mean(0)
    scale = rng.uniform(0.9, 1.1, size=3)
    face = centre + (template - centre) * scale
    extent = float(np.linalg.norm(template.max(0) - template.min(0)))
    for _ in range(6):
        anchor = template[rng.integers(len(template))]
        width = rng.uniform(0.08, 0.2) * extent
        amplitude = rng.uniform(-0.02, 0.02) * extent
        direction = rng.standard_normal(3)
        direction /= np.linalg.norm(direction)
        weight = np.exp(-((np.linalg.norm(template - anchor, axis=1) / width) ** 2))
        face += amplitude * weight[:, None] * direction
    return face.astype(np.float32)
