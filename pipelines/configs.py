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


def load_model_and_training(
    path: Path, presets: dict[str, Any], model_type: type, training_type: type[T]
) -> tuple[Any, T]:
    """Read a YAML file with `model:` (a preset and fields of it to replace) and `train:`."""
    data = read_yaml(path)
    problems = [
        f"{key}: unknown section (known: model, train)"
        for key in data
        if key not in ("model", "train")
    ]
    model_values = data.get("model") or {}
    if not isinstance(model_values, dict):
        problems.append(f"model: must be a mapping, got {model_values!r}")
        model_values = {}
    model_values = dict(model_values)
    preset = model_values.pop("preset", "release")
    model = None
    if preset not in presets:
        problems.append(f"model.preset: unknown preset '{preset}' (known: {', '.join(presets)})")
    else:
        base = asdict(presets[preset])
        model = parse_section(model_type, {**base, **model_values}, "model", problems)
    training = parse_section(training_type, data.get("train"), "train", problems)
    raise_problems(path, problems)
    return model, training


def with_steps(training: T, steps: int) -> T:
    """The same training settings with another step count (a one-line error if not positive)."""
    try:
        return replace(training, steps=steps)
    except ValueError as error:
        raise MeshtalkError(None, f"--steps: {error}") from None
