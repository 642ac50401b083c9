"""`meshtalk stream`: live animation from speech as it arrives."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from meshtalk.cli import options as shared
from meshtalk.cli.common import run_with
from meshtalk.cli.view import HostOption, NoOpenOption, PortOption

ModelOption = shared.model_option(
    "Trained run folder (default: the bundled low-latency model, 100 ms look-ahead; the bundled "
    "default model: pipelines/data/resources/default_model/run)."
)


def stream(
    input: Annotated[
        str,
        typer.Option(
            "--input",
            help="Speech in: page (the page's microphone), a speech file played at real time "
            "(from when the first client connects; ends after its last frame), - (raw PCM on "
            "stdin: signed 16-bit little-endian mono at 16 kHz) or mic (this machine's "
            "microphone: needs sounddevice and PortAudio).",
        ),
    ] = "page",
    model: ModelOption = None,
    template: Annotated[
        Path | None,
        typer.Option(
            help="Template mesh of --model's topology (PLY/OBJ). Default: the bundled head, "
            "with the bundled model.",
            show_default=False,
        ),
    ] = None,
    host: HostOption = "127.0.0.1",
    port: PortOption = 0,
    no_open: NoOpenOption = False,
    argmax: Annotated[
        bool, typer.Option("--argmax", help="Most likely codes (deterministic).")
    ] = False,
    seed: Annotated[int, typer.Option(help="Seed of the sampler.")] = 0,
    temperature: shared.TemperatureOption = 1.0,
    int8: Annotated[bool, typer.Option("--int8", help="int8 sampler weights (CPU).")] = False,
    max_clients: Annotated[
        int, typer.Option(help="WebSocket clients at a time (more are refused).")
    ] = 8,
    record: Annotated[
        Path | None,
        typer.Option(
            help="Write the audio the server received to this WAV (a new file) at the end.",
            show_default=False,
        ),
    ] = None,
    rig: Annotated[
        Path | None,
        typer.Option(
            help="A GLB rig with ARKit-named morph targets: each frame also as its 52 ARKit "
            "weights (a second message, kind 1), solved as meshtalk rig does.",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Animate speech as it arrives: frames to the page and to any WebSocket client (binary)."""
    values = dict(locals())
    from meshtalk.pipelines.live.stream import StreamConfig
    from meshtalk.pipelines.live.stream import run as pipeline

    values["open_browser"] = not values.pop("no_open")
    run_with(pipeline, StreamConfig, values)
