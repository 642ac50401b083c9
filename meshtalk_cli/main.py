"""The `meshtalk` command: the app, assembled from one module per command (or group).

Each module holds thin Typer commands that build a config and call a pipeline's `run`; options
several commands share are declared once in `options`. Heavy libraries (torch, open3d) are
imported inside the pipelines, so `meshtalk --help` is fast.
"""

from __future__ import annotations

import logging
import sys
from typing import Annotated

import typer

from meshtalk.cli import (
    animate,
    data,
    dub,
    evaluate,
    export,
    render,
    retarget,
    rig,
    stream,
    train,
    view,
    weights,
)
from meshtalk.cli.common import state

app = typer.Typer(
    name="meshtalk",
    help="Speech-driven 3D face animation with MeshTalk: data preparation, training and sampling.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


@app.callback()
def options(
    debug: Annotated[bool, typer.Option("--debug", help="Show full tracebacks on errors.")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log more detail.")] = False,
) -> None:
    """Speech-driven 3D face animation with MeshTalk."""
    state["debug"] = debug
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(message)s",
        stream=sys.stderr,
    )


app.command()(data.synth)
app.command()(data.prep)
app.add_typer(train.train_app, name="train")
app.command()(animate.animate)
app.command()(render.render)
app.command("import-weights")(weights.import_weights)
app.command()(retarget.retarget)
app.command()(rig.rig)
app.command(help=dub.DUB_HELP)(dub.dub)
app.command("eval", help=evaluate.EVAL_HELP)(evaluate.evaluate)
app.command()(export.export)
app.command()(view.view)
app.command()(stream.stream)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
