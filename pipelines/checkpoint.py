"""The one checkpoint format: a folder per component with config.json and model.safetensors.

A training checkpoint is a folder of components plus optimizer.safetensors and trainer.json; it is
written under a temporary name and renamed, so a checkpoint on disk is always complete.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from meshtalk.pipelines.atomic import replace_dir
from meshtalk.pipelines.errors import MeshtalkError

CONFIG_FILE, WEIGHTS_FILE = "config.json", "model.safetensors"
OPTIMIZER_FILE, TRAINER_FILE = "optimizer.safetensors", "trainer.json"


def save_component(folder: Path, module: nn.Module, config: dict) -> None:
    """Write a module's state (parameters and buffers) and its config into `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu").contiguous() for k, v in module.state_dict().items()}
    save_file(state, str(folder / WEIGHTS_FILE))
    (folder / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")


def read_component_config(folder: Path) -> dict:
    """The config.json of a saved component."""
    path = Path(folder) / CONFIG_FILE
    if not path.is_file():
        raise MeshtalkError(folder, f"not a saved model component (no {CONFIG_FILE})")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise MeshtalkError(path, f"not valid JSON ({error.msg}, line {error.lineno})") from None


def load_tensors(path: Path) -> dict[str, torch.Tensor]:
    """A safetensors file, loaded on the CPU."""
    if not path.is_file():
        raise MeshtalkError(path, "missing")
    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError) as error:
        raise MeshtalkError(path, f"not a readable safetensors file ({error})") from None


def load_component_state(folder: Path, module: nn.Module) -> None:
    """Load a saved component's tensors into `module` (names and shapes must match exactly)."""
    path = Path(folder) / WEIGHTS_FILE
    state = load_tensors(path)
    expected = module.state_dict()
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    wrong = [k for k in expected if k in state and state[k].shape != expected[k].shape]
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"missing {', '.join(missing[:3])}")
        if unexpected:
            parts.append(f"unexpected {', '.join(unexpected[:3])}")
        if wrong:
            k = wrong[0]
            have, want = tuple(state[k].shape), tuple(expected[k].shape)
            parts.append(f"{k} has shape {have}, expected {want}")
        raise MeshtalkError(path, "does not fit the model: " + "; ".join(parts))
    module.load_state_dict(state)


def optimizer_tensors(optimizer: torch.optim.Optimizer, names: dict[int, str]) -> dict:
    """Per-parameter optimizer state as flat tensors named '<parameter>.<state key>'."""
    flat = {}
    for index, state in optimizer.state_dict()["state"].items():
        for key, value in state.items():
            tensor = value if torch.is_tensor(value) else torch.tensor(value)
            flat[f"{names[index]}.{key}"] = tensor.detach().to("cpu").contiguous()
    return flat


def load_optimizer_tensors(
    optimizer: torch.optim.Optimizer, names: dict[int, str], flat: dict[str, torch.Tensor]
) -> None:
    """Inverse of `optimizer_tensors`."""
    state_dict = optimizer.state_dict()
    state: dict[int, dict[str, torch.Tensor]] = {}
    by_name = {name: index for index, name in names.items()}
    for key, value in flat.items():
        name, _, field = key.rpartition(".")
        state.setdefault(by_name[name], {})[field] = value
    state_dict["state"] = state
    optimizer.load_state_dict(state_dict)


def write_checkpoint(
    folder: Path,
    components: dict[str, tuple[nn.Module, dict]],
    optimizer: tuple[torch.optim.Optimizer, dict[int, str]] | None,
    trainer: dict,
) -> None:
    """Write a training checkpoint atomically: components, optimizer state, trainer state."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".tmp", dir=folder.parent))
    try:
        for name, (module, config) in components.items():
            save_component(tmp / name, module, config)
        if optimizer is not None:
            save_file(optimizer_tensors(*optimizer), str(tmp / OPTIMIZER_FILE))
        (tmp / TRAINER_FILE).write_text(json.dumps(trainer, indent=2) + "\n")
        replace_dir(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def read_trainer_state(folder: Path) -> dict:
    path = Path(folder) / TRAINER_FILE
    if not path.is_file():
        raise MeshtalkError(folder, f"not a training checkpoint (no {TRAINER_FILE})")
    return json.loads(path.read_text())
