"""`meshtalk train latent` and `meshtalk train prior`: the two stages, on one or several devices."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from meshtalk.cli import options as shared
from meshtalk.cli.common import call

train_app = typer.Typer(
    help="Train the two MeshTalk stages.", no_args_is_help=True, pretty_exceptions_enable=False
)

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

ResumeOption = Annotated[
    bool,
    typer.Option(help="Continue the run in --output from its checkpoint (start it if none)."),
]

StepsOption = Annotated[
    int | None, typer.Option(help="Train this many steps in all (overrides the preset).")
]

DataOnDeviceOption = Annotated[
    str,
    typer.Option(
        help="Hold the training data where training runs: auto (on CUDA: GPU memory when it "
        "fits, else pinned host memory), yes (also on the CPU), no (memory-mapped store). "
        "Same batches either way."
    ),
]

SeedOption = Annotated[
    int | None,
    typer.Option(
        help="Training seed: initial weights, batch order and noise (default: the config's "
        "train.seed, 0). Runs with another seed are another draw of the same training.",
        show_default=False,
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


def _train(
    stage: str, preset: str | None, config: Path | None, steps: int | None, seed: int | None, **run
) -> None:
    """Resolve a stage's settings (preset, YAML overrides, --steps, --seed) and run it.

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
        model, training = stage_settings(stage, preset, config, steps, seed)
        return Config(model=model, training=training, **run)

    call(pipeline, make_config)


@train_app.command("latent")
def train_latent(
    data: DataOption,
    output: RunOption,
    preset: PresetOption = None,
    config: ConfigOption = None,
    device: shared.DeviceOption = "auto",
    resume: ResumeOption = False,
    steps: StepsOption = None,
    seed: SeedOption = None,
    progress: shared.ProgressOption = True,
    data_on_device: DataOnDeviceOption = "auto",
    bf16: Bf16Option = None,
    init: Annotated[
        Path | None,
        typer.Option(
            help="Start from this run's stage-1 weights (a fine-tune; the config's train.freeze "
            "names parts that keep them, e.g. [decoder, expression]); same sizes as this run."
        ),
    ] = None,
) -> None:
    """Stage 1: encoders, Gumbel quantiser and vertex decoder with the cross-modality loss.

    Several GPUs: torchrun --nproc-per-node N --no-python meshtalk train latent ...
    """
    options = dict(device=device, resume=resume, progress=progress, bf16=bf16, init=init)
    options["data_on_device"] = data_on_device
    _train("latent", preset, config, steps, seed, data=data, output=output, **options)


@train_app.command("prior")
def train_prior(
    latent: Annotated[
        Path, typer.Option(help="Stage-1 run directory (meshtalk train latent -o ...).")
    ],
    data: DataOption,
    output: RunOption,
    preset: PresetOption = None,
    config: ConfigOption = None,
    device: shared.DeviceOption = "auto",
    resume: ResumeOption = False,
    steps: StepsOption = None,
    seed: SeedOption = None,
    progress: shared.ProgressOption = True,
    data_on_device: DataOnDeviceOption = "auto",
    bf16: Bf16Option = None,
) -> None:
    """Stage 2: the audio-conditioned autoregressive prior over the frozen stage-1 codes.

    Several GPUs: torchrun --nproc-per-node N --no-python meshtalk train prior ...
    """
    options = dict(device=device, resume=resume, progress=progress, bf16=bf16)
    options["data_on_device"] = data_on_device
    _train("prior", preset, config, steps, seed, latent=latent, data=data, output=output, **options)
