"""`meshtalk render`: an animation archive to a video with its speech."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from meshtalk.cli import options as shared
from meshtalk.cli.common import run_with


def render(
    animation: Annotated[
        Path, typer.Argument(help="Animation archive written by `meshtalk animate` (.npz).")
    ],
    output: Annotated[Path, typer.Option("--output", "-o", help="Video file (.mp4/.mov/.mkv).")],
    audio: Annotated[
        Path | None, typer.Option(help="Audio file to use instead of the archive's speech.")
    ] = None,
    view: Annotated[str, typer.Option(help="Camera: front, side, or both side by side.")] = "front",
    compare: Annotated[
        Path | None,
        typer.Option(
            help="Second animation of the same topology and length: drawn beside the first with "
            "a heat map of their per-vertex distance in mm."
        ),
    ] = None,
    size: shared.SizeOption = "640x480",
    antialias: Annotated[
        int, typer.Option(help="Multisample anti-aliasing samples (0: off; 4: smoother, slower).")
    ] = 0,
    force: Annotated[
        bool,
        typer.Option("--force", help="Replace an existing video at -o if meshtalk wrote it."),
    ] = False,
    progress: shared.ProgressOption = True,
) -> None:
    """Render an animation to a video with its speech (headless OpenGL, H.264 + AAC)."""
    values = dict(locals())
    from meshtalk.pipelines.render import pipeline

    run_with(pipeline.run, pipeline.RenderConfig, values)
