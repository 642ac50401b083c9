"""transfer.png and transfer.json: what was fitted, for a person to judge before the animation.

The picture has two rows, front and side of the face (the registration knows where its front
is): on the left the user's mesh shaded by how much of the template's motion each vertex takes
(dark red: nothing, the parts the model does not animate; rigid parts blue), on the right the
fitted template drawn over the mesh in a translucent blue. The JSON holds the same figures as the
transfer's `info` (scale, fit distances, coverage, counts).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from meshtalk.pipelines.io.atomic import atomic_path, write_text_atomic
from meshtalk.pipelines.io.mesh import Mesh

PICTURE_SIZE = (960, 960)
"""Width and height of transfer.png: two columns (weights, overlay) by two rows (front, side)."""
TEMPLATE_COLOUR = np.array([0.25, 0.45, 0.95])
"""The fitted template's colour in the overlay."""
STILL_COLOUR = np.array([0.65, 0.12, 0.10])
"""The colour of target vertices that take none of the motion."""
RIGID_COLOUR = np.array([0.30, 0.50, 0.85])
"""Rigid parts (eyeballs, teeth)."""
OVERLAY_ALPHA = 0.55


def follow_weights(transfer) -> np.ndarray:
    """(Nt,) how much of the template's motion each target vertex takes, 0 to 1."""
    return np.clip(np.asarray(transfer.weights, dtype=np.float64).sum(axis=1), 0.0, 1.0)


def save_transfer_json(path: str | Path, transfer) -> None:
    """The transfer's figures as JSON (written atomically)."""
    follow = follow_weights(transfer)
    document = {
        **transfer.info,
        "source_vertices": int(transfer.num_source),
        "target_vertices": int(transfer.num_target),
        "vertices_following_fully": int((follow >= 1.0 - 1e-6).sum()),
        "vertices_not_moving": int((follow <= 1e-6).sum()),
        "similarity": np.asarray(transfer.similarity, dtype=float).round(9).tolist(),
    }
    write_text_atomic(path, json.dumps(document, indent=2, sort_keys=True) + "\n")


def face_orientation(transfer) -> np.ndarray:
    """(3, 3) the rotation of the template (front +Z, up +Y) in the target's coordinates."""
    linear = np.asarray(transfer.similarity, dtype=np.float64)[:3, :3]
    u, _, vt = np.linalg.svd(linear)
    return u @ vt


def save_transfer_picture(path: str | Path, transfer, source_faces: np.ndarray, target: Mesh):
    """transfer.png (see the module docstring), written atomically."""
    import PIL.Image

    from meshtalk.pipelines.render.renderer import BACKGROUND, MeshRenderer, Panel

    orientation = face_orientation(transfer)
    target_vertices = np.asarray(target.vertices, dtype=np.float32)
    fitted = np.asarray(transfer.fitted, dtype=np.float32)
    follow = follow_weights(transfer)[:, None]
    base = np.array([0.80, 0.78, 0.76])
    colours = follow * base + (1.0 - follow) * STILL_COLOUR
    colours[np.asarray(transfer.rigid) >= 0] = RIGID_COLOUR
    colours = colours.astype(np.float32)
    width, height = PICTURE_SIZE
    half = (width // 2, height)
    frame_on = np.concatenate([target_vertices, fitted])
    views = [[Panel(target_vertices, "front", colours), Panel(target_vertices, "side", colours)]]
    with MeshRenderer(
        target.faces, target_vertices, size=half, orientation=orientation, frame_on=frame_on
    ) as renderer:
        shaded = renderer.render_panels(views)
        plain = renderer.render_panels([[Panel(target_vertices, "front"),
                                         Panel(target_vertices, "side")]])  # fmt: skip
    template_colours = np.tile(TEMPLATE_COLOUR, (len(fitted), 1)).astype(np.float32)
    with MeshRenderer(
        source_faces, fitted, size=half, orientation=orientation, frame_on=frame_on
    ) as renderer:
        drawn = renderer.render_panels([[Panel(fitted, "front", template_colours),
                                         Panel(fitted, "side", template_colours)]])  # fmt: skip
    background = np.round(np.asarray(BACKGROUND) * 255)
    covered = np.any(np.abs(drawn.astype(np.float64) - background) > 2, axis=2, keepdims=True)
    overlay = np.where(covered, (1 - OVERLAY_ALPHA) * plain + OVERLAY_ALPHA * drawn, plain).astype(
        np.uint8
    )
    picture = np.concatenate([shaded, overlay], axis=1)
    with atomic_path(path, suffix=".png") as tmp:
        PIL.Image.fromarray(picture).save(tmp)
