"""`meshtalk render`: an animation `.npz` (as `meshtalk animate` writes it) to a video with sound.

The vertices are read from the archive a chunk of frames at a time, so a long animation is never
held in memory; `--compare` renders a second animation beside the first with their per-vertex
distance as a heat map.
"""

from __future__ import annotations

import logging
import re
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

from meshtalk.pipelines.errors import MeshtalkError
from meshtalk.pipelines.export.npz import iter_rows, member_shape
from meshtalk.pipelines.io.mesh import Mesh, surface_problem
from meshtalk.pipelines.io.owned import check_new_file, video_written_by_meshtalk
from meshtalk.pipelines.io.video import check_output
from meshtalk.pipelines.render.clip import render_video
from meshtalk.pipelines.render.overlay import nice_maximum
from meshtalk.pipelines.render.renderer import VIEWS

log = logging.getLogger(__name__)

REQUIRED_KEYS = ("vertices", "faces", "template", "fps")
DEFAULT_AUDIO_RATE = 16000
"""Sample rate of an archive's `audio` when it has no `audio_rate` (what animate writes)."""
CHUNK_FRAMES = 128
"""Frames read from the archive at a time."""


@dataclass
class RenderConfig:
    """What `meshtalk render` renders and where."""

    animation: Path
    """The animation archive: `vertices` (T, V, 3), `faces` (F, 3), `template` (V, 3), `fps`, and
    optionally `audio` (16 kHz float32 samples) with `audio_rate`."""
    output: Path
    """The video file to write (.mp4, .mov or .mkv)."""
    audio: Path | None = None
    """An audio file to use instead of the archive's `audio` (any rate, mono or stereo)."""
    view: str = "front"
    """Camera: "front", "side", or "both" (the two side by side)."""
    compare: Path | None = None
    """A second animation of the same topology and length, drawn beside the first, with a heat map
    of the per-vertex distance (template units: mm for MeshTalk)."""
    size: tuple[int, int] = (640, 480)
    """Width and height of the video in pixels (both even)."""
    antialias: int = 0
    """Multisample anti-aliasing samples (0: off; 4 is smoother and about half as fast)."""
    progress: bool = True
    """Show a progress bar over frames."""
    force: bool = False
    """Replace an existing video at `output` if meshtalk wrote it (a user's file is kept)."""

    def __post_init__(self) -> None:
        self.animation, self.output = Path(self.animation), Path(self.output)
        if self.view not in VIEWS:
            raise MeshtalkError(
                None, f"--view must be one of {', '.join(VIEWS)}, got {self.view!r}"
            )
        width, height = self.size
        if width < 16 or height < 16 or width % 2 or height % 2:
            raise MeshtalkError(
                None, f"--size must be even and at least 16x16, got {width}x{height}"
            )
        if self.antialias < 0:
            raise MeshtalkError(None, f"anti-aliasing samples must be >= 0, got {self.antialias}")


def parse_size(text: str) -> tuple[int, int]:
    """ "640x480" -> (640, 480); a one-line error for anything else."""
    match = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", text)
    if match is None:
        raise MeshtalkError(None, f"--size must be WIDTHxHEIGHT (e.g. 640x480), got {text!r}")
    return int(match.group(1)), int(match.group(2))


@dataclass(frozen=True)
class Animation:
    """An animation archive's small members, checked; the vertices stay on disk."""

    path: Path
    frames: int
    faces: np.ndarray
    template: np.ndarray
    fps: Fraction
    audio: np.ndarray | None
    audio_rate: int

    def vertices(self, chunk: int = CHUNK_FRAMES) -> Iterator[np.ndarray]:
        """The (t, V, 3) float32 vertices a chunk at a time; an error names a non-finite frame."""
        first = 0
        for rows in iter_rows(self.path, "vertices", chunk):
            rows = rows.astype(np.float32, copy=False)
            finite = np.isfinite(rows).reshape(len(rows), -1).all(axis=1)
            if not finite.all():
                bad = first + int(np.argmin(finite))
                raise MeshtalkError(self.path, f"vertices of frame {bad} are NaN or infinite")
            first += len(rows)
            yield rows


def open_animation(path: Path) -> Animation:
    """Read and check everything in an animation archive but its vertices."""
    if not path.is_file():
        raise MeshtalkError(path, "no such animation file" if not path.exists() else "is a folder")
    try:
        with zipfile.ZipFile(path) as archive:
            names = {name.removesuffix(".npy") for name in archive.namelist()}
    except (OSError, zipfile.BadZipFile) as error:
        raise MeshtalkError(path, f"not a readable .npz archive ({error})") from None
    missing = [key for key in REQUIRED_KEYS if key not in names]
    if missing:
        raise MeshtalkError(
            path, f"missing {', '.join(missing)} (an animation from meshtalk animate?)"
        )
    shape, dtype = member_shape(path, "vertices")
    if len(shape) != 3 or shape[2] != 3 or shape[0] < 1 or dtype.kind != "f":
        raise MeshtalkError(path, f"vertices must be (T, V, 3) floats, got {shape} {dtype}")
    frames, num_vertices = shape[0], shape[1]
    small = _load_members(path, names & {"faces", "template", "fps", "audio", "audio_rate"})
    faces, template = small["faces"], small["template"]
    if faces.ndim != 2 or faces.shape[1] != 3 or faces.dtype.kind not in "iu" or not len(faces):
        raise MeshtalkError(path, f"faces must be (F, 3) integers, got {faces.shape} {faces.dtype}")
    if faces.min() < 0 or faces.max() >= num_vertices:
        raise MeshtalkError(path, f"faces index vertices outside 0..{num_vertices - 1}")
    if template.shape != (num_vertices, 3) or not np.isfinite(template).all():
        raise MeshtalkError(
            path, f"template is {template.shape}, the vertices have {num_vertices} per frame"
        )
    problem = surface_problem(Mesh(vertices=template, faces=faces))
    if problem is not None:
        raise MeshtalkError(path, problem)
    fps = _scalar(path, small["fps"], "fps")
    audio, audio_rate = None, DEFAULT_AUDIO_RATE
    if "audio_rate" in small:
        audio_rate = int(_scalar(path, small["audio_rate"], "audio_rate"))
    if "audio" in small:
        audio = small["audio"]
        if audio.ndim != 1 or audio.dtype.kind != "f":
            raise MeshtalkError(path, f"audio must be (N,) float samples, got {audio.shape}")
    return Animation(
        path=path,
        frames=frames,
        faces=faces.astype(np.int64),
        template=template.astype(np.float32),
        fps=Fraction(float(fps)).limit_denominator(10_000),
        audio=None if audio is None or not audio.size else audio.astype(np.float32),
        audio_rate=audio_rate,
    )


def _load_members(path: Path, keys: set[str]) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as archive:
            return {key: archive[key] for key in keys}
    except (OSError, ValueError, zipfile.BadZipFile) as error:
        raise MeshtalkError(path, f"unreadable member ({error})") from None


def _scalar(path: Path, value: np.ndarray, name: str) -> float:
    if value.size != 1 or value.dtype.kind not in "iuf":
        raise MeshtalkError(path, f"{name} must be one number, got shape {value.shape}")
    number = float(value.reshape(()))
    if not np.isfinite(number) or number <= 0:
        raise MeshtalkError(path, f"{name} must be positive, got {number}")
    return number


def largest_distance(first: Animation, second: Animation) -> float:
    """The largest per-vertex distance between two animations over all frames (streamed)."""
    largest = 0.0
    for a, b in zip(first.vertices(), second.vertices()):
        largest = max(largest, float(np.sqrt(((a - b) ** 2).sum(axis=2)).max()))
    return largest


def _check_compare(first: Animation, second: Animation) -> None:
    path = second.path
    if second.template.shape != first.template.shape:
        raise MeshtalkError(
            path,
            f"has {len(second.template)} vertices per frame, "
            f"{first.path} has {len(first.template)}",
        )
    if second.frames != first.frames:
        raise MeshtalkError(path, f"has {second.frames} frames, {first.path} has {first.frames}")
    if second.fps != first.fps:
        raise MeshtalkError(
            path, f"is at {float(second.fps):g} fps, {first.path} at {float(first.fps):g}"
        )


def run(config: RenderConfig) -> Path:
    """Render `config.animation` to `config.output`; returns the video's path."""
    check_output(config.output, config.size)
    check_new_file(config.output, config.force, "meshtalk", video_written_by_meshtalk)
    animation = open_animation(config.animation)
    audio, audio_rate = animation.audio, animation.audio_rate
    if config.audio is not None:
        from meshtalk.pipelines.io.audio import load_audio

        if not config.audio.is_file():
            raise MeshtalkError(config.audio, "no such audio file")
        audio, audio_rate = load_audio(config.audio), DEFAULT_AUDIO_RATE
    if audio is None:
        log.info(
            "%s: no audio in the archive and no --audio; the video is silent", config.animation
        )
    other, distance_max, titles = None, None, ("", "")
    if config.compare is not None:
        other = open_animation(config.compare)
        _check_compare(animation, other)
        largest = largest_distance(animation, other)
        distance_max = nice_maximum(largest)
        titles = (config.animation.stem, config.compare.stem)
        if config.compare.stem == config.animation.stem:
            titles = (str(config.animation), str(config.compare))
        log.info("largest per-vertex distance %.3g (heat map up to %g)", largest, distance_max)
    frames = render_video(
        animation.vertices(),
        animation.faces,
        config.output,
        fps=animation.fps,
        audio=audio,
        audio_rate=audio_rate,
        size=config.size,
        view=config.view,
        template=animation.template,
        compare=None if other is None else other.vertices(),
        distance_max=distance_max,
        titles=titles,
        total=animation.frames,
        progress=config.progress,
        samples=config.antialias,
    )
    log.info("wrote %s (%d frames at %g fps)", config.output, frames, float(animation.fps))
    return config.output
