"""Cost of the exports (#31): seconds to write GLB, USDZ, USDC and PC2 from an animation, for 60 s
and 10 min of speech at 5k and 25k vertices, the files' sizes against the npz, and the exports'
time against animate's own on the same run.

The animations are real: `meshtalk animate` with the bundled model (4744 vertices) on the bundled
sentence repeated to the length (no video; its wall time is animate's own). The denser ones are the
same motion on the head subdivided once at the edges' midpoints (18,860 vertices: every new vertex
is the mean of its edge's ends; the bundled head has no 25k form), written as an npz by streaming,
so the basis sees a dense mesh of the same motion. Each format is written with `meshtalk export` in
this process (GLB and USDZ share one basis at 0.1 mm, as `--formats glb,usdz` does); the PC2
includes its template file.

    python benchmarks/export.py [--lengths 60,600] [--sizes 5k,19k] [--json FILE [--force]]

Targets (the issue): all exports of 10 min under 10% of animate's time; the GLB at 0.1 mm at most
5% of the npz's size.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _measure import add_json_option, check_json, write_json

ROOT = Path(__file__).resolve().parents[1]
RUNS = ("glb", "glb,usdz", "usdc", "pc2")
"""Each run writes alone; glb,usdz shares one basis (all four formats: it, usdc and pc2)."""
ROWS = 256


def speech(path: Path, seconds: float) -> None:
    """The bundled sentence repeated (with 0.3 s pauses) to `seconds`, as a WAV."""
    import soundfile

    from meshtalk.pipelines.data.resources import default_model

    audio, rate = soundfile.read(default_model.example_path(), dtype="float32")
    if audio.ndim > 1:
        audio = audio.mean(axis=1)
    unit = np.concatenate([audio, np.zeros(int(0.3 * rate), np.float32)])
    total = int(seconds * rate)
    soundfile.write(path, np.resize(unit, total), rate)


def animate(wav: Path, out: Path) -> float:
    """Wall seconds of `meshtalk animate` (bundled model, no video)."""
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "meshtalk.cli.main", "animate", str(wav), "-o", str(out),
         "--no-video", "--no-progress"],
        check=True, capture_output=True,
    )  # fmt: skip
    return time.perf_counter() - start


def edges(faces: np.ndarray) -> np.ndarray:
    pairs = np.sort(faces[:, [0, 1, 1, 2, 2, 0]].reshape(-1, 2), axis=1)
    return np.unique(pairs, axis=0)


def subdivide(faces: np.ndarray, count: int) -> tuple[np.ndarray, np.ndarray]:
    """(E, 2) the edges whose midpoints are the new vertices, and the faces of the mesh split in
    four at them (vertices: the old ones, then one per edge)."""
    table = edges(faces)
    index = {tuple(pair): count + i for i, pair in enumerate(table)}

    def mid(a, b):
        return np.array([index[(min(x, y), max(x, y))] for x, y in zip(a, b)])

    a, b, c = faces.T
    ab, bc, ca = mid(a, b), mid(b, c), mid(c, a)
    split = np.concatenate(
        [np.stack(t, 1) for t in ((a, ab, ca), (ab, b, bc), (ca, bc, c), (ab, bc, ca))]
    )
    return table, split


def dense_npz(source: Path, target: Path, times: int) -> int:
    """Write `source`'s animation on its mesh subdivided `times` times; the vertex count."""
    from meshtalk.pipelines.export.npz import NpzWriter, iter_rows, member_shape

    with np.load(source) as npz:
        faces, template = npz["faces"].astype(np.int64), npz["template"]
        fps, audio, rate = npz["fps"], npz["audio"], npz["audio_rate"]
    frames = member_shape(source, "vertices")[0][0]
    steps = []
    count = len(template)
    for _ in range(times):
        table, faces = subdivide(faces, count)
        steps.append(table)
        count += len(table)

    def dense(rows):
        for table in steps:
            rows = np.concatenate([rows, 0.5 * (rows[:, table[:, 0]] + rows[:, table[:, 1]])], 1)
        return rows.astype(np.float32)

    with NpzWriter(target) as npz:
        stream = npz.stream("vertices", (frames, count, 3), np.float32)
        for rows in iter_rows(source, "vertices", ROWS):
            stream.write(dense(rows))
        stream.close()
        npz.add("template", dense(template[None])[0])
        npz.add("faces", faces.astype(np.int32))
        npz.add("fps", fps)
        npz.add("audio", audio)
        npz.add("audio_rate", rate)
    return count


def export(npz: Path, fmt: str, out: Path) -> tuple[float, dict, dict]:
    """(seconds, {file name: bytes}, the export's record) of one run of `meshtalk export`."""
    from meshtalk.pipelines.export import convert

    start = time.perf_counter()
    info = convert.run(convert.ExportConfig(animation=npz, output=out, formats=fmt))
    seconds = time.perf_counter() - start
    sizes = {name: (out / name).stat().st_size for name in os.listdir(out)}
    return seconds, sizes, info


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lengths", default="60,600", help="seconds of speech, comma-separated")
    parser.add_argument("--sizes", default="5k,19k", help="5k and/or 19k vertices")
    add_json_option(parser)
    args = parser.parse_args()
    check_json(parser, args)
    lengths = [float(x) for x in args.lengths.split(",")]
    sizes = args.sizes.split(",")
    rows = []
    with tempfile.TemporaryDirectory(prefix="meshtalk-export-bench-") as folder:
        folder = Path(folder)
        for seconds in lengths:
            wav = folder / f"speech_{seconds:g}.wav"
            speech(wav, seconds)
            clip = folder / f"animate_{seconds:g}"
            animate_s = animate(wav, clip)
            for size in sizes:
                npz = clip / "animation.npz"
                if size == "19k":
                    npz = folder / f"dense_{seconds:g}.npz"
                    count = dense_npz(clip / "animation.npz", npz, 1)
                else:
                    count = member_shape_count(npz)
                row = {
                    "speech_s": seconds,
                    "vertices": count,
                    "animate_s": animate_s,
                    "npz_bytes": npz.stat().st_size,
                }
                for run in RUNS:
                    out = folder / f"out_{seconds:g}_{size}_{run}"
                    took, sizes_, info = export(npz, run, out)
                    if run == "glb,usdz":  # one basis for both, as --formats glb,usdz
                        row["glb_and_usdz_s"] = took
                        row["usdz_bytes"] = sizes_["animation.usdz"]
                    else:
                        row[f"{run}_s"] = took
                        row[f"{run}_bytes"] = sizes_[f"animation.{run}"]
                    if run == "glb":
                        row["glb_targets"] = info["targets"]
                        row["glb_max_error_mm"] = info["max_error_mm"]
                        row["wav_bytes"] = sizes_["animation.wav"]
                    shutil.rmtree(out)
                row["exports_s"] = row["glb_and_usdz_s"] + row["usdc_s"] + row["pc2_s"]
                row["exports_over_animate"] = row["exports_s"] / animate_s
                row["glb_over_npz_size"] = row["glb_bytes"] / row["npz_bytes"]
                rows.append(row)
                print_row(row)
                if size == "19k":
                    npz.unlink()
            shutil.rmtree(clip)
    report = {
        "benchmark": "benchmarks/export.py",
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "load_average_at_end": os.getloadavg(),
        "budget_mm": 0.1,
        "rows": rows,
    }
    if args.json is not None:
        write_json(args.json, json.dumps(report, indent=2))


def member_shape_count(npz: Path) -> int:
    from meshtalk.pipelines.export.npz import member_shape

    return member_shape(npz, "vertices")[0][1]


HEADER_PRINTED = []


def print_row(row: dict) -> None:
    if not HEADER_PRINTED:
        print(
            f"{'speech':>7} {'verts':>6} {'animate':>8} "
            + " ".join(f"{name + ' s':>8}" for name in ("glb", "glb+usdz", "usdc", "pc2"))
            + f" {'all/anim':>8} {'npz MB':>8} {'glb MB':>7} {'glb/npz':>7} {'K':>4} {'err mm':>7}"
            + f" {'usdz MB':>8} {'usdc MB':>8} {'pc2 MB':>7}"
        )
        HEADER_PRINTED.append(True)
    mb = 1e6
    print(
        f"{row['speech_s']:>6g}s {row['vertices']:>6} {row['animate_s']:>7.1f}s "
        + " ".join(f"{row[key]:>7.2f}s" for key in ("glb_s", "glb_and_usdz_s", "usdc_s", "pc2_s"))
        + f" {row['exports_over_animate']:>8.3f} {row['npz_bytes'] / mb:>8.1f}"
        + f" {row['glb_bytes'] / mb:>7.2f} {row['glb_over_npz_size']:>7.3f}"
        + f" {row['glb_targets']:>4} {row['glb_max_error_mm']:>7.4f}"
        + f" {row['usdz_bytes'] / mb:>8.1f} {row['usdc_bytes'] / mb:>8.1f}"
        + f" {row['pc2_bytes'] / mb:>7.1f}",
        flush=True,
    )


if __name__ == "__main__":
    main()
