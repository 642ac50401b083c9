"""Cost of solving ARKit weights (`meshtalk rig`): per frame, at 5k and 25k vertices, and on
ICT-FaceKit's head, with scipy's lsq_linear on the same frames for comparison.

Rigs: a procedural sheet with ARKit's 52 targets at 71x71 (5,041) and 158x158 (24,964) vertices
(tests/rigs.py), and ICT-FaceKit's head (26,719 vertices, 51 ARKit targets moving 19,246 of them:
real, strongly correlated shapes). Frames: weights drawn in [0, 1] (the frames lie in the
targets' span: Cholesky alone solves them), and the same with 5 % of the motion's size added as
noise and weights drawn in [-0.3, 1.3] (the bounds hold: FISTA and the active-set step run).
Figures per frame: the projection B^T d (grows with the vertices), the bounded solve on the
reduced 52x52 system (does not; also its CPU time, which other jobs on the machine do not
inflate), the reconstruction for the residual; lsq_linear (BVLS, on the
full 3N x K system) on the first `--reference-frames` frames; the largest weight difference.

    python benchmarks/rig.py [--frames 1000] [--reference-frames 5] [--json FILE [--force]]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
from _measure import add_json_option, check_json, run_main, write_json

ROOT = Path(__file__).resolve().parents[1]


def rigs():
    """(name, basis (K, M, 3) on the moving vertices, all vertices) of each rig."""
    sys.path.insert(0, str(ROOT))
    from meshtalk.pipelines.export.arkit import ARKIT_NAMES
    from tests import rigs as builders

    for grid in (71, 158):
        data = builders.procedural_data(grid=grid, names=ARKIT_NAMES)
        yield f"procedural {grid}x{grid}", data.targets, len(data.neutral)
    if (builders.ICT / "shapes.npz").is_file():
        data = builders.ict_data()
        keep = [i for i, n in enumerate(data.names) if not n.startswith(("Pupil", "cheekR"))]
        targets = data.targets[keep]
        moving = np.abs(targets).max(axis=(0, 2)) > 1e-5 * np.ptp(data.neutral, axis=0).max()
        yield "ICT-FaceKit head", targets[:, moving], len(data.neutral)


def frames_for(basis: np.ndarray, count: int, noisy: bool, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    low, high = (-0.3, 1.3) if noisy else (0.0, 1.0)
    weights = rng.uniform(low, high, (count, len(basis))) * (
        rng.uniform(size=(count, len(basis))) < 0.4
    )
    frames = np.einsum("tk,kmc->tmc", weights, basis)
    if noisy:
        frames += rng.normal(0, 0.05 * np.abs(frames).mean(), frames.shape)
    return frames


def measure(basis: np.ndarray, frames: np.ndarray, reference_frames: int) -> dict:
    from scipy.optimize import lsq_linear

    from meshtalk.pipelines.export.blendshape_solver import BlendshapeSolver

    clock = time.perf_counter()
    solver = BlendshapeSolver(basis)
    setup = time.perf_counter() - clock
    clock, cpu = time.perf_counter(), time.process_time()
    rhs = solver.project(frames)
    project = time.perf_counter() - clock
    clock, cpu = time.perf_counter(), time.process_time()
    weights = solver.solve_projected(rhs)
    solve, solve_cpu = time.perf_counter() - clock, time.process_time() - cpu
    clock = time.perf_counter()
    solver.reconstruct(weights)
    reconstruct = time.perf_counter() - clock
    columns = basis.reshape(len(basis), -1).T.astype(np.float64)
    clock = time.perf_counter()
    reference = np.array(
        [
            lsq_linear(columns, frame.ravel(), bounds=(0, 1), method="bvls", tol=1e-12).x
            for frame in frames[:reference_frames]
        ]
    )
    scipy_seconds = time.perf_counter() - clock
    count = len(frames)
    return {
        "setup_ms_cholesky_and_eigenvalue": setup * 1e3,
        "projection_ms_per_frame": project / count * 1e3,
        "bounded_solve_ms_per_frame": solve / count * 1e3,
        "bounded_solve_cpu_ms_per_frame": solve_cpu / count * 1e3,
        "reconstruction_ms_per_frame": reconstruct / count * 1e3,
        "lsq_linear_ms_per_frame": scipy_seconds / reference_frames * 1e3,
        "frames_solved_by_cholesky_alone": solver.stats.inside,
        "fista_iterations_until_the_last_frame": solver.stats.iterations,
        "max_weight_difference_from_lsq_linear": float(
            np.abs(weights[:reference_frames] - reference).max()
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_json_option(parser)
    parser.add_argument("--frames", type=int, default=1000, help="frames solved per case")
    parser.add_argument("--reference-frames", type=int, default=5, help="frames for lsq_linear")
    args = parser.parse_args()
    check_json(parser, args)
    from rich.console import Console
    from rich.table import Table

    results = []
    for name, basis, vertices in rigs():
        for noisy in (False, True):
            frames = frames_for(basis, args.frames, noisy)
            row = measure(basis, frames, args.reference_frames)
            row.update(
                rig=name,
                vertices=vertices,
                face_vertices=basis.shape[1],
                targets=len(basis),
                frames="noisy, bounds active" if noisy else "in span",
            )
            results.append(row)
    table = Table(
        title=f"ARKit weights: ms per frame, {args.frames} frames a case "
        f"(load {os.getloadavg()[0]:.1f})"
    )
    columns = (
        "rig",
        "vertices",
        "targets",
        "frames",
        "B^T d",
        "bounded solve",
        "solve CPU",
        "B w",
        "lsq_linear",
        "x faster",
        "by Cholesky",
        "iterations",
        "max |dw|",
    )
    for column in columns:
        table.add_column(column, justify="right")
    for row in results:
        ours = row["projection_ms_per_frame"] + row["bounded_solve_ms_per_frame"]
        table.add_row(
            row["rig"],
            str(row["vertices"]),
            str(row["targets"]),
            row["frames"],
            f"{row['projection_ms_per_frame']:.3f}",
            f"{row['bounded_solve_ms_per_frame']:.3f}",
            f"{row['bounded_solve_cpu_ms_per_frame']:.3f}",
            f"{row['reconstruction_ms_per_frame']:.3f}",
            f"{row['lsq_linear_ms_per_frame']:.1f}",
            f"{row['lsq_linear_ms_per_frame'] / ours:.0f}",
            f"{row['frames_solved_by_cholesky_alone']}/{args.frames}",
            str(row["fista_iterations_until_the_last_frame"]),
            f"{row['max_weight_difference_from_lsq_linear']:.1e}",
        )
    Console(width=max(200, Console().width)).print(table)
    if args.json:
        record = {
            "machine": {
                "processor": platform.processor() or platform.machine(),
                "cpus": os.cpu_count(),
                "load_average_1min": os.getloadavg()[0],
            },
            "frames_per_case": args.frames,
            "lsq_linear_frames": args.reference_frames,
            "cases": results,
        }
        write_json(args.json, json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    run_main(main)
