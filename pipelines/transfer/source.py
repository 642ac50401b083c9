"""The template a run animates (with its triangles), and getting a transfer made or reused."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from meshtalk.pipelines.errors import MeshtalkError
from meshtalk.pipelines.io.mesh import Mesh, read_mesh
from meshtalk.pipelines.transfer.binding import (
    Transfer,
    load_transfer,
    make_transfer,
    save_transfer,
)
from meshtalk.pipelines.transfer.inputs import read_landmark_pairs, read_target

log = logging.getLogger(__name__)

FACES_FILE = "faces.npy"
"""Triangles of the run's topology, (F, 3) integers, in RUN/topology/ beside template.npy."""


def run_template_mesh(run, model: Path) -> Mesh:
    """The run's own template (`run.template`) with the triangles of its topology.

    The triangles come from RUN/topology/faces.npy, or for the bundled default model from its
    template mesh.

    Raises:
        MeshtalkError: when the run has no template or no triangles stored with it.
    """
    from meshtalk.pipelines.data.resources import default_model

    if run.template is None:
        raise MeshtalkError(
            model, "stores no template of its topology (RUN/topology/): cannot animate another mesh"
        )
    faces_path = Path(run.folder) / "topology" / FACES_FILE
    faces = None
    if faces_path.is_file():
        try:
            faces = np.load(faces_path, allow_pickle=False)
        except (OSError, ValueError) as error:
            raise MeshtalkError(faces_path, f"not a readable .npy file ({error})") from None
        if faces.ndim != 2 or faces.shape[1] != 3 or not np.issubdtype(faces.dtype, np.integer):
            raise MeshtalkError(faces_path, f"holds {faces.dtype} {faces.shape}, expected (F, 3)")
    else:
        bundled = default_model.template_path()
        same_run = Path(run.folder).resolve() == default_model.run_path().resolve()
        if same_run and bundled.is_file():
            faces = read_mesh(bundled).faces
    if faces is None:
        raise MeshtalkError(
            faces_path,
            "missing: the run stores no triangles of its topology, needed to animate a mesh of "
            "another topology",
        )
    faces = faces.astype(np.int64)
    if len(faces) == 0 or faces.min() < 0 or faces.max() >= len(run.template):
        raise MeshtalkError(faces_path, "its triangles do not fit the run's template")
    return Mesh(vertices=np.asarray(run.template, dtype=np.float32), faces=faces)


def transfer_for(
    source: Mesh,
    target: Mesh,
    *,
    transfer_file: Path | None = None,
    landmarks: Path | None = None,
    target_path: Path | None = None,
    masks: dict[str, np.ndarray] | None = None,
) -> tuple[Transfer, float]:
    """A transfer from `source` onto `target`: read from `transfer_file`, or made (registered;
    `masks`: the source's region masks, so that the target's eyeballs and teeth move with the
    head and the jaw; default: those of the bundled model when `source` is its face, see
    `known_masks`).

    Returns:
        The transfer and the seconds the registration took (0 when read from a file).
    """
    if transfer_file is not None:
        if landmarks is not None:
            raise MeshtalkError(
                landmarks, "--landmarks makes a new registration; it goes without --transfer"
            )
        return load_transfer(transfer_file, source, target), 0.0
    pairs = None
    if landmarks is not None:
        pairs = read_landmark_pairs(landmarks, len(source.vertices), len(target.vertices))
    clock = time.perf_counter()
    if masks is None:
        masks = known_masks(source.vertices)
    transfer = make_transfer(source, target, pairs, landmarks, target_path, masks)
    seconds = time.perf_counter() - clock
    log.info(
        "registered the model's template onto the mesh in %.1f s (%s alignment, scale %.3g, "
        "mean distance %.3g)",
        seconds,
        transfer.info["alignment"],
        transfer.info["scale"],
        transfer.info["mean_distance"],
    )
    return transfer, seconds


def known_masks(template: np.ndarray) -> dict[str, np.ndarray] | None:
    """The region masks of a template made by the bundled model: its face area, or a mesh that
    begins with it (the whole head `animate` writes), the masks padded with zeros; else None."""
    from meshtalk.pipelines.checkpoint.format import read_json
    from meshtalk.pipelines.checkpoint.run import TOPOLOGY, TOPOLOGY_RECORD, load_topology
    from meshtalk.pipelines.data.resources import default_model

    run = default_model.run_path()
    try:
        count = int(read_json(run / TOPOLOGY / TOPOLOGY_RECORD)["num_vertices"])
        masks, face = load_topology(run, count)
    except (MeshtalkError, OSError, KeyError, TypeError, ValueError):
        return None
    if len(template) < count or not np.allclose(
        np.asarray(template[:count], dtype=np.float64), face, atol=1e-4
    ):
        return None
    padding = len(template) - count
    return {name: np.pad(mask, (0, padding)) for name, mask in masks.items()}


TRANSFER_FILE = "transfer.npz"
"""Where a command saves the registration it made (reused with --transfer)."""


@dataclass
class PreparedTransfer:
    """A transfer from a model's template onto a user's mesh, ready for a command.

    Attributes:
        source: the template animated (vertices and triangles).
        mesh: the user's mesh the frames go onto.
        transfer: the registration and binding.
        made: True when registered now (then `save` writes it), False when read from a file.
    """

    source: Mesh
    mesh: Mesh
    transfer: Transfer
    made: bool

    def mapping(self, frames: np.ndarray) -> np.ndarray:
        """(n, Vs, 3) template frames -> (n, Nt, 3) frames of the user's mesh."""
        return self.transfer.apply(frames, self.source.vertices)

    def save(self, folder: Path) -> None:
        """Write `folder/transfer.npz` when the registration was made now, and always
        transfer.json and transfer.png (see `save_transfer_files`)."""
        save_transfer_files(folder, self.transfer, self.source.faces, self.mesh, self.made)


def save_transfer_files(
    folder: Path, transfer: Transfer, source_faces: np.ndarray, target: Mesh, made: bool
) -> None:
    """transfer.npz (when made now), transfer.json (its figures) and transfer.png (the fitted
    template over the mesh, front and side; skipped with a line where no OpenGL can be opened)."""
    from meshtalk.pipelines.transfer.picture import save_transfer_json, save_transfer_picture

    folder = Path(folder)
    if made:
        save_transfer(folder / TRANSFER_FILE, transfer)
    save_transfer_json(folder / "transfer.json", transfer)
    try:
        save_transfer_picture(folder / "transfer.png", transfer, source_faces, target)
    except MeshtalkError as error:
        log.info("transfer.png not drawn: %s", error.problem)


def prepare_transfer(
    run,
    model: Path,
    mesh_path: Path,
    *,
    transfer_file: Path | None = None,
    landmarks: Path | None = None,
) -> PreparedTransfer:
    """The transfer from a run's own template onto the mesh at `mesh_path` (read exactly)."""
    mesh = read_target(mesh_path)
    source = run_template_mesh(run, model)
    transfer, _ = transfer_for(
        source,
        mesh,
        transfer_file=transfer_file,
        landmarks=landmarks,
        target_path=mesh_path,
        masks=run.masks or None,
    )
    return PreparedTransfer(source=source, mesh=mesh, transfer=transfer, made=transfer_file is None)
