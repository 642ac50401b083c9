"""`meshtalk export`: an animation archive into GLB, USDZ, USDC and PC2."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from meshtalk.cli import options as shared
from meshtalk.cli.common import call


def export(
    animation: Annotated[
        Path, typer.Argument(help="Animation archive (.npz) of animate, dub or retarget.")
    ],
    output: shared.OutputFolderOption,
    to: Annotated[
        str, typer.Option(help="Comma-separated formats: glb, usdz, usdc, pc2.")
    ] = "glb,usdz",
    mesh: Annotated[
        Path | None,
        typer.Option(
            help="The template as a PLY/OBJ (same vertices, same order): its UVs, colours and "
            "material go into the GLB/USD. Default: the archive's template.",
            show_default=False,
        ),
    ] = None,
    error_mm: Annotated[
        float,
        typer.Option(
            help="Largest distance (mm) of any vertex on any frame from the animation "
            "in the GLB/USDZ (their morph-target basis is the smallest that meets it)."
        ),
    ] = 0.1,
    exact: Annotated[
        bool, typer.Option("--exact", help="One morph target per frame: exact (short clips).")
    ] = False,
    fps: Annotated[
        float | None,
        typer.Option(help="Frames per second (default: the archive's).", show_default=False),
    ] = None,
    units: shared.UnitsOption = "same",
    mesh_units: shared.MeshUnitsOption = "auto",
    force: shared.force_option("export") = False,
    progress: shared.ProgressOption = True,
) -> None:
    """Convert an animation archive to GLB (glTF 2.0 morph targets), USDZ, USDC or PC2."""
    values = dict(locals())
    from meshtalk.pipelines.export import convert

    values["formats"] = values.pop("to")
    call(convert.run, lambda: convert.ExportConfig(**values))
