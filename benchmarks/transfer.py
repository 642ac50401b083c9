"""Cost of animating a mesh of another topology: registration once, then a transfer per frame.

The MeshTalk template (6172 vertices) is registered onto two targets made from it: one bent and
widened and re-meshed to about 6k vertices (fast-simplification of a subdivision), and the
subdivided template (about 25k vertices). Registration (automatic alignment, non-rigid fit,
binding) is timed once per target; the transfer of 256 frames of motion in chunks of 64 (as
`animate` writes them) gives the cost per frame, the median of 5 repeats.

    python benchmarks/transfer.py [--json results.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch
import trimesh
from rich.console import Console
from rich.table import Table

from meshtalk.pipelines.data.masks import build_masks, load_landmarks
from meshtalk.pipelines.data.synth.face import identity_face, motion_basis
from meshtalk.pipelines.io.mesh import Mesh, read_mesh
from meshtalk.pipelines.transfer import make_transfer

ROOT = Path(__file__).resolve().parents[1]
TEMPLATE = ROOT.parent / "shared" / "reference" / "meshtalk_topology" / "face_template.obj"
FRAMES, CHUNK, REPEATS = 256, 64, 5


def targets(template: Mesh) -> dict[str, Mesh]:
    """A bent, widened face of about 6k vertices, and the template subdivided (about 25k)."""
    import fast_simplification

    shape = identity_face(
        template.vertices * np.float32([1.1, 1.0, 1.05]), np.random.default_rng(1)
    )
    fine_v, fine_f = trimesh.remesh.subdivide(shape, template.faces)
    v6, f6 = fast_simplification.simplify(
        fine_v.astype(np.float32), fine_f.astype(np.int32), target_count=2 * 6000
    )
    v25, f25 = trimesh.remesh.subdivide(template.vertices, template.faces)
    return {
        "6k": Mesh(vertices=v6.astype(np.float32), faces=f6.astype(np.int64)),
        "25k": Mesh(vertices=v25.astype(np.float32), faces=f25.astype(np.int64)),
    }


def motion(template: Mesh) -> np.ndarray:
    """(FRAMES, V, 3) jaw, lip and blink motion of the template."""
    landmarks = load_landmarks("meshtalk", len(template.vertices))
    basis = motion_basis(template.vertices, build_masks(template.vertices, landmarks))
    t = np.linspace(0, 8 * np.pi, FRAMES)
    params = np.zeros((FRAMES, len(basis.names)), np.float32)
    params[:, 0] = np.clip(np.sin(t), 0, None)
    params[:, 1] = 0.5 * np.cos(1.3 * t)
    params[:, 4] = np.sin(3 * t) > 0.8
    return basis.apply(template.vertices, params)


def measure(template: Mesh, target: Mesh, frames: np.ndarray) -> dict:
    clock = time.perf_counter()
    transfer = make_transfer(template, target)
    registration = time.perf_counter() - clock
    runs = []
    for _ in range(REPEATS):
        clock = time.perf_counter()
        for first in range(0, FRAMES, CHUNK):
            transfer.apply(frames[first : first + CHUNK], template.vertices)
        runs.append((time.perf_counter() - clock) / FRAMES)
    clock = time.perf_counter()
    for frame in frames[:64]:
        transfer.apply(frame, template.vertices)
    single = (time.perf_counter() - clock) / 64
    return {
        "target_vertices": len(target.vertices),
        "registration_s": registration,
        "transfer_ms_per_frame": 1000 * float(np.median(runs)),
        "transfer_ms_single_frame": 1000 * single,
        "alignment_scale": transfer.info["scale"],
        "mean_fit_distance": transfer.info["mean_distance"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    console = Console()
    template = read_mesh(TEMPLATE)
    frames = motion(template)
    results = {name: measure(template, mesh, frames) for name, mesh in targets(template).items()}
    table = Table(title=f"transfer from the MeshTalk template ({len(template.vertices)} vertices)")
    for column in (
        "target",
        "vertices",
        "registration s",
        "ms/frame (chunks of 64)",
        "ms/frame (one)",
    ):
        table.add_column(column, justify="right")
    for name, row in results.items():
        table.add_row(
            name,
            str(row["target_vertices"]),
            f"{row['registration_s']:.2f}",
            f"{row['transfer_ms_per_frame']:.3f}",
            f"{row['transfer_ms_single_frame']:.3f}",
        )
    console.print(table)
    if args.json:
        record = {
            "machine": {
                "processor": platform.processor() or platform.machine(),
                "torch_threads": torch.get_num_threads(),
            },
            "frames": FRAMES,
            "chunk": CHUNK,
            "targets": results,
        }
        args.json.write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
