"""What every command shares: running a pipeline with one-line errors, and the `--debug` state."""

from __future__ import annotations

import typer

state = {"debug": False}
"""Set by the app's callback: `--debug` shows tracebacks instead of one-line errors."""


def call(run, config_factory) -> None:
    """Build the config and run the pipeline; user errors become one line and exit code 1."""
    from meshtalk.pipelines.errors import MeshtalkError

    try:
        run(config_factory())
    except MeshtalkError as error:
        if state["debug"]:
            raise
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(1) from None
    except OSError as error:  # full disk, read-only filesystem, no permission, symlink loop
        if state["debug"]:
            raise
        where = error.filename if error.filename is not None else "output"
        reason = error.strerror or str(error)
        typer.echo(f"error: {where}: {reason.lower()} (nothing half-written was kept)", err=True)
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        typer.echo("interrupted: rerun the same command to resume", err=True)
        raise typer.Exit(130) from None


def video_size(text: str) -> tuple[int, int]:
    """ "640x480" -> (640, 480), a one-line error otherwise (parsed inside `call`)."""
    from meshtalk.pipelines.render.pipeline import parse_size

    return parse_size(text)


NEGATED = {"no_video": "video", "no_transfer": "allow_transfer"}
"""Flags whose config field is their opposite (`--no-video` sets `video=False`)."""


def run_with(pipeline, config_type, values: dict, **renamed: str) -> None:
    """`call` the pipeline with a config built from a command's parameters.

    Args:
        pipeline: the pipeline's `run`.
        config_type: its config class; its fields are named as the command's parameters, but
            for the flags in `NEGATED`, `size` (WIDTHxHEIGHT, parsed) and `renamed`.
        values: the command's parameters (`dict(locals())` first thing in the command).
        renamed: parameter -> config field, where they differ.
    """

    def make():
        settings = {}
        for name, value in values.items():
            if name in NEGATED:
                settings[NEGATED[name]] = not value
            elif name == "size":
                settings[name] = video_size(value)
            else:
                settings[renamed.get(name, name)] = value
        return config_type(**settings)

    call(pipeline, make)
