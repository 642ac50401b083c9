"""Region masks of a face topology, built from a few landmark vertices or read from files.

A landmark file (YAML) names vertex indices of a topology:

    num_vertices: 6172
    lip_outer: [...]    # closed loop around the lips, in order
    left_eyelid: [...]  # eyelid landmark vertices of one eye (upper and lower lid margins)
    right_eyelid: [...] # the same for the other eye
    brows: [...]        # vertices along both eyebrows, any order
    chin: [...]         # vertices along the lower jaw line, any order

The eyelid mask is the set of eyelid landmarks itself (the vertices the eyelid-landmark loss
follows); the weighted masks are grown from the landmarks with distances measured in units of the
inter-ocular distance (between the two eyelid sets' centroids), so the same settings work for any
scale of mesh.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

from meshtalk.pipelines.errors import MeshtalkError

MASK_NAMES = ("mouth", "upper_face", "eyelids", "forehead", "neck")
"""Masks every prepared dataset carries: weighted mouth (lips > 0.5), weighted upper face,
binary eyelid landmarks, and the forehead and neck regions smoothed over time after decoding."""

REFERENCE_MASK_FILES = {
    "mouth": "weighted_mouth_mask.txt",
    "upper_face": "weighted_eye_mask.txt",
    "eyelids": "eye_keypoints.txt",
    "forehead": "forehead_mask.txt",
    "neck": "neck_mask.txt",
}
"""File names of each mask in a mask directory (the authors' naming)."""

LANDMARK_KEYS = ("lip_outer", "left_eyelid", "right_eyelid", "brows", "chin")
LANDMARK_PRESETS = {"meshtalk": "meshtalk_landmarks.yaml"}


@dataclass(frozen=True)
class MaskShape:
    """How far each region reaches, in inter-ocular distances (IOD)."""

    mouth_core: float = 0.16
    """Mouth weight is 1 up to this distance from the lips region."""
    mouth_reach: float = 0.4
    """Mouth weight falls to 0 at this distance."""
    upper_face_low: float = 0.4
    """Upper-face weight rises from 0 at this height (0 = lips centre, 1 = eye line)..."""
    upper_face_full: float = 0.7
    """...to 1 at this height,"""
    upper_face_top: float = 0.3
    """and falls back to 0 this far (IOD) above the brows."""
    lateral_full: float = 0.8
    """Upper-face and forehead weights are full up to this distance from the face's midline..."""
    lateral_reach: float = 1.1
    """...and fall to 0 at this distance (IOD)."""
    forehead_start: float = -0.2
    """Forehead weight rises from 0 at this height above the brows (IOD)..."""
    forehead_full: float = 0.05
    """...to 1 this far above them (IOD)."""
    neck_start: float = -0.2
    """Neck weight rises from 0 at this depth below the chin (IOD)..."""
    neck_full: float = 0.1
    """...to 1 this far below it (IOD)."""


def load_landmarks(spec: str | Path, num_vertices: int) -> dict[str, np.ndarray]:
    """Load a landmark preset by name, or a landmark YAML file, checked against the topology."""
    import yaml

    if str(spec) in LANDMARK_PRESETS:
        text = resources.files("meshtalk.pipelines.data.resources").joinpath(
            LANDMARK_PRESETS[str(spec)]
        )
        source, raw = f"preset '{spec}'", yaml.safe_load(text.read_text())
    else:
        path = Path(spec)
        if not path.is_file():
            raise MeshtalkError(path, "landmark file not found")
        source = str(path)
        try:
            raw = yaml.safe_load(path.read_text())
        except yaml.YAMLError as error:
            raise MeshtalkError(path, f"not valid YAML ({str(error).splitlines()[0]})") from None
    if not isinstance(raw, dict):
        raise MeshtalkError(None, f"{source}: landmarks must be a mapping of names to index lists")
    problems = [f"missing '{key}'" for key in LANDMARK_KEYS if key not in raw]
    problems += [
        f"unknown key '{key}'" for key in raw if key not in (*LANDMARK_KEYS, "num_vertices")
    ]
    if raw.get("num_vertices", num_vertices) != num_vertices:
        problems.append(f"num_vertices is {raw['num_vertices']} but the meshes have {num_vertices}")
    landmarks = {}
    for key in LANDMARK_KEYS:
        values = raw.get(key)
        if key not in raw:
            continue
        if not isinstance(values, list) or not all(isinstance(v, int) for v in values):
            problems.append(f"'{key}' must be a list of vertex indices")
        elif any(v < 0 or v >= num_vertices for v in values):
            problems.append(f"'{key}' has indices outside 0..{num_vertices - 1}")
        elif len(values) < (3 if key != "brows" and key != "chin" else 1):
            problems.append(f"'{key}' needs more vertices")
        else:
            landmarks[key] = np.asarray(values, dtype=np.int64)
    if problems:
        raise MeshtalkError(None, f"{source}: " + "; ".join(problems))
    return landmarks


def _smoothstep(edge0: float, edge1: float, x: np.ndarray) -> np.ndarray:
    t = np.clip((x - edge0) / (edge1 - edge0), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def _distance_to_loop(points: np.ndarray, loop: np.ndarray) -> np.ndarray:
    """Distance of each point (N, 3) to the closed polyline through `loop` (K, 3)."""
    start, end = loop, np.roll(loop, -1, axis=0)
    seg = end - start  # (K, 3)
    rel = points[:, None, :] - start[None]  # (N, K, 3)
    t = np.clip((rel * seg).sum(-1) / np.maximum((seg * seg).sum(-1), 1e-12), 0.0, 1.0)
    closest = start[None] + t[..., None] * seg[None]
    return np.linalg.norm(points[:, None, :] - closest, axis=-1).min(axis=1)


def _inside_loop_2d(points: np.ndarray, loop: np.ndarray) -> np.ndarray:
    """Even-odd test of 2D points (N, 2) against a polygon (K, 2)."""
    inside = np.zeros(len(points), dtype=bool)
    x, y = points[:, 0], points[:, 1]
    for (x0, y0), (x1, y1) in zip(loop, np.roll(loop, -1, axis=0)):
        crosses = (y0 > y) != (y1 > y)
        with np.errstate(divide="ignore", invalid="ignore"):
            x_cross = x0 + (y - y0) * (x1 - x0) / (y1 - y0)
        inside ^= crosses & (x < x_cross)
    return inside


def build_masks(
    vertices: np.ndarray, landmarks: dict[str, np.ndarray], shape: MaskShape = MaskShape()
) -> dict[str, np.ndarray]:
    """Build every mask in `MASK_NAMES` for a neutral face from its landmark vertices.

    Args:
        vertices: (V, 3) neutral face.
        landmarks: from `load_landmarks`.

    Returns:
        name -> (V,) float32 weights in [0, 1] (eyelids is 0/1).
    """
    v = vertices.astype(np.float64)
    eyes = [v[landmarks["left_eyelid"]], v[landmarks["right_eyelid"]]]
    lips = v[landmarks["lip_outer"]]
    eye_mid = (eyes[0].mean(0) + eyes[1].mean(0)) / 2
    iod = float(np.linalg.norm(eyes[0].mean(0) - eyes[1].mean(0)))
    mouth_centre = lips.mean(0)
    up = eye_mid - mouth_centre
    face_height = float(np.linalg.norm(up))
    up /= face_height
    right = eyes[1].mean(0) - eyes[0].mean(0)
    right -= up * (right @ up)
    right /= np.linalg.norm(right)
    # Height of each vertex: 0 at the lips' centre, 1 at the eye line.
    height = (v - mouth_centre) @ up / face_height

    lips_2d = np.stack([(lips - mouth_centre) @ right, (lips - mouth_centre) @ up], axis=1)
    v_2d = np.stack([(v - mouth_centre) @ right, (v - mouth_centre) @ up], axis=1)
    lip_distance = _distance_to_loop(v, lips) / iod
    lip_distance[_inside_loop_2d(v_2d, lips_2d)] = 0.0
    mouth = 1.0 - _smoothstep(shape.mouth_core, shape.mouth_reach, lip_distance)

    eyelids = np.zeros(len(v))
    eyelids[np.concatenate([landmarks["left_eyelid"], landmarks["right_eyelid"]])] = 1.0

    brow_height = float(np.mean((v[landmarks["brows"]] - mouth_centre) @ up)) / face_height
    above_brows = (height - brow_height) * face_height / iod
    lateral = np.abs((v - eye_mid) @ right) / iod
    frontal = 1.0 - _smoothstep(shape.lateral_full, shape.lateral_reach, lateral)
    upper_face = (
        _smoothstep(shape.upper_face_low, shape.upper_face_full, height)
        * (1.0 - _smoothstep(0.0, shape.upper_face_top, above_brows))
        * frontal
    )
    forehead = _smoothstep(shape.forehead_start, shape.forehead_full, above_brows) * frontal

    chin_height = float(np.mean((v[landmarks["chin"]] - mouth_centre) @ up)) / face_height
    below_chin = (chin_height - height) * face_height / iod
    neck = _smoothstep(shape.neck_start, shape.neck_full, below_chin)

    masks = {
        "mouth": mouth,
        "upper_face": upper_face,
        "eyelids": eyelids,
        "forehead": forehead,
        "neck": neck,
    }
    return {name: masks[name].astype(np.float32) for name in MASK_NAMES}


def read_mask_dir(directory: str | Path, num_vertices: int) -> dict[str, np.ndarray]:
    """Read masks saved one value per line under the authors' file names (REFERENCE_MASK_FILES)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise MeshtalkError(directory, "mask directory not found")
    masks = {}
    for name, filename in REFERENCE_MASK_FILES.items():
        path = directory / filename
        if not path.is_file():
            raise MeshtalkError(path, f"mask file for '{name}' not found")
        try:
            values = np.loadtxt(path, dtype=np.float64, ndmin=1)
        except ValueError as error:
            raise MeshtalkError(path, f"not a list of numbers ({error})") from None
        if values.shape != (num_vertices,):
            raise MeshtalkError(
                path, f"has {values.size} values, expected {num_vertices} (one per vertex)"
            )
        if not np.isfinite(values).all():
            raise MeshtalkError(path, "holds NaN or infinite values")
        masks[name] = values.astype(np.float32)
    return masks


def write_mask_dir(directory: str | Path, masks: dict[str, np.ndarray]) -> None:
    """Write masks one value per line under the authors' file names."""
    from meshtalk.pipelines.io.atomic import write_text_atomic

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    for name, filename in REFERENCE_MASK_FILES.items():
        write_text_atomic(directory / filename, "\n".join(f"{x:.8g}" for x in masks[name]) + "\n")


def iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two boolean vertex sets."""
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0
