"""Stage 2 training: the audio-conditioned autoregressive prior over the stage-1 codes.

The frozen stage-1 encoder turns every train and validation segment into its argmax codes and audio
codes once (`train.targets`); training reads windows of them. Teacher forcing, cross-entropy over
the classes, validation perplexity over whole validation segments. Devices, processes, checkpoints,
resuming and logging are the skeleton both stages share (`train.stage`).
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from meshtalk.models.prior import PRIOR_PRESETS, ContextModel, PriorModelConfig
from meshtalk.pipelines import checkpoint as ckpt
from meshtalk.pipelines.data.store import PreparedStore
from meshtalk.pipelines.errors import MeshtalkError
from meshtalk.pipelines.train.settings import PriorTrainingConfig
from meshtalk.pipelines.train.stage import Stage, StageRunConfig
from meshtalk.pipelines.train.targets import TARGETS_FILE, CodeWindows, cached_targets, sequences
from meshtalk.pipelines.train.validation import prior_figures, save_code_picture, validation_split

log = logging.getLogger(__name__)


@dataclass(kw_only=True)
class TrainPriorConfig(StageRunConfig):
    """One `meshtalk train prior` run."""

    latent: Path
    """Stage-1 run directory (its checkpoint in `latent/`) or the checkpoint folder itself."""
    data: Path
    """The store stage 1 trained on (or another with the same topology)."""
    model: PriorModelConfig = field(default_factory=lambda: PRIOR_PRESETS["release"])
    """Prior sizes; heads, classes and audio_dim are taken from the stage-1 model."""
    training: PriorTrainingConfig = field(default_factory=PriorTrainingConfig)
    """Optimisation settings."""


def load_config_file(path: Path) -> tuple[PriorModelConfig, PriorTrainingConfig]:
    """Stage 2's settings of a config file: its preset with the file's overrides."""
    from meshtalk.pipelines.presets import stage_settings

    return stage_settings(ckpt.PRIOR, config=path)


def fit_to_latent(model: PriorModelConfig, latent: dict, where: Path) -> PriorModelConfig:
    """The prior's heads, classes and audio size from the stage-1 model's config."""
    sizes = {
        "heads": latent["heads"],
        "classes": latent["classes"],
        "audio_dim": latent["code_dim"],
    }
    # A preset's own value gives way to stage 1's; any other value is a clash.
    clashes = [
        f"{key} {getattr(model, key)} (stage 1 has {value})"
        for key, value in sizes.items()
        if getattr(model, key) != value
        and getattr(model, key) not in {getattr(p, key) for p in PRIOR_PRESETS.values()}
    ]
    if clashes:
        raise MeshtalkError(where, "the prior config does not fit stage 1: " + ", ".join(clashes))
    return replace(model, **sizes)


def run(config: TrainPriorConfig) -> Path:
    """Train stage 2; returns the run directory."""
    return PriorStage(config).run()


class PriorStage(Stage):
    """Stage 2's parts of the training skeleton."""

    stage = ckpt.PRIOR
    metrics_file, loss_curve = "prior_metrics.csv", "prior_loss_curve.png"
    cached_files = (TARGETS_FILE,)

    def prepare(self) -> PreparedStore:
        config = self.config
        stage1 = ckpt.load_run(config.latent, prior=False)  # its configs checked before allocating
        self.latent_config = stage1.latent_config
        self.model_config = fit_to_latent(config.model, self.latent_config["model"], config.latent)
        store = PreparedStore(config.data)
        if store.num_vertices != stage1.num_vertices:
            raise MeshtalkError(
                config.data,
                f"has {store.num_vertices} vertices, stage 1 was trained on {stage1.num_vertices}",
            )
        self.latent_model, self.latent_checkpoint = stage1.latent, stage1.stages[ckpt.LATENT]
        self.encoder_sha256 = self.latent_checkpoint.weights_sha256("encoder")
        return store

    def build(self) -> tuple[nn.Module, torch.optim.Optimizer]:
        model = ContextModel(self.model_config).to(self.device)
        parameters = [p for p in model.parameters() if p.requires_grad]
        return model, torch.optim.Adam(parameters, lr=self.training.lr)

    def settings(self) -> dict:
        return {
            "model": self.model_config.to_dict(),
            "train": asdict(self.training),
            "latent": {
                "path": str(self.latent_checkpoint.folder.resolve()),
                "encoder_sha256": self.encoder_sha256,
            },
        }

    def components(self) -> dict[str, tuple[nn.Module, dict]]:
        config = {
            "component": "prior",
            "stage": ckpt.PRIOR,
            "model": self.model_config.to_dict(),
            "latent": self.latent_config,
        }
        return {"prior": (self.model, config)}

    def claimed(self) -> None:
        dist, training = self.dist, self.training
        latent_model, self.latent_model = self.latent_model, None  # not needed once encoded
        self.targets = cached_targets(
            self.output,
            latent_model,
            self.encoder_sha256,
            self.store,
            self.device,
            self.config.progress and dist.is_main,
            dist.is_main,
            dist.barrier,
        )
        length = training.steps * training.batch_size
        self.windows = CodeWindows(
            self.store, "train", training.frames, self.targets, training.seed, length
        )
        self.validation = sequences(self.targets, self.store.split(validation_split(self.store)))

    def train_set(self) -> CodeWindows:
        return self.windows

    def train_step(self, step: int, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        codes = batch["codes"].to(self.device, non_blocking=True)
        audio = batch["audio"].to(self.device, non_blocking=True)
        self.model.train()
        with self.autocast:
            one_hot = F.one_hot(codes, self.model_config.classes).to(audio.dtype)
            logits = self.trained(one_hot, audio)
        loss = F.cross_entropy(logits.float().flatten(0, 2), codes.flatten())
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return {"cross_entropy": loss.detach()}

    def evaluate(self) -> dict[str, float]:
        return prior_figures(self.model, self.validation, self.device)

    def describe(self, step: int, figures: dict[str, float]) -> None:
        log.info(
            "step %d validation: perplexity %.3f (uniform %d), top-1 accuracy %.3f",
            step,
            figures["perplexity"],
            self.model_config.classes,
            figures["accuracy"],
        )

    def pictures(self) -> None:
        if self.validation:
            path = self.output / "prior_codes.png"
            save_code_picture(self.model, self.validation[0], self.device, path)
