"""`meshtalk view`: an animation with its speech in a local web page."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from meshtalk.cli.common import run_with

HostOption = Annotated[
    str,
    typer.Option(
        help="Address to listen on; anything but 127.0.0.1 lets other machines see the page "
        "(a warning says so)."
    ),
]
PortOption = Annotated[int, typer.Option(help="Port to listen on (0: any free port).")]
NoOpenOption = Annotated[
    bool, typer.Option("--no-open", help="Print the address instead of opening the browser.")
]


def view(
    folder: Annotated[
        Path,
        typer.Argument(
            help="Output folder of animate/dub/retarget (animation.npz, or take_*/animation.npz), "
            "or an .npz."
        ),
    ],
    compare: Annotated[
        Path | None,
        typer.Option(
            help="A second animation of the same topology: each take shown beside the same "
            "take of it (up to 4 pairs), both coloured by their per-vertex distance, with a "
            "colour bar in mm.",
            show_default=False,
        ),
    ] = None,
    host: HostOption = "127.0.0.1",
    port: PortOption = 0,
    no_open: NoOpenOption = False,
) -> None:
    """Play an animation with its speech in the browser: orbit, zoom, scrub, takes side by side."""
    values = dict(locals())
    from meshtalk.pipelines.live.view import ViewConfig
    from meshtalk.pipelines.live.view import run as pipeline

    values["open_browser"] = not values.pop("no_open")
    run_with(pipeline, ViewConfig, values)
