"""Options several commands take, declared once (typer `Annotated` aliases).

A command module names its parameters with these, so an option reads the same in every command
that has it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

# --- every command that runs a model or shows progress --------------------------------------------
DeviceOption = Annotated[str, typer.Option(help="auto, cpu, cuda or mps.")]
ProgressOption = Annotated[bool, typer.Option(help="Show progress bars.")]
TemperatureOption = Annotated[
    float, typer.Option(help="Divide the prior's logits by this before drawing.")
]

# --- commands that write an output folder of animation files (animate, retarget, dub) -------------
OutputFolderOption = Annotated[Path, typer.Option("--output", "-o", help="Output folder.")]
FramesOption = Annotated[
    str | None, typer.Option(help="Also write one mesh per frame: ply or obj.")
]
NoVideoOption = Annotated[bool, typer.Option("--no-video", help="Skip the video (animation.mp4).")]
SizeOption = Annotated[str, typer.Option(help="Video size, WIDTHxHEIGHT.")]
SmoothOption = Annotated[
    bool | None,
    typer.Option(
        "--smooth/--no-smooth",
        help="Smooth forehead and neck over time as the release does (default: when the run "
        "stores their masks).",
        show_default=False,
    ),
]
ChannelOption = Annotated[
    int | None,
    typer.Option(
        help="Audio channel of the speech to use, 0 = first (default: the average of all "
        "channels).",
        show_default=False,
    ),
]
FormatsOption = Annotated[
    str,
    typer.Option(
        help="Also write these, comma-separated: glb (glTF 2.0 morph targets), usdz (UsdSkel "
        "blend shapes and the speech), usdc (time-sampled points); in metres, +Y up."
    ),
]
UnitsOption = Annotated[
    str,
    typer.Option(
        help="Unit of the PC2, template and per-frame files: same (the template's), mm, cm or m "
        "(Blender: m)."
    ),
]
MeshUnitsOption = Annotated[
    str,
    typer.Option(
        help="Unit of the template (and the npz): auto (from the head's size), mm, cm or m."
    ),
]
TransferOption = Annotated[
    Path | None,
    typer.Option(
        help="Reuse OUT/transfer.npz of an earlier run onto the same mesh (another topology).",
        show_default=False,
    ),
]


def force_option(command: str) -> object:
    """`--force` of a command that writes into an output folder, replacing only its own files."""
    return Annotated[
        bool,
        typer.Option(
            "--force",
            help=f"Write into a non-empty folder, replacing only {command}'s own files.",
        ),
    ]


def model_option(default: str) -> object:
    """`--model`: a trained run folder; `default` says what is used without it."""
    return Annotated[Path | None, typer.Option(help=default, show_default=False)]
