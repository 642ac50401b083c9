"""`meshtalk export ANIMATION.npz --to glb,usdz,usdc,pc2 -o OUT/`: an existing animation into the
formats other tools open.

The archive needs `vertices` (T, V, 3) and a template: its `template` member or `--mesh` (a PLY or
OBJ of the same V vertices in the same order, whose UVs, colours and OBJ material then go into the
GLB and USD). `fps` comes from the archive or `--fps`; its `audio` becomes `animation.wav`. Written
atomically into OUT (`OutputFolder`, marker `export.json`).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from meshtalk.pipelines.errors import MeshtalkError
from meshtalk.pipelines.export.formats import (
    ERROR_MM,
    FORMATS,
    METRES,
    ExportOptions,
    write_formats,
)

log = logging.getLogger(__name__)
CONVERT_FORMATS = (*FORMATS, "pc2")


@dataclass(kw_only=True)
class ExportConfig(ExportOptions):
    """Settings of `meshtalk export` (`formats` is `--to`)."""

    animation: Path
    """The animation archive (.npz)."""
    output: Path
    """OUT."""
    mesh: Path | None = None
    """The template as a mesh file (UVs, materials); None: the archive's `template`."""
    error_mm: float = ERROR_MM
    """The basis's error budget in millimetres (GLB, USDZ)."""
    exact: bool = False
    """One target per frame (exact; short clips)."""
    fps: float | None = None
    """Frames per second (None: the archive's `fps`)."""
    force: bool = False
    """Write into a folder holding other files or an earlier export (only export's own files
    are replaced)."""
    progress: bool = False

    def __post_init__(self) -> None:
        self.animation, self.output = Path(self.animation), Path(self.output)
        problems = []
        names = self.format_list()
        unknown = [name for name in names if name not in CONVERT_FORMATS]
        if not names or unknown:
            problems.append(
                f"--to takes {', '.join(CONVERT_FORMATS)} (comma-separated), got "
                f"{', '.join(unknown) or 'nothing'}"
            )
        problems += [p for p in self.export_option_problems() if not p.startswith("--formats")]
        if not (math.isfinite(self.error_mm) and self.error_mm > 0):
            problems.append(f"--error-mm must be a positive number, got {self.error_mm}")
        if self.fps is not None and not (math.isfinite(self.fps) and self.fps > 0):
            problems.append(f"--fps must be a positive number, got {self.fps}")
        if problems:
            raise MeshtalkError(None, "; ".join(problems))


def run(config: ExportConfig) -> dict:
    """Write the formats; what was written and measured (K, error, sizes)."""
    from meshtalk.pipelines.export.npz import first_nonfinite_row, load_npz, member_shape
    from meshtalk.pipelines.inference.output import OutputFolder
    from meshtalk.pipelines.io.mesh import Mesh, read_mesh

    npz = config.animation
    if not npz.is_file():
        raise MeshtalkError(npz, "animation archive not found")
    with load_npz(npz) as archive:
        if "vertices" not in archive.files:
            raise MeshtalkError(npz, "has no member 'vertices' (not an animation archive)")
        members = set(archive.files)
        template = archive["template"] if "template" in members else None
        faces = archive["faces"] if "faces" in members else None
        if config.fps is None and "fps" not in members:
            raise MeshtalkError(npz, "has no member 'fps': give --fps")
    shape, dtype = member_shape(npz, "vertices")
    if len(shape) != 3 or shape[2] != 3 or dtype.kind != "f":
        raise MeshtalkError(npz, f"vertices is {dtype} of shape {shape}, not (T, V, 3) floats")
    if shape[0] == 0:
        raise MeshtalkError(npz, "vertices has no frames")
    if config.mesh is not None:
        mesh = read_mesh(config.mesh)
        if len(mesh.vertices) != shape[1]:
            raise MeshtalkError(
                config.mesh, f"has {len(mesh.vertices)} vertices; the animation has {shape[1]}"
            )
        if template is not None and template.shape == mesh.vertices.shape:
            mesh.vertices = np.asarray(template, np.float32)
    elif template is None or faces is None:
        raise MeshtalkError(npz, "has no 'template' and 'faces': give the mesh with --mesh")
    else:
        mesh = Mesh(vertices=np.asarray(template, np.float32), faces=np.asarray(faces, np.int64))
        if mesh.vertices.shape != (shape[1], 3):
            raise MeshtalkError(npz, f"template of shape {template.shape}, vertices {shape}")
        if len(mesh.faces) and (mesh.faces.min() < 0 or mesh.faces.max() >= shape[1]):
            raise MeshtalkError(npz, "a face refers to a vertex that does not exist")
    bad = first_nonfinite_row(npz, "vertices")
    if bad is not None:
        raise MeshtalkError(npz, f"frame {bad} holds NaN or infinite coordinates")
    names = config.format_list()
    units = config.template_units(mesh.vertices)
    folder = OutputFolder(config.output, "export", config.force)
    with folder.writing() as partial:
        formats = tuple(name for name in names if name in FORMATS)
        info = {}
        if formats:
            info = write_formats(
                partial,
                npz,
                mesh,
                formats,
                METRES[units],
                config.error_mm,
                config.exact,
                config.fps,
                config.progress,
            )
        if "pc2" in names:
            suffix = ".ply" if config.mesh is None else config.mesh.suffix.lower()
            _write_pc2(partial, npz, mesh, shape, config.unit_scale(mesh.vertices), suffix)
    info["mesh_units"] = units
    if "targets" in info:
        log.info(
            "%s: %d targets, at most %.4f mm from the animation (budget %.4g mm)",
            config.output,
            info["targets"],
            info["max_error_mm"],
            info["budget_mm"],
        )
    log.info("wrote %s", config.output)
    return info


def _write_pc2(folder: Path, npz: Path, mesh, shape, scale: float, suffix: str) -> None:
    """animation.pc2 and the template it moves (template.ply/.obj, materials copied)."""
    from dataclasses import replace

    from meshtalk.pipelines.export.npz import iter_rows, mapped_member
    from meshtalk.pipelines.export.pc2 import PC2Header, PC2Writer
    from meshtalk.pipelines.io.mesh import copy_materials, write_mesh

    mapped = mapped_member(npz, "vertices")  # read once already (run: CRC, finite)
    with PC2Writer(folder / "animation.pc2", PC2Header(shape[1], shape[0]), scale) as writer:
        if scale == 1.0 and isinstance(mapped, np.memmap) and mapped.dtype == np.dtype("<f4"):
            writer.copy_frames(npz, mapped.offset, shape[0])  # the same bytes: a kernel copy
        else:
            for rows in iter_rows(npz, "vertices"):
                writer.write(rows)
    scaled = np.asarray(mesh.vertices, np.float32) * np.float32(scale)
    write_mesh(folder / f"template{suffix}", replace(mesh, vertices=scaled))
    if suffix == ".obj":
        copy_materials(mesh, folder)
