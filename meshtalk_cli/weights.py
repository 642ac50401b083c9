"""`meshtalk import-weights`: the authors' released weights as a run."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from meshtalk.cli.common import run_with


def import_weights(
    release: Annotated[
        Path,
        typer.Argument(
            help="Folder of the authors' release: encoder.pkl, vertex_unet.pkl, context_model.pkl."
        ),
    ],
    output: Annotated[Path, typer.Option("--output", "-o", help="Run folder to write.")],
    masks: Annotated[
        Path | None,
        typer.Option(
            help="Region masks under the authors' file names (e.g. weighted_mouth_mask.txt), "
            "stored in the run for animate's smoothing; its face_template.obj is the template "
            "unless --template is given."
        ),
    ] = None,
    template: Annotated[
        Path | None,
        typer.Option(help="Template mesh (PLY/OBJ) of the release's topology, stored in the run."),
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Replace an existing run folder at --output.")
    ] = False,
) -> None:
    """Import the authors' pretrained weights as a run that `animate --model` uses as is."""
    values = dict(locals())
    from meshtalk.pipelines.checkpoint import release as importer

    run_with(importer.run, importer.ImportConfig, values)
