"""Faces: the built-in head, the motion fields that move it, and each identity's own shape.

A face is a template plus a weighted sum of motion fields (`MotionBasis`): one field per
articulation parameter, built from the region masks of the topology (and, for the built-in head,
from its rig: which vertices the jaw carries and where each eyelid closes to).

The built-in head is made here from a deformed ellipsoid sampled on a latitude-longitude grid
that is densest on the face: nose, brow ridge, cheeks, lips and chin are smooth bumps; the mouth
and both eyes are cuts through the grid (one row of vertices duplicated), so the lips can part and
the eyelids can open over two eyeballs behind them. At rest the lips are closed and the eyes open.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.spatial import cKDTree

from meshtalk.pipelines.errors import MeshtalkError
from meshtalk.pipelines.io.mesh import Mesh

MOUTH_PARAMS = ("jaw", "round", "spread", "closure")
EVENT_PARAMS = ("blink", "brow")
MOTION_PARAMS = MOUTH_PARAMS + EVENT_PARAMS
BLINK, BROW = (MOTION_PARAMS.index(name) for name in ("blink", "brow"))
"""Columns of the blink and brow-raise parameters."""

# Proportions of the built-in head (mm; x right, y up, z towards the viewer, head centre at 0).
HEAD_RADII = (76.0, 112.0, 104.0, 94.0)
"""Half width, height above the centre, depth below it (to the chin), front-back depth."""
EYE_Y, EYE_X, EYE_HALF_WIDTH = 4.0, 31.0, 13.0
"""Eye line height, eye centre offset from the midline, half width of the eye opening."""
EYE_OPEN_UP, EYE_OPEN_DOWN = 5.0, 3.5
"""How far the upper and lower lid margins sit above and below the eye line at rest."""
MOUTH_Y, MOUTH_HALF_WIDTH = -58.0, 25.0
"""Height of the line where the closed lips meet, and half the mouth's width."""
EYEBALL_RADIUS = 11.5


@dataclass
class FaceRig:
    """How the built-in head moves beyond what its masks say.

    Attributes:
        jaw: (V,) how far each vertex follows the jaw (1: the lower lip and chin, 0: the upper lip,
            with the lower lip's margin on the jaw side of the mouth cut).
        lid_weight: (V,) fraction of its eye's local opening that a vertex travels when the eye
            closes (upper lid downwards, lower lid upwards: at the margins they add to 1).
        lid_upper, lid_lower: (V,) indices of the upper and lower lid margin vertices of the column
            each vertex follows (the opening is their distance); -1 where a vertex does not.
        rigid: (V,) True for vertices no field moves (the eyeballs).
    """

    jaw: np.ndarray
    lid_weight: np.ndarray
    lid_upper: np.ndarray
    lid_lower: np.ndarray
    rigid: np.ndarray


@dataclass
class BuiltinHead:
    """The built-in head: its neutral mesh (mm), its landmarks and its rig."""

    mesh: Mesh
    landmarks: dict[str, list[int]]
    rig: FaceRig
    mouth_upper: np.ndarray
    """Upper lip margin vertices along the mouth cut (left to right)."""
    mouth_lower: np.ndarray
    """The lower lip margin vertices facing them (same positions at rest)."""
    eyeballs: np.ndarray
    """Vertices of both eyeballs."""


def _smoothstep(edge0: float, edge1: float, x: np.ndarray) -> np.ndarray:
    t = np.clip((x - edge0) / (edge1 - edge0), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def _bump(x: np.ndarray, y: np.ndarray, cx: float, cy: float, sx: float, sy: float) -> np.ndarray:
    return np.exp(-(((x - cx) / sx) ** 2) - ((y - cy) / sy) ** 2)


def _warped(n: int, low: float, high: float, dense: tuple[float, float], gain: float) -> np.ndarray:
    """n samples of [low, high] that are `gain` times denser inside `dense`."""
    fine = np.linspace(low, high, 4001)
    density = 1.0 + (gain - 1.0) * (
        _smoothstep(dense[0] - 0.15, dense[0], fine)
        * (1 - _smoothstep(dense[1], dense[1] + 0.15, fine))
    )
    cdf = np.concatenate([[0.0], np.cumsum((density[1:] + density[:-1]) / 2)])
    return np.interp(np.linspace(0, cdf[-1], n), cdf, fine)


def _front_relief(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """How far (mm) the face stands out of the ellipsoid at front position (x, y)."""
    ax = np.abs(x)
    z = np.zeros_like(x)
    # Eyes: sockets around them, the lids bulging over the eyeballs, a brow ridge above.
    for side in (-1, 1):
        z -= 6.0 * _bump(x, y, side * EYE_X, EYE_Y + 9, 16, 6)  # the hollow under the brow
        z += 3.0 * _bump(x, y, side * EYE_X + 4, EYE_Y, 14, 10)  # lids over the eyeball
    z += 5.0 * _bump(ax, y, 30, EYE_Y + 19, 20, 5.5)
    z += 2.5 * _bump(x, y, 0, EYE_Y + 12, 9, 7)  # between the brows
    # Nose: a ridge growing from the bridge to the tip, alae beside the tip.
    t = np.clip((EYE_Y + 6 - y) / 44.0, 0.0, 1.0)
    tip = np.where(y < EYE_Y - 38, np.exp(-(((y - (EYE_Y - 38)) / 5.5) ** 2)), 1.0)
    z += (3.0 + 20.0 * t**1.3) * tip * np.exp(-((x / (5.0 + 7.0 * t)) ** 2)) * (y < EYE_Y + 14)
    z += 5.5 * _bump(ax, y, 11, EYE_Y - 37, 6, 5)
    # Cheeks, the upper lip's groove, the lips, the fold under the lower lip, the chin.
    z += 6.0 * _bump(ax, y, 38, MOUTH_Y + 32, 16, 15)
    z += 3.0 * _bump(x, y, 0, MOUTH_Y + 5, 26, 9)
    z += 7.0 * np.exp(-((x / 24) ** 4) - ((y - MOUTH_Y - 4.5) / 4.0) ** 2)  # upper lip
    z += 8.0 * np.exp(-((x / 22) ** 4) - ((y - MOUTH_Y + 5.5) / 4.5) ** 2)  # lower lip
    z -= 3.0 * np.exp(-((x / 17) ** 2) - ((y - MOUTH_Y + 15) / 4.0) ** 2)
    z += 8.0 * _bump(x, y, 0, MOUTH_Y - 33, 17, 10)
    return z


def builtin_head(grid: int) -> BuiltinHead:
    """The procedural head on a latitude-longitude grid of 1.25 grid rows x 1.5 grid columns.

    `grid` 48 gives 4744 vertices (the default, and the bundled model's), 24 gives 1.2k and 16
    (the smallest) 594, for fast tests.
    """
    rx, ry_up, ry_down, rz = HEAD_RADII
    rows, cols = max(int(round(1.25 * grid)), 16), max(int(round(1.5 * grid)), 24)
    phi_mouth = np.arcsin(MOUTH_Y / ry_down)
    phi_eye = np.arcsin(EYE_Y / ry_up)
    phis = _warped(rows, -1.45, 1.45, (np.arcsin(-100 / ry_down), np.arcsin(40 / ry_up)), 4.0)
    row_mouth = int(np.argmin(np.abs(phis - phi_mouth)))
    phis[row_mouth] = phi_mouth
    row_eye = int(np.argmin(np.abs(phis - phi_eye)))
    if row_eye == row_mouth:
        raise MeshtalkError(None, f"grid {grid} is too coarse for the built-in head")
    phis[row_eye] = phi_eye
    s = np.linspace(-1, 1, cols, endpoint=False) + 1.0 / cols
    thetas = np.pi * np.sign(s) * np.abs(s) ** 1.6  # denser at the front (theta = 0)

    phi, theta = np.meshgrid(phis, thetas, indexing="ij")  # (rows, cols)
    below = np.clip(-np.sin(phi), 0, 1)
    width = rx * (1.0 - 0.22 * below**2)  # the jaw narrows towards the chin
    x = width * np.cos(phi) * np.sin(theta)
    y = np.where(phi > 0, ry_up, ry_down) * np.sin(phi)
    z = rz * np.cos(phi) * np.cos(theta) - 12.0 * below**2 * (np.cos(theta) < 0)
    front = np.clip(np.cos(theta), 0, 1) ** 2
    z = z + front * _front_relief(x, y)

    # Open the eyes: lift the upper lid margins and the skin above them, lower the lower ones.
    y_shift = np.zeros_like(y)
    upper_open = np.zeros_like(y)
    lower_open = np.zeros_like(y)
    for side in (-1, 1):
        across = np.clip(1 - ((x - side * EYE_X) / EYE_HALF_WIDTH) ** 2, 0, 1)
        upper_open += EYE_OPEN_UP * across**0.8
        lower_open += EYE_OPEN_DOWN * across**1.2
    dy = y - EYE_Y
    reach_up, reach_down = 3.2 * EYE_OPEN_UP, 3.2 * EYE_OPEN_DOWN
    y_shift += np.where(dy >= 0, upper_open * np.clip(1 - dy / reach_up, 0, 1) ** 2, 0.0)
    y_shift -= np.where(dy < 0, lower_open * np.clip(1 + dy / reach_down, 0, 1) ** 2, 0.0)

    vertices = np.stack([x, y + y_shift, z], axis=-1).reshape(-1, 3)
    index = np.arange(rows * cols).reshape(rows, cols)
    extra: list[np.ndarray] = []
    next_id = rows * cols

    def cut(row: int, columns: np.ndarray, shift: np.ndarray) -> np.ndarray:
        """Duplicate `row` at `columns`, moved by `shift` in y; returns the new indices."""
        nonlocal next_id
        copies = vertices[index[row, columns]].copy()
        copies[:, 1] += shift
        extra.append(copies)
        ids = np.arange(next_id, next_id + len(columns))
        next_id += len(columns)
        return ids

    # Lower-side copies of the cut rows: the triangles below a cut use them.
    lower_index = index.copy()
    mouth_cols = np.flatnonzero((np.abs(x[row_mouth]) < MOUTH_HALF_WIDTH) & (front[row_mouth] > 0))
    lower_index[row_mouth, mouth_cols] = cut(row_mouth, mouth_cols, np.zeros(len(mouth_cols)))
    eye_cols = []
    for side in (-1, 1):
        columns = np.flatnonzero(
            (np.abs(x[row_eye] - side * EYE_X) < EYE_HALF_WIDTH) & (front[row_eye] > 0)
        )
        if len(columns) < 2:
            raise MeshtalkError(None, f"grid {grid} is too coarse for the built-in head's eyes")
        # The original row sits at the raised upper margin; the copies at the lowered lower one.
        shift = -(upper_open[row_eye, columns] + lower_open[row_eye, columns])
        lower_index[row_eye, columns] = cut(row_eye, columns, shift)
        eye_cols.append(columns)
    vertices = np.concatenate([vertices, *extra])

    faces = []
    for r in range(rows - 1):
        # Rows go from the bottom (r = 0) up; the strip between row r and row r + 1 uses row
        # r + 1's lower-side copies where it is cut.
        lo, top = index[r], lower_index[r + 1]
        for c in range(cols):
            c1 = (c + 1) % cols
            faces.append((lo[c], lo[c1], top[c1]))
            faces.append((lo[c], top[c1], top[c]))
    # Poles: one vertex at the top of the head and one under the neck, each with a fan.
    top_pole, bottom_pole = len(vertices), len(vertices) + 1
    vertices = np.concatenate([vertices, [[0, ry_up, -8.0], [0, -ry_down * 0.97, -20.0]]])
    for c in range(cols):
        c1 = (c + 1) % cols
        faces.append((index[rows - 1, c], index[rows - 1, c1], top_pole))
        faces.append((index[0, c1], index[0, c], bottom_pole))
    num_skin = len(vertices)

    # Eyeballs behind the openings, their fronts just behind the lids.
    eyeball_ids, eyeball_faces = [], []
    skin_tree = cKDTree(vertices[:num_skin, :2][vertices[:num_skin, 2] > 0])
    skin_z = vertices[:num_skin, 2][vertices[:num_skin, 2] > 0]
    for side in (-1, 1):
        centre = np.array([side * EYE_X, EYE_Y, 0.0])
        lid_z = vertices[index[row_eye, eye_cols[(side + 1) // 2]], 2].max()
        centre[2] = lid_z - EYEBALL_RADIUS
        ball_v, ball_f = _uv_sphere(EYEBALL_RADIUS, max(grid // 4, 6), max(grid // 3, 8))
        # Sink the eyeball until every part of it is at least 1.5 mm behind the skin in front.
        placed = ball_v + centre
        ahead = ball_v[:, 2] > 0
        _, nearest = skin_tree.query(placed[ahead, :2])
        centre[2] -= max(float((placed[ahead, 2] - skin_z[nearest]).max()) + 1.5, 0.0)
        eyeball_faces.append(ball_f + len(vertices))
        eyeball_ids.append(np.arange(len(vertices), len(vertices) + len(ball_v)))
        vertices = np.concatenate([vertices, ball_v + centre])
    faces_array = np.concatenate([np.asarray(faces, dtype=np.int64), *eyeball_faces])
    eyeballs = np.concatenate(eyeball_ids)

    rig = _rig(vertices, index, lower_index, row_mouth, row_eye, eye_cols, num_skin, eyeballs)
    landmarks = _landmarks(vertices[:num_skin], index, lower_index, row_eye, eye_cols, front)
    mesh = Mesh(vertices=vertices.astype(np.float32), faces=faces_array)
    return BuiltinHead(
        mesh=mesh,
        landmarks=landmarks,
        rig=rig,
        mouth_upper=index[row_mouth, mouth_cols],
        mouth_lower=lower_index[row_mouth, mouth_cols],
        eyeballs=eyeballs,
    )


def _uv_sphere(radius: float, rings: int, segments: int) -> tuple[np.ndarray, np.ndarray]:
    phis = np.linspace(-np.pi / 2, np.pi / 2, rings + 2)[1:-1]
    thetas = np.linspace(0, 2 * np.pi, segments, endpoint=False)
    phi, theta = np.meshgrid(phis, thetas, indexing="ij")
    ring_v = np.stack(
        [np.cos(phi) * np.sin(theta), np.sin(phi), np.cos(phi) * np.cos(theta)], -1
    ).reshape(-1, 3)
    vertices = np.concatenate([ring_v, [[0, -1, 0], [0, 1, 0]]]) * radius
    index = np.arange(rings * segments).reshape(rings, segments)
    faces = []
    for r in range(rings - 1):
        for c in range(segments):
            c1 = (c + 1) % segments
            faces += [
                (index[r, c], index[r, c1], index[r + 1, c1]),
                (index[r, c], index[r + 1, c1], index[r + 1, c]),
            ]
    south, north = rings * segments, rings * segments + 1
    for c in range(segments):
        c1 = (c + 1) % segments
        faces += [(index[0, c1], index[0, c], south), (index[-1, c], index[-1, c1], north)]
    return vertices, np.asarray(faces, dtype=np.int64)


def _rig(
    vertices: np.ndarray,
    index: np.ndarray,
    lower_index: np.ndarray,
    row_mouth: int,
    row_eye: int,
    eye_cols: list[np.ndarray],
    num_skin: int,
    eyeballs: np.ndarray,
) -> FaceRig:
    v = vertices
    n = len(v)
    rows = index.shape[0]
    # Jaw: everything below the mouth cut (its lower-side copies included), fading out towards
    # the ears and the neck, so the chin and lower lip move as one.
    row_of = np.full(n, -1)
    row_of[index.ravel()] = np.repeat(np.arange(rows), index.shape[1])
    below_cut = (row_of >= 0) & (row_of < row_mouth)
    below_cut[np.setdiff1d(lower_index[row_mouth], index[row_mouth])] = True
    x, y, z = v[:, 0], v[:, 1], v[:, 2]
    towards_front = _smoothstep(-10.0, 50.0, z)
    # Near the mouth line the lower lip follows the jaw less towards the corners (a lens-shaped
    # opening); further down the whole chin follows.
    across = np.sqrt(np.clip(1 - (x / MOUTH_HALF_WIDTH) ** 2, 0, 1))
    near_line = np.exp(-(((y - MOUTH_Y) / 12.0) ** 2))
    jaw = below_cut * towards_front * (1 - (1 - across) * near_line)
    jaw *= 1 - _smoothstep(45.0, 75.0, np.abs(x))
    # Cheeks beside the mouth corners stretch a little with the jaw.
    corner = (~below_cut) * np.exp(-(((y - MOUTH_Y) / 6.0) ** 2)) * (np.abs(x) > MOUTH_HALF_WIDTH)
    jaw = np.maximum(jaw, 0.3 * corner * towards_front * (1 - _smoothstep(45.0, 75.0, np.abs(x))))

    # Eyelids: each skin vertex near an eye follows the opening of the nearest margin column.
    lid_weight = np.zeros(n)
    lid_upper = np.full(n, -1)
    lid_lower = np.full(n, -1)
    skin = np.arange(num_skin - 2)
    lower_copy = np.zeros(n, dtype=bool)
    for side, columns in zip((-1, 1), eye_cols):
        uppers, lowers = index[row_eye, columns], lower_index[row_eye, columns]
        lower_copy[lowers] = True
        margin_x = v[uppers, 0]
        dx = x[skin] - side * EYE_X
        near = np.abs(dx) < EYE_HALF_WIDTH + 6
        nearest = np.argmin(np.abs(x[skin][:, None] - margin_x[None]), axis=1)
        lateral = 1 - _smoothstep(EYE_HALF_WIDTH, EYE_HALF_WIDTH + 6, np.abs(dx))
        dy_up = y[skin] - v[uppers[nearest], 1]
        dy_down = v[lowers[nearest], 1] - y[skin]
        is_lower = (row_of[skin] < row_eye) | lower_copy[skin]
        up_weight = 0.85 * np.clip(1 - dy_up / 17.0, 0, 1) ** 2 * (dy_up >= -1e-6)
        down_weight = 0.15 * np.clip(1 - dy_down / 8.0, 0, 1) ** 2 * (dy_down >= -1e-6)
        weight = np.where(is_lower, down_weight, up_weight) * lateral * near
        weight *= _smoothstep(0.0, 20.0, z[skin])
        take = weight > np.abs(lid_weight[skin])
        lid_weight[skin[take]] = weight[take]
        lid_upper[skin[take]] = uppers[nearest[take]]
        lid_lower[skin[take]] = lowers[nearest[take]]
        lid_weight[skin[take & is_lower]] *= -1  # lower lids move up
    rigid = np.zeros(n, dtype=bool)
    rigid[eyeballs] = True
    return FaceRig(
        jaw=jaw.astype(np.float32),
        lid_weight=lid_weight.astype(np.float32),
        lid_upper=lid_upper,
        lid_lower=lid_lower,
        rigid=rigid,
    )


def _landmarks(
    skin: np.ndarray,
    index: np.ndarray,
    lower_index: np.ndarray,
    row_eye: int,
    eye_cols: list[np.ndarray],
    front: np.ndarray,
) -> dict[str, list[int]]:
    candidates = np.flatnonzero(front.ravel() > 0.3)
    candidates = candidates[candidates < len(skin)]

    def nearest(points: list[tuple[float, float]]) -> list[int]:
        xy = skin[candidates, :2]
        ids = [int(candidates[np.argmin(((xy - p) ** 2).sum(1))]) for p in points]
        return list(dict.fromkeys(ids))

    angles = np.linspace(0, 2 * np.pi, 20, endpoint=False)
    eyelids = [
        [int(i) for i in index[row_eye, columns]] + [int(i) for i in lower_index[row_eye, columns]]
        for columns in eye_cols
    ]
    return {
        "lip_outer": nearest([(26 * np.cos(t), MOUTH_Y - 0.5 + 10 * np.sin(t)) for t in angles]),
        "left_eyelid": eyelids[0],
        "right_eyelid": eyelids[1],
        "brows": nearest([(s * w, EYE_Y + 19) for s in (-1, 1) for w in (16, 28, 40)]),
        "chin": nearest([(s * w, MOUTH_Y - 40 + 0.2 * w) for s in (-1, 1) for w in (0, 12, 24)]),
    }


def builtin_face(grid: int) -> tuple[Mesh, dict[str, list[int]]]:
    """The built-in head (mm) and its landmark vertices (see `builtin_head`).

    Returns:
        The mesh (x right, y up, z towards the viewer) and landmarks in the format of
        `masks.load_landmarks`.
    """
    head = builtin_head(grid)
    return head.mesh, head.landmarks


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


def motion_basis(
    vertices: np.ndarray, masks: dict[str, np.ndarray], rig: FaceRig | None = None
) -> MotionBasis:
    """Motion fields of jaw, rounding, spreading, lip closure, blink and brow raise for a face.

    Args:
        vertices: (V, 3) the face at rest.
        masks: its region masks (`masks.build_masks` or a mask folder).
        rig: for the built-in head (`builtin_head(...).rig`): the jaw carries the lower lip and
            chin across the mouth cut, eyelids close exactly over the eyeballs, eyeballs stay
            still. None: fields from the masks and heights alone (any template).
    """
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
    broad_mouth = np.sqrt(np.clip(mouth, 0, 1))
    if rig is None:
        lower = _sigmoid(-height / (0.02 * iod))
        jaw = lower * broad_mouth
        side_of_cut = -np.sign(height)
        closure_gain = 0.05
    else:
        lower = rig.jaw.astype(np.float64)
        jaw = lower
        side_of_cut = np.where(lower > 0.5, 1.0, -1.0)
        closure_gain = 0.025
    fields = {
        "jaw": jaw[:, None] * (-0.2 * iod * up - 0.04 * iod * forward)
        + ((1 - lower) * mouth)[:, None] * (0.03 * iod * up),
        "round": mouth[:, None]
        * (-0.3 * lateral[:, None] * right[None] + 0.08 * iod * forward[None]),
        "spread": mouth[:, None]
        * (0.15 * lateral[:, None] * right[None] - 0.02 * iod * forward[None]),
        "closure": (mouth * np.exp(-np.abs(height) / (0.1 * iod)) * side_of_cut)[:, None]
        * (closure_gain * iod * up),
    }
    blink = np.zeros_like(v)
    if rig is not None:  # each lid travels its share of the local opening
        follows = rig.lid_upper >= 0
        opening = np.zeros_like(v)
        opening[follows] = v[rig.lid_upper[follows]] - v[rig.lid_lower[follows]]
        blink = -rig.lid_weight[:, None] * opening
    for centre in eye_centres if rig is None else ():
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
    if rig is not None:
        for name in fields:
            fields[name][rig.rigid] = 0.0
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


def builtin_vertex_count(grid: int) -> int:
    """Vertices of the built-in head at resolution `grid` (`SynthConfig.grid`)."""
    return len(builtin_head(grid).mesh.vertices)
