"""Frames of vertices in, a video file with the speech out, streaming (one frame held at a time)."""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator
from fractions import Fraction
from pathlib import Path

import numpy as np

from meshtalk.pipelines.errors import MeshtalkError
from meshtalk.pipelines.io.progress import progress_bar
from meshtalk.pipelines.io.video import VideoWriter
from meshtalk.pipelines.render.overlay import (
    COLOUR_BAR_WIDTH,
    Overlay,
    colour_bar,
    colour_lookup,
    distance_colours,
)
from meshtalk.pipelines.render.renderer import MeshRenderer, Panel

DEFAULT_DISTANCE_SHARE = 0.02
"""Without a given scale, the heat map saturates at this share of the template's diagonal."""


def single_frames(frames: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
    """Yield (V, 3) frames from an iterable of (V, 3) frames and/or (t, V, 3) chunks."""
    for item in frames:
        array = np.asarray(item)
        if array.ndim == 3:
            yield from array
        else:
            yield array


def render_video(
    frames: Iterable[np.ndarray],
    faces: np.ndarray,
    path: str | Path,
    *,
    fps: float | Fraction,
    audio: np.ndarray | Iterable[np.ndarray] | None = None,
    audio_rate: int = 16000,
    size: tuple[int, int] = (640, 480),
    view: str = "front",
    template: np.ndarray | None = None,
    compare: Iterable[np.ndarray] | None = None,
    distance_max: float | None = None,
    titles: tuple[str, str] = ("", ""),
    total: int | None = None,
    progress: bool = False,
    samples: int = 0,
    orientation: np.ndarray | None = None,
) -> int:
    """Render an animation to an H.264 video with the speech as AAC, holding one frame at a time.

    Args:
        frames: (V, 3) frames, or (t, V, 3) chunks of them, in order.
        faces: (F, 3) int triangles.
        path: the video file (.mp4, .mov, .mkv), written atomically.
        fps: frames per second of the animation.
        audio: (N,) float32 mono speech at `audio_rate`, an iterable of (n,) blocks of it in
            order (read while the track is encoded: long speech costs no memory), or None for a
            silent video.
        size: (width, height) in pixels, both even.
        view: "front", "side" or "both".
        template: (V, 3) mesh the camera is framed on (default: the first frame).
        compare: frames of a second animation of the same topology, in step with `frames`: drawn
            beside the first, with a third panel of the per-vertex distance (template units, mm
            for MeshTalk) as a heat map on the first mesh and a colour bar.
        distance_max: distance at which the heat map saturates (default: 2% of the template's
            bounding-box diagonal).
        titles: labels of the two animations' panels when comparing.
        total: number of frames, for the progress bar only.
        progress: show a progress bar over frames.
        samples: multisample anti-aliasing (0: off; see `MeshRenderer`).
        orientation: (3, 3) rotation of the face in the mesh's coordinates, so that the camera
            faces it (see `MeshRenderer`); None: the face looks along +Z, up +Y.

    Returns:
        The number of frames written.
    """
    path = Path(path)
    stream = single_frames(frames)
    first = next(stream, None)
    if first is None:
        raise MeshtalkError(path, "no frames to render")
    template = first if template is None else np.asarray(template, dtype=np.float32)
    stream = itertools.chain([first], stream)
    written = 0
    with (
        MeshRenderer(
            faces, template, size=size, view=view, samples=samples, orientation=orientation
        ) as renderer,
        VideoWriter(path, fps=fps, size=size, audio=audio, audio_rate=audio_rate) as writer,
        progress_bar(disable=not progress) as bar,
    ):
        task = bar.add_task("rendering", total=total)
        draw = (
            _plain(renderer)
            if compare is None
            else _comparison(renderer, path, template, distance_max, titles)
        )
        others = None if compare is None else single_frames(compare)
        for vertices in stream:
            other = None
            if others is not None:
                other = next(others, None)
                if other is None:
                    raise MeshtalkError(path, f"the compared animation ends after {written} frames")
            writer.write(draw(vertices, other))
            written += 1
            bar.advance(task)
        if others is not None and next(others, None) is not None:
            raise MeshtalkError(path, f"the compared animation is longer than {written} frames")
    return written


def _plain(renderer: MeshRenderer):
    def draw(vertices: np.ndarray, other: np.ndarray | None) -> np.ndarray:
        return renderer.render(vertices)

    return draw


def _comparison(
    renderer: MeshRenderer,
    path: Path,
    template: np.ndarray,
    distance_max: float | None,
    titles: tuple[str, str],
):
    """A drawing function: first mesh, second mesh, distance heat map; one row per view."""
    width, height = renderer.size
    if width < 3 * 32 + COLOUR_BAR_WIDTH:
        raise MeshtalkError(
            path, f"a comparison needs a width of at least {3 * 32 + COLOUR_BAR_WIDTH}"
        )
    if distance_max is None:
        diagonal = float(np.linalg.norm(template.max(axis=0) - template.min(axis=0)))
        distance_max = DEFAULT_DISTANCE_SHARE * diagonal
    distance_max = float(distance_max) if distance_max > 0 else 1.0
    views = ("front", "side") if renderer.view == "both" else (renderer.view,)
    used = width - COLOUR_BAR_WIDTH
    lookup = colour_lookup()
    overlay = Overlay()
    column_width = used // 3
    labels = (*titles, "distance (mm)")
    for i, label in enumerate(labels):
        if label:
            overlay.add_text(label, i * used // 3 + 6, 6, width=column_width - 12)
    overlay.add_image(colour_bar(height, distance_max), used, 0)

    def draw(vertices: np.ndarray, other: np.ndarray) -> np.ndarray:
        vertices = np.asarray(vertices, dtype=np.float32)
        other = np.asarray(other, dtype=np.float32)
        if other.shape != vertices.shape:
            raise MeshtalkError(
                path, f"compared frames are {other.shape}, expected {vertices.shape}"
            )
        distances = np.sqrt(((vertices - other) ** 2).sum(axis=1))
        colours = distance_colours(distances, distance_max, lookup)
        columns = [
            [Panel(vertices, view) for view in views],
            [Panel(other, view) for view in views],
            [Panel(vertices, view, colours) for view in views],
        ]
        return overlay.apply(renderer.render_panels(columns, used_width=used))

    return draw
