"""`meshtalk animate`: speech to an animation of a face (the bundled one, the model's, or yours)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from meshtalk.cli import options as shared
from meshtalk.cli.common import run_with

ForceOption = shared.force_option("animate")
ModelOption = shared.model_option(
    "Trained run folder with a prior (stage 2). Default: the bundled model, trained "
    "on synthetic speech of a procedural head, for trying the toolkit."
)


def animate(
    output: shared.OutputFolderOption,
    speech: Annotated[
        Path | None,
        typer.Argument(
            help="Speech audio (any common format, rate, channels).", show_default=False
        ),
    ] = None,
    template: Annotated[
        Path | None,
        typer.Argument(
            help="Face mesh (PLY/OBJ) to animate, vertex order kept: of the model's topology, or "
            "any other (a head of your own: the model's template is animated and its motion "
            "transferred onto it). Default: the bundled model's head.",
            show_default=False,
        ),
    ] = None,
    example: Annotated[
        bool,
        typer.Option(
            "--example", help="Animate the bundled clip (a sentence spoken by eSpeak NG)."
        ),
    ] = False,
    model: ModelOption = None,
    seed: Annotated[int, typer.Option(help="Seed of the sampler (same seed, same animation).")] = 0,
    temperature: shared.TemperatureOption = 1.0,
    argmax: Annotated[
        bool, typer.Option("--argmax", help="Take the most likely codes (deterministic).")
    ] = False,
    takes: Annotated[
        int, typer.Option(help="Samples of the upper face, one folder each (OUT/take_<i>/).")
    ] = 1,
    int8: Annotated[
        bool | None,
        typer.Option(
            "--int8/--float",
            help="Sampler weights: int8 (CPU only, about twice as fast) or float. Default: int8 "
            "on the CPU, float elsewhere.",
        ),
    ] = None,
    channel: shared.ChannelOption = None,
    device: shared.DeviceOption = "auto",
    smooth: shared.SmoothOption = None,
    frames: shared.FramesOption = None,
    no_video: shared.NoVideoOption = False,
    formats: shared.FormatsOption = "",
    units: shared.UnitsOption = "same",
    mesh_units: shared.MeshUnitsOption = "auto",
    scale: Annotated[
        float,
        typer.Option(
            help="Multiply the PC2, template and per-frame exports (0.001: mm to m); the npz "
            "stays in the template's units."
        ),
    ] = 1.0,
    size: shared.SizeOption = "640x480",
    force: ForceOption = False,
    progress: shared.ProgressOption = True,
    transfer: shared.TransferOption = None,
    landmarks: Annotated[
        Path | None,
        typer.Option(
            help="Landmark pairs for registering the model's template onto a mesh of another "
            "topology (see meshtalk retarget --help). Default: aligned automatically.",
            show_default=False,
        ),
    ] = None,
    no_transfer: Annotated[
        bool,
        typer.Option("--no-transfer", help="Refuse a mesh of another topology than the model's."),
    ] = False,
) -> None:
    """Animate a face from speech: animation.npz, animation.pc2, the template and an mp4."""
    values = dict(locals())
    from meshtalk.pipelines.inference.animate import AnimateConfig
    from meshtalk.pipelines.inference.animate import run as pipeline

    run_with(pipeline, AnimateConfig, values)
