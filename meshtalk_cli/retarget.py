"""`meshtalk retarget`: an animation onto another face."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from meshtalk.cli import options as shared
from meshtalk.cli.common import run_with

ForceOption = shared.force_option("retarget")
ModelOption = shared.model_option("Trained run for the same topology (default: the bundled model).")


def retarget(
    source: Annotated[
        Path,
        typer.Argument(
            help="Animation npz (animate's, or any with vertices (T, V, 3), template (V, 3) and "
            "fps; faces for another topology; audio and audio_rate or --speech for the same).",
            show_default=False,
        ),
    ],
    target: Annotated[
        Path,
        typer.Argument(
            help="Face mesh (PLY/OBJ) at rest. Of the source's topology: the model re-encodes "
            "the performance and decodes it onto this face. Of another: the motion is "
            "transferred (vertices, order and faces kept).",
            show_default=False,
        ),
    ],
    output: shared.OutputFolderOption,
    model: ModelOption = None,
    speech: Annotated[
        Path | None,
        typer.Option(
            help="The source's speech, when its npz holds none (same topology).",
            show_default=False,
        ),
    ] = None,
    transfer: shared.TransferOption = None,
    landmarks: Annotated[
        Path | None,
        typer.Option(
            help="Landmark pairs (another topology): YAML 'source: [...]' and 'target: [...]' "
            "vertex indices, or the MeshTalk preset's sets (lip_outer, brows, ...) on the target, "
            "or text lines 'SOURCE TARGET'. Default: aligned automatically.",
            show_default=False,
        ),
    ] = None,
    device: shared.DeviceOption = "auto",
    frames: shared.FramesOption = None,
    no_video: shared.NoVideoOption = False,
    formats: shared.FormatsOption = "",
    units: shared.UnitsOption = "same",
    mesh_units: shared.MeshUnitsOption = "auto",
    scale: Annotated[
        float, typer.Option(help="Multiply the PC2, template and per-frame exports.")
    ] = 1.0,
    size: shared.SizeOption = "640x480",
    force: ForceOption = False,
    progress: shared.ProgressOption = True,
) -> None:
    """Put an animation onto another face: same topology re-encoded, any other transferred."""
    values = dict(locals())
    from meshtalk.pipelines.inference.retarget import RetargetConfig
    from meshtalk.pipelines.inference.retarget import run as pipeline

    run_with(pipeline, RetargetConfig, values)
