"""Cost of animating a mesh of another topology: registration and binding once, then a transfer
per frame, for targets from 6k to 1.6M vertices.

The MeshTalk template (6172 vertices) is registered automatically onto targets made from it
(tests/transfer_heads.py): re-meshed to about 6k vertices, subdivided once (25k), twice (98k),
three times (393k) and four times (1.57M), and a bust (the 6k head on a neck and shoulders); and
once with `--landmarks` (100k-landmarks: eight landmark pairs give the similarity). Each size runs
in its own child process, so that peak resident memory (VmHWM) is that target's alone. The transfer
of 256 frames of motion in chunks of 64 (as `animate` writes them) gives the cost per frame, the
median of 5 repeats. Ratios are to the smallest target.

    python benchmarks/transfer.py [--json results.json [--force]] [--sizes 6k,25k]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

from _measure import add_json_option, check_json, run_main, write_json

ROOT = Path(__file__).resolve().parents[1]
TEMPLATE = ROOT.parent / "shared" / "reference" / "meshtalk_topology" / "face_template.obj"
FRAMES, CHUNK, REPEATS = 256, 64, 5
SIZES = ("6k", "25k", "100k", "400k", "1.6M", "bust", "100k-landmarks")
LANDMARKS = (1399, 4443, 4477, 1572, 15, 3985, 3210, 6016)
"""MeshTalk template vertices given as landmark pairs (the subdivided targets keep them first)."""


def target(name: str, template):
    """The target mesh called `name` (see the module docstring)."""
    sys.path.insert(0, str(ROOT))
    from tests import transfer_heads as heads

    if name == "6k":
        return heads.resampled(template, 6000).mesh
    if name == "bust":
        return heads.bust(heads.resampled(template, 6000)).mesh
    times = {"25k": 1, "100k": 2, "100k-landmarks": 2, "400k": 3, "1.6M": 4}[name]
    return heads.subdivided(template, times).mesh


def motion(template):
    """(FRAMES, V, 3) jaw, lip and blink motion of the template."""
    import numpy as np

    from meshtalk.pipelines.data.masks import build_masks, load_landmarks
    from meshtalk.pipelines.data.synth.face import motion_basis

    landmarks = load_landmarks("meshtalk", len(template.vertices))
    basis = motion_basis(template.vertices, build_masks(template.vertices, landmarks))
    t = np.linspace(0, 8 * np.pi, FRAMES)
    params = np.zeros((FRAMES, len(basis.names)), np.float32)
    params[:, basis.names.index("jaw")] = np.clip(np.sin(t), 0, None)
    params[:, basis.names.index("round")] = 0.5 * np.cos(1.3 * t)
    params[:, basis.names.index("blink")] = np.sin(3 * t) > 0.8
    return basis.apply(template.vertices, params)


def peak_rss_mb() -> float:
    """This process's peak resident memory (VmHWM: `ru_maxrss` would keep the parent's)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(name: str) -> dict:
    """One target's figures (run in a child process)."""
    import numpy as np

    from meshtalk.pipelines.io.mesh import read_mesh
    from meshtalk.pipelines.transfer import bind, register

    template = read_mesh(TEMPLATE)
    mesh = target(name, template)
    frames = motion(template)
    rss_before = peak_rss_mb()
    clock = time.perf_counter()
    pairs = None
    if name.endswith("-landmarks"):
        pairs = (np.array(LANDMARKS), np.array(LANDMARKS))
    registration = register(template, mesh, pairs)
    registration_s = time.perf_counter() - clock
    clock = time.perf_counter()
    transfer = bind(registration, template, mesh)
    binding_s = time.perf_counter() - clock
    peak = peak_rss_mb()
    runs = []
    for _ in range(REPEATS):
        clock = time.perf_counter()
        for first in range(0, FRAMES, CHUNK):
            transfer.apply(frames[first : first + CHUNK], template.vertices)
        runs.append((time.perf_counter() - clock) / FRAMES)
    info = registration.info()
    return {
        "target_vertices": len(mesh.vertices),
        "target_faces": len(mesh.faces),
        "registration_seconds": registration_s,
        "binding_seconds": binding_s,
        "peak_rss_mb_before_registration": rss_before,
        "peak_rss_mb_registration_and_binding": peak,
        "transfer_ms_per_frame_in_chunks_of_64": 1000 * float(np.median(runs)),
        "registration_scale": info["scale"],
        "registration_face_coverage": info["coverage"],
        "registration_mean_distance_in_face_sizes": info["distance_mean"] / info["face_size"],
    }


def run_child(name: str) -> dict:
    answer = subprocess.run(
        [sys.executable, __file__, "--child", name], capture_output=True, text=True, check=False
    )
    if answer.returncode != 0:
        return {"error": (answer.stderr.strip().splitlines() or ["killed"])[-1]}
    return json.loads(answer.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_json_option(parser)
    parser.add_argument("--sizes", default=",".join(SIZES), help="targets, comma-separated")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.child)))
        return
    check_json(parser, args)
    from rich.console import Console
    from rich.table import Table

    results = {name: run_child(name) for name in args.sizes.split(",")}
    table = Table(title="registration + binding, then transfer (MeshTalk template, 6172 vertices)")
    columns = ("target", "vertices", "register s", "bind s", "peak RSS MB", "ms/frame")
    for column in columns + ("x vertices", "x time", "x ms/frame", "scale", "coverage"):
        table.add_column(column, justify="right")
    base = next((row for row in results.values() if "error" not in row), None)
    for name, row in results.items():
        if "error" in row:
            table.add_row(name, row["error"])
            continue
        seconds = row["registration_seconds"] + row["binding_seconds"]
        base_seconds = base["registration_seconds"] + base["binding_seconds"]
        table.add_row(
            name,
            str(row["target_vertices"]),
            f"{row['registration_seconds']:.1f}",
            f"{row['binding_seconds']:.2f}",
            f"{row['peak_rss_mb_registration_and_binding']:.0f}",
            f"{row['transfer_ms_per_frame_in_chunks_of_64']:.3f}",
            f"{row['target_vertices'] / base['target_vertices']:.1f}",
            f"{seconds / base_seconds:.2f}",
            f"{row['transfer_ms_per_frame_in_chunks_of_64'] / base['transfer_ms_per_frame_in_chunks_of_64']:.1f}",  # noqa: E501
            f"{row['registration_scale']:.4f}",
            f"{row['registration_face_coverage']:.3f}",
        )
    Console(width=max(160, Console().width)).print(table)
    if args.json:
        record = {
            "machine": {
                "processor": platform.processor() or platform.machine(),
                "cpus": os.cpu_count(),
            },
            "frames": FRAMES,
            "chunk_frames": CHUNK,
            "targets": results,
        }
        write_json(args.json, json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    run_main(main)
