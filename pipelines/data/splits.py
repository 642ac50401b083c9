"""Train / validation / test splits by identity and sentence."""

from __future__ import annotations

import fnmatch
from pathlib import Path

from meshtalk.pipelines.errors import MeshtalkError

SPLITS = ("train", "val", "test")
SPLIT_PROTOCOLS = ("paper", "multiface")
MULTIFACE_TEST_IDENTITIES = (1, 4, 5, 8)
"""1-based positions, in sorted order, of the test identities of the later Multiface protocol."""


def _first(count: int, fraction: float) -> int:
    return min(count, max(1, round(count * fraction)))


def paper_splits(segments: dict[str, list[str]]) -> dict[tuple[str, str], str]:
    """The paper's protocol scaled to the data.

    The paper trains on the first 40 of 50 sentences of 200 of 250 identities; the last 10 sentences
    of the other 50 identities make validation (10 identities) and test (40). Here: the first 80% of
    sorted identities train on the first 80% of their sorted sentences; of the held-out identities
    (at least 2) the first 20% (at least 1) validate and the rest test, on their last 20% of
    sentences. With fewer than 3 identities, sentences are split instead: the first 80% train, the
    rest (at least 2) is halved into validation and test.
    """
    identities = sorted(segments)
    assignment: dict[tuple[str, str], str] = {}
    if len(identities) < 3:
        for identity in identities:
            names = sorted(segments[identity])
            n_held = max(2, round(len(names) * 0.2)) if len(names) >= 3 else len(names) - 1
            n_train, n_val = len(names) - n_held, (n_held + 1) // 2
            for index, name in enumerate(names):
                split = "train" if index < n_train else "val" if index < n_train + n_val else "test"
                assignment[identity, name] = split
        return assignment
    n_heldout = max(2, round(len(identities) * 0.2))
    n_val = max(1, round(n_heldout * 0.2))
    for position, identity in enumerate(identities):
        names = sorted(segments[identity])
        if position < len(identities) - n_heldout:
            chosen, split = names[: _first(len(names), 0.8)], "train"
        else:
            chosen = names[len(names) - _first(len(names), 0.2) :]
            split = "val" if position < len(identities) - n_heldout + n_val else "test"
        for name in chosen:
            assignment[identity, name] = split
    return assignment


def multiface_splits(segments: dict[str, list[str]]) -> dict[tuple[str, str], str]:
    """The protocol of later work on Multiface, scaled to the data.

    Test: identities 1, 4, 5 and 8 of the sorted list (those that exist), sentences 46-50 (the last
    10% of sorted sentences). The other identities train on sentences 1-45 (the first 90%) and
    validate on sentences 46-50.
    """
    identities = sorted(segments)
    test_ids = {identities[p - 1] for p in MULTIFACE_TEST_IDENTITIES if p <= len(identities)}
    if len(test_ids) == len(identities):
        raise MeshtalkError(None, "the multiface protocol needs identities beyond test ids 1,4,5,8")
    assignment = {}
    for identity in identities:
        names = sorted(segments[identity])
        n_last = _first(len(names), 0.1) if len(names) > 1 else 0
        for index, name in enumerate(names):
            last = index >= len(names) - n_last
            if identity in test_ids:
                if last:
                    assignment[identity, name] = "test"
            else:
                assignment[identity, name] = "val" if last else "train"
    return assignment


def _is_name_pattern(pattern: str) -> bool:
    """True for 'IDENTITY' or 'IDENTITY/SEGMENT' globs: no absolute path, no '..', no deeper."""
    parts = pattern.split("/")
    return len(parts) <= 2 and all(part and not part.startswith(".") for part in parts)


def yaml_splits(path: Path, segments: dict[str, list[str]]) -> dict[tuple[str, str], str]:
    """Splits from a YAML file: `train`, `val`, `test`, each a list of 'IDENTITY' or
    'IDENTITY/SEGMENT' glob patterns. Segments matched by no pattern are left out."""
    import yaml

    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as error:
        raise MeshtalkError(path, f"cannot read splits ({str(error).splitlines()[0]})") from None
    if not isinstance(raw, dict):
        raise MeshtalkError(path, "splits must be a mapping with keys train, val, test")
    problems = [f"unknown key '{key}'" for key in raw if key not in SPLITS]
    for key, patterns in raw.items():
        if key in SPLITS and not (
            isinstance(patterns, list) and all(isinstance(p, str) for p in patterns)
        ):
            problems.append(f"'{key}' must be a list of 'IDENTITY[/SEGMENT]' patterns")
        elif key in SPLITS:
            problems += [
                f"'{key}': '{pattern}' is not an 'IDENTITY[/SEGMENT]' pattern"
                for pattern in patterns
                if not _is_name_pattern(pattern)
            ]
    if problems:
        raise MeshtalkError(path, "; ".join(problems))
    assignment: dict[tuple[str, str], str] = {}
    for identity in sorted(segments):
        for name in sorted(segments[identity]):
            matched = [
                split
                for split in SPLITS
                for pattern in raw.get(split) or []
                if fnmatch.fnmatchcase(identity, pattern)
                or fnmatch.fnmatchcase(f"{identity}/{name}", pattern)
            ]
            if len(set(matched)) > 1:
                raise MeshtalkError(
                    path, f"{identity}/{name} is in {' and '.join(sorted(set(matched)))}"
                )
            if matched:
                assignment[identity, name] = matched[0]
    return assignment


def assign_splits(
    protocol: str | Path, segments: dict[str, list[str]]
) -> dict[tuple[str, str], str]:
    """(identity, segment) -> split name, by protocol name or YAML file; validated."""
    if str(protocol) == "paper":
        assignment = paper_splits(segments)
    elif str(protocol) == "multiface":
        assignment = multiface_splits(segments)
    else:
        path = Path(protocol)
        if not path.is_file():
            raise MeshtalkError(
                path, "splits file not found (use 'paper', 'multiface' or a YAML file)"
            )
        assignment = yaml_splits(path, segments)
    if "train" not in assignment.values():
        raise MeshtalkError(None, f"split protocol '{protocol}' leaves no training segments")
    return assignment
