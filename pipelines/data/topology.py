"""Vertex crops (from Multiface's 7306 tracked vertices to a model topology) and a dataset's own
topology folder."""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

from meshtalk.pipelines.data.layout import (
    TOPOLOGY_DIR,
    TOPOLOGY_LANDMARKS,
    TOPOLOGY_MASKS,
    TOPOLOGY_TEMPLATE,
)
from meshtalk.pipelines.errors import MeshtalkError

MULTIFACE_NUM_VERTICES = 7306
MESHTALK_NUM_VERTICES = 6172
CROP_PRESETS = ("meshtalk", "none")


def parse_index_list(text: str, source: str) -> np.ndarray:
    """Parse vertex indices: one index or inclusive range 'a-b' per line, '#' starts a comment."""
    indices: list[int] = []
    for line_number, line in enumerate(text.splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        try:
            if "-" in line[1:]:
                first, last = (int(x) for x in line.split("-", 1))
                if last < first:
                    raise ValueError
                indices.extend(range(first, last + 1))
            else:
                indices.append(int(line))
        except ValueError:
            raise MeshtalkError(
                source, f"line {line_number}: '{line}' is not an index or range a-b"
            ) from None
    return np.asarray(indices, dtype=np.int64)


def kept_vertices(crop: str | Path, num_vertices: int) -> np.ndarray | None:
    """Indices of the vertices a crop keeps, in their original order (None: keep all).

    Args:
        crop: 'meshtalk' (the 6172-vertex MeshTalk topology), 'none', or a file listing the
            vertex indices to remove in the same format as the shipped MeshTalk list.
        num_vertices: vertex count of the meshes being cropped.
    """
    if str(crop) == "none":
        return None
    if str(crop) == "meshtalk":
        source = "multiface_to_meshtalk_removed_vertices.txt"
        text = resources.files("meshtalk.pipelines.data.resources").joinpath(source).read_text()
        if num_vertices != MULTIFACE_NUM_VERTICES:
            raise MeshtalkError(
                None,
                f"crop 'meshtalk' needs {MULTIFACE_NUM_VERTICES}-vertex Multiface meshes, "
                f"found {num_vertices}",
            )
    else:
        path = Path(crop)
        if not path.is_file():
            raise MeshtalkError(path, "crop file not found (use 'meshtalk', 'none' or a file)")
        source, text = str(path), path.read_text()
    removed = parse_index_list(text, source)
    if removed.size and (removed.min() < 0 or removed.max() >= num_vertices):
        raise MeshtalkError(source, f"removes indices outside 0..{num_vertices - 1}")
    keep = np.ones(num_vertices, dtype=bool)
    keep[removed] = False
    return np.flatnonzero(keep)


def expand_to_multiface(vertices: np.ndarray, kept: np.ndarray, num_vertices: int) -> np.ndarray:
    """Place cropped vertices (..., K, 3) back into a full mesh (..., num_vertices, 3).

    Removed vertices copy the kept vertex nearest in index, so the result is finite and moves
    with the face; cropping it with `kept` gives back `vertices` exactly.
    """
    positions = np.searchsorted(kept, np.arange(num_vertices)).clip(0, len(kept) - 1)
    below = (positions - 1).clip(0)
    use_below = np.abs(kept[below] - np.arange(num_vertices)) < np.abs(
        kept[positions] - np.arange(num_vertices)
    )
    source = np.where(use_below, below, positions)
    source[kept] = np.arange(len(kept))
    return vertices[..., source, :]


def default_crop(num_vertices: int) -> str:
    """The crop for meshes of `num_vertices`: 'meshtalk' for Multiface's count, else 'none'."""
    return "meshtalk" if num_vertices == MULTIFACE_NUM_VERTICES else "none"


def cropped_count(crop: str | Path, num_vertices: int) -> int | None:
    """Vertices left after `crop` of meshes with `num_vertices` (None: the crop does not fit)."""
    try:
        kept = kept_vertices(crop, num_vertices)
    except MeshtalkError:
        return None
    return num_vertices if kept is None else len(kept)


@dataclass(frozen=True)
class DatasetTopology:
    """A dataset's own topology folder (`ROOT/topology/`, as `meshtalk synth` writes it)."""

    folder: Path
    num_vertices: int
    """Vertices of its template."""
    landmarks: Path | None
    """Its landmark file, if it has one."""
    masks: Path | None
    """Its mask folder, if it has one."""


def find_dataset_topology(root: Path) -> DatasetTopology | None:
    """The topology folder beside a dataset's identities; None if it has no template or no
    landmarks or masks to build the masks from."""
    from meshtalk.pipelines.io.mesh import read_mesh

    folder = Path(root) / TOPOLOGY_DIR
    template = folder / TOPOLOGY_TEMPLATE
    if not template.is_file():
        return None
    landmarks = folder / TOPOLOGY_LANDMARKS
    masks = folder / TOPOLOGY_MASKS
    if not landmarks.is_file() and not masks.is_dir():
        return None
    return DatasetTopology(
        folder=folder,
        num_vertices=len(read_mesh(template).vertices),
        landmarks=landmarks if landmarks.is_file() else None,
        masks=masks if masks.is_dir() else None,
    )
