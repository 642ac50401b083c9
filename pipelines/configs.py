"""Reading YAML config files into typed dataclasses, with every problem reported at once."""

from __future__ import annotations

from dataclasses import fields
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
