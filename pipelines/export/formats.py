"""GLB and USD files of an animation archive, and the units of every export.

`write_formats` reads a finished `animation.npz` (its vertices mapped in place, read per pass) and
writes `animation.glb`, `animation.usdz` and/or `animation.usdc` beside it, in metres, with the
speech as `animation.wav` (glTF has no ratified audio; the USDZ packages the same file). `animate`,
`dub` and `retarget` call it for `--formats`; `meshtalk export` for any archive.

Units: the archive is in the template's units (millimetres for the MeshTalk models); `mesh_units`
says which ('auto': from the head's size), and `units` the unit of the PC2, template and per-frame
files ('same': the template's, as before).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from meshtalk.pipelines.errors import MeshtalkError
from meshtalk.pipelines.io.mesh import Mesh

FORMATS = ("glb", "usdz", "usdc")
METRES = {"mm": 1e-3, "cm": 1e-2, "m": 1.0}
"""Metres per unit."""
UNITS = ("same", *METRES)
MESH_UNITS = ("auto", *METRES)
ERROR_MM = 0.1
"""The GLB/USDZ basis's default error budget: at most this far from the clip, any vertex, any
frame."""
MAX_EXACT_FRAMES = 1800
"""`exact` stores a full copy of the mesh per frame: a minute at 30 fps at most."""


def guess_units(template: np.ndarray) -> str:
    """The unit a head of this size is in: its bounding-box diagonal is 0.15-0.6 m (a face mask to
    a bust), so over 60 is millimetres, over 0.6 centimetres, else metres."""
    diagonal = float(np.linalg.norm(np.ptp(np.asarray(template, np.float64), axis=0)))
    return "mm" if diagonal > 60 else "cm" if diagonal > 0.6 else "m"


@dataclass(kw_only=True)
class ExportOptions:
    """The export settings `animate`, `dub` and `retarget` share (their configs inherit them)."""

    formats: str = ""
    """Comma-separated: glb, usdz, usdc ('' for none)."""
    units: str = "same"
    """Unit of the PC2, template and per-frame files: same (the template's), mm, cm or m."""
    mesh_units: str = "auto"
    """Unit of the template (and so of the npz): auto (from its size), mm, cm or m."""

    def format_list(self) -> tuple[str, ...]:
        return tuple(name.strip().lower() for name in self.formats.split(",") if name.strip())

    def export_option_problems(self) -> list[str]:
        problems = []
        unknown = [name for name in self.format_list() if name not in FORMATS]
        if unknown:
            problems.append(
                f"--formats takes {', '.join(FORMATS)} (comma-separated), got {', '.join(unknown)}"
            )
        if self.units not in UNITS:
            problems.append(f"--units must be one of {', '.join(UNITS)}, got {self.units}")
        if self.mesh_units not in MESH_UNITS:
            problems.append(
                f"--mesh-units must be one of {', '.join(MESH_UNITS)}, got {self.mesh_units}"
            )
        return problems

    def template_units(self, template: np.ndarray) -> str:
        return guess_units(template) if self.mesh_units == "auto" else self.mesh_units

    def unit_scale(self, template: np.ndarray) -> float:
        """Factor from the template's units to those of the PC2/PLY/OBJ files."""
        if self.units == "same":
            return 1.0
        return METRES[self.template_units(template)] / METRES[self.units]


def _npz_member(npz: Path, name: str, default=None):
    from meshtalk.pipelines.export.npz import load_npz

    with load_npz(npz) as archive:
        if name not in archive.files:
            if default is not None:
                return default
            raise MeshtalkError(npz, f"has no member '{name}'")
        return archive[name]


def write_formats(
    folder: Path,
    npz: Path,
    template: Mesh,
    formats: tuple[str, ...],
    metres: float,
    error_mm: float = ERROR_MM,
    exact: bool = False,
    fps: float | None = None,
    progress: bool = False,
) -> dict:
    """Write the archive's animation as `formats` into `folder`; what was written and measured.

    Args:
        folder: the output folder (the files are named animation.glb/.usdz/.usdc/.wav).
        npz: an archive with `vertices` (T, V, 3) (and `fps`, `audio`, `audio_rate` if it has
            them) in the units of `template`.
        template: the mesh the vertices move (V vertices; its UVs, colours, OBJ material kept).
        formats: a subset of FORMATS.
        metres: metres per unit of the archive.
        error_mm: the basis's error budget in millimetres.
        exact: one one-hot target per frame instead of a basis (GLB and USDZ).
        fps: frames per second (None: the archive's).
    """
    from meshtalk.pipelines.export.glb import build_glb, obj_material, write_glb
    from meshtalk.pipelines.export.npz import member_shape
    from meshtalk.pipelines.export.usd import write_usdc, write_usdz
    from meshtalk.pipelines.io.progress import progress_bar

    shape, _ = member_shape(npz, "vertices")
    if len(shape) != 3 or shape[2] != 3 or shape[1] != len(template.vertices):
        raise MeshtalkError(
            npz, f"vertices of shape {shape}, expected (T, {len(template.vertices)}, 3)"
        )
    frames, count = shape[0], shape[1]
    if frames == 0:
        raise MeshtalkError(npz, "has no frames")
    if exact and frames > MAX_EXACT_FRAMES:
        raise MeshtalkError(
            npz, f"has {frames} frames; --exact stores one target per frame, at most "
            f"{MAX_EXACT_FRAMES} (use the basis, within --error-mm)"
        )  # fmt: skip
    fps = float(_npz_member(npz, "fps") if fps is None else fps)
    base = np.asarray(template.vertices, np.float64)
    scale = np.float32(metres)
    mesh = replace(template, vertices=(base * metres).astype(np.float32))

    written: dict = {"fps": fps, "frames": frames, "vertices": count, "metres_per_unit": metres}
    wav = None
    steps = len(formats) + ("glb" in formats or "usdz" in formats)
    with progress_bar(disable=not progress) as bar:
        task = bar.add_task("exporting", total=steps)
        basis = None
        if "glb" in formats or "usdz" in formats:
            basis, source = clip_basis(npz, base, metres, error_mm * 1e-3, exact)
            written.update(
                basis=source,
                targets=basis.count,
                max_error_mm=basis.max_error * 1e3,
                budget_mm=basis.budget * 1e3,
                exact=exact,
            )
            wav = _write_wav(folder, npz)
            bar.advance(task)
        extras = {
            "units": "m",
            "upAxis": "Y",
            "fps": fps,
            "frames": frames,
            "maxErrorMm": written.get("max_error_mm", 0.0),
            "budgetMm": written.get("budget_mm", 0.0),
            "targets": written.get("targets", 0),
            "basisFrom": written.get("basis", ""),
            "exact": exact,
            "writtenBy": "meshtalk",
        }
        if "glb" in formats:
            gltf = build_glb(mesh, basis, fps, extras, obj_material(template))
            write_glb(folder / "animation.glb", gltf)
            bar.advance(task)
        if "usdz" in formats:
            duration = 0.0 if wav is None else wav[1]
            write_usdz(
                folder / "animation.usdz",
                mesh,
                basis,
                fps,
                None if wav is None else wav[0],
                duration,
                extras,
            )
            bar.advance(task)
        if "usdc" in formats:
            positions = (rows * scale for rows in frames_of(npz))
            write_usdc(folder / "animation.usdc", mesh, positions, frames, fps, extras)
            bar.advance(task)
    names = [f"animation.{name}" for name in formats]
    written["files"] = names + ([] if wav is None else [wav[0].name])
    return written


def frames_of(npz: Path):  # noqa: ANN201
    """The archive's vertices in chunks of about 4 MB: mapped in place when stored (the caller
    has read them once through `iter_rows`, which checks the CRC), else read."""
    from meshtalk.pipelines.export.npz import chunks_of, iter_rows, mapped_member

    mapped = mapped_member(npz, "vertices")
    return iter_rows(npz, "vertices") if mapped is None else chunks_of(mapped)


def clip_basis(npz: Path, template: np.ndarray, metres: float, budget: float, exact: bool = False):  # noqa: ANN201
    """(Basis, where it came from: 'rig', 'svd' or 'exact') of the archive's vertices as
    displacements from `template` (V, 3) scaled by `metres`, within `budget` (in metres)."""
    from meshtalk.pipelines.export.basis import exact_basis, fit_basis
    from meshtalk.pipelines.export.npz import member_shape
    from meshtalk.pipelines.export.rig_basis import bundled_rig_for, rig_basis

    (frames, count, _), _ = member_shape(npz, "vertices")
    base32 = np.asarray(template, np.float32)
    scale = np.float32(metres)

    def displacements():  # float32 throughout (1e-5 mm of rounding at a head's 100 mm)
        for rows in frames_of(npz):
            moved = np.subtract(rows, base32, dtype=np.float32)
            moved *= scale
            yield moved

    if exact:
        return exact_basis(displacements, frames, count), "exact"
    posed = bundled_rig_for(npz, np.asarray(template, np.float64))
    if posed is not None and len(posed[1]) == frames:
        basis = rig_basis(displacements, *posed, metres, budget)
        if basis is not None:
            return basis, "rig"
    return fit_basis(displacements, frames, count, budget), "svd"


def _write_wav(folder: Path, npz: Path) -> tuple[Path, float] | None:
    """The archive's speech as `animation.wav` (float32), streamed; (path, seconds) or None."""
    import soundfile

    from meshtalk.pipelines.export.npz import iter_rows, load_npz

    with load_npz(npz) as archive:
        if "audio" not in archive.files or "audio_rate" not in archive.files:
            return None
        rate = int(archive["audio_rate"])
    path = folder / "animation.wav"
    samples = 0
    with soundfile.SoundFile(path, "w", samplerate=rate, channels=1, subtype="FLOAT") as handle:
        for block in iter_rows(npz, "audio", 1 << 16):
            handle.write(np.asarray(block, np.float32))
            samples += len(block)
    return path, samples / rate
