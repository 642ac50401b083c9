"""The `meshtalk` command: thin Typer commands that build a config and call a pipeline's `run`.

Heavy libraries (torch, open3d) are imported inside the pipelines, so `meshtalk --help` is fast.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Annotated

import typer

from meshtalk.pipelines.data.layout import NEUTRAL_SEGMENT

app = typer.Typer(
    name="meshtalk",
    help="Speech-driven 3D face animation with MeshTalk: data preparation, training and sampling.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
state = {"debug": False}


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


def _call(run, config_factory) -> None:
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


@app.command()
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
) -> None:
    """Write a procedural talking-face dataset in the Multiface layout, with ground truth."""
    from meshtalk.pipelines.data import synth as pipeline

    _call(
        pipeline.run,
        lambda: pipeline.SynthConfig(
            output=output,
            identities=identities,
            sentences=sentences,
            seed=seed,
            template=template,
            masks=masks,
            multiface_topology=multiface_topology,
            grid=grid,
            voice=voice,
            neutral_frames=neutral_frames,
            drop_rate=drop_rate,
            blinks_per_minute=blinks_per_minute,
            brow_raises_per_minute=brow_raises_per_minute,
            expression_drift=expression_drift,
        ),
    )


@app.command()
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
    channel: Annotated[
        int | None,
        typer.Option(
            help="Audio channel to use, 0 = first (default: the average of all channels)."
        ),
    ] = None,
    force: Annotated[
        bool,
        typer.Option(
            help="Replace a store prep made (never the dataset or a folder of other files)."
        ),
    ] = False,
) -> None:
    """Prepare Multiface data: crop, masks, log-mel, statistics, splits, a memory-mapped store."""
    from meshtalk.pipelines.data import prep as pipeline

    _call(
        pipeline.run,
        lambda: pipeline.PrepConfig(
            root=root,
            output=output,
            crop=crop,
            num_vertices=vertices,
            landmarks=landmarks,
            masks=masks,
            window=window,
            splits=splits,
            neutral_segment=neutral_segment,
            workers=workers,
            channel=channel,
            force=force,
        ),
    )


train_app = typer.Typer(
    help="Train the two MeshTalk stages.", no_args_is_help=True, pretty_exceptions_enable=False
)
app.add_typer(train_app, name="train")

# The options both training stages take, declared once.
DataOption = Annotated[Path, typer.Option(help="Prepared store (meshtalk prep).")]
RunOption = Annotated[Path, typer.Option("--output", "-o", help="Run directory.")]
PresetOption = Annotated[
    str | None,
    typer.Option(
        help="Both models' sizes and both stages' training: release (the authors' H=16 x C=128), "
        "paper (H=64) or tiny (a CPU demo); by default the one --config names, else release."
    ),
]
ConfigOption = Annotated[
    Path | None,
    typer.Option(
        help="YAML overriding fields of the preset: 'model:' and 'train:' sections, optionally "
        "'preset:' (see examples/configs/)."
    ),
]
DeviceOption = Annotated[str, typer.Option(help="auto, cpu, cuda or mps.")]
ResumeOption = Annotated[
    bool,
    typer.Option(help="Continue the run in --output from its checkpoint (start it if none)."),
]
StepsOption = Annotated[
    int | None, typer.Option(help="Train this many steps in all (overrides the preset).")
]
ProgressOption = Annotated[bool, typer.Option(help="Show progress bars.")]
DataOnDeviceOption = Annotated[
    str,
    typer.Option(
        help="Hold the training data where training runs: auto (on CUDA: GPU memory when it "
        "fits, else pinned host memory), yes (also on the CPU), no (memory-mapped store). "
        "Same batches either way."
    ),
]
Bf16Option = Annotated[
    bool | None,
    typer.Option(
        "--bf16/--no-bf16",
        help="bf16 autocast, for CUDA (default: the config's train.bf16, used on CUDA only).",
        show_default=False,
    ),
]


def _train(stage: str, preset: str | None, config: Path | None, steps: int | None, **run) -> None:
    """Resolve a stage's settings (preset, YAML overrides, --steps) and run it.

    `run` holds the stage's own options (data, output, device, ...), passed to its config as they
    are.
    """
    from meshtalk.pipelines.presets import stage_settings

    if stage == "latent":
        from meshtalk.pipelines.train.latent import TrainLatentConfig as Config
        from meshtalk.pipelines.train.latent import run as pipeline
    else:
        from meshtalk.pipelines.train.prior import TrainPriorConfig as Config
        from meshtalk.pipelines.train.prior import run as pipeline

    def make_config():
        model, training = stage_settings(stage, preset, config, steps)
        return Config(model=model, training=training, **run)

    _call(pipeline, make_config)


@train_app.command("latent")
def train_latent(
    data: DataOption,
    output: RunOption,
    preset: PresetOption = None,
    config: ConfigOption = None,
    device: DeviceOption = "auto",
    resume: ResumeOption = False,
    steps: StepsOption = None,
    progress: ProgressOption = True,
    data_on_device: DataOnDeviceOption = "auto",
    bf16: Bf16Option = None,
) -> None:
    """Stage 1: encoders, Gumbel quantiser and vertex decoder with the cross-modality loss.

    Several GPUs: torchrun --nproc-per-node N --no-python meshtalk train latent ...
    """
    options = dict(device=device, resume=resume, progress=progress, bf16=bf16)
    options["data_on_device"] = data_on_device
    _train("latent", preset, config, steps, data=data, output=output, **options)


@train_app.command("prior")
def train_prior(
    latent: Annotated[
        Path, typer.Option(help="Stage-1 run directory (meshtalk train latent -o ...).")
    ],
    data: DataOption,
    output: RunOption,
    preset: PresetOption = None,
    config: ConfigOption = None,
    device: DeviceOption = "auto",
    resume: ResumeOption = False,
    steps: StepsOption = None,
    progress: ProgressOption = True,
    data_on_device: DataOnDeviceOption = "auto",
    bf16: Bf16Option = None,
) -> None:
    """Stage 2: the audio-conditioned autoregressive prior over the frozen stage-1 codes.

    Several GPUs: torchrun --nproc-per-node N --no-python meshtalk train prior ...
    """
    options = dict(device=device, resume=resume, progress=progress, bf16=bf16)
    options["data_on_device"] = data_on_device
    _train("prior", preset, config, steps, latent=latent, data=data, output=output, **options)


@app.command()
def animate(
    output: Annotated[Path, typer.Option("--output", "-o", help="Output folder.")],
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
    model: Annotated[
        Path | None,
        typer.Option(
            help="Trained run folder with a prior (stage 2). Default: the bundled model, trained "
            "on synthetic speech of a procedural head, for trying the toolkit.",
            show_default=False,
        ),
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of the sampler (same seed, same animation).")] = 0,
    temperature: Annotated[
        float, typer.Option(help="Divide the prior's logits by this before drawing.")
    ] = 1.0,
    argmax: Annotated[
        bool, typer.Option("--argmax", help="Take the most likely codes (deterministic).")
    ] = False,
    takes: Annotated[
        int, typer.Option(help="Samples of the upper face, one folder each (OUT/take_<i>/).")
    ] = 1,
    int8: Annotated[
        bool, typer.Option("--int8", help="Sample with int8 weights (CPU only, faster).")
    ] = False,
    device: DeviceOption = "auto",
    smooth: Annotated[
        bool | None,
        typer.Option(
            "--smooth/--no-smooth",
            help="Smooth forehead and neck over time as the release does (default: when the run "
            "stores their masks).",
            show_default=False,
        ),
    ] = None,
    frames: Annotated[
        str | None, typer.Option(help="Also write one mesh per frame: ply or obj.")
    ] = None,
    no_video: Annotated[
        bool, typer.Option("--no-video", help="Skip the video (animation.mp4).")
    ] = False,
    scale: Annotated[
        float,
        typer.Option(
            help="Multiply the PC2, template and per-frame exports (0.001: mm to m); the npz "
            "stays in the template's units."
        ),
    ] = 1.0,
    size: Annotated[str, typer.Option(help="Video size, WIDTHxHEIGHT.")] = "640x480",
    force: Annotated[
        bool,
        typer.Option(
            "--force", help="Write into a non-empty folder, replacing only animate's own files."
        ),
    ] = False,
    progress: ProgressOption = True,
    transfer: Annotated[
        Path | None,
        typer.Option(
            help="Reuse OUT/transfer.npz of an earlier run onto the same mesh (another topology).",
            show_default=False,
        ),
    ] = None,
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
    from meshtalk.pipelines.inference.animate import AnimateConfig
    from meshtalk.pipelines.inference.animate import run as pipeline
    from meshtalk.pipelines.render.pipeline import parse_size

    def make_config():
        return AnimateConfig(
            speech=speech,
            example=example,
            template=template,
            output=output,
            model=model,
            seed=seed,
            temperature=temperature,
            argmax=argmax,
            takes=takes,
            int8=int8,
            device=device,
            smooth=smooth,
            frames=frames,
            video=not no_video,
            scale=scale,
            size=parse_size(size),
            force=force,
            progress=progress,
            allow_transfer=not no_transfer,
            transfer=transfer,
            landmarks=landmarks,
        )

    _call(pipeline, make_config)


@app.command()
def render(
    animation: Annotated[
        Path, typer.Argument(help="Animation archive written by `meshtalk animate` (.npz).")
    ],
    output: Annotated[Path, typer.Option("--output", "-o", help="Video file (.mp4/.mov/.mkv).")],
    audio: Annotated[
        Path | None, typer.Option(help="Audio file to use instead of the archive's speech.")
    ] = None,
    view: Annotated[str, typer.Option(help="Camera: front, side, or both side by side.")] = "front",
    compare: Annotated[
        Path | None,
        typer.Option(
            help="Second animation of the same topology and length: drawn beside the first with "
            "a heat map of their per-vertex distance in mm."
        ),
    ] = None,
    size: Annotated[str, typer.Option(help="Video size, WIDTHxHEIGHT.")] = "640x480",
    antialias: Annotated[
        int, typer.Option(help="Multisample anti-aliasing samples (0: off; 4: smoother, slower).")
    ] = 0,
    force: Annotated[
        bool,
        typer.Option("--force", help="Replace an existing video at -o if meshtalk wrote it."),
    ] = False,
    progress: ProgressOption = True,
) -> None:
    """Render an animation to a video with its speech (headless OpenGL, H.264 + AAC)."""
    from meshtalk.pipelines.render import pipeline

    _call(
        pipeline.run,
        lambda: pipeline.RenderConfig(
            animation=animation,
            output=output,
            audio=audio,
            view=view,
            compare=compare,
            size=pipeline.parse_size(size),
            antialias=antialias,
            progress=progress,
            force=force,
        ),
    )


@app.command("import-weights")
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
    from meshtalk.pipelines.checkpoint import release as importer

    _call(
        importer.run,
        lambda: importer.ImportConfig(
            release=release, output=output, masks=masks, template=template, force=force
        ),
    )


@app.command()
def retarget(
    source: Annotated[
        Path,
        typer.Argument(
            help="Animation npz (animate's, or any with vertices (T, V, 3), template (V, 3) and "
            "fps; faces for another topology; audio and audio_rate or --speech for the same).",
            show_default=False,
        ),
    ],
    target: Annotated[
        Path,
        typer.Argument(
            help="Face mesh (PLY/OBJ) at rest. Of the source's topology: the model re-encodes "
            "the performance and decodes it onto this face. Of another: the motion is "
            "transferred (vertices, order and faces kept).",
            show_default=False,
        ),
    ],
    output: Annotated[Path, typer.Option("--output", "-o", help="Output folder.")],
    model: Annotated[
        Path | None,
        typer.Option(
            help="Trained run for the same topology (default: the bundled model).",
            show_default=False,
        ),
    ] = None,
    speech: Annotated[
        Path | None,
        typer.Option(
            help="The source's speech, when its npz holds none (same topology).",
            show_default=False,
        ),
    ] = None,
    transfer: Annotated[
        Path | None,
        typer.Option(
            help="Reuse OUT/transfer.npz of an earlier run onto the same mesh (another topology).",
            show_default=False,
        ),
    ] = None,
    landmarks: Annotated[
        Path | None,
        typer.Option(
            help="Landmark pairs (another topology): YAML 'source: [...]' and 'target: [...]' "
            "vertex indices, or the MeshTalk preset's sets (lip_outer, brows, ...) on the target, "
            "or text lines 'SOURCE TARGET'. Default: aligned automatically.",
            show_default=False,
        ),
    ] = None,
    device: DeviceOption = "auto",
    frames: Annotated[
        str | None, typer.Option(help="Also write one mesh per frame: ply or obj.")
    ] = None,
    no_video: Annotated[
        bool, typer.Option("--no-video", help="Skip the video (animation.mp4).")
    ] = False,
    scale: Annotated[
        float, typer.Option(help="Multiply the PC2, template and per-frame exports.")
    ] = 1.0,
    size: Annotated[str, typer.Option(help="Video size, WIDTHxHEIGHT.")] = "640x480",
    force: Annotated[
        bool,
        typer.Option(
            "--force", help="Write into a non-empty folder, replacing only retarget's own files."
        ),
    ] = False,
    progress: ProgressOption = True,
) -> None:
    """Put an animation onto another face: same topology re-encoded, any other transferred."""
    from meshtalk.pipelines.inference.retarget import RetargetConfig
    from meshtalk.pipelines.inference.retarget import run as pipeline
    from meshtalk.pipelines.render.pipeline import parse_size

    _call(
        pipeline,
        lambda: RetargetConfig(
            source=source,
            target=target,
            output=output,
            model=model,
            speech=speech,
            transfer=transfer,
            landmarks=landmarks,
            device=device,
            frames=frames,
            video=not no_video,
            scale=scale,
            size=parse_size(size),
            force=force,
            progress=progress,
        ),
    )


@app.command(
    help="New speech on an existing performance: the lips follow SPEECH, eyes and brows stay. "
    "The dub lasts as long as SPEECH: a shorter speech ends the animation with it; after the "
    "original's end the frames are continued by the prior (stage 2), sampled from the new speech "
    "and conditioned on the dubbed frames before them. Writes animation.npz, animation.pc2, "
    "template.ply and animation.mp4 with the new speech, as animate does."
)
def dub(
    original: Annotated[
        Path,
        typer.Argument(
            help="The performance: an animation npz (animate's, or any with vertices (T, V, 3) "
            "of the model's topology, template (V, 3) and fps; faces for the video). Another "
            "frame rate than the model's is resampled.",
            show_default=False,
        ),
    ],
    speech: Annotated[
        Path,
        typer.Argument(
            help="The new speech (any common format, rate, channels).", show_default=False
        ),
    ],
    output: Annotated[Path, typer.Option("--output", "-o", help="Output folder.")],
    model: Annotated[
        Path | None,
        typer.Option(
            help="Trained run of the original's topology (default: the bundled model).",
            show_default=False,
        ),
    ] = None,
    temperature: Annotated[
        float | None,
        typer.Option(
            help="Draw the codes with the log-probabilities divided by this. Default: the most "
            "likely codes (and the prior's continuation at 1).",
            show_default=False,
        ),
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of the drawn codes.")] = 0,
    compare: Annotated[
        bool,
        typer.Option("--compare", help="Also render compare.mp4: original | dubbed | distance."),
    ] = False,
    no_video: Annotated[
        bool, typer.Option("--no-video", help="Skip the video (animation.mp4).")
    ] = False,
    smooth: Annotated[
        bool | None,
        typer.Option(
            "--smooth/--no-smooth",
            help="Smooth forehead and neck over time (default: when the run stores their masks).",
            show_default=False,
        ),
    ] = None,
    size: Annotated[str, typer.Option(help="Video size, WIDTHxHEIGHT.")] = "640x480",
    force: Annotated[
        bool,
        typer.Option(
            "--force", help="Write into a non-empty folder, replacing only dub's own files."
        ),
    ] = False,
    device: DeviceOption = "auto",
    progress: ProgressOption = True,
) -> None:
    """Dub ORIGINAL with SPEECH (see the command's help)."""
    from meshtalk.pipelines.inference.dub import DubConfig
    from meshtalk.pipelines.inference.dub import run as pipeline
    from meshtalk.pipelines.render.pipeline import parse_size

    _call(
        pipeline,
        lambda: DubConfig(
            original=original,
            speech=speech,
            output=output,
            model=model,
            temperature=temperature,
            seed=seed,
            compare=compare,
            video=not no_video,
            smooth=smooth,
            size=parse_size(size),
            force=force,
            device=device,
            progress=progress,
        ),
    )


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


@app.command("eval", help=EVAL_HELP)
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
    temperature: Annotated[
        float, typer.Option(help="Divide the prior's logits by this before drawing.")
    ] = 1.0,
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
    force: Annotated[
        bool,
        typer.Option(
            "--force", help="Write into a non-empty folder, replacing only eval's own files."
        ),
    ] = False,
    device: DeviceOption = "auto",
    progress: ProgressOption = True,
) -> None:
    from meshtalk.pipelines.eval.evaluate import EvalConfig
    from meshtalk.pipelines.eval.evaluate import run as pipeline

    _call(
        pipeline,
        lambda: EvalConfig(
            run=run,
            data=data,
            split=split,
            takes=takes,
            seed=seed,
            temperature=temperature,
            json=json_file,
            output=output,
            video=not no_video,
            mesh=mesh,
            force=force,
            device=device,
            progress=progress,
        ),
    )


def main() -> None:
    app()


if __name__ == "__main__":
    main()
