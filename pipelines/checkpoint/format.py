"""The one checkpoint format: a folder per component with config.json and model.safetensors.

A training checkpoint is a folder of components plus optimizer.safetensors and trainer.json; it is
written under a temporary name and renamed, so a checkpoint on disk is always complete: at every
instant it is at its own name or, during the swap, at `atomic.old_name` (`recover` puts it back).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from meshtalk.pipelines.errors import MeshtalkError
from meshtalk.pipelines.io import atomic as atomic

log = logging.getLogger(__name__)

CONFIG_FILE, WEIGHTS_FILE = "config.json", "model.safetensors"
OPTIMIZER_FILE, TRAINER_FILE = "optimizer.safetensors", "trainer.json"
SHARED_FILE = "shared.json"
"""In a component folder without its own weights: {"weights": path relative to the folder,
"sha256": of that file}, the same weights as another run's beside it (the bundled low-latency
model stores the default's decoder once). The path must stay inside the folder holding the runs."""


def save_tensors(
    tensors: dict[str, torch.Tensor], path: Path, metadata: dict | None = None
) -> None:
    """save_file, with the modes the umask allows (safetensors makes its files 0600)."""
    save_file(tensors, str(path), metadata=metadata)
    atomic.follow_umask(path)


def save_component(folder: Path, module: nn.Module, config: dict) -> None:
    """Write a module's state (parameters and buffers) and its config into `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu").contiguous() for k, v in module.state_dict().items()}
    save_tensors(state, folder / WEIGHTS_FILE)
    (folder / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")


def read_json(path: Path) -> dict:
    """A JSON object from a file, or a one-line error naming it."""
    try:
        value = json.loads(Path(path).read_text())
    except json.JSONDecodeError as error:
        raise MeshtalkError(path, f"not valid JSON ({error.msg}, line {error.lineno})") from None
    except UnicodeDecodeError:
        raise MeshtalkError(path, "not valid JSON (not UTF-8 text)") from None
    if not isinstance(value, dict):
        raise MeshtalkError(path, f"must hold a JSON object, not {type(value).__name__}")
    return value


def read_component_config(folder: Path) -> dict:
    """The config.json of a saved component."""
    path = Path(folder) / CONFIG_FILE
    if not path.is_file():
        raise MeshtalkError(folder, f"not a saved model component (no {CONFIG_FILE})")
    config = read_json(path)
    if not isinstance(config.get("model"), dict):
        raise MeshtalkError(path, "has no 'model' section of sizes")
    return config


def model_config(folder: Path, cls: type, **defaults):
    """The model sizes (`cls`, a config dataclass) of a saved component, checked before use.

    Unknown keys, wrong types and sizes out of range are one-line errors naming config.json, so a
    damaged or hand-edited file never reaches a constructor (or an allocation of terabytes).
    `defaults` go to `cls.from_dict` (values for configs written before a field existed).
    """
    path = Path(folder) / CONFIG_FILE
    values = read_component_config(folder)["model"]
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        names = ", ".join(map(repr, unknown))
        raise MeshtalkError(path, f"model: unknown key {names} (known: {', '.join(sorted(known))})")
    try:
        return cls.from_dict(values, **defaults)
    except (TypeError, ValueError) as error:
        raise MeshtalkError(path, f"model: {error}") from None


def load_tensors(path: Path) -> dict[str, torch.Tensor]:
    """A safetensors file, loaded on the CPU."""
    if not path.is_file():
        raise MeshtalkError(path, "missing")
    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError) as error:
        raise MeshtalkError(path, f"not a readable safetensors file ({error})") from None


def check_fits(
    module: nn.Module, state: dict, path: Path, problem: str = "does not fit the model"
) -> None:
    """A one-line error naming `path` unless `state` has exactly `module`'s names and shapes."""
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
        raise MeshtalkError(path, f"{problem}: " + "; ".join(parts))


def weights_file(folder: Path) -> Path:
    """A component's model.safetensors, or the file its shared.json names (checked: inside the
    folder that holds the run, and with the recorded SHA-256)."""
    from meshtalk.pipelines.io.provenance import file_sha256

    folder = Path(folder)
    own, shared = folder / WEIGHTS_FILE, folder / SHARED_FILE
    if own.is_file() or not shared.is_file():
        return own
    record = read_json(shared)
    name, digest = record.get("weights"), record.get("sha256")
    if not isinstance(name, str) or not isinstance(digest, str):
        raise MeshtalkError(shared, "must name the shared 'weights' file and its 'sha256'")
    root = folder.resolve().parents[2]  # RUN/stage/component -> the folder holding RUN
    target = (folder / name).resolve()
    if not target.is_relative_to(root):
        raise MeshtalkError(shared, f"names {name}, outside {root}")
    if not target.is_file():
        raise MeshtalkError(shared, f"names {name}, which is missing")
    if file_sha256(target) != digest:
        raise MeshtalkError(shared, f"names {name}, whose SHA-256 is not the recorded one")
    return target


def load_component_state(folder: Path, module: nn.Module, assign: bool = False) -> None:
    """Load a saved component's tensors into `module` (names and shapes must match exactly).

    With `assign` the loaded tensors become the module's own: no second copy of the weights, and
    a module built on the meta device (nothing allocated or computed) is filled this way. Without
    it they are copied into the module's existing tensors, which an optimizer made before may
    hold (resuming training)."""
    path = weights_file(folder)
    state = load_tensors(path)
    check_fits(module, state, path)
    expected = module.state_dict()
    for name, tensor in state.items():  # the module's dtypes, as a copy into it would give
        if tensor.dtype != expected[name].dtype:
            state[name] = tensor.to(expected[name].dtype)
    module.load_state_dict(state, assign=assign)
    left = [name for name, tensor in module.state_dict().items() if tensor.is_meta]
    left += [name for name, tensor in module.named_buffers() if tensor.is_meta]
    if left:
        raise RuntimeError(f"{path}: nothing loaded into {', '.join(sorted(set(left)))}")


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
        if name not in by_name:
            raise ValueError(f"state of an unknown parameter '{name}'")
        state.setdefault(by_name[name], {})[field] = value
    state_dict["state"] = state
    optimizer.load_state_dict(state_dict)


def load_optimizer(folder: Path, optimizer: torch.optim.Optimizer, names: dict[int, str]) -> None:
    """Load a checkpoint's optimizer.safetensors, checked against the optimizer's parameters."""
    path = Path(folder) / OPTIMIZER_FILE
    flat = load_tensors(path)
    params = [p for group in optimizer.param_groups for p in group["params"]]
    shapes = {names[i]: tuple(p.shape) for i, p in enumerate(params)}
    for key, value in flat.items():
        name, _, field = key.rpartition(".")
        if name not in shapes:
            raise MeshtalkError(path, f"does not fit the model: state of unknown parameter {name}")
        if field != "step" and tuple(value.shape) != shapes[name]:
            raise MeshtalkError(
                path,
                f"does not fit the model: {key} has shape {tuple(value.shape)}, "
                f"expected {shapes[name]}",
            )
    try:
        load_optimizer_tensors(optimizer, names, flat)
    except (ValueError, KeyError, RuntimeError) as error:
        raise MeshtalkError(path, f"does not fit the optimizer ({error})") from None


def write_checkpoint(
    folder: Path,
    components: dict[str, tuple[nn.Module, dict]],
    optimizer: tuple[torch.optim.Optimizer, dict[int, str]] | None,
    trainer: dict,
) -> None:
    """Write a training checkpoint atomically: components, optimizer state, trainer state.

    A failed write (a full disk) removes its temporary folder and leaves the previous checkpoint in
    place; the error names the checkpoint folder in one line.
    """
    folder = Path(folder)
    tmp = atomic.temporary_dir(folder)
    try:
        for name, (module, config) in components.items():
            save_component(tmp / name, module, config)
        if optimizer is not None:
            save_tensors(optimizer_tensors(*optimizer), tmp / OPTIMIZER_FILE)
        (tmp / TRAINER_FILE).write_text(json.dumps(trainer, indent=2) + "\n")
        atomic.replace_dir(tmp, folder)
    except (OSError, SafetensorError) as error:
        shutil.rmtree(tmp, ignore_errors=True)
        reason = getattr(error, "strerror", None) or str(error)
        kept = "the previous checkpoint is kept" if folder.is_dir() else "no checkpoint was kept"
        raise MeshtalkError(
            folder, f"cannot write the step-{trainer.get('step')} checkpoint ({reason}); {kept}"
        ) from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def recover(folder: Path) -> None:
    """Undo what a killed `write_checkpoint` left: put the checkpoint back, drop temporaries.

    Call it only while holding the run folder's lock (it moves and deletes folders). A kill between
    the two renames of the swap leaves the complete previous checkpoint at `.NAME.old`; a kill while
    writing leaves a `.NAME.*.tmp` folder.
    """
    folder = Path(folder)
    if atomic.recover_dir(folder):
        step = read_trainer_state(folder).get("step")
        log.warning("%s: put back the checkpoint of step %s (a save was interrupted)", folder, step)
    for leftover in folder.parent.glob(f".{folder.name}.*.tmp"):
        if leftover.is_dir() and not leftover.is_symlink():
            shutil.rmtree(leftover, ignore_errors=True)


def readable(folder: Path) -> Path:
    """Where a reader finds the checkpoint `folder`: itself, or its old name mid-swap.

    Readers hold no lock, so they never move folders (that is `recover`'s job); they read the
    complete previous checkpoint where the swap left it.
    """
    folder = Path(folder)
    old = atomic.old_name(folder)
    return old if not folder.exists() and old.is_dir() else folder


def read_trainer_state(folder: Path) -> dict:
    """trainer.json of a training checkpoint (its stage and step), checked."""
    path = Path(folder) / TRAINER_FILE
    if not path.is_file():
        raise MeshtalkError(folder, f"not a training checkpoint (no {TRAINER_FILE})")
    state = read_json(path)
    step = state.get("step")
    if not isinstance(step, int) or isinstance(step, bool) or step < 0:
        raise MeshtalkError(path, f"'step' must be a whole number >= 0, got {step!r}")
    return state
