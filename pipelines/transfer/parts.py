"""Rigid parts of a target mesh and what each moves with.

Rigid parts: a separate component of the target that is small beside the largest one (an eyeball,
teeth, a tongue, lashes) moves as one rigid body, so it never shears, with the region it sits in.
When the template's region masks are known (a run's `topology/masks`: lips, eyelid landmarks), a
part inside the head (its vertices, at the median, deeper than `SKIN_DEPTH` below the fitted
template) moves with the head, which is still (the model's frames are head-centred: SPEC, "head
pose removed"), or, for parts of the mouth below the lips' middle (lower teeth, tongue), with the
jaw: the rigid motion that best fits the chin under the lips. Eyeballs do not bob when the eyelids
close over them, upper teeth stay with the skull and lower teeth go with the chin. A part on the
skin (lashes or brows modelled apart), and every part when no masks are known, takes the rotation
and shift that best fit the motion its own vertices are bound to (least squares, per frame).
"""

from __future__ import annotations

import numpy as np

from meshtalk.pipelines.io.mesh import Mesh

RIGID_PART = 0.2
"""A separate component of the target with fewer vertices than this fraction of the largest
component's moves rigidly (eyeballs, teeth, tongue, lashes)."""
ON_SKIN, WITH_HEAD, WITH_JAW = -1, 0, 1
"""What a rigid part moves with: the skin its vertices are bound to, the head, or the jaw."""
REGION_NAMES = {ON_SKIN: "skin", WITH_HEAD: "head", WITH_JAW: "jaw"}
SKIN_DEPTH = 0.05
"""A rigid part whose vertices lie, at the median, within this many inter-ocular distances of the
fitted template (3 mm on an adult face) rides on the skin; a deeper one sits inside the head."""
FEATURE_REACH = 1.0
"""A part deeper inside and farther than this many inter-ocular distances from both the eyes and
the lips (glasses, earrings, a helmet) moves with the head."""
CHIN_REACH, CHIN_WIDTH = 0.9, 0.4
"""The jaw's anchors: template vertices off the lips, below them down to this many inter-ocular
distances under the lips' centre and within the second of the face's midline."""
MIN_ANCHORS = 8
"""Fewer chin anchors than this: the jaw's parts stay still like the head's."""


def move_parts(
    result: np.ndarray,
    moved: np.ndarray,
    rest: np.ndarray,
    parts: list[np.ndarray],
    part_region: np.ndarray,
    fitted: np.ndarray,
    jaw_anchors: np.ndarray,
) -> None:
    """Place every rigid part of the target frames `result` (n, Nt, 3), in place.

    Args:
        result: the target frames as the skin binding moved them.
        moved: (n, Vs, 3) the template's displacements in the target's frame.
        rest: (Nt, 3) the target at rest.
        parts: the target vertices of each rigid part.
        part_region: (P,) what each part moves with (ON_SKIN, WITH_HEAD, WITH_JAW).
        fitted: (Vs, 3) the template fitted onto the target.
        jaw_anchors: template vertices (the chin) whose rigid motion the jaw's parts follow.
    """
    jaw = None
    for part, region in zip(parts, part_region):
        still = rest[part]
        if region == ON_SKIN:
            result[:, part] = rigid_fit(still, result[:, part])
        elif region == WITH_JAW and len(jaw_anchors) >= MIN_ANCHORS:
            if jaw is None:
                chin = fitted[jaw_anchors]
                jaw = rigid_motion(chin, chin + moved[:, jaw_anchors])
            rotation, rest_centre, moved_centre = jaw
            result[:, part] = (still - rest_centre) @ rotation + moved_centre
        else:
            result[:, part] = still  # with the head, which is still


def rigid_motion(rest: np.ndarray, moved: np.ndarray):
    """The least-squares rigid motions (Kabsch, no reflection) carrying `rest` (k, 3) onto each
    frame of `moved` (n, k, 3): (n, 3, 3) rotations for row vectors, the (3,) centre of `rest`
    and the (n, 1, 3) centres of `moved`; a point p goes to (p - rest centre) @ R + moved centre."""
    rest = rest.astype(np.float64)
    moved = moved.astype(np.float64)
    rest_centre = rest.mean(axis=0)
    moved_centre = moved.mean(axis=1, keepdims=True)
    covariance = np.einsum("kc,nkd->ncd", rest - rest_centre, moved - moved_centre)
    u, _, vt = np.linalg.svd(covariance)
    flip = np.sign(np.linalg.det(u @ vt))
    u[:, :, 2] *= flip[:, None]
    return u @ vt, rest_centre, moved_centre


def rigid_fit(rest: np.ndarray, moved: np.ndarray) -> np.ndarray:
    """(n, k, 3) the rigid motions of `rest` (k, 3) that best fit each frame of `moved`."""
    rotation, rest_centre, moved_centre = rigid_motion(rest, moved)
    fitted = (rest.astype(np.float64) - rest_centre) @ rotation + moved_centre
    return fitted.astype(np.float32)


def template_regions(
    fitted: np.ndarray, masks: dict[str, np.ndarray] | None, up: np.ndarray
) -> dict | None:
    """Where the fitted template's eyes, lips, head and jaw are, from its region masks.

    Returns None when the masks do not say where the lips and both eyes are; else a dict of `eyes`
    (2, 3) and `lips` (3,) centres, `up` (3,) the face's up (the registration's, `up`, made square
    to the line between the eyes), `iod` (the inter-ocular distance), and `jaw`: the template
    vertices whose rigid motion the jaw's parts follow, those off the lips below them (the chin).
    """
    if not masks or "mouth" not in masks or "eyelids" not in masks:
        return None
    fitted = np.asarray(fitted, dtype=np.float64)
    count = len(fitted)
    masks = {name: np.asarray(mask, dtype=np.float64) for name, mask in masks.items()}
    if any(mask.shape != (count,) for mask in masks.values()):
        return None
    lips, lids = masks["mouth"] > 0.5, masks["eyelids"] > 0.5
    if lips.sum() < 3 or lids.sum() < 2:
        return None
    lid_points = fitted[lids]
    centred = lid_points - lid_points.mean(0)
    lateral = np.linalg.svd(centred, full_matrices=False)[2][0]
    side = centred @ lateral > 0
    if side.all() or not side.any():
        return None
    eyes = np.stack([lid_points[~side].mean(0), lid_points[side].mean(0)])
    lip_centre = fitted[lips].mean(0)
    iod = float(np.linalg.norm(eyes[1] - eyes[0]))
    up = np.asarray(up, dtype=np.float64).copy()
    up -= (up @ lateral) * lateral
    if iod <= 0 or np.linalg.norm(up) <= 0:
        return None
    up /= np.linalg.norm(up)
    height = (fitted - lip_centre) @ up
    across = np.abs((fitted - lip_centre) @ lateral)
    lip_floor = height[lips].min()
    chin = ~lips & (height < lip_floor) & (height > -CHIN_REACH * iod) & (across < CHIN_WIDTH * iod)
    return {
        "eyes": eyes,
        "lips": lip_centre,
        "up": up,
        "iod": iod,
        "jaw": np.flatnonzero(chin).astype(np.int64),
    }


def parts_regions(
    rigid: np.ndarray, points: np.ndarray, distance: np.ndarray, regions: dict | None
) -> np.ndarray:
    """(P,) int32 what each rigid part moves with (see the module docstring)."""
    count = int(rigid.max(initial=-1) + 1)
    result = np.full(count, ON_SKIN, dtype=np.int32)
    if regions is None:
        return result
    iod = regions["iod"]
    for part in range(count):
        members = rigid == part
        if np.median(distance[members]) <= SKIN_DEPTH * iod:
            continue  # on the skin
        centre = points[members].mean(0)
        to_eyes = np.linalg.norm(regions["eyes"] - centre, axis=1).min()
        to_lips = float(np.linalg.norm(regions["lips"] - centre))
        below = (centre - regions["lips"]) @ regions["up"] < 0
        mouth = to_lips < to_eyes and to_lips <= FEATURE_REACH * iod
        result[part] = WITH_JAW if mouth and below else WITH_HEAD
    return result


def rigid_parts(target: Mesh) -> np.ndarray:
    """(Nt,) int32 the rigid part of each target vertex (-1: none): separate components of the
    target's triangles smaller than `RIGID_PART` of the largest one."""
    import scipy.sparse
    import scipy.sparse.csgraph

    count = len(target.vertices)
    labels = np.full(count, -1, dtype=np.int32)
    faces = np.asarray(target.faces, dtype=np.int64)
    if not len(faces):
        return labels
    edges = faces[:, [0, 1, 1, 2, 2, 0]].reshape(-1, 2)
    # Vertices at one position (the two sides of a UV seam, saved as separate vertices) belong
    # together: a seam does not make a part.
    vertices = np.asarray(target.vertices, dtype=np.float64)
    size = float(np.linalg.norm(np.ptp(vertices, axis=0))) or 1.0
    _, same, counts = np.unique(
        np.round(vertices / (1e-7 * size)), axis=0, return_inverse=True, return_counts=True
    )
    same = same.reshape(-1)
    if (counts > 1).any():
        first = np.full(len(counts), -1, dtype=np.int64)
        first[same[::-1]] = np.arange(count)[::-1]  # the first vertex at each position
        seams = np.stack([np.arange(count), first[same]], axis=1)
        edges = np.concatenate([edges, seams[seams[:, 0] != seams[:, 1]]])
    graph = scipy.sparse.coo_matrix(
        (np.ones(len(edges), dtype=np.int8), (edges[:, 0], edges[:, 1])), shape=(count, count)
    )
    _, component = scipy.sparse.csgraph.connected_components(graph, directed=False)
    used = np.zeros(count, dtype=bool)
    used[faces.ravel()] = True
    sizes = np.bincount(component[used], minlength=component.max() + 1)
    largest = sizes.max()
    small = [c for c in np.flatnonzero(sizes) if 3 <= sizes[c] < RIGID_PART * largest]
    for part, c in enumerate(small):
        labels[(component == c) & used] = part
    return labels
