"""Reading YAML config files into typed dataclasses, with every problem reported at once."""

from __future__ import annotations

from dataclasses import asdict, fields, replace
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import TypeAdapter, ValidationError

from meshtalk.pipelines.errors import MeshtalkError

T = TypeVar("T")


def read_yaml(path: Path) -> dict:
    """A YAML mapping (safe_load only)."""
    path = Path(path)
    if not path.is_file():
        raise MeshtalkError(path, "no such config file")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise MeshtalkError(path, f"not valid YAML{where}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise MeshtalkError(path, "must be a mapping of sections")
    return data


def parse_section(cls: type[T], values: Any, where: str, problems: list[str]) -> T | None:
    """Build dataclass `cls` from a mapping; append one message per bad key or value to `problems`.

    Values are checked and converted by pydantic (numbers from strings, lists to tuples, nested
    dataclasses); unknown keys are problems too.
    """
    if values is None:
        values = {}
    if not isinstance(values, dict):
        problems.append(f"{where}: must be a mapping, got {values!r}")
        return None
    known = {f.name for f in fields(cls)}
    for key in values:
        if key not in known:
            problems.append(f"{where}.{key}: unknown key (known: {', '.join(sorted(known))})")
    try:
        return TypeAdapter(cls).validate_python({k: v for k, v in values.items() if k in known})
    except ValidationError as error:
        for item in error.errors():
            location = ".".join(str(part) for part in (where, *item["loc"]))
            message = item["msg"].removeprefix("Value error, ")
            if item["loc"]:
                message = f"{message} (got {item['input']!r})"
            problems.append(f"{location}: {message}")
    return None


def raise_problems(path: Path, problems: list[str]) -> None:
    if problems:
        raise MeshtalkError(path, "; ".join(problems))


def load_overrides(
    path: Path,
    presets: dict[str, tuple[Any, Any]],
    model_type: type,
    training_type: type[T],
    preset: str | None = None,
    stage: str | None = None,
) -> tuple[Any, T]:
    """A preset's (model, training) with a YAML file's `model:` and `train:` fields replaced.

    The file may name its preset (`preset: tiny`, or `model: {preset: tiny}` as files written
    before presets lived in code do); `preset` (from --preset) wins when the file names none and
    must agree with it otherwise. A file that names its stage (`stage: prior`) is refused for
    another `stage` at once, before its fields are read. Every bad section, key or value is one
    part of one error.
    """
    data = read_yaml(path)
    named_stage = data.get("stage")
    if stage is not None and named_stage is not None and named_stage != stage:
        raise MeshtalkError(
            path,
            f"is a config for the {named_stage} stage (stage: {named_stage}); "
            f"train {stage} takes one for the {stage} stage",
        )
    problems = [
        f"{key}: unknown section (known: preset, stage, model, train)"
        for key in data
        if key not in ("preset", "stage", "model", "train")
    ]
    if named_stage is not None and named_stage not in ("latent", "prior"):
        problems.append(f"stage: must be latent or prior, got {named_stage!r}")
    model_values = data.get("model") or {}
    if not isinstance(model_values, dict):
        problems.append(f"model: must be a mapping, got {model_values!r}")
        model_values = {}
    model_values = dict(model_values)
    named = {data[k] for k in ("preset",) if k in data}
    if "preset" in model_values:
        named.add(model_values.pop("preset"))
    chosen = preset or (next(iter(named)) if len(named) == 1 else "release")
    if len(named) > 1:
        problems.append(f"preset: the file names two presets ({', '.join(map(str, named))})")
    elif named and preset is not None and named != {preset}:
        problems.append(f"preset: the file names '{next(iter(named))}' but --preset is '{preset}'")
    if chosen not in presets:
        problems.append(f"preset: unknown preset '{chosen}' (known: {', '.join(presets)})")
        chosen = next(iter(presets))  # the sections are still checked, so every problem is named
    base_model, base_training = presets[chosen]
    model = parse_section(model_type, {**asdict(base_model), **model_values}, "model", problems)
    training = None
    train_values = data.get("train")
    if train_values is not None and not isinstance(train_values, dict):
        problems.append(f"train: must be a mapping, got {train_values!r}")
    else:
        training = parse_section(
            training_type, {**asdict(base_training), **(train_values or {})}, "train", problems
        )
    raise_problems(path, problems)
    return model, training


def with_steps(training: T, steps: int) -> T:
    """The same training settings with another step count (a one-line error if not positive)."""
    try:
        return replace(training, steps=steps)
    except ValueError as error:
        raise MeshtalkError(None, f"--steps: {error}") from None
