"""Stage 1 training: the categorical latent space with the cross-modality loss.

`run(config)` trains on a prepared store on the CPU, one GPU or several (launched by torchrun, one
process per device, DistributedDataParallel). Every random draw is a function of (seed, step,
sample index), so a run is reproducible, a resumed run equals an uninterrupted one, and N processes
with the same global batch equal one.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from meshtalk.models.config import LATENT_PRESETS, LatentModelConfig
from meshtalk.models.latent import PARTNER_KEYS, LatentAutoencoder, partner_inputs
from meshtalk.pipelines import checkpoint as ckpt
from meshtalk.pipelines.configs import load_model_and_training
from meshtalk.pipelines.data.store import PreparedStore, SegmentDataset
from meshtalk.pipelines.errors import MeshtalkError
from meshtalk.pipelines.eval.metrics import lip_vertex_errors, mean_vertex_error, weighted_mean
from meshtalk.pipelines.train.loop import (
    Distributed,
    MetricsLog,
    RunRecord,
    StepBatches,
    StepLoop,
    bf16_autocast,
    claim_run_dir,
    parameter_names,
    resolve_device,
    seed_for,
)

log = logging.getLogger(__name__)

STAGE = "latent"
COMPONENTS = ("encoder", "decoder")


@dataclass(frozen=True)
class LatentTrainingConfig:
    """Optimisation settings of stage 1 (the `train:` section of a config file)."""

    steps: int = 50_000
    """Optimiser steps in all."""
    batch_size: int = 8
    """Segments per step, over all processes."""
    frames: int = 32
    """Frames per training segment."""
    lr: float = 1e-4
    """Adam learning rate (the release's; the authors say the paper used 1e-3)."""
    lr_decay_step: int = 40_000
    """The learning rate is multiplied by `lr_decay` every this many steps."""
    lr_decay: float = 0.1
    """Learning-rate factor at each decay step."""
    decoder_weight_decay: float = 1e-3
    """Adam weight decay of the decoder's parameters (the encoder has none)."""
    cross_modality: bool = True
    """Add the cross-modality terms; off: plain reconstruction (for comparison)."""
    upper_face_weight: float = 1.0
    """Weight of the eyelid term and of the upper face decoded with this sample's expression (1:
    the equal weights of SPEC section 5). Raise it for data whose upper face moves far less than
    its mouth, where the expression path otherwise learns nothing."""
    val_every: int = 1000
    """Validate every this many steps (and at step 0 and at the end)."""
    val_segments: int = 32
    """Validation segments (fixed for the whole run)."""
    checkpoint_every: int = 1000
    """Write a checkpoint every this many steps (and at the end)."""
    log_every: int = 10
    """Write the mean training losses every this many steps."""
    seed: int = 0
    """Seed of every random draw."""
    data_workers: int = 1
    """DataLoader worker processes per training process (0: load in the training process)."""
    bf16: bool = True
    """bf16 autocast on CUDA (ignored on other devices)."""

    def __post_init__(self) -> None:
        positive = ("steps", "batch_size", "frames", "lr_decay_step", "val_every")
        problems = [f"{k} must be positive, got {getattr(self, k)}" for k in positive]
        problems = [p for k, p in zip(positive, problems) if getattr(self, k) <= 0]
        for key in ("checkpoint_every", "log_every", "val_segments"):
            if getattr(self, key) <= 0:
                problems.append(f"{key} must be positive, got {getattr(self, key)}")
        if self.lr <= 0 or self.lr_decay <= 0:
            problems.append(f"lr and lr_decay must be positive, got {self.lr} and {self.lr_decay}")
        if self.data_workers < 0:
            problems.append(f"data_workers must be >= 0, got {self.data_workers}")
        if self.upper_face_weight < 0:
            problems.append(f"upper_face_weight must be >= 0, got {self.upper_face_weight}")
        if problems:
            raise ValueError("; ".join(problems))

    def lr_at(self, step: int) -> float:
        return self.lr * self.lr_decay ** (step // self.lr_decay_step)


@dataclass(frozen=True)
class ModelSection:
    """The `model:` section of a config file: a preset and fields of it to replace."""

    preset: str = "release"
    """One of the presets: release, paper, tiny."""


@dataclass
class TrainLatentConfig:
    """One `meshtalk train latent` run."""

    data: Path
    """A store written by `meshtalk prep`."""
    output: Path
    """Run directory (checkpoint in `latent/`, metrics, pictures, run.json)."""
    model: LatentModelConfig = field(default_factory=lambda: LATENT_PRESETS["release"])
    """Model sizes; `num_vertices` is taken from the data."""
    training: LatentTrainingConfig = field(default_factory=LatentTrainingConfig)
    """Optimisation settings."""
    device: str = "auto"
    """auto (CUDA, else MPS, else CPU), cpu, cuda or mps."""
    resume: bool = False
    """Continue the run in `output` from its checkpoint if it has one (else start it)."""
    progress: bool = True
    """Show a progress bar."""


def load_config_file(path: Path) -> tuple[LatentModelConfig, LatentTrainingConfig]:
    """Read a YAML file with `model:` (a preset and overrides) and `train:` sections."""
    return load_model_and_training(path, LATENT_PRESETS, LatentModelConfig, LatentTrainingConfig)


class PairedSegments(Dataset):
    """Training segments, each with a cross-modality partner and the Gumbel noise of its step.

    The partner is another segment of the same length (a different one when there is one) drawn
    from the same generator as the item, so batch size 1 works and nothing depends on the batch.
    """

    def __init__(self, segments: SegmentDataset, heads: int, classes: int) -> None:
        self.segments, self.noise_shape = segments, (3, segments.frames, heads, classes)

    def __len__(self) -> int:
        return len(self.segments)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        item = self.segments[index]
        rng = np.random.default_rng([self.segments.seed, self.segments.epoch, index, 1])
        choice, start = self.segments.draw(rng)
        if len(self.segments.segments) > 1:
            while choice == int(item["segment"]):
                choice, start = self.segments.draw(rng)
        partner = self.segments.item(choice, start)
        for key in PARTNER_KEYS:
            item[f"partner_{key}"] = partner[key]
        item["gumbel"] = torch.from_numpy(rng.gumbel(size=self.noise_shape).astype(np.float32))
        return item


def run(config: TrainLatentConfig) -> Path:
    """Train stage 1; returns the run directory."""
    dist = Distributed.from_environment()
    try:
        with contextlib.ExitStack() as stack:  # holds the run folder's lock until the end
            return _train(config, dist, stack)
    finally:
        dist.close()


def _train(config: TrainLatentConfig, dist: Distributed, stack: contextlib.ExitStack) -> Path:
    output, training = Path(config.output), config.training
    if output.exists() and not output.is_dir():
        raise MeshtalkError(output, "is a file, not a run directory (choose another -o)")
    store = PreparedStore(config.data)
    model_config = _fit_to_data(config.model, store, config.data)
    device = resolve_device(config.device, dist.local_rank)
    dist.start(device)
    if training.batch_size % dist.world_size:
        raise MeshtalkError(
            None,
            f"batch_size {training.batch_size} does not divide over {dist.world_size} processes",
        )
    # Every array of the data is checked before anything is written into the run folder.
    train_set = PairedSegments(
        SegmentDataset(store, "train", training.frames, length=1, seed=training.seed),
        model_config.heads,
        model_config.classes,
    )
    validation = _validation_batches(store, training, model_config)
    checkpoint_dir = claim_run_dir(output, STAGE, dist, stack)
    torch.manual_seed(training.seed)
    model = LatentAutoencoder(model_config)
    mean, std = torch.from_numpy(store.mean), torch.from_numpy(store.std)
    model.set_statistics(mean, std.clamp_min(1e-3))
    model.to(device)
    optimizer = torch.optim.Adam(
        [
            {"params": model.encoder.parameters(), "weight_decay": 0.0},
            {"params": model.decoder.parameters(), "weight_decay": training.decoder_weight_decay},
        ],
        lr=training.lr,
    )
    names = parameter_names(model, optimizer)
    record = RunRecord(
        output,
        stage=STAGE,
        settings={"model": model_config.to_dict(), "train": asdict(training)},
        data=store.root,
    )
    start_step = 0
    if config.resume and checkpoint_dir.is_dir():
        start_step = _load_checkpoint(checkpoint_dir, model, optimizer, names, record)
    elif checkpoint_dir.exists():
        raise MeshtalkError(output, "already holds a latent run (--resume to continue it)")
    if dist.is_main:
        record.start(device=str(device), world_size=dist.world_size, from_step=start_step)
    metrics = MetricsLog(output / "metrics.csv", resume_from=start_step, enabled=dist.is_main)

    window = store.mel_frames
    masks = {k: torch.from_numpy(v).to(device) for k, v in store.masks.items()}
    trained = dist.wrap(model, device)
    loader = DataLoader(
        train_set,
        batch_sampler=StepBatches(
            start_step, training.steps, training.batch_size, dist.rank, dist.world_size
        ),
        num_workers=training.data_workers,
        pin_memory=device.type == "cuda",
        persistent_workers=False,
    )
    autocast = bf16_autocast(device, training.bf16)

    def validate(step: int) -> None:
        if dist.is_main:
            figures = evaluate(model, validation, masks, window, device)
            metrics.write(step, {f"val/{k}": v for k, v in figures.items()})
            log.info(
                "step %d validation: reconstruction %.3f mm, lip vertex error %.2f mm, audio swap "
                "moves mouth/upper %.1fx, expression swap moves upper/mouth %.2fx",
                step,
                figures["reconstruction_mm"],
                figures["lip_vertex_error_mm"],
                figures["audio_swap_mouth_over_upper"],
                figures["expression_swap_upper_over_mouth"],
            )
        dist.barrier()

    def save(step: int) -> None:
        if dist.is_main:
            _write_checkpoint(checkpoint_dir, model, model_config, store, optimizer, names, step)
        dist.barrier()

    def train_step(step: int, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        torch.manual_seed(seed_for(training.seed, step, dist.rank))  # dropout
        batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        model.train()
        with autocast:
            losses = trained(
                batch,
                masks,
                window,
                batch["gumbel"].transpose(0, 1),
                training.cross_modality,
                training.upper_face_weight,
            )
        optimizer.zero_grad(set_to_none=True)
        losses["total"].backward()
        optimizer.step()
        return {key: value.detach() for key, value in losses.items()}

    if start_step == 0:
        validate(0)
    show = config.progress and dist.is_main
    loop = StepLoop.for_settings("train latent", training, optimizer, metrics, device, show)
    loop.run(loader, start_step, train_step, validate, save)
    if dist.is_main:
        metrics.plot(output / "loss_curve.png")
        _save_error_map(model, validation, store, window, device, output / "val_error_map.png")
    return output


def _fit_to_data(model: LatentModelConfig, store: PreparedStore, data: Path) -> LatentModelConfig:
    default_vertices = LatentModelConfig().num_vertices
    if model.num_vertices not in (default_vertices, store.num_vertices):
        raise MeshtalkError(
            data,
            f"has {store.num_vertices} vertices but the config asks for {model.num_vertices}",
        )
    model = replace(model, num_vertices=store.num_vertices)
    if model.mel_mean is None or model.mel_std is None:
        mean, std = store.mel_statistics("train")
        model = replace(
            model,
            mel_mean=mean if model.mel_mean is None else model.mel_mean,
            mel_std=std if model.mel_std is None else model.mel_std,
        )
    if store.mel_frames < model.audio_receptive_field:
        raise MeshtalkError(
            data,
            f"audio window of {store.mel_frames} mel frames is shorter than the audio encoder's "
            f"receptive field of {model.audio_receptive_field} (prep with --window release, or "
            "use smaller audio_dilations)",
        )
    return model


def component_config(model_config: LatentModelConfig, store: PreparedStore, name: str) -> dict:
    return {
        "component": name,
        "stage": STAGE,
        "model": model_config.to_dict(),
        "audio_window": store.manifest["audio_window"],
    }


def _write_checkpoint(folder, model, model_config, store, optimizer, names, step) -> None:
    ckpt.write_checkpoint(
        folder,
        {
            "encoder": (model.encoder, component_config(model_config, store, "encoder")),
            "decoder": (model.decoder, component_config(model_config, store, "decoder")),
        },
        (optimizer, names),
        {"stage": STAGE, "step": step},
    )


def _load_checkpoint(folder, model, optimizer, names, record) -> int:
    record.check_resumable()
    ckpt.load_component_state(folder / "encoder", model.encoder)
    ckpt.load_component_state(folder / "decoder", model.decoder)
    ckpt.load_optimizer(folder, optimizer, names)
    return ckpt.read_trainer_state(folder)["step"]


def load_latent(folder: Path, device: torch.device | str = "cpu") -> tuple[LatentAutoencoder, dict]:
    """A trained stage-1 model from a checkpoint folder (`RUN/latent`), and its encoder config."""
    folder = ckpt.readable(Path(folder))
    config = ckpt.read_component_config(folder / "encoder")
    model = LatentAutoencoder(ckpt.model_config(folder / "encoder", LatentModelConfig))
    ckpt.load_component_state(folder / "encoder", model.encoder)
    ckpt.load_component_state(folder / "decoder", model.decoder)
    return model.to(device).eval(), config


def _validation_batches(
    store: PreparedStore, training: LatentTrainingConfig, model: LatentModelConfig
) -> list[dict[str, torch.Tensor]]:
    """Fixed validation segments with partners, batched (the 'val' split, else 'train')."""
    split = "val" if store.split("val") else "train"
    if split == "train":
        log.warning("no validation split in %s: validating on training segments", store.root)
    segments = SegmentDataset(store, split, training.frames, length=1, seed=training.seed + 1)
    paired = PairedSegments(segments, model.heads, model.classes)
    items = [paired[i] for i in range(training.val_segments)]
    size = training.batch_size
    return [
        {k: torch.stack([item[k] for item in items[i : i + size]]) for k in items[0]}
        for i in range(0, len(items), size)
    ]


@torch.no_grad()
def evaluate(
    model: LatentAutoencoder,
    batches: list[dict[str, torch.Tensor]],
    masks: dict[str, torch.Tensor],
    window: int,
    device: torch.device,
) -> dict[str, float]:
    """Validation figures with argmax codes.

    reconstruction_mm: mean vertex error; lip_vertex_error_mm and lip_vertex_error_sq_mm2: LVE
    over the lip vertices (mouth mask > 0.5); audio_swap_mouth_over_upper: decoding with the
    partner's audio moves mouth vertices this many times more than upper-face ones (mask-weighted
    mean displacements); expression_swap_upper_over_mouth: the same for the partner's expression.
    """
    model.eval()
    lips = masks["mouth"] > 0.5
    sums = dict.fromkeys(
        ("mve", "lve", "lve_sq", "audio_mouth", "audio_upper", "expr_mouth", "expr_upper"), 0.0
    )
    for batch in batches:
        batch = {k: v.to(device) for k, v in batch.items()}
        template, target = batch["template"], batch["vertices"]
        expression, audio = model.codes(target, template, batch["mel"], batch["mel_starts"], window)
        other_expression, other_audio = model.codes(*partner_inputs(batch), window)
        own = model.decode(template, expression, audio, sample=False)
        audio_swapped = model.decode(template, expression, other_audio, sample=False)
        expr_swapped = model.decode(template, other_expression, audio, sample=False)
        weight = len(target) / sum(len(b["vertices"]) for b in batches)
        sums["mve"] += weight * mean_vertex_error(own, target)
        lve, lve_sq = lip_vertex_errors(own, target, lips)
        sums["lve"] += weight * lve
        sums["lve_sq"] += weight * lve_sq
        moved_by_audio = (audio_swapped - own).norm(dim=-1)
        moved_by_expr = (expr_swapped - own).norm(dim=-1)
        sums["audio_mouth"] += weight * weighted_mean(moved_by_audio, masks["mouth"])
        sums["audio_upper"] += weight * weighted_mean(moved_by_audio, masks["upper_face"])
        sums["expr_mouth"] += weight * weighted_mean(moved_by_expr, masks["mouth"])
        sums["expr_upper"] += weight * weighted_mean(moved_by_expr, masks["upper_face"])
    return {
        "reconstruction_mm": sums["mve"],
        "lip_vertex_error_mm": sums["lve"],
        "lip_vertex_error_sq_mm2": sums["lve_sq"],
        "audio_swap_mouth_mm": sums["audio_mouth"],
        "audio_swap_upper_mm": sums["audio_upper"],
        "audio_swap_mouth_over_upper": sums["audio_mouth"] / max(sums["audio_upper"], 1e-12),
        "expression_swap_mouth_mm": sums["expr_mouth"],
        "expression_swap_upper_mm": sums["expr_upper"],
        "expression_swap_upper_over_mouth": sums["expr_upper"] / max(sums["expr_mouth"], 1e-12),
    }


@torch.no_grad()
def _save_error_map(model, batches, store, window, device, path: Path) -> None:
    """Per-vertex validation error (mean over frames) on the first validation template."""
    from meshtalk.pipelines.io.pictures import save_vertex_maps

    model.eval()
    errors, count = None, 0
    for batch in batches:
        batch = {k: v.to(device) for k, v in batch.items()}
        expression, audio = model.codes(
            batch["vertices"], batch["template"], batch["mel"], batch["mel_starts"], window
        )
        own = model.decode(batch["template"], expression, audio, sample=False)
        distance = (own - batch["vertices"]).norm(dim=-1).sum(dim=(0, 1))
        errors = distance if errors is None else errors + distance
        count += own.shape[0] * own.shape[1]
    template = batches[0]["template"][0].numpy()
    save_vertex_maps(path, template, {"validation error (mm)": (errors / count).cpu().numpy()})
