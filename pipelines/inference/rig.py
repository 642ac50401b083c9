"""`meshtalk rig`: an animation as ARKit blendshape weights of a user's rig.

The rig is a GLB whose face mesh has morph targets named after ARKit's 52 blendshapes
(`export.arkit`; other targets are ignored). The animation is carried onto the rig's neutral mesh:
as is when it has the rig's topology (displacements from its template, scaled by the ratio of the
two meshes' sizes), else through the retarget path (registration and binding, any topology:
`meshtalk.pipelines.transfer`). Every frame's weights in [0, 1] then come from bounded least
squares on the vertices the ARKit targets move, "the face" (`export.blendshape_solver`).

Written atomically into OUT/ (the files `rig.json` lists):

* `arkit_livelink.csv`: Live Link Face's CSV (Unreal's LiveLinkFaceImporter, MetaHuman);
* `arkit_a2f.json`: Audio2Face-style weights;
* `rig.glb`: the user's GLB with an animation of its morph weights (opens in any glTF viewer);
* `fit.json`: the fit's residual on the face in mm (max, mean, and the motion's own size), the
  targets used and missing, the solver's work;
* `speech.wav` when the animation holds its speech; `transfer.npz`/`.json`/`.png` when carried
  across topologies (reuse with `transfer`).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from meshtalk.pipelines.errors import MeshtalkError
from meshtalk.pipelines.export.arkit import (
    ARKIT_NAMES,
    arkit_weights,
    write_a2f_json,
    write_live_link_csv,
)
from meshtalk.pipelines.export.blendshape_solver import BlendshapeSolver, FitReport
from meshtalk.pipelines.export.rig import Rig, read_rig, write_animated_rig
from meshtalk.pipelines.inference.output import OutputFolder
from meshtalk.pipelines.inference.retarget import SourceAnimation, read_source
from meshtalk.pipelines.io.atomic import write_text_atomic
from meshtalk.pipelines.io.mesh import Mesh, surface_problem
from meshtalk.pipelines.io.progress import progress_bar

log = logging.getLogger(__name__)

CHUNK_FRAMES = 256
"""Frames carried and solved at a time."""
FACE_THRESHOLD = 1e-5
"""A vertex is on the face when an ARKit target moves it by more than this fraction of the rig's
size (bounding-box diagonal)."""
FILES = {
    "csv": "arkit_livelink.csv",
    "a2f": "arkit_a2f.json",
    "glb": "rig.glb",
    "fit": "fit.json",
    "wav": "speech.wav",
}


@dataclass(kw_only=True)
class RigConfig:
    """One `meshtalk rig` run."""

    animation: Path
    """An animation npz (vertices, template, fps; faces for another topology)."""
    rig: Path
    """A GLB whose morph targets carry ARKit's names."""
    output: Path
    """Output folder."""
    transfer: Path | None = None
    """A transfer.npz of an earlier run onto the same rig (another topology only)."""
    landmarks: Path | None = None
    """Landmark pairs for the registration (as `retarget --landmarks`; another topology only)."""
    force: bool = False
    """Write into a folder holding other files or an earlier rig run."""
    progress: bool = False
    """Show a progress bar."""
    chunk_frames: int = CHUNK_FRAMES
    """Frames processed at a time."""

    def __post_init__(self) -> None:
        self.animation, self.rig, self.output = (
            Path(self.animation),
            Path(self.rig),
            Path(self.output),
        )
        if self.chunk_frames < 1:
            raise MeshtalkError(None, f"chunk_frames must be at least 1, got {self.chunk_frames}")
        if self.transfer is not None and self.landmarks is not None:
            raise MeshtalkError(
                None, "--landmarks makes a new registration; it goes without --transfer"
            )


@dataclass
class RigResult:
    """What `rig` wrote and found."""

    output: Path
    weights: np.ndarray
    """(T, 52) weights in ARKit's order (0 for names the rig lacks)."""
    fit: dict
    """fit.json's document."""
    seconds: dict[str, float] = field(default_factory=dict)


def run(config: RigConfig) -> Path:
    """Solve and write; returns the output folder."""
    return solve_rig(config).output


def face_vertices(rig: Rig, indices: list[int]) -> np.ndarray:
    """Indices of the vertices that the targets `indices` move (the face fitted)."""
    size = float(np.linalg.norm(rig.neutral.max(axis=0) - rig.neutral.min(axis=0)))
    reach = np.zeros(len(rig.neutral), dtype=np.float32)
    for index in indices:
        reach = np.maximum(reach, np.linalg.norm(rig.targets[index], axis=1))
    return np.flatnonzero(reach > FACE_THRESHOLD * size)


def _size(points: np.ndarray) -> float:
    points = np.asarray(points, dtype=np.float64)
    return float(np.sqrt(((points - points.mean(axis=0)) ** 2).sum(axis=1).mean()))


def _checked_rig(path: Path) -> Rig:
    rig = read_rig(path)
    if not rig.arkit:
        shown = ", ".join(rig.target_names[:6]) + (", ..." if len(rig.target_names) > 6 else "")
        raise MeshtalkError(
            path,
            f"has no ARKit targets (eyeBlinkLeft ... tongueOut, or "
            f"eyeBlink_L): its {len(rig.target_names)} morph targets are {shown}",
        )
    return rig


def solve_rig(config: RigConfig) -> RigResult:
    """Carry the animation onto the rig, solve its ARKit weights and write the files."""
    started = time.perf_counter()
    seconds: dict[str, float] = {}
    out = OutputFolder(config.output, "rig", force=config.force)
    out.check()
    source = read_source(config.animation)
    rig = _checked_rig(config.rig)
    names = [name for name in ARKIT_NAMES if name in rig.arkit]
    indices = [rig.arkit[name] for name in names]
    face = face_vertices(rig, indices)
    if face.size == 0:
        raise MeshtalkError(config.rig, "its ARKit targets move no vertex")
    same = len(source.template) == len(rig.neutral) and (
        source.faces is None or np.array_equal(source.faces, rig.faces)
    )
    if same and (config.transfer is not None or config.landmarks is not None):
        raise MeshtalkError(
            config.rig,
            "has the animation's topology: --transfer and "
            "--landmarks are for rigs of another topology",
        )
    missing = [name for name in ARKIT_NAMES if name not in rig.arkit]
    log.info(
        "%s: %d of ARKit's 52 targets%s; %d face vertices of %d",
        config.rig,
        len(names),
        f" (missing: {', '.join(missing[:5])}{', ...' if len(missing) > 5 else ''})"
        if missing
        else "",
        face.size,
        len(rig.neutral),
    )
    solver = BlendshapeSolver(rig.targets[indices][:, face])
    report = FitReport(scale_mm=rig.scale * 1000.0)
    seconds["load"] = time.perf_counter() - started
    with out.writing() as partial:
        carry, transfer_info = _carrier(config, source, rig, same, partial, seconds)
        weights, seconds["solve"], iterations = [], 0.0, 0
        with progress_bar(disable=not config.progress) as bar:
            task = bar.add_task("solving ARKit weights", total=source.frames)
            for chunk in source.chunks(config.chunk_frames):
                displacement = carry(chunk)[:, face]
                clock = time.perf_counter()
                solved = solver.solve(displacement)
                seconds["solve"] += time.perf_counter() - clock
                iterations = max(iterations, solver.stats.iterations)
                report.add(displacement, solver.reconstruct(solved))
                weights.append(solved)
                bar.advance(task, len(chunk))
        solved = np.concatenate(weights)
        full = arkit_weights(solved, names)
        clock = time.perf_counter()
        write_live_link_csv(partial / FILES["csv"], full, source.fps)
        write_a2f_json(partial / FILES["a2f"], full, source.fps)
        all_targets = np.zeros((len(solved), len(rig.target_names)), dtype=np.float32)
        all_targets[:, indices] = solved
        write_animated_rig(rig, partial / FILES["glb"], all_targets, source.fps)
        if source.audio is not None:
            from meshtalk.pipelines.io.audio import write_wav

            write_wav(partial / FILES["wav"], source.audio, source.audio_rate, subtype="FLOAT")
        fit = _fit_document(config, source, rig, names, solved, report, transfer_info)
        fit["solver"] = {"max_iterations": iterations, "seconds": seconds["solve"]}
        write_text_atomic(partial / FILES["fit"], json.dumps(fit, indent=2) + "\n")
        seconds["writing"] = time.perf_counter() - clock
    figures = fit["residual"]
    log.info(
        "fit on the face (%d vertices): residual max %.3g mm, mean %.3g mm, for a motion of "
        "max %.3g mm, mean %.3g mm (%.1f%% of its energy reproduced)",
        figures["face_vertices"],
        figures["residual_max_mm"],
        figures["residual_mean_mm"],
        figures["motion_max_mm"],
        figures["motion_mean_mm"],
        100 * figures["explained_fraction"],
    )
    log.info("wrote %s", config.output)
    return RigResult(output=config.output, weights=full, fit=fit, seconds=seconds)


def _carrier(
    config: RigConfig, source: SourceAnimation, rig: Rig, same: bool, partial: Path, seconds: dict
):
    """A function (n, Vs, 3) source frames -> (n, N, 3) displacements of the rig's vertices;
    and what the transfer found (None on the same topology)."""
    if same:
        ratio = _size(rig.neutral) / max(_size(source.template), 1e-30)
        if abs(ratio - 1) > 1e-3:
            log.info(
                "the animation's head is %.4g times the rig's; its motion is scaled", 1 / ratio
            )
        template = source.template.astype(np.float32)
        return (lambda frames: (frames - template) * np.float32(ratio)), None
    from meshtalk.pipelines.transfer import transfer_for
    from meshtalk.pipelines.transfer.source import save_transfer_files

    if source.faces is None:
        raise MeshtalkError(
            config.animation,
            "has no faces: the animation's triangles are needed "
            "to carry it onto a rig of another topology",
        )
    target = Mesh(vertices=rig.neutral, faces=rig.faces)
    problem = surface_problem(target)
    if problem is not None:
        raise MeshtalkError(config.rig, problem)
    template = Mesh(vertices=source.template, faces=source.faces)
    transfer, seconds["registration"] = transfer_for(
        template,
        target,
        transfer_file=config.transfer,
        landmarks=config.landmarks,
        target_path=config.rig,
    )
    save_transfer_files(partial, transfer, source.faces, target, made=config.transfer is None)
    neutral = rig.neutral.astype(np.float32)
    return (lambda frames: transfer.apply(frames, source.template) - neutral), transfer.info


def _fit_document(config, source, rig, names, solved, report, transfer_info) -> dict:
    """fit.json: the residual, the rig's targets, each weight's range, the carrying."""
    return {
        "animation_file": config.animation.name,
        "rig_file": config.rig.name,
        "frames": source.frames,
        "fps": source.fps,
        "residual": report.figures(),
        "units": "mm (the rig's coordinates times its node's scale, glTF metres)",
        "carried": "same topology" if transfer_info is None else "transferred",
        "transfer": transfer_info,
        "targets_used": names,
        "targets_missing": [name for name in ARKIT_NAMES if name not in rig.arkit],
        "targets_ignored": [
            n for i, n in enumerate(rig.target_names) if i not in rig.arkit.values()
        ],
        "weights": {
            name: {"max": float(solved[:, k].max()), "mean": float(solved[:, k].mean())}
            for k, name in enumerate(names)
        },
    }
