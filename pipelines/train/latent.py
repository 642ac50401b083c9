"""Stage 1 training: the categorical latent space with the cross-modality loss.

`run(config)` trains on a prepared store on the CPU, one GPU or several (launched by torchrun, one
process per device, DistributedDataParallel). Every random draw is a function of (seed, step,
sample index), so a run is reproducible, a resumed run equals an uninterrupted one, and N processes
with the same global batch equal one.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
from torch import nn

from meshtalk.models.config import LATENT_PRESETS, LatentModelConfig
from meshtalk.models.latent import LatentAutoencoder
from meshtalk.pipelines import checkpoint as ckpt
from meshtalk.pipelines.data.store import PreparedStore, SegmentDataset
from meshtalk.pipelines.errors import MeshtalkError
from meshtalk.pipelines.train.loop import seed_for
from meshtalk.pipelines.train.pairs import PairedSegments, validation_batches
from meshtalk.pipelines.train.settings import FREEZABLE, LatentTrainingConfig
from meshtalk.pipelines.train.stage import Stage, StageRunConfig
from meshtalk.pipelines.train.validation import latent_figures, save_error_map

log = logging.getLogger(__name__)


@dataclass(kw_only=True)
class TrainLatentConfig(StageRunConfig):
    """One `meshtalk train latent` run."""

    data: Path
    """A store written by `meshtalk prep`."""
    model: LatentModelConfig = field(default_factory=lambda: LATENT_PRESETS["release"])
    """Model sizes; `num_vertices` is taken from the data."""
    training: LatentTrainingConfig = field(default_factory=LatentTrainingConfig)
    """Optimisation settings."""
    init: Path | None = None
    """Start from this run's stage-1 weights and statistics (a fine-tune; `training.freeze`
    names the parts that keep them); its sizes must be this run's."""


def load_config_file(path: Path) -> tuple[LatentModelConfig, LatentTrainingConfig]:
    """Stage 1's settings of a config file: its preset with the file's overrides."""
    from meshtalk.pipelines.presets import stage_settings

    return stage_settings(ckpt.LATENT, config=path)


def run(config: TrainLatentConfig) -> Path:
    """Train stage 1; returns the run directory."""
    return LatentStage(config).run()


class LatentStage(Stage):
    """Stage 1's parts of the training skeleton."""

    stage = ckpt.LATENT
    metrics_file, loss_curve = "metrics.csv", "loss_curve.png"

    def prepare(self) -> PreparedStore:
        config, training = self.config, self.training
        if training.freeze and config.init is None:
            raise MeshtalkError(
                None, f"train.freeze ({', '.join(training.freeze)}) needs --init RUN to freeze"
            )
        store = PreparedStore(config.data)
        self.model_config = sizes = fit_to_data(config.model, store, config.data)
        if config.init is not None:  # read and checked before anything is written
            self.init_state, self.init_record = read_init(Path(config.init), sizes)
        # Every array of the data is checked before anything is written into the run folder.
        segments = SegmentDataset(store, "train", training.frames, length=1, seed=training.seed)
        self.paired = PairedSegments(segments, sizes.heads, sizes.classes)
        self.validation = validation_batches(
            store,
            training.frames,
            training.val_segments,
            training.batch_size,
            training.seed + 1,
            sizes.heads,
            sizes.classes,
        )
        return store

    def build(self) -> tuple[nn.Module, torch.optim.Optimizer]:
        model = LatentAutoencoder(self.model_config)
        mean, std = torch.from_numpy(self.store.mean), torch.from_numpy(self.store.std)
        model.set_statistics(mean, std.clamp_min(1e-3))
        if self.config.init is not None:
            model.load_state_dict(self.init_state)
        frozen = tuple(FREEZABLE[part] for part in self.training.freeze)
        for name, parameter in model.named_parameters():
            parameter.requires_grad_(not name.startswith(frozen))
        model.to(self.device)
        self.masks = {k: torch.from_numpy(v).to(self.device) for k, v in self.store.masks.items()}
        decay = self.training.decoder_weight_decay
        groups = [
            {"params": trained(model.encoder), "weight_decay": 0.0},
            {"params": trained(model.decoder), "weight_decay": decay},
        ]
        optimizer = torch.optim.Adam([g for g in groups if g["params"]], lr=self.training.lr)
        return model, optimizer

    def settings(self) -> dict:
        settings = {"model": self.model_config.to_dict(), "train": asdict(self.training)}
        if self.config.init is not None:
            settings["init"] = self.init_record
        return settings

    def components(self) -> dict[str, tuple[nn.Module, dict]]:
        return {
            name: (getattr(self.model, name), component_config(self.model_config, self.store, name))
            for name in ckpt.COMPONENTS[ckpt.LATENT]
        }

    def claimed(self) -> None:
        # Inference needs the topology's masks (temporal smoothing) and a template beside the run.
        if self.dist.is_main:
            identity = self.store.split("train")[0].identity
            template = self.store.template(identity)
            ckpt.save_topology(
                self.output, self.store.masks, template, identity, faces=self.store.faces
            )

    def train_set(self) -> PairedSegments:
        return self.paired

    def train_step(self, step: int, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        training = self.training
        torch.manual_seed(seed_for(training.seed, step, self.dist.rank))  # dropout
        batch = {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}
        gumbel = warmed_up_noise(batch["gumbel"].transpose(0, 1), step, training.gumbel_warmup)
        self.model.train()
        with self.autocast:
            losses = self.trained(
                batch,
                self.masks,
                gumbel,
                training.cross_modality,
                training.upper_face_weight,
                training.code_usage_weight,
            )
        self.optimizer.zero_grad(set_to_none=True)
        losses["total"].backward()
        self.optimizer.step()
        return {key: value.detach() for key, value in losses.items()}

    def evaluate(self) -> dict[str, float]:
        return latent_figures(self.model, self.validation, self.masks, self.device)

    def describe(self, step: int, figures: dict[str, float]) -> None:
        log.info(
            "step %d validation: reconstruction %.3f mm, lip vertex error %.2f mm, audio swap "
            "moves mouth/upper %.1fx, expression swap moves upper/mouth %.2fx",
            step,
            figures["reconstruction_mm"],
            figures["lip_vertex_error_mm"],
            figures["audio_swap_mouth_over_upper"],
            figures["expression_swap_upper_over_mouth"],
        )

    def pictures(self) -> None:
        path = self.output / "val_error_map.png"
        save_error_map(self.model, self.validation, self.device, path)


def trained(module: nn.Module) -> list[nn.Parameter]:
    return [parameter for parameter in module.parameters() if parameter.requires_grad]


def read_init(init: Path, sizes: LatentModelConfig) -> tuple[dict[str, torch.Tensor], dict]:
    """A run's stage-1 weights and statistics for a model of `sizes` (same names and shapes), and
    what run.json records of it (its folder and its weights' SHA-256)."""
    run = ckpt.load_run(init, prior=False)
    stage = run.stages[ckpt.LATENT]
    state = run.latent.state_dict()
    probe = LatentAutoencoder(sizes)  # names and shapes (training reseeds before its own build)
    ckpt.check_fits(probe, state, stage.folder, "does not fit this run (--init)")
    record = {"path": str(init)}
    record.update({f"{name}_sha256": stage.weights_sha256(name) for name in ("encoder", "decoder")})
    return state, record


def warmed_up_noise(gumbel: torch.Tensor, step: int, warmup: int) -> torch.Tensor:
    """The Gumbel noise of `step` scaled by step / warmup during the first `warmup` steps (0 at
    step 0: argmax codes), unchanged from then on (`LatentTrainingConfig.gumbel_warmup`)."""
    return gumbel * (step / warmup) if step < warmup else gumbel


def fit_to_data(model: LatentModelConfig, store: PreparedStore, data: Path) -> LatentModelConfig:
    """The model's vertex count, audio window and mel statistics from the data, checked."""
    default_vertices = LatentModelConfig().num_vertices
    if model.num_vertices not in (default_vertices, store.num_vertices):
        raise MeshtalkError(
            data,
            f"has {store.num_vertices} vertices but the config asks for {model.num_vertices}",
        )
    front_end = store.front_end
    if front_end.window_frames < model.audio_receptive_field:
        raise MeshtalkError(
            data,
            f"audio window of {front_end.window_frames} mel frames is shorter than the audio "
            f"encoder's receptive field of {model.audio_receptive_field} (prep with --window "
            "release, or use smaller audio_dilations)",
        )
    model = replace(
        model,
        num_vertices=store.num_vertices,
        audio_window_frames=front_end.window_frames,
        mel=front_end.mel,
    )
    if model.mel_mean is None or model.mel_std is None:
        mean, std = store.mel_statistics("train")
        model = replace(
            model,
            mel_mean=mean if model.mel_mean is None else model.mel_mean,
            mel_std=std if model.mel_std is None else model.mel_std,
        )
    return model


def component_config(model_config: LatentModelConfig, store: PreparedStore, name: str) -> dict:
    """The config.json of a stage-1 component: its sizes and the audio front end it was trained
    with (whole, with the training mel statistics; `audio_window` for older readers)."""
    front_end = store.front_end.with_statistics(model_config.mel_mean, model_config.mel_std)
    return {
        "component": name,
        "stage": ckpt.LATENT,
        "model": model_config.to_dict(),
        "front_end": front_end.to_dict(),
        "audio_window": front_end.audio_window(),
    }
