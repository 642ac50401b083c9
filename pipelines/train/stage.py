"""The skeleton both training stages share: settings, processes, the run folder, resume, the loop.

A stage (`train.latent.LatentStage`, `train.prior.PriorStage`) fills in what is its own: the inputs
it checks, its model and optimizer, one training step, its validation figures and pictures.
"""

from __future__ import annotations

import contextlib
import logging
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from meshtalk.pipelines import checkpoint as ckpt
from meshtalk.pipelines.data.resident import MODES, placement
from meshtalk.pipelines.data.store import PreparedStore
from meshtalk.pipelines.errors import MeshtalkError
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
)

log = logging.getLogger(__name__)


@dataclass(kw_only=True)
class StageRunConfig:
    """What every `meshtalk train` run takes besides its stage's inputs and settings."""

    output: Path
    """Run directory (the stage's checkpoint, metrics, pictures, run.json)."""
    device: str = "auto"
    """auto (CUDA, else MPS, else CPU), cpu, cuda or mps."""
    resume: bool = False
    """Continue the stage in `output` from its checkpoint if it has one (else start it)."""
    progress: bool = True
    """Show progress bars."""
    data_on_device: str = "auto"
    """Training data held where training runs (`pipelines.data.resident`): auto (on CUDA, in
    device memory when it fits, else pinned host memory; elsewhere the memory-mapped store), yes
    (also on the CPU or MPS), no (the memory-mapped store read by DataLoader workers). The
    batches are the same either way."""
    bf16: bool | None = None
    """bf16 autocast: None follows the training settings' `bf16` (used on CUDA only); True asks
    for it (refused on a device other than CUDA); False turns it off."""


class Stage(ABC):
    """One stage's training run: `run()` is the skeleton, a stage fills in the hooks.

    `run` calls the hooks in the order they are written below.
    """

    stage: ClassVar[str]
    """ckpt.LATENT or ckpt.PRIOR: the checkpoint folder and the run.json entry."""
    metrics_file: ClassVar[str]
    """The stage's metrics, beside the run."""
    loss_curve: ClassVar[str]
    """The stage's loss curves (a PNG), beside the run."""
    cached_files: ClassVar[tuple[str, ...]] = ()
    """Other files the stage writes beside the run."""

    def __init__(self, config: Any) -> None:
        self.config, self.training = config, config.training
        self.output = Path(config.output)
        self.dist = Distributed.from_environment()
        self.device = torch.device("cpu")
        self.autocast = contextlib.nullcontext()

    # --- hooks, in the order `run` calls them ------------------------------------------------

    @abstractmethod
    def prepare(self) -> PreparedStore:
        """Read and check every input (nothing is written before it returns); the store."""

    @abstractmethod
    def build(self) -> tuple[nn.Module, torch.optim.Optimizer]:
        """The model on `self.device` and its optimizer (the global seed is set just before)."""

    @abstractmethod
    def settings(self) -> dict:
        """What run.json records of the stage's settings (a resume must match it)."""

    @abstractmethod
    def components(self) -> dict[str, tuple[nn.Module, dict]]:
        """What a checkpoint saves and a resume loads: name -> (module, component config)."""

    def claimed(self) -> None:  # noqa: B027 (a hook a stage may leave out)
        """The run folder is held and the stage resumed or started: make what lives beside it."""

    @abstractmethod
    def train_set(self) -> Dataset:
        """The dataset whose item i is global sample i (`StepBatches` indexes it)."""

    @abstractmethod
    def train_step(self, step: int, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """One optimisation step of `self.trained`; its losses (detached device tensors)."""

    @abstractmethod
    def evaluate(self) -> dict[str, float]:
        """Validation figures of `self.model` (main process only)."""

    @abstractmethod
    def describe(self, step: int, figures: dict[str, float]) -> None:
        """Log a line of the validation figures."""

    def pictures(self) -> None:  # noqa: B027 (a hook a stage may leave out)
        """Draw what the stage draws at the end, beside the loss curves (main process only)."""

    # --- the skeleton ----------------------------------------------------------------------------

    def run(self) -> Path:
        """Train the stage; returns the run directory."""
        try:
            with contextlib.ExitStack() as stack:  # holds the run folder's lock until the end
                return self._run(stack)
        finally:
            self.dist.close()

    def _run(self, stack: contextlib.ExitStack) -> Path:
        output, training, dist = self.output, self.training, self.dist
        if output.exists() and not output.is_dir():
            raise MeshtalkError(output, "is a file, not a run directory (choose another -o)")
        if self.config.data_on_device not in MODES:
            raise MeshtalkError(
                None,
                f"--data-on-device must be one of {', '.join(MODES)}, "
                f"got '{self.config.data_on_device}'",
            )
        self.store = self.prepare()
        self.device = resolve_device(self.config.device, dist.local_rank)
        dist.start(self.device)
        if training.batch_size % dist.world_size:
            raise MeshtalkError(
                None,
                f"batch_size {training.batch_size} does not divide over {dist.world_size} "
                "processes",
            )
        beside = (ckpt.RUN_RECORD, self.metrics_file, *self.cached_files)
        checkpoint_dir = claim_run_dir(output, self.stage, dist, stack, beside)
        torch.manual_seed(training.seed)
        self.model, self.optimizer = self.build()
        names = parameter_names(self.model, self.optimizer)
        record = RunRecord(output, self.stage, self.settings(), self.store.root)
        start_step = 0
        if self.config.resume and checkpoint_dir.is_dir():
            record.check_resumable()
            modules = {name: module for name, (module, _) in self.components().items()}
            start_step = ckpt.resume_stage(output, self.stage, modules, self.optimizer, names)
        elif checkpoint_dir.exists():
            raise MeshtalkError(
                output, f"already holds a {self.stage} run (--resume to continue it)"
            )
        self.claimed()
        if dist.is_main:
            record.start(device=str(self.device), world_size=dist.world_size, from_step=start_step)
        self.metrics = MetricsLog(
            output / self.metrics_file, resume_from=start_step, enabled=dist.is_main
        )
        self.trained = dist.wrap(self.model, self.device)
        self.autocast = bf16_autocast(self.device, self._bf16())
        indices = StepBatches(
            start_step, training.steps, training.batch_size, dist.rank, dist.world_size
        )
        loader = self._batches(self.train_set(), indices)

        def save(step: int) -> None:
            if dist.is_main:
                optimizer = (self.optimizer, names)
                ckpt.save_stage(output, self.stage, self.components(), optimizer, step)
            dist.barrier()

        if start_step == 0:
            self._validate(0)
        show = self.config.progress and dist.is_main
        loop = StepLoop.for_settings(
            f"train {self.stage}", training, self.optimizer, self.metrics, self.device, show
        )
        loop.run(loader, start_step, self.train_step, self._validate, save)
        if dist.is_main:
            self.metrics.plot(output / self.loss_curve)
            self.pictures()
        return output

    def _bf16(self) -> bool:
        if self.config.bf16 is None:
            return self.training.bf16
        if self.config.bf16 and self.device.type != "cuda":
            raise MeshtalkError(None, f"--bf16 is for CUDA; this run is on {self.device.type}")
        return self.config.bf16

    def _batches(self, train_set, indices: StepBatches):
        """The steps' batches: gathered from the data held on the device, or a DataLoader."""
        mode = self.config.data_on_device
        where = placement(mode, self.device, train_set.resident_bytes())
        if where is not None:
            try:
                batches = train_set.resident(indices, self.device, pin=where == "pinned")
            except ValueError as error:
                if mode == "yes":
                    raise MeshtalkError(self.store.root, f"--data-on-device yes: {error}") from None
                log.info("data stays memory-mapped: %s", error)
            else:
                memory = "pinned host memory" if where == "pinned" else f"{self.device} memory"
                log.info("training data held in %s (%.0f MiB)", memory,
                         train_set.resident_bytes() / 2**20)  # fmt: skip
                return batches
        return DataLoader(
            train_set,
            batch_sampler=indices,
            num_workers=self.training.loader_workers,
            pin_memory=self.device.type == "cuda",
            persistent_workers=False,
        )

    def _validate(self, step: int) -> None:
        if self.dist.is_main:
            figures = self.evaluate()
            self.metrics.write(step, {f"val/{k}": v for k, v in figures.items()})
            self.describe(step, figures)
        self.dist.barrier()
