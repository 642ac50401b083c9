"""`meshtalk dub`: new speech on an existing performance."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from meshtalk.cli import options as shared
from meshtalk.cli.common import run_with

DUB_HELP = (
    "New speech on an existing performance: the lips follow SPEECH, eyes and brows stay. "
    "The dub lasts as long as SPEECH: a shorter speech ends the animation with it; after the "
    "original's end the frames are continued by the prior (stage 2), sampled from the new speech "
    "and conditioned on the dubbed frames before them. Writes animation.npz, animation.pc2, "
    "template.ply and animation.mp4 with the new speech, as animate does."
)


ForceOption = shared.force_option("dub")
ModelOption = shared.model_option(
    "Trained run of the original's topology (default: the bundled model)."
)


def dub(
    original: Annotated[
        Path,
        typer.Argument(
            help="The performance: an animation npz (animate's, or any with vertices (T, V, 3) "
            "of the model's topology, template (V, 3) and fps; faces for the video). Another "
            "frame rate than the model's is resampled.",
            show_default=False,
        ),
    ],
    speech: Annotated[
        Path,
        typer.Argument(
            help="The new speech (any common format, rate, channels).", show_default=False
        ),
    ],
    output: shared.OutputFolderOption,
    model: ModelOption = None,
    temperature: Annotated[
        float | None,
        typer.Option(
            help="Draw the codes with the log-probabilities divided by this. Default: the most "
            "likely codes (and the prior's continuation at 1).",
            show_default=False,
        ),
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of the drawn codes.")] = 0,
    compare: Annotated[
        bool,
        typer.Option("--compare", help="Also render compare.mp4: original | dubbed | distance."),
    ] = False,
    no_video: shared.NoVideoOption = False,
    formats: shared.FormatsOption = "",
    units: shared.UnitsOption = "same",
    mesh_units: shared.MeshUnitsOption = "auto",
    smooth: shared.SmoothOption = None,
    size: shared.SizeOption = "640x480",
    force: ForceOption = False,
    channel: shared.ChannelOption = None,
    device: shared.DeviceOption = "auto",
    progress: shared.ProgressOption = True,
) -> None:
    """Dub ORIGINAL with SPEECH (see the command's help)."""
    values = dict(locals())
    from meshtalk.pipelines.inference.dub import DubConfig
    from meshtalk.pipelines.inference.dub import run as pipeline

    run_with(pipeline, DubConfig, values)
