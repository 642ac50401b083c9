"""`meshtalk rig`: an animation as ARKit blendshape weights of a user's rig (GLB)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from meshtalk.cli import options as shared
from meshtalk.cli.common import run_with

ForceOption = shared.force_option("rig")


def rig(
    animation: Annotated[
        Path,
        typer.Argument(
            help="Animation npz (animate's, retarget's, or any with vertices (T, V, 3), template "
            "(V, 3) and fps; faces when the rig has another topology).",
            show_default=False,
        ),
    ],
    rig: Annotated[
        Path,
        typer.Argument(
            help="The rig: a GLB whose morph targets carry ARKit's names (eyeBlinkLeft ... "
            "tongueOut, or eyeBlink_L; case ignored; other targets are left at 0).",
            show_default=False,
        ),
    ],
    output: shared.OutputFolderOption,
    transfer: shared.TransferOption = None,
    landmarks: Annotated[
        Path | None,
        typer.Option(
            help="Landmark pairs for carrying the animation onto a rig of another topology "
            "(as retarget's). Default: aligned automatically.",
            show_default=False,
        ),
    ] = None,
    force: ForceOption = False,
    progress: shared.ProgressOption = True,
) -> None:
    """ARKit weights of a rig for an animation: Live Link Face CSV, Audio2Face JSON, the rig's
    GLB animated, and the fit's residual in mm."""
    values = dict(locals())
    from meshtalk.pipelines.inference.rig import RigConfig
    from meshtalk.pipelines.inference.rig import run as pipeline

    run_with(pipeline, RigConfig, values)
