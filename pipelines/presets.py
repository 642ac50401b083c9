"""Named settings of both models and both training stages: `release`, `paper`, `tiny`, `default`.

A preset is plain code; a YAML file (`--config`) only overrides some of its fields:

    preset: tiny          # optional; --preset wins if both are given and agree
    model: {heads: 8}     # fields of the stage's model config to replace
    train: {steps: 500}   # fields of the stage's training config to replace
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from meshtalk.models.config import LATENT_PRESETS, LatentModelConfig
from meshtalk.models.prior import PRIOR_PRESETS, PriorModelConfig
from meshtalk.pipelines.configs import load_overrides, with_steps
from meshtalk.pipelines.errors import MeshtalkError
from meshtalk.pipelines.train.settings import LatentTrainingConfig, PriorTrainingConfig

STAGES = ("latent", "prior")


@dataclass(frozen=True)
class Preset:
    """Both models and both training stages under one name."""

    name: str
    """What `--preset` takes."""
    summary: str
    """One line for `--help` and the README."""
    latent_model: LatentModelConfig
    """Stage-1 sizes (encoders, fusion, decoder); `num_vertices` comes from the data."""
    latent_training: LatentTrainingConfig
    """Stage-1 optimisation."""
    prior_model: PriorModelConfig
    """Stage-2 sizes; heads, classes and the audio size match `latent_model`."""
    prior_training: PriorTrainingConfig
    """Stage-2 optimisation."""

    def stage(self, stage: str) -> tuple[Any, Any]:
        """(model config, training config) of `stage` ('latent' or 'prior')."""
        if stage == "latent":
            return self.latent_model, self.latent_training
        if stage == "prior":
            return self.prior_model, self.prior_training
        raise ValueError(f"stage must be one of {', '.join(STAGES)}, got {stage!r}")


PRESETS: dict[str, Preset] = {
    "release": Preset(
        name="release",
        summary="the authors' public release: H=16 heads x C=128 classes, their optimisation",
        latent_model=LATENT_PRESETS["release"],
        latent_training=LatentTrainingConfig(),
        prior_model=PRIOR_PRESETS["release"],
        prior_training=PriorTrainingConfig(),
    ),
    "paper": Preset(
        name="paper",
        summary="the paper's H=64 heads, stage 1 at lr 1e-3 as the authors say the paper used",
        latent_model=LATENT_PRESETS["paper"],
        latent_training=LatentTrainingConfig(lr=1e-3),
        prior_model=PRIOR_PRESETS["paper"],
        prior_training=PriorTrainingConfig(),
    ),
    "tiny": Preset(
        name="tiny",
        summary="H=4 x C=16, small layers: a CPU demo and what the tests use (minutes)",
        latent_model=replace(LATENT_PRESETS["tiny"], audio_dropout=0.1),
        latent_training=LatentTrainingConfig(
            steps=3000,
            lr=6e-4,
            lr_decay_step=2500,
            decoder_weight_decay=1e-4,
            # The upper face of the synthetic data moves about 4x less than its mouth (0.6 mm
            # against 2.4): with the method's equal weights the expression path learns nothing in
            # 3000 steps (benchmarks/quality.py measures both).
            upper_face_weight=3.0,
            val_every=500,
            val_segments=32,
            checkpoint_every=500,
            data_workers=0,
        ),
        prior_model=PRIOR_PRESETS["tiny"],
        prior_training=PriorTrainingConfig(
            steps=2000, lr=1e-3, lr_decay_step=1500, val_every=250, checkpoint_every=500
        ),
    ),
    "default": Preset(
        name="default",
        summary="the bundled default model: tiny sizes, 8 heads, trained longer (2 cores: ~30 min)",
        # A narrower first decoder layer than 'tiny' keeps a 4.7k-vertex run under 20 MB.
        # 8 heads and a heavier upper face: with 4 heads and weight 3 the expression path went
        # unused (blinks lost in samples); validation error rose after ~3000 steps at lr 6e-4.
        latent_model=replace(
            LATENT_PRESETS["tiny"], heads=8, audio_dropout=0.1, decoder_hidden=(96, 64, 32)
        ),
        latent_training=LatentTrainingConfig(
            steps=3000,
            lr=5e-4,
            lr_decay_step=2000,
            decoder_weight_decay=1e-4,
            upper_face_weight=6.0,
            val_every=1000,
            val_segments=32,
            checkpoint_every=1000,
            data_workers=0,
        ),
        prior_model=replace(PRIOR_PRESETS["tiny"], heads=8),
        prior_training=PriorTrainingConfig(
            steps=3000, lr=1e-3, lr_decay_step=2500, val_every=500, checkpoint_every=1000
        ),
    ),
}


def stage_presets(stage: str) -> dict[str, tuple[Any, Any]]:
    """Preset name -> (model config, training config) of one stage."""
    return {name: preset.stage(stage) for name, preset in PRESETS.items()}


def stage_settings(
    stage: str,
    preset: str | None = None,
    config: Path | None = None,
    steps: int | None = None,
    seed: int | None = None,
) -> tuple[Any, Any]:
    """A stage's (model, training) settings: the preset, a YAML file's overrides, then --steps
    and --seed.

    Args:
        stage: 'latent' or 'prior'.
        preset: a name in PRESETS; None: the one the YAML file names, else 'release'.
        config: YAML file with optional `preset:`, `model:` and `train:` sections.
        steps: train this many steps in all.
        seed: the training seed (initial weights, batches, noise) instead of the settings' one.
    """
    if preset is not None and preset not in PRESETS:
        raise MeshtalkError(None, f"--preset must be one of {', '.join(PRESETS)}, got '{preset}'")
    model_type, training_type = (
        (LatentModelConfig, LatentTrainingConfig)
        if stage == "latent"
        else (PriorModelConfig, PriorTrainingConfig)
    )
    if config is None:
        model, training = PRESETS[preset or "release"].stage(stage)
    else:
        model, training = load_overrides(
            config, stage_presets(stage), model_type, training_type, preset, stage
        )
    if steps is not None:
        training = with_steps(training, steps)
    if seed is not None:
        training = replace(training, seed=seed)
    return model, training
