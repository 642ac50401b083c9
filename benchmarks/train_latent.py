"""Speed and memory of `meshtalk train latent` with the release's sizes (H=16, C=128, V=6172).

Makes a small synthetic dataset on the MeshTalk template (../shared/reference), then:

1. times the audio encoder on a training batch (8 segments x 32 frames, forward and backward):
   the per-window reference (the convolutions run on every frame's 1 s window) against the
   utterance pass (run once over the segment's mel, each frame's window pooled from it);
2. runs the real training command for some steps on each device present (the CPU; a GPU when
   there is one), with the memory-mapped store (DataLoader workers) and with the data held on
   the device (--data-on-device yes: same batches), and reports steps per second, peak resident
   memory of the process, the GPU's peak memory, and the share of step time spent waiting for
   data; on a GPU also with bf16 autocast, and at the largest batch that fits (doubling from 16
   until a run fails).

    python benchmarks/train_latent.py [--steps 40] [--json results.json]
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import torch
from _measure import add_json_option, check_json, peak_tree_rss, run_main, write_json
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
TOPOLOGY = ROOT.parent / "shared" / "reference" / "meshtalk_topology"


def _meshtalk(*args: str) -> list[str]:
    return [sys.executable, "-m", "meshtalk.cli.main", *args]


def make_store(workdir: Path) -> Path:
    data, store = workdir / "multiface", workdir / "data"
    subprocess.run(
        _meshtalk(
            "synth", str(data), "--identities", "3", "--sentences", "4", "--seed", "1",
            "--template", str(TOPOLOGY / "face_template.obj"), "--masks", str(TOPOLOGY),
        ),
        check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    subprocess.run(
        _meshtalk("prep", str(data), "-o", str(store), "--crop", "none", "--masks", str(TOPOLOGY)),
        check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    return store


def audio_encoder_comparison(store: Path, repeats: int) -> dict:
    """Forward + backward time of both audio paths on one training batch (CPU)."""
    from meshtalk.models.config import latent_preset
    from meshtalk.models.encoders import LatentEncoder
    from meshtalk.pipelines.data.store import PreparedStore, SegmentDataset

    prepared = PreparedStore(store)
    encoder = LatentEncoder(latent_preset("release", num_vertices=prepared.num_vertices))
    audio = encoder.audio_encoder.train()
    spans = SegmentDataset(prepared, "train", 32, seed=0)
    windows = SegmentDataset(prepared, "train", 32, seed=0, audio="windows")
    span = [spans[i] for i in range(8)]
    mel = torch.stack([item["mel"] for item in span])
    starts = torch.stack([item["mel_starts"] for item in span])
    per_window = torch.stack([windows[i]["audio"] for i in range(8)])

    def timed(function) -> float:
        function().sum().backward()  # warm up
        start = time.perf_counter()
        for _ in range(repeats):
            function().sum().backward()
        return (time.perf_counter() - start) / repeats

    per_window_s = timed(lambda: audio(per_window))
    utterance_s = timed(lambda: audio.encode_span(mel, starts))
    return {
        "batch": "8 segments x 32 frames",
        "mel_frames_per_window": audio.window,
        "mel_frames_per_segment_span": int(mel.shape[1]),
        "per_window_ms": round(per_window_s * 1000, 1),
        "utterance_pass_ms": round(utterance_s * 1000, 1),
        "speedup": round(per_window_s / utterance_s, 1),
    }


def training_run(
    store: Path,
    workdir: Path,
    device: str,
    steps: int,
    data: str = "no",
    batch: int = 8,
    bf16: bool = False,
) -> dict | None:
    """One training command; its figures, or None when it failed (e.g. out of GPU memory)."""
    name = f"{device}-{data}-{batch}-{'bf16' if bf16 else 'fp32'}"
    config = workdir / f"release-{name}.yaml"
    config.write_text(
        "model: {preset: release}\n"
        f"train: {{steps: {steps}, batch_size: {batch}, frames: 32, log_every: 10, "
        f"val_every: {steps}, checkpoint_every: {steps}, val_segments: 8, data_workers: 2, "
        f"bf16: {str(bf16).lower()}}}\n"
    )
    output = workdir / f"run-{name}"
    process = subprocess.Popen(
        _meshtalk("train", "latent", "--data", str(store), "--config", str(config),
                  "-o", str(output), "--device", device, "--no-progress",
                  "--data-on-device", data),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    peak, seconds = peak_tree_rss(process)
    if process.returncode != 0 or not (output / "metrics.csv").is_file():
        return None
    with open(output / "metrics.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))

    def series(name: str) -> list[float]:
        values = [float(r["value"]) for r in rows if r["name"] == name]
        return values[1:] if len(values) > 1 else values  # the first interval warms up

    speeds, waits = series("train/steps_per_second"), series("train/data_wait_share")
    gpu = series("train/gpu_peak_memory_mib")
    return {
        "device": device,
        "data": "resident" if data == "yes" else "memory-mapped",
        "batch": batch,
        "bf16": bf16,
        "steps": steps,
        "steps_per_second": round(sum(speeds) / len(speeds), 2),
        "data_wait_share": round(sum(waits) / len(waits), 3),
        "peak_rss_mib_all_processes": round(peak / 2**20),
        "gpu_peak_memory_mib": round(max(gpu)) if gpu else None,
        "wall_seconds_with_setup_and_validation": round(seconds, 1),
    }


def gpu_runs(store: Path, workdir: Path, steps: int) -> list[dict | None]:
    """On CUDA: batch 8 x 32 memory-mapped and resident, fp32 and bf16; then the largest batch
    that fits (resident, bf16), doubling from 16 until a run fails."""
    runs = [
        training_run(store, workdir, "cuda", steps, data, bf16=bf16)
        for bf16 in (False, True)
        for data in ("no", "yes")
    ]
    batch, largest = 16, None
    while batch <= 4096:
        run = training_run(store, workdir, "cuda", steps, "yes", batch=batch, bf16=True)
        if run is None:
            break
        largest, batch = run, batch * 2
    return [*runs, largest]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=40, help="training steps per device")
    parser.add_argument("--repeats", type=int, default=5, help="audio encoder timing repeats")
    add_json_option(parser)
    args = parser.parse_args()
    check_json(parser, args)
    if not (TOPOLOGY / "face_template.obj").is_file():
        raise SystemExit(
            f"{TOPOLOGY}: the MeshTalk reference topology is needed beside the project"
        )
    torch.set_num_threads(psutil.cpu_count())
    with tempfile.TemporaryDirectory(prefix="meshtalk-bench-") as tmp:
        workdir = Path(tmp)
        store = make_store(workdir)
        audio = audio_encoder_comparison(store, args.repeats)
        runs = [training_run(store, workdir, "cpu", args.steps, data) for data in ("no", "yes")]
        if torch.cuda.is_available():
            runs += gpu_runs(store, workdir, args.steps)
        runs = [run for run in runs if run is not None]
    console = Console(width=150)
    table = Table(
        title="audio encoder, release sizes, one training batch (forward + backward, CPU)"
    )
    for column in ("path", "mel frames convolved", "ms"):
        table.add_column(column, justify="right")
    table.add_row("per window (reference)", f"8 x 32 x {audio['mel_frames_per_window']}",
                  f"{audio['per_window_ms']:.1f}")  # fmt: skip
    table.add_row("utterance pass", f"8 x {audio['mel_frames_per_segment_span']}",
                  f"{audio['utterance_pass_ms']:.1f}")  # fmt: skip
    console.print(table)
    console.print(f"utterance pass speed-up: {audio['speedup']}x")
    table = Table(title="meshtalk train latent, release preset, segments of 32 frames")
    columns = ("device", "data", "batch", "autocast", "steps/s", "data wait share")
    columns += ("peak RSS (MiB)", "GPU peak (MiB)")
    for column in columns:
        table.add_column(column, justify="right")
    for run in runs:
        gpu = run["gpu_peak_memory_mib"]
        table.add_row(
            run["device"],
            run["data"],
            f"{run['batch']} x 32",
            "bf16" if run["bf16"] else "fp32",
            f"{run['steps_per_second']:.2f}",
            f"{100 * run['data_wait_share']:.1f}%",
            f"{run['peak_rss_mib_all_processes']:,}",
            "-" if gpu is None else f"{gpu:,}",
        )
    console.print(table)
    console.print(f"CPU: {psutil.cpu_count()} cores; target on a GPU: >= 40 steps/s at 8 x 32, "
                  "data wait share < 5%")  # fmt: skip
    if args.json:
        figures = {"audio_encoder": audio, "training": runs, "cpu_count": psutil.cpu_count()}
        write_json(args.json, json.dumps(figures, indent=2))


if __name__ == "__main__":
    run_main(main)
