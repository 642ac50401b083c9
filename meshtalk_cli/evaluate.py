"""`meshtalk eval`: a run's animation of a split, scored against the tracked meshes."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from meshtalk.cli import options as shared
from meshtalk.cli.common import run_with

EVAL_HELP = """Animate every segment of a split from its audio; score it against the tracked meshes.

Rows: samples (the prior's codes drawn from the audio, --takes of them, decoded as animate does
without smoothing), stage1 reconstruction (the encoder sees the true meshes and audio), static
template (no motion), data. p, g: predicted and tracked vertex positions (mm); L: lip vertices
(mouth mask > 0.5, listed in the JSON); U: upper-face mask weights; s(v): std of vertex v's
position over a segment's frames, sqrt(mean_t |x(t,v) - mean_t x(t,v)|^2).

- lip vertex error (mm, MeshTalk paper): mean_t max_(v in L) |p(t,v) - g(t,v)|

- lip vertex error squared (mm^2, FaceFormer/CodeTalker scripts, torchmetrics):
  mean_t max_(v in L) |p(t,v) - g(t,v)|^2

- lip vertex error centred (mm, the authors' snippet): the same as the first after subtracting
  each frame's lip-region mean from p and from g

- mean vertex error (mm): mean_(t,v) |p(t,v) - g(t,v)|

- upper-face motion std (mm, the paper's Figure 6): sum_v U(v) s(v) / sum_v U(v)

- upper-face dynamics deviation (mm): sum_v U(v) (s_p(v) - s_g(v)) / sum_v U(v); negative: a
  stiller upper face than the data's; and its absolute variant with |s_p(v) - s_g(v)|

- blinks per minute: eyelid gap = mean |x(upper) - x(lower)| over facing eyelid vertex pairs;
  a blink starts when the gap closes past 50% of the template's, and counts again once it has
  reopened to within 25%

- prior perplexity: exp of the mean -log p of the true codes (the encoder's on the true meshes
  and audio) under the prior, teacher forced (the class count for a uniform prior)

Segments are weighted by their frames; takes are averaged. Writes with -o: metrics.json,
error_map.png, motion_std.png and worst_segment.mp4 (the samples' worst lip vertex error, beside
the data)."""


ForceOption = shared.force_option("eval")


def evaluate(
    run: Annotated[
        Path, typer.Argument(help="Trained run folder with a prior (stage 2).", show_default=False)
    ],
    data: Annotated[
        Path,
        typer.Argument(
            help="Prepared store (meshtalk prep) of the run's topology.", show_default=False
        ),
    ],
    split: Annotated[str, typer.Option(help="Segments to score: train, val or test.")] = "test",
    takes: Annotated[int, typer.Option(help="Samples per segment (figures averaged).")] = 1,
    seed: Annotated[int, typer.Option(help="Seed of the sampler (segment k: seed + k).")] = 0,
    temperature: shared.TemperatureOption = 1.0,
    json_file: Annotated[
        Path | None,
        typer.Option(
            "--json",
            help="Also write the results to this JSON file (an existing one only with --force, "
            "and only if meshtalk eval wrote it).",
            show_default=False,
        ),
    ] = None,
    output: Annotated[
        Path | None,
        typer.Option(
            "--output",
            "-o",
            help="Folder for metrics.json, the heat maps and the worst segment's video.",
            show_default=False,
        ),
    ] = None,
    no_video: Annotated[bool, typer.Option("--no-video", help="Skip worst_segment.mp4.")] = False,
    mesh: Annotated[
        Path | None,
        typer.Option(
            help="Mesh (PLY/OBJ) of the topology whose faces the video uses (default: the store's "
            "source dataset's topology/template.ply).",
            show_default=False,
        ),
    ] = None,
    force: ForceOption = False,
    device: shared.DeviceOption = "auto",
    progress: shared.ProgressOption = True,
) -> None:
    values = dict(locals())
    from meshtalk.pipelines.eval.command import run as pipeline
    from meshtalk.pipelines.eval.evaluate import EvalConfig

    run_with(pipeline, EvalConfig, values, json_file="json")
