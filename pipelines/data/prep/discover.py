"""Finding identities and their segments (names, frame lists, vertex counts), and the topology
a dataset is prepared with."""

from __future__ import annotations

import dataclasses
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from meshtalk.pipelines.data.layout import SPEECH_PREFIX, TOPOLOGY_DIR
from meshtalk.pipelines.data.prep.config import PrepConfig, Problem, name_problem
from meshtalk.pipelines.data.topology import (
    MULTIFACE_NUM_VERTICES,
    cropped_count,
    default_crop,
    find_dataset_topology,
    kept_vertices,
)
from meshtalk.pipelines.errors import MeshtalkError


@dataclass
class Identity:
    name: str
    path: Path
    segments: dict[str, list[int]]  # all segments -> sorted captured frame ids
    num_vertices: int
    problems: list[Problem]


def _read_frame_list(identity_dir: Path, problems: list[Problem]) -> dict[str, list[int]]:
    frame_list = identity_dir / "frame_list.txt"
    raw: dict[str, list[int]] = {}
    refused: set[str] = set()
    if frame_list.is_file():
        for line_number, line in enumerate(frame_list.read_text().splitlines(), 1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) != 2 or not parts[1].isdigit():
                problems.append(
                    Problem(
                        str(frame_list), f"line {line_number} is not 'SEGMENT FRAMEID'", "warning"
                    )
                )
                continue
            bad = name_problem(parts[0])
            if bad:
                if parts[0] not in refused:
                    message = f"line {line_number}: segment name '{parts[0]}' {bad}"
                    problems.append(Problem(str(frame_list), message, "segment skipped"))
                refused.add(parts[0])
                continue
            raw.setdefault(parts[0], []).append(int(parts[1]))
        return raw
    mesh_root = identity_dir / "tracked_mesh"
    problems.append(Problem(str(frame_list), "missing; frames taken from tracked_mesh/", "warning"))
    for segment_dir in sorted(p for p in mesh_root.iterdir() if p.is_dir()):
        if name_problem(segment_dir.name):
            problems.append(
                Problem(
                    str(segment_dir), f"name {name_problem(segment_dir.name)}", "segment skipped"
                )
            )
            continue
        ids = []
        for entry in segment_dir.glob("*.bin"):
            if entry.stem.isdigit():
                ids.append(int(entry.stem))
            else:
                problems.append(Problem(str(entry), "file name is not a frame id", "frame skipped"))
        raw[segment_dir.name] = sorted(ids)
    return raw


def _check_order(
    identity_dir: Path, raw: dict[str, list[int]], problems: list[Problem]
) -> dict[str, list[int]]:
    """Sort frame ids (never trust listing order); drop segments that repeat an id."""
    segments = {}
    source = identity_dir / "frame_list.txt"
    for name, ids in raw.items():
        if len(set(ids)) != len(ids):
            repeated = sorted({i for i in ids if ids.count(i) > 1})[:3]
            problems.append(
                Problem(
                    f"{source} [{name}]",
                    f"frame ids repeat ({', '.join(map(str, repeated))})",
                    "segment skipped",
                )
            )
            continue
        if any(b < a for a, b in zip(ids, ids[1:])):
            problems.append(
                Problem(
                    f"{source} [{name}]", "frame ids are not increasing; ordered by id", "warning"
                )
            )
        segments[name] = sorted(ids)
    return segments


def _identity_vertex_count(identity_dir: Path, configured: int | None) -> int:
    if configured is not None:
        return configured
    mean_file = identity_dir / "vert_mean.bin"
    if mean_file.is_file() and mean_file.stat().st_size % 12 == 0 and mean_file.stat().st_size > 0:
        return mean_file.stat().st_size // 12
    return MULTIFACE_NUM_VERTICES


def _identity_folders(root: Path) -> list[Path]:
    folders = sorted(p for p in root.iterdir() if p.is_dir() and (p / "tracked_mesh").is_dir())
    if not folders:
        raise MeshtalkError(root, "no Multiface identities found (folders with tracked_mesh/)")
    return folders


def _unreadable_mesh_folders(root: Path) -> list[Problem]:
    """Identities whose tracked_mesh/ exists but cannot be read as a folder (a symlink loop, a
    broken link, a file): skipped, and said so."""
    problems = []
    for folder in sorted(root.iterdir()):
        meshes = folder / "tracked_mesh"
        try:
            if not folder.is_dir() or not os.path.lexists(meshes) or meshes.is_dir():
                continue
        except OSError:  # the identity folder itself is a link that cannot be followed
            continue
        try:
            meshes.stat()
            why = "tracked_mesh is not a folder"
        except OSError as error:
            why = f"tracked_mesh/ cannot be read ({error.strerror or error})"
        problems.append(Problem(str(folder), why, "identity skipped"))
    return problems


def choose_topology(config: PrepConfig) -> tuple[PrepConfig, str]:
    """Fill in the crop and the masks' source that `config` leaves open, from the dataset.

    The crop is 'meshtalk' only for Multiface's 7306-vertex meshes (the most common count among
    the identities, or `num_vertices`), else 'none'. The masks come from the dataset's own
    `topology/` (its landmarks, else its masks) when its template has the cropped meshes' vertex
    count, else from the 'meshtalk' landmark preset for the 'meshtalk' crop. What is given wins.

    Returns:
        The completed config and one line that says what was chosen.
    """
    if not config.root.is_dir():
        raise MeshtalkError(config.root, "dataset root not found")
    counts = Counter(
        _identity_vertex_count(folder, config.num_vertices)
        for folder in _identity_folders(config.root)
        if not name_problem(folder.name)
    )
    num_vertices = counts.most_common(1)[0][0] if counts else MULTIFACE_NUM_VERTICES
    crop = config.crop or default_crop(num_vertices)
    crop_note = "given" if config.crop else f"for {num_vertices}-vertex meshes"
    line = f"topology: crop '{crop}' ({crop_note})"
    if config.landmarks is not None or config.masks is not None:
        given = f"landmarks {config.landmarks}" if config.landmarks else f"masks {config.masks}"
        return dataclasses.replace(config, crop=crop), f"{line}, {given} (given)"
    vertices = cropped_count(crop, num_vertices)
    own = find_dataset_topology(config.root)
    if own is not None and own.num_vertices == vertices:
        source = own.landmarks or own.masks
        chosen = dataclasses.replace(
            config,
            crop=crop,
            landmarks=str(own.landmarks) if own.landmarks else None,
            masks=None if own.landmarks else own.masks,
        )
        return chosen, f"{line}, masks from {source} (the dataset's own, {vertices} vertices)"
    unused = ""
    if own is not None and vertices is not None:
        unused = f"; {own.folder} not used: {own.num_vertices} vertices, the meshes {vertices}"
    if crop == "meshtalk":
        chosen = dataclasses.replace(config, crop=crop, landmarks="meshtalk")
        return chosen, f"{line}, landmark preset 'meshtalk'{unused}"
    raise MeshtalkError(
        config.root,
        f"masks need --landmarks FILE or --masks DIR for crop '{crop}' "
        f"({vertices or num_vertices}-vertex meshes, no fitting {TOPOLOGY_DIR}/ folder{unused})",
    )


def discover(config: PrepConfig) -> tuple[list[Identity], list[Problem]]:
    """Find identities (folders with tracked_mesh/) and their segments."""
    root = config.root
    if not root.is_dir():
        raise MeshtalkError(root, "dataset root not found")
    identities, problems = [], _unreadable_mesh_folders(root)
    for identity_dir in _identity_folders(root):
        if name_problem(identity_dir.name):
            message = f"name {name_problem(identity_dir.name)}"
            problems.append(Problem(str(identity_dir), message, "identity skipped"))
            continue
        local: list[Problem] = []
        segments = _check_order(identity_dir, _read_frame_list(identity_dir, local), local)
        problems += local
        if config.neutral_segment not in segments:
            problems.append(
                Problem(
                    str(identity_dir),
                    f"no neutral segment '{config.neutral_segment}'",
                    "identity skipped",
                )
            )
            continue
        speech = [s for s in segments if s.startswith(SPEECH_PREFIX)]
        if not speech:
            problems.append(
                Problem(str(identity_dir), "no SEN_* speech segments", "identity skipped")
            )
            continue
        num_vertices = _identity_vertex_count(identity_dir, config.num_vertices)
        try:
            kept_vertices(config.crop, num_vertices)
        except MeshtalkError as error:
            problems.append(Problem(str(identity_dir), error.problem, "identity skipped"))
            continue
        identities.append(Identity(identity_dir.name, identity_dir, segments, num_vertices, local))
    return identities, problems
