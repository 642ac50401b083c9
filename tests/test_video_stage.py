"""The video stage's camera: framed on the template, or on the points it is told to frame."""

from __future__ import annotations

from fractions import Fraction

import av
import numpy as np
import pytest

from meshtalk.pipelines.render.stage import VideoStage


def box(centre, half) -> tuple[np.ndarray, np.ndarray]:
    corners = np.array([[x, y, z] for x in (-1, 1) for y in (-1, 1) for z in (-1, 1)], np.float32)
    faces = [[0, 1, 3], [0, 3, 2], [4, 6, 7], [4, 7, 5], [0, 4, 5], [0, 5, 1],
             [2, 3, 7], [2, 7, 6], [0, 2, 6], [0, 6, 4], [1, 5, 7], [1, 7, 3]]  # fmt: skip
    return corners * half + np.asarray(centre, np.float32), np.array(faces)


def covered(video) -> float:
    """Share of pixels of the first frame that differ from the background (its corner)."""
    with av.open(str(video)) as container:
        image = next(container.decode(video=0)).to_ndarray(format="rgb24").astype(int)
    return float((np.abs(image - image[0, 0]).sum(-1) > 30).mean())


@pytest.mark.parametrize("frame", [False, True])
def test_the_camera_frames_the_points_it_is_given(tmp_path, frame):
    # A small box (the "face") and far points of the same mesh that no triangle uses (standing in
    # for a bust): framed on the box, it fills the picture; framed on the whole template, the
    # camera takes in the far points too and the box is small.
    vertices, faces = box((0, 0, 0), 10)
    vertices = np.concatenate([vertices, [[0, -400, 0], [300, 100, -50]]]).astype(np.float32)
    small = vertices[:8]
    video = tmp_path / "clip.mp4"
    with VideoStage(
        [video], faces, vertices, fps=Fraction(30), audio_rate=16000, size=(160, 120),
        audio=False, frame_on=small if frame else None,
    ) as stage:  # fmt: skip
        stage.write([np.repeat(vertices[None], 3, axis=0)])
        assert stage.finish([None]) == 3
    share = covered(video)
    assert share > 0.2 if frame else share < 0.02
