"""Stage 2 training: the audio-conditioned autoregressive prior over the stage-1 codes.

The frozen stage-1 encoder turns every train and validation segment into its argmax codes and audio
codes once; they are cached beside the run (`prior_targets.safetensors`, keyed by the checkpoint's
and the data's hashes) and training reads windows of them. Teacher forcing, cross-entropy over the
classes, validation perplexity over whole validation segments. Devices, processes, checkpoints,
resuming and logging work as in stage 1.
"""

from __future__ import annotations

import contextlib
import logging
import math
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from meshtalk.models.config import LatentModelConfig
from meshtalk.models.prior import PRIOR_PRESETS, ContextModel, PriorModelConfig
from meshtalk.pipelines import checkpoint as ckpt
from meshtalk.pipelines.configs import load_model_and_training
from meshtalk.pipelines.data.store import PreparedStore, SegmentDataset, SegmentRef
from meshtalk.pipelines.errors import MeshtalkError
from meshtalk.pipelines.io.atomic import atomic_path
from meshtalk.pipelines.io.provenance import file_sha256
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
    store_digest,
)

log = logging.getLogger(__name__)

STAGE = "prior"
TARGETS_FILE = "prior_targets.safetensors"


@dataclass(frozen=True)
class PriorTrainingConfig:
    """Optimisation settings of stage 2 (the `train:` section of a config file)."""

    steps: int = 15_000
    """Optimiser steps in all (the release's)."""
    batch_size: int = 8
    """Windows per step, over all processes."""
    frames: int = 64
    """Frames per training window."""
    lr: float = 1e-4
    """Adam learning rate."""
    lr_decay_step: int = 10_000
    """The learning rate is multiplied by `lr_decay` every this many steps."""
    lr_decay: float = 0.1
    """Learning-rate factor at each decay step."""
    val_every: int = 1000
    """Validate every this many steps (and at step 0 and at the end)."""
    checkpoint_every: int = 1000
    """Write a checkpoint every this many steps (and at the end)."""
    log_every: int = 10
    """Write the mean training loss every this many steps."""
    seed: int = 0
    """Seed of every random draw."""
    bf16: bool = True
    """bf16 autocast on CUDA (ignored on other devices)."""

    def __post_init__(self) -> None:
        keys = ("steps", "batch_size", "frames", "lr_decay_step", "val_every")
        keys += ("checkpoint_every", "log_every")
        problems = [f"{k} must be positive, got {getattr(self, k)}" for k in keys]
        problems = [p for k, p in zip(keys, problems, strict=True) if getattr(self, k) <= 0]
        if self.lr <= 0 or self.lr_decay <= 0:
            problems.append(f"lr and lr_decay must be positive, got {self.lr} and {self.lr_decay}")
        if problems:
            raise ValueError("; ".join(problems))

    def lr_at(self, step: int) -> float:
        return self.lr * self.lr_decay ** (step // self.lr_decay_step)


@dataclass
class TrainPriorConfig:
    """One `meshtalk train prior` run."""

    latent: Path
    """Stage-1 run directory (its checkpoint in `latent/`) or the checkpoint folder itself."""
    data: Path
    """The store stage 1 trained on (or another with the same topology)."""
    output: Path
    """Run directory (checkpoint in `prior/`, prior_metrics.csv, pictures, run.json)."""
    model: PriorModelConfig = field(default_factory=lambda: PRIOR_PRESETS["release"])
    """Prior sizes; heads, classes and audio_dim are taken from the stage-1 model."""
    training: PriorTrainingConfig = field(default_factory=PriorTrainingConfig)
    """Optimisation settings."""
    device: str = "auto"
    """auto (CUDA, else MPS, else CPU), cpu, cuda or mps."""
    resume: bool = False
    """Continue the run in `output` from its prior checkpoint if it has one (else start it)."""
    progress: bool = True
    """Show progress bars."""


def load_config_file(path: Path) -> tuple[PriorModelConfig, PriorTrainingConfig]:
    """Read a YAML file with `model:` (a preset and overrides) and `train:` sections."""
    return load_model_and_training(path, PRIOR_PRESETS, PriorModelConfig, PriorTrainingConfig)


def latent_folder(path: Path) -> Path:
    """The stage-1 checkpoint folder of a run directory (or the folder itself)."""
    path = Path(path)
    for folder in (ckpt.readable(path / "latent"), path):
        if (folder / "encoder" / ckpt.CONFIG_FILE).is_file():
            return folder
    raise MeshtalkError(path, "holds no stage-1 checkpoint (latent/encoder/config.json)")


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


# --- targets: the frozen stage-1 encoder's codes, computed once -------------------------------


def segment_key(segment: SegmentRef) -> str:
    return f"{segment.identity}/{segment.name}"


@torch.no_grad()
def encode_targets(
    latent_dir: Path,
    store: PreparedStore,
    splits: tuple[str, ...],
    device: torch.device,
    progress: bool = True,
) -> dict[str, torch.Tensor]:
    """Argmax codes (T, H) int64 and audio codes (T, D) float32 of every segment of `splits`.

    Keys: '<identity>/<segment>/codes' and '<identity>/<segment>/audio'.
    """
    from meshtalk.pipelines.io.progress import progress_bar
    from meshtalk.pipelines.train.latent import load_latent

    model, _ = load_latent(latent_dir, device)
    segments = [s for split in splits for s in store.split(split)]
    targets = {}
    with progress_bar(disable=not progress) as bar:
        task = bar.add_task("encode stage-1 targets", total=len(segments))
        for segment in segments:
            vertices = torch.from_numpy(np.array(store.vertices(segment))).to(device)
            mel_index = store.frames(segment)["mel_index"]
            mel, starts = store.audio_span(segment, mel_index)
            template = torch.from_numpy(np.array(store.template(segment.identity))).to(device)
            expression, audio = model.codes(
                vertices[None],
                template[None],
                torch.from_numpy(mel).to(device)[None],
                torch.from_numpy(starts).to(device)[None],
                store.mel_frames,
            )
            logprobs = model.encoder.fusion_model(expression, audio)
            key = segment_key(segment)
            targets[f"{key}/codes"] = logprobs.argmax(dim=-1)[0].cpu()
            targets[f"{key}/audio"] = audio[0].float().cpu()
            bar.advance(task)
    return targets


def cached_targets(
    output: Path,
    latent_dir: Path,
    store: PreparedStore,
    device: torch.device,
    progress: bool,
    is_main: bool,
    barrier,
) -> dict[str, torch.Tensor]:
    """The targets from the cache beside the run, computed (by the main process) if stale."""
    from safetensors import SafetensorError, safe_open

    path = output / TARGETS_FILE
    key = {
        "latent_encoder_sha256": file_sha256(latent_dir / "encoder" / ckpt.WEIGHTS_FILE),
        "data_sha256": store_digest(store.root),
    }
    wanted = {
        f"{segment_key(s)}/{kind}"
        for s in store.split("train") + store.split("val")
        for kind in ("codes", "audio")
    }

    def fresh() -> bool:
        if not path.is_file():
            return False
        try:  # safetensors checks the header and that the data fills the file exactly
            with safe_open(str(path), "pt") as handle:
                metadata, keys = handle.metadata() or {}, set(handle.keys())
        except (SafetensorError, OSError, ValueError) as error:
            log.warning("%s: damaged (%s); computing the targets again", path, error)
            return False
        return all(metadata.get(k) == v for k, v in key.items()) and wanted <= keys

    if is_main and not fresh():
        targets = encode_targets(latent_dir, store, ("train", "val"), device, progress)
        output.mkdir(parents=True, exist_ok=True)
        with atomic_path(path, suffix=".safetensors") as tmp:
            ckpt.save_tensors(targets, tmp, metadata=key)
        log.info("cached the stage-1 targets of %d segments in %s", len(targets) // 2, path)
    barrier()
    return ckpt.load_tensors(path)


class CodeWindows(Dataset):
    """Training windows of cached codes: item `index` is drawn from a generator seeded by it.

    Items: codes (F, H) int64 and audio (F, D) float32, F consecutive observed frames (never across
    a dropped frame).
    """

    def __init__(
        self,
        store: PreparedStore,
        split: str,
        frames: int,
        targets: dict,
        seed: int,
        length: int,
    ) -> None:
        self.windows = SegmentDataset(store, split, frames, length=1, seed=seed)
        self.targets, self.frames, self.seed, self.length = targets, frames, seed, length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        choice, start = self.windows.draw(np.random.default_rng([self.seed, index, 2]))
        key = segment_key(self.windows.segments[choice])
        span = slice(start, start + self.frames)
        return {
            "codes": self.targets[f"{key}/codes"][span],
            "audio": self.targets[f"{key}/audio"][span],
        }


# --- training ------------------------------------------------------------------------------------


def run(config: TrainPriorConfig) -> Path:
    """Train stage 2; returns the run directory."""
    dist = Distributed.from_environment()
    try:
        with contextlib.ExitStack() as stack:  # holds the run folder's lock until the end
            return _train(config, dist, stack)
    finally:
        dist.close()


def _train(config: TrainPriorConfig, dist: Distributed, stack: contextlib.ExitStack) -> Path:
    output, training = Path(config.output), config.training
    if output.exists() and not output.is_dir():
        raise MeshtalkError(output, "is a file, not a run directory (choose another -o)")
    latent_dir = latent_folder(config.latent)
    ckpt.model_config(latent_dir / "encoder", LatentModelConfig)  # checked before any use
    latent_config = ckpt.read_component_config(latent_dir / "encoder")
    model_config = fit_to_latent(config.model, latent_config["model"], config.latent)
    store = PreparedStore(config.data)
    if store.num_vertices != latent_config["model"]["num_vertices"]:
        raise MeshtalkError(
            config.data,
            f"has {store.num_vertices} vertices, stage 1 was trained on "
            f"{latent_config['model']['num_vertices']}",
        )
    device = resolve_device(config.device, dist.local_rank)
    dist.start(device)
    if training.batch_size % dist.world_size:
        raise MeshtalkError(
            None,
            f"batch_size {training.batch_size} does not divide over {dist.world_size} processes",
        )
    checkpoint_dir = claim_run_dir(output, STAGE, dist, stack)
    torch.manual_seed(training.seed)
    model = ContextModel(model_config).to(device)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=training.lr)
    names = parameter_names(model, optimizer)
    record = RunRecord(
        output,
        stage=STAGE,
        settings={
            "model": model_config.to_dict(),
            "train": asdict(training),
            "latent": {
                "path": str(latent_dir.resolve()),
                "encoder_sha256": file_sha256(latent_dir / "encoder" / ckpt.WEIGHTS_FILE),
            },
        },
        data=store.root,
    )
    start_step = 0
    if config.resume and checkpoint_dir.is_dir():
        record.check_resumable()
        start_step = ckpt.read_trainer_state(checkpoint_dir)["step"]
        ckpt.load_component_state(checkpoint_dir / "prior", model)
        ckpt.load_optimizer(checkpoint_dir, optimizer, names)
    elif checkpoint_dir.exists():
        raise MeshtalkError(output, "already holds a prior run (--resume to continue it)")
    targets = cached_targets(
        output,
        latent_dir,
        store,
        device,
        config.progress and dist.is_main,
        dist.is_main,
        dist.barrier,
    )
    if dist.is_main:
        record.start(device=str(device), world_size=dist.world_size, from_step=start_step)
    metrics = MetricsLog(output / "prior_metrics.csv", resume_from=start_step, enabled=dist.is_main)
    train_set = CodeWindows(
        store,
        "train",
        training.frames,
        targets,
        training.seed,
        training.steps * training.batch_size,
    )
    val_split = "val" if store.split("val") else "train"
    if val_split == "train":
        log.warning("no validation split in %s: validating on training segments", store.root)
    validation = [
        (targets[f"{segment_key(s)}/codes"], targets[f"{segment_key(s)}/audio"])
        for s in store.split(val_split)
    ]
    trained = dist.wrap(model, device)
    loader = DataLoader(
        train_set,
        batch_sampler=StepBatches(
            start_step, training.steps, training.batch_size, dist.rank, dist.world_size
        ),
        num_workers=0,
    )
    autocast = bf16_autocast(device, training.bf16)

    def validate(step: int) -> None:
        if dist.is_main:
            figures = evaluate(model, validation, device)
            metrics.write(step, {f"val/{k}": v for k, v in figures.items()})
            log.info(
                "step %d validation: perplexity %.3f (uniform %d), top-1 accuracy %.3f",
                step,
                figures["perplexity"],
                model_config.classes,
                figures["accuracy"],
            )
        dist.barrier()

    def save(step: int) -> None:
        if dist.is_main:
            component = {
                "component": "prior",
                "stage": STAGE,
                "model": model_config.to_dict(),
                "latent": latent_config,
            }
            ckpt.write_checkpoint(
                checkpoint_dir,
                {"prior": (model, component)},
                (optimizer, names),
                {"stage": STAGE, "step": step},
            )
        dist.barrier()

    def train_step(step: int, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        codes = batch["codes"].to(device, non_blocking=True)
        audio = batch["audio"].to(device, non_blocking=True)
        model.train()
        with autocast:
            one_hot = F.one_hot(codes, model_config.classes).to(audio.dtype)
            logits = trained(one_hot, audio)
        loss = F.cross_entropy(logits.float().flatten(0, 2), codes.flatten())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return {"cross_entropy": loss.detach()}

    if start_step == 0:
        validate(0)
    show = config.progress and dist.is_main
    loop = StepLoop.for_settings("train prior", training, optimizer, metrics, device, show)
    loop.run(loader, start_step, train_step, validate, save)
    if dist.is_main:
        metrics.plot(output / "prior_loss_curve.png")
        if validation:
            save_code_picture(model, validation[0], device, output / "prior_codes.png")
    return output


@torch.no_grad()
def evaluate(
    model: ContextModel, sequences: list[tuple[torch.Tensor, torch.Tensor]], device: torch.device
) -> dict[str, float]:
    """Teacher-forced figures over whole sequences of (codes (T, H), audio codes (T, D)).

    perplexity: exp of the mean cross-entropy per code (C for a uniform prior); cross_entropy:
    that mean in nats; accuracy: share of codes that are the most likely class.
    """
    model.eval()
    nll, correct, count = 0.0, 0.0, 0
    for codes, audio in sequences:
        codes, audio = codes.to(device)[None], audio.to(device)[None]
        one_hot = F.one_hot(codes, model.config.classes).to(audio.dtype)
        logits = model(one_hot, audio).float()
        nll += float(F.cross_entropy(logits.flatten(0, 2), codes.flatten(), reduction="sum"))
        correct += float((logits.argmax(dim=-1) == codes).sum())
        count += codes.numel()
    count = max(count, 1)
    return {
        "perplexity": math.exp(nll / count),
        "cross_entropy": nll / count,
        "accuracy": correct / count,
    }


@torch.no_grad()
def save_code_picture(
    model: ContextModel, sequence: tuple[torch.Tensor, torch.Tensor], device, path: Path
) -> None:
    """The encoded codes of a validation sequence beside codes sampled from its audio alone."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from meshtalk.models.sampler import PriorSampler

    model.eval()
    codes, audio = sequence
    sampled = PriorSampler(model, seed=0).sample(audio.to(device)[None])[0].cpu()
    figure, axes = plt.subplots(2, 1, figsize=(10, 4.5), sharex=True)
    for axis, (title, values) in zip(
        axes,
        [
            ("stage-1 codes (meshes + audio)", codes),
            ("sampled from the audio by the prior", sampled),
        ],
        strict=True,
    ):
        axis.imshow(
            values.T.numpy(),
            aspect="auto",
            interpolation="nearest",
            cmap="tab20",
            vmin=0,
            vmax=model.config.classes - 1,
        )
        axis.set_title(title, fontsize=9)
        axis.set_ylabel("head")
    axes[-1].set_xlabel("frame")
    figure.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        figure.savefig(tmp, dpi=90)
    plt.close(figure)


def load_prior(folder: Path, device: torch.device | str = "cpu") -> tuple[ContextModel, dict]:
    """A trained prior from a checkpoint folder (`RUN/prior`), and its component config."""
    folder = ckpt.readable(Path(folder))
    config = ckpt.read_component_config(folder / "prior")
    model = ContextModel(ckpt.model_config(folder / "prior", PriorModelConfig))
    ckpt.load_component_state(folder / "prior", model)
    return model.to(device).eval(), config
