"""Throughput and peak memory of `meshtalk prep` on synthetic 7306-vertex Multiface data.

Makes two datasets (about 5k and 25k frames by default) with `meshtalk synth --multiface-topology`
on the MeshTalk template, prepares each with plain `meshtalk prep` (which chooses the 'meshtalk'
crop for the 7306-vertex meshes and the dataset's own masks), and reports frames per second and
the peak resident memory of prep's whole process tree (sampled every 20 ms).

    python benchmarks/prep.py [--workers 2] [--json results.json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import psutil
from _measure import add_json_option, check_json, peak_tree_rss, run_main, write_json
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
TOPOLOGY = ROOT.parent / "shared" / "reference" / "meshtalk_topology"
SIZES = {"5k": (6, 15), "25k": (15, 30)}  # identities, sentences


def _meshtalk(*args: str) -> list[str]:
    return [sys.executable, "-m", "meshtalk.cli.main", *args]


def measure(name: str, workdir: Path, workers: int) -> list[dict]:
    """Synthesise one dataset, then prepare it twice: first read of the files, then cached."""
    identities, sentences = SIZES[name]
    data = workdir / f"multiface-{name}"
    subprocess.run(
        _meshtalk(
            "synth", str(data), "--identities", str(identities), "--sentences", str(sentences),
            "--template", str(TOPOLOGY / "face_template.obj"), "--masks", str(TOPOLOGY),
            "--multiface-topology",
        ),
        check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    rows = []
    for source_files in ("first read", "cached"):
        store = workdir / f"data-{name}"
        shutil.rmtree(store, ignore_errors=True)
        os.sync()  # flush earlier writes so that prep is not charged for them
        process = subprocess.Popen(
            _meshtalk("prep", str(data), "-o", str(store), "--workers", str(workers)),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        peak, seconds = peak_tree_rss(process)
        manifest = json.loads((store / "manifest.json").read_text())
        frames = sum(s["frames"] for r in manifest["identities"] for s in r["segments"])
        frames += sum(r["neutral_frames"] for r in manifest["identities"])
        rows.append(
            {
                "dataset": name,
                "source_files": source_files,
                "identities": identities,
                "sentences_per_identity": sentences,
                "frames_read": frames,
                "workers": workers,
                "prep_seconds": round(seconds, 2),
                "frames_per_second": round(frames / seconds, 1),
                "peak_rss_mib": round(peak / 2**20, 1),
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workers", type=int, default=2, help="prep --workers (default 2)")
    parser.add_argument("--sizes", default="5k,25k", help="comma-separated sizes: 5k, 25k")
    add_json_option(parser)
    args = parser.parse_args()
    check_json(parser, args)
    if not (TOPOLOGY / "face_template.obj").is_file():
        raise SystemExit(
            f"{TOPOLOGY}: the MeshTalk reference topology is needed beside the project"
        )
    rows = []
    with tempfile.TemporaryDirectory(prefix="meshtalk-bench-") as tmp:
        for name in args.sizes.split(","):
            rows += measure(name, Path(tmp), args.workers)
    small, large = rows[0], rows[-2]  # the first-read passes
    ratios = {
        "frames_ratio_large_over_small": round(large["frames_read"] / small["frames_read"], 2),
        "throughput_ratio_large_over_small": round(
            large["frames_per_second"] / small["frames_per_second"], 2
        ),
        "peak_rss_ratio_large_over_small": round(large["peak_rss_mib"] / small["peak_rss_mib"], 2),
        "target_frames_per_second": 2000,
        "target_peak_rss_mib": 1536,
        "cpu_count": psutil.cpu_count(),
    }
    table = Table(title="meshtalk prep on synthetic 7306-vertex data")
    columns = (
        "dataset",
        "source files",
        "frames",
        "workers",
        "seconds",
        "frames/s",
        "peak RSS (MiB)",
    )
    for column in columns:
        table.add_column(column, justify="right")
    for row in rows:
        table.add_row(
            row["dataset"],
            row["source_files"],
            f"{row['frames_read']:,}",
            str(row["workers"]),
            f"{row['prep_seconds']:.1f}",
            f"{row['frames_per_second']:,.0f}",
            f"{row['peak_rss_mib']:,.0f}",
        )
    console = Console(width=150)
    console.print(table)
    console.print(
        f"large/small (first read): {ratios['frames_ratio_large_over_small']}x frames, "
        f"{ratios['throughput_ratio_large_over_small']}x throughput, "
        f"{ratios['peak_rss_ratio_large_over_small']}x peak RSS "
        f"(targets: >= 2000 frames/s, < 1536 MiB, flat with size)"
    )
    if args.json:
        write_json(args.json, json.dumps({"runs": rows, "comparison": ratios}, indent=2))


if __name__ == "__main__":
    run_main(main)
