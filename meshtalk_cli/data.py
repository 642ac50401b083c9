"""`meshtalk synth` and `meshtalk prep`: a talking-face dataset, and a store to train from."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from meshtalk.cli import options as shared
from meshtalk.cli.common import run_with
from meshtalk.pipelines.data.layout import NEUTRAL_SEGMENT


def synth(
    output: Annotated[Path, typer.Argument(help="Directory to write the dataset into.")],
    identities: Annotated[int, typer.Option(help="Number of identities.")] = 2,
    sentences: Annotated[int, typer.Option(help="Speech segments (SEN_*) per identity.")] = 4,
    seed: Annotated[int, typer.Option(help="Random seed (same seed, same bytes).")] = 0,
    template: Annotated[
        Path | None,
        typer.Option(help="Template mesh (PLY/OBJ) to deform instead of the built-in face."),
    ] = None,
    masks: Annotated[
        Path | None, typer.Option(help="Mask directory for --template (the authors' file names).")
    ] = None,
    multiface_topology: Annotated[
        bool,
        typer.Option(
            help="Write 7306-vertex Multiface meshes (needs the 6172-vertex MeshTalk template)."
        ),
    ] = False,
    grid: Annotated[
        int, typer.Option(help="Resolution of the built-in head (48: 4.7k vertices).")
    ] = 48,
    voice: Annotated[
        str | None,
        typer.Option(
            help="espeak (eSpeak NG reads English; its phoneme timings drive the mouth) or "
            "formant (pseudo-words, built-in synthesiser); default: espeak if it loads."
        ),
    ] = None,
    neutral_frames: Annotated[int, typer.Option(help="Frames of the neutral segment.")] = 30,
    drop_rate: Annotated[
        float, typer.Option(help="Fraction of frames whose mesh is missing.")
    ] = 0.02,
    blinks_per_minute: Annotated[float, typer.Option(help="Mean blink rate.")] = 15.0,
    brow_raises_per_minute: Annotated[float, typer.Option(help="Mean brow-raise rate.")] = 6.0,
    expression_drift: Annotated[
        float,
        typer.Option(help="Std of a slow speech-independent brow level and squint (0 for none)."),
    ] = 0.0,
    face: Annotated[
        str,
        typer.Option(
            help="builtin (the procedural head) or ict (the ICT-FaceKit head of --face-model: "
            "visemes, blinks, brows, saccades; the face area is tracked)."
        ),
    ] = "builtin",
    face_model: Annotated[
        Path | None,
        typer.Option(help="The ICT-FaceKit model's folder, with --face ict."),
    ] = None,
) -> None:
    """Write a procedural talking-face dataset in the Multiface layout, with ground truth."""
    values = dict(locals())
    from meshtalk.pipelines.data import synth as pipeline

    run_with(pipeline.run, pipeline.SynthConfig, values)


def prep(
    root: Annotated[Path, typer.Argument(help="Multiface root (one folder per identity).")],
    output: Annotated[
        Path, typer.Option("--output", "-o", help="Directory of the prepared store.")
    ],
    crop: Annotated[
        str | None,
        typer.Option(
            help="Vertex crop: 'meshtalk' (7306 -> 6172), 'none', or a file of indices to remove "
            "(default: 'meshtalk' for 7306-vertex Multiface meshes, else 'none')."
        ),
    ] = None,
    vertices: Annotated[
        int | None,
        typer.Option(help="Vertices per tracked mesh (default: from vert_mean.bin, else 7306)."),
    ] = None,
    landmarks: Annotated[
        str | None,
        typer.Option(
            help="Landmark preset or YAML file to build masks from (default: the dataset's own "
            "topology/ when it fits, else the 'meshtalk' preset for the 'meshtalk' crop)."
        ),
    ] = None,
    masks: Annotated[
        Path | None, typer.Option(help="Take masks from this directory instead.")
    ] = None,
    window: Annotated[
        str,
        typer.Option(
            help="Audio window: 'release' (1 s centred, 101 mel frames: the receptive field of the "
            "release's audio encoder) or 'paper' (-500/+100 ms, 61)."
        ),
    ] = "release",
    splits: Annotated[
        str, typer.Option(help="Split protocol: 'paper', 'multiface', or a YAML file.")
    ] = "paper",
    neutral_segment: Annotated[
        str, typer.Option(help="Segment that gives the neutral template.")
    ] = NEUTRAL_SEGMENT,
    workers: Annotated[int, typer.Option(help="Processes to use.")] = 1,
    channel: shared.ChannelOption = None,
    force: Annotated[
        bool,
        typer.Option(
            help="Replace a store prep made (never the dataset or a folder of other files)."
        ),
    ] = False,
) -> None:
    """Prepare Multiface data: crop, masks, log-mel, statistics, splits, a memory-mapped store."""
    values = dict(locals())
    from meshtalk.pipelines.data import prep as pipeline

    run_with(pipeline.run, pipeline.PrepConfig, values, vertices="num_vertices")
