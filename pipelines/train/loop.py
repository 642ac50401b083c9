"""What every training stage shares: devices, processes, batches by step, metrics, run records."""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as torch_dist
from torch.utils.data import Sampler

from meshtalk.pipelines import checkpoint as ckpt
from meshtalk.pipelines.errors import MeshtalkError
from meshtalk.pipelines.io import lock as lock
from meshtalk.pipelines.io.atomic import write_text_atomic
from meshtalk.pipelines.io.provenance import file_sha256, git_commit, versions

DEVICES = ("auto", "cpu", "cuda", "mps")


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """auto: CUDA (this process's GPU under torchrun), else Apple MPS, else the CPU."""
    if name not in DEVICES:
        raise MeshtalkError(None, f"--device must be one of {', '.join(DEVICES)}, got '{name}'")
    cuda = torch.cuda.is_available()
    mps = getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    if name == "cuda" and not cuda:
        raise MeshtalkError(None, "--device cuda: no CUDA device is available")
    if name == "mps" and not mps:
        raise MeshtalkError(None, "--device mps: no Apple MPS device is available")
    if name == "cuda" or (name == "auto" and cuda):
        return torch.device("cuda", local_rank)
    if name == "mps" or (name == "auto" and mps):
        return torch.device("mps")
    return torch.device("cpu")


def seed_for(*keys: int) -> int:
    """A 63-bit seed derived from several integers (seed, step, rank, ...)."""
    return int(np.random.SeedSequence(list(keys)).generate_state(2, np.uint64)[0] >> np.uint64(1))


@dataclass
class Distributed:
    """This process's place among the processes torchrun started (one process: rank 0 of 1)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @classmethod
    def from_environment(cls) -> Distributed:
        env = os.environ
        return cls(
            int(env.get("RANK", 0)), int(env.get("WORLD_SIZE", 1)), int(env.get("LOCAL_RANK", 0))
        )

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def start(self, device: torch.device) -> None:
        if self.world_size > 1 and not torch_dist.is_initialized():
            if device.type == "cuda":
                torch.cuda.set_device(device)
            torch_dist.init_process_group("nccl" if device.type == "cuda" else "gloo")

    def wrap(self, model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
        """DistributedDataParallel over the processes, or the model itself for one process."""
        if self.world_size == 1:
            return model
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )

    def barrier(self) -> None:
        if self.world_size > 1 and torch_dist.is_initialized():
            torch_dist.barrier()

    def close(self) -> None:
        if self.world_size > 1 and torch_dist.is_initialized():
            torch_dist.destroy_process_group()


def parameter_names(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[int, str]:
    """Optimizer parameter index -> parameter name, in the order of its groups."""
    by_id = {id(p): name for name, p in model.named_parameters()}
    params = [p for group in optimizer.param_groups for p in group["params"]]
    return {index: by_id[id(p)] for index, p in enumerate(params)}


class StepBatches(Sampler[list[int]]):
    """Dataset indices of each step's batch for one process.

    Step s uses global sample indices s*B .. s*B + B - 1; process r of N takes its contiguous
    B/N of them. Items are functions of their index, so resuming at any step and any number of
    processes see the same samples.
    """

    def __init__(
        self, start_step: int, steps: int, batch_size: int, rank: int = 0, world_size: int = 1
    ) -> None:
        self.start_step, self.steps = start_step, steps
        self.batch_size, self.local = batch_size, batch_size // world_size
        self.offset = rank * self.local

    def __iter__(self) -> Iterator[list[int]]:
        for step in range(self.start_step, self.steps):
            first = step * self.batch_size + self.offset
            yield list(range(first, first + self.local))

    def __len__(self) -> int:
        return max(0, self.steps - self.start_step)


class MetricsLog:
    """metrics.csv (step, name, value); on resume, rows after the resumed step are dropped."""

    def __init__(self, path: Path, resume_from: int = 0, enabled: bool = True) -> None:
        self.path, self.enabled = Path(path), enabled
        if not enabled:
            return
        rows = [r for r in self.read(self.path) if int(r["step"]) <= resume_from]
        if resume_from == 0:
            rows = []
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(["step", "name", "value"])
        writer.writerows([r["step"], r["name"], r["value"]] for r in rows)
        write_text_atomic(self.path, buffer.getvalue())

    @staticmethod
    def read(path: Path) -> list[dict[str, str]]:
        if not Path(path).is_file():
            return []
        with open(path, newline="") as handle:
            return list(csv.DictReader(handle))

    def write(self, step: int, values: dict[str, float]) -> None:
        if not self.enabled:
            return
        with open(self.path, "a", newline="") as handle:
            csv.writer(handle).writerows([step, k, f"{v:.6g}"] for k, v in values.items())

    def plot(self, path: Path) -> None:
        """Loss curves (training terms) and validation errors against the step, as a PNG."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        from meshtalk.pipelines.io.atomic import atomic_path

        series: dict[str, tuple[list[int], list[float]]] = {}
        for row in self.read(self.path):
            steps, values = series.setdefault(row["name"], ([], []))
            steps.append(int(row["step"]))
            values.append(float(row["value"]))
        panels = {
            "training losses": [
                k for k in series if k.startswith("train/") and k not in _NOT_LOSSES
            ],
            "validation": [
                k for k in series if k.startswith("val/") and (k.endswith("_mm") or "perplex" in k)
            ],
            "validation ratios": [k for k in series if k.startswith("val/") and "_over_" in k],
        }
        panels = {title: names for title, names in panels.items() if names}
        figure, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.8), squeeze=False)
        for axis, (title, names) in zip(axes[0], panels.items()):
            for name in names:
                axis.plot(
                    *series[name],
                    label=name.split("/", 1)[1],
                    marker="." if "val" in name else None,
                )
            if all(v > 0 for name in names for v in series[name][1]):
                axis.set_yscale("log")
            axis.set_xlabel("step")
            axis.set_title(title)
            axis.legend(fontsize=7)
            axis.grid(alpha=0.3)
        figure.tight_layout()
        with atomic_path(path, suffix=".png") as tmp:
            figure.savefig(tmp, dpi=90)
        plt.close(figure)


_NOT_LOSSES = (
    "train/lr",
    "train/data_wait_share",
    "train/steps_per_second",
    "train/gpu_peak_memory_mib",
)


# Manifest fields that say when and with what a store was made, not what it holds.
_VOLATILE_MANIFEST_KEYS = ("created", "versions", "source")
_VOLATILE_SETTINGS = ("root", "workers")


def store_digest(root: Path) -> str:
    """sha256 of what a prepared store holds, not of when it was made.

    Covers the manifest without its volatile fields (creation time, package versions, the source's
    path and the worker count), the bytes of mean.npy and std.npy (which depend on every training
    frame) and the name and size of every array file. Re-running prep on the same data gives the
    same digest; hashing every vertex would read the whole store on each start.
    """
    root = Path(root)
    manifest = ckpt.read_json(root / "manifest.json")
    content = {k: v for k, v in manifest.items() if k not in _VOLATILE_MANIFEST_KEYS}
    if isinstance(content.get("settings"), dict):
        content["settings"] = {
            k: v for k, v in content["settings"].items() if k not in _VOLATILE_SETTINGS
        }
    digest = hashlib.sha256(json.dumps(content, sort_keys=True).encode())
    for name in ("mean.npy", "std.npy"):
        path = root / name
        digest.update(f"\0{name}\0".encode())
        digest.update(path.read_bytes() if path.is_file() else b"missing")
    for folder in ("identities", "masks"):
        for path in sorted((root / folder).rglob("*")):
            if path.is_file():
                digest.update(f"\0{path.relative_to(root)}\0{path.stat().st_size}".encode())
    return digest.hexdigest()


FIELDS_ADDED_LATER = {
    "expression_input": "mesh",
    "decoder_fusion": "codes_first",
    "input_activation": True,
}
"""Model settings added after runs were first recorded, and the value those runs had."""


class RunRecord:
    """run.json: per stage, the settings, the data it trained on, and every invocation."""

    def __init__(self, run_dir: Path, stage: str, settings: dict, data: Path) -> None:
        self.path, self.stage = Path(run_dir) / ckpt.RUN_RECORD, stage
        manifest = Path(data) / "manifest.json"
        self.entry = {
            "settings": json.loads(json.dumps(settings, default=str)),
            "data": {
                "path": str(Path(data).resolve()),
                "content_sha256": store_digest(data),
                "manifest_sha256": file_sha256(manifest),
            },
        }

    def _load(self) -> dict:
        return ckpt.read_json(self.path) if self.path.is_file() else {}

    def check_resumable(self) -> None:
        """The recorded settings and data must be those of this invocation (steps may grow)."""
        old = self._load().get(self.stage)
        if old is None:
            raise MeshtalkError(self.path, f"records no {self.stage} run to resume")
        if not isinstance(old, dict) or not isinstance(old.get("settings"), dict):
            raise MeshtalkError(self.path, f"the {self.stage} record is damaged (no settings)")
        differences = []
        for section, values in self.entry["settings"].items():
            for key, value in values.items():
                recorded = old["settings"].get(section) or {}
                before = recorded.get(key)
                if key not in recorded and key in FIELDS_ADDED_LATER:
                    before = FIELDS_ADDED_LATER[key]  # what runs recorded before it were
                    if before != value:
                        differences.append(
                            f"{section}.{key} was {before!r} (recorded before the setting "
                            f"existed), now {value!r}: set it to {before!r} with --config to resume"
                        )
                        continue
                if key != "steps" and before != value:
                    differences.append(f"{section}.{key} was {before!r}, now {value!r}")
        data = old.get("data") or {}
        # Records written before content digests hold only the manifest file's hash.
        key = "content_sha256" if "content_sha256" in data else "manifest_sha256"
        if data.get(key) != self.entry["data"][key]:
            differences.append(f"the data differs from {data.get('path')}")
        if differences:
            raise MeshtalkError(self.path, "cannot resume: " + "; ".join(differences))

    def start(self, device: str, world_size: int, from_step: int) -> None:
        record = self._load()
        invocations = record.get(self.stage, {}).get("invocations", []) if from_step else []
        invocations.append(
            {
                "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "command": sys.argv,
                "from_step": from_step,
                "device": device,
                "world_size": world_size,
                "git_commit": git_commit(),
                "versions": versions(),
            }
        )
        record[self.stage] = {**self.entry, "invocations": invocations}
        write_text_atomic(self.path, json.dumps(record, indent=2) + "\n")


def claim_run_dir(
    output: Path,
    stage: str,
    dist: Distributed,
    stack: contextlib.ExitStack,
    beside: tuple[str, ...] = (ckpt.RUN_RECORD,),
) -> Path:
    """Make the run folder, lock it for the rest of the run and repair an interrupted save.

    Only the main process writes, so only it takes the lock (held by `stack` until the run ends),
    puts back a checkpoint that a killed save left at its old name and removes the temporary files
    a killed write of a file `beside` the run left; the others wait for it. Returns the stage's
    checkpoint folder.
    """
    output = Path(output)
    if output.exists() and not output.is_dir():
        raise MeshtalkError(output, "is a file, not a run directory (choose another -o)")
    if dist.is_main:
        output.mkdir(parents=True, exist_ok=True)
        stack.enter_context(lock.exclusive(output, f"meshtalk train {stage}"))
        ckpt.recover(ckpt.stage_folder(output, stage))
        for name in beside:
            for leftover in output.glob(f".{name}.*.tmp*"):
                if leftover.is_file() and not leftover.is_symlink():
                    leftover.unlink(missing_ok=True)
    dist.barrier()
    return ckpt.stage_folder(output, stage)


class _Progress:
    def __init__(self, bar, task) -> None:
        self.bar, self.task = bar, task

    def show(self, step: int, values: dict[str, float]) -> None:
        text = " ".join(
            f"{k} {v:.4g}" for k, v in values.items() if k not in ("lr", "data_wait_share")
        )
        self.bar.update(self.task, losses=text)

    def advance(self, step: int) -> None:
        self.bar.update(self.task, completed=step)


@contextlib.contextmanager
def training_progress(description: str, total: int, completed: int, enabled: bool):
    """A progress bar over steps that also shows the latest losses."""
    from rich.progress import TextColumn

    from meshtalk.pipelines.io.progress import progress_bar

    with progress_bar(TextColumn("{task.fields[losses]}"), disable=not enabled) as bar:
        task = bar.add_task(description, total=total, completed=completed, losses="")
        yield _Progress(bar, task)


def bf16_autocast(device: torch.device, enabled: bool):
    """bf16 autocast on CUDA when enabled; a no-op context elsewhere."""
    if device.type == "cuda" and enabled:
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


@dataclass
class StepLoop:
    """The step loop both stages share: learning rate, timing, logged means, cadences.

    `train_step(step, batch)` runs one optimisation step and returns its losses (device
    tensors, detached); they are summed on the device, so there is no host sync per step.
    `validate(step)` and `save(step)` run every `val_every` / `checkpoint_every` steps and at
    the end.
    """

    description: str
    steps: int
    log_every: int
    val_every: int
    checkpoint_every: int
    lr_at: Callable[[int], float]
    optimizer: torch.optim.Optimizer
    metrics: MetricsLog
    device: torch.device
    show_progress: bool

    @classmethod
    def for_settings(cls, description: str, training, optimizer, metrics, device, show):
        """From a stage's settings: steps, log_every, val_every, checkpoint_every, lr_at."""
        return cls(
            description,
            training.steps,
            training.log_every,
            training.val_every,
            training.checkpoint_every,
            training.lr_at,
            optimizer,
            metrics,
            device,
            show,
        )

    def run(self, loader, start_step: int, train_step, validate, save) -> None:
        sums: dict[str, torch.Tensor] = {}
        count, waited, stepped = 0, 0.0, 0.0
        with training_progress(
            self.description, self.steps, start_step, self.show_progress
        ) as progress:
            fetch_started = time.perf_counter()
            for step, batch in enumerate(loader, start=start_step + 1):
                fetched = time.perf_counter()
                waited += fetched - fetch_started
                for group in self.optimizer.param_groups:
                    group["lr"] = self.lr_at(step - 1)
                for key, value in train_step(step, batch).items():
                    sums[key] = sums[key] + value if key in sums else value
                count += 1
                fetch_started = time.perf_counter()
                stepped += fetch_started - fetched
                if step % self.log_every == 0 or step == self.steps:
                    means = {f"train/{k}": float(v) / count for k, v in sums.items()}
                    means["train/lr"] = self.lr_at(step - 1)
                    means["train/data_wait_share"] = waited / max(waited + stepped, 1e-9)
                    means["train/steps_per_second"] = count / max(waited + stepped, 1e-9)
                    if self.device.type == "cuda":
                        peak = torch.cuda.max_memory_allocated(self.device) / 2**20
                        means["train/gpu_peak_memory_mib"] = peak
                    self.metrics.write(step, means)
                    progress.show(step, {k.removeprefix("train/"): v for k, v in means.items()})
                    sums, count, waited, stepped = {}, 0, 0.0, 0.0
                progress.advance(step)
                if step % self.val_every == 0 or step == self.steps:
                    validate(step)
                if step % self.checkpoint_every == 0 or step == self.steps:
                    save(step)
