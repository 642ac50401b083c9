"""Live animation (`meshtalk stream`): speed, latency and memory of the live animator.

Two measures, side by side in one run:

- unpaced: `--minutes` of speech (the reference recording, over and over) pushed into
  `LiveAnimator` as fast as it takes it, in the page's 512-sample chunks: real-time factor,
  compute per chunk, and the process's RSS after the first minute and at the end (flat memory);
- paced: `meshtalk stream --input FILE` serving the recording at real time to a WebSocket client
  (a program, as a game engine would be): frames received against frames due, and the latency of
  each frame from the arrival of the audio at its time to its leaving the server (the window's
  look-ahead included), p50 and p95.

    .venv/bin/python benchmarks/stream.py [--minutes 60] [--model RUN --template MESH] [--json F]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
from _measure import add_json_option, check_json, run_main, write_json
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
SPEECH = ROOT.parent / "shared" / "reference" / "speech" / "example_sentence.wav"
RATE = 16_000
CHUNK = 512


def unpaced(model: Path | None, template: Path | None, minutes: float, speech: Path) -> dict:
    import torch

    from meshtalk.pipelines.checkpoint import load_run
    from meshtalk.pipelines.data.resources import default_model
    from meshtalk.pipelines.io.audio import load_audio
    from meshtalk.pipelines.live.engine import LiveAnimator, run_template

    torch.set_num_threads(1)  # as meshtalk stream does
    model = model or default_model.live_run_path()
    run = load_run(model)
    vertices, _ = run_template(model, run, template)
    animator = LiveAnimator(run, vertices, int8=False)
    clip = load_audio(speech, RATE)
    total = int(minutes * 60 * RATE)
    process = psutil.Process()
    chunk_ms, rss_mb, frames = [], {}, 0
    started = time.perf_counter()
    pushed = 0
    while pushed < total:
        for first in range(0, clip.size, CHUNK):
            clock = time.perf_counter()
            frames += len(animator.feed(clip[first : first + CHUNK]))
            chunk_ms.append(1000 * (time.perf_counter() - clock))
            pushed += min(CHUNK, clip.size - first)
            minute = pushed // (60 * RATE)
            if minute not in rss_mb:
                rss_mb[minute] = process.memory_info().rss / 2**20
        if pushed >= total:
            break
    wall = time.perf_counter() - started
    rss_mb[pushed // (60 * RATE) + 1] = process.memory_info().rss / 2**20
    after_first = rss_mb.get(1, rss_mb[0])
    end = rss_mb[max(rss_mb)]
    return {
        "audio_minutes": round(pushed / RATE / 60, 2),
        "frames": frames,
        "wall_s": round(wall, 1),
        "real_time_factor": round(pushed / RATE / wall, 1),
        "chunk_compute_ms_p50": round(float(np.percentile(chunk_ms, 50)), 2),
        "chunk_compute_ms_p95": round(float(np.percentile(chunk_ms, 95)), 2),
        "lookahead_ms": round(1000 * animator.lookahead_s, 1),
        "rss_mb_after_first_minute": round(after_first, 1),
        "rss_mb_at_end": round(end, 1),
        "rss_end_over_first_minute": round(end / after_first, 3),
        "kept_audio_samples": int(animator.buffer.size),
    }


async def _client(url: str) -> list[dict]:
    import aiohttp

    from meshtalk.pipelines.live.protocol import unpack_frame

    frames = []
    async with aiohttp.ClientSession() as session:
        ws = await session.ws_connect(url.replace("http", "ws") + "ws")
        await ws.receive(timeout=120)  # the setup
        while (message := await ws.receive(timeout=120)).type == aiohttp.WSMsgType.BINARY:
            frame = unpack_frame(message.data)
            frames.append({k: frame[k] for k in ("index", "arrived", "sent")})
    return frames


def paced(model: Path | None, template: Path | None, speech: Path) -> dict:
    import soundfile

    command = [sys.executable, "-m", "meshtalk.cli.main", "stream", "--input", str(speech),
               "--no-open"]  # fmt: skip
    if model is not None:
        command += ["--model", str(model)]
    if template is not None:
        command += ["--template", str(template)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = process.stdout.readline()
    match = re.search(r"(http://\S+)", line)
    if match is None:
        process.kill()
        raise SystemExit(f"meshtalk stream did not start: {process.stderr.read()}")
    frames = asyncio.run(_client(match.group(1)))
    process.wait(timeout=120)
    info = soundfile.info(str(speech))
    due = int(info.frames / info.samplerate * 30)
    latency = np.array([1000 * (f["sent"] - f["arrived"]) for f in frames])
    return {
        "speech_s": round(info.frames / info.samplerate, 2),
        "frames_due": due,
        "frames_received": len(frames),
        "frames_in_order": [f["index"] for f in frames] == list(range(len(frames))),
        "latency_ms_p50": round(float(np.percentile(latency, 50)), 1),
        "latency_ms_p95": round(float(np.percentile(latency, 95)), 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=60.0, help="unpaced audio (minutes)")
    parser.add_argument(
        "--model", type=Path, help="run folder (default: stream's, the bundled low-latency model)"
    )
    parser.add_argument("--template", type=Path, help="template of --model's topology")
    parser.add_argument("--speech", type=Path, default=SPEECH, help="the recording to use")
    add_json_option(parser)
    args = parser.parse_args()
    check_json(parser, args)
    if not args.speech.is_file():
        parser.error(f"{args.speech}: no such recording")
    live = paced(args.model, args.template, args.speech)
    flat = unpaced(args.model, args.template, args.minutes, args.speech)
    load = os.getloadavg()[0]
    table = Table(title=f"meshtalk stream, {os.cpu_count()} cores, load average {load:.1f}")
    table.add_column("measure")
    table.add_column("figure", justify="right")
    rows = [
        ("paced: frames received / due", f"{live['frames_received']} / {live['frames_due']}"),
        ("paced: latency p50 / p95 (ms)", f"{live['latency_ms_p50']} / {live['latency_ms_p95']}"),
        ("look-ahead of the model's window (ms)", f"{flat['lookahead_ms']}"),
        ("paced: p95 latency / look-ahead", f"{live['latency_ms_p95'] / flat['lookahead_ms']:.2f}"),
        (f"unpaced: {flat['audio_minutes']} min of audio, wall (s)", f"{flat['wall_s']}"),
        ("unpaced: real-time factor", f"{flat['real_time_factor']}x"),
        (
            "unpaced: compute per 32 ms chunk p50 / p95 (ms)",
            f"{flat['chunk_compute_ms_p50']} / {flat['chunk_compute_ms_p95']}",
        ),  # fmt: skip
        (
            "unpaced: RSS after 1 min / at end (MB)",
            f"{flat['rss_mb_after_first_minute']} / {flat['rss_mb_at_end']}",
        ),  # fmt: skip
        ("unpaced: RSS end / after 1 min", f"{flat['rss_end_over_first_minute']}"),
    ]
    for row in rows:
        table.add_row(*row)
    Console().print(table)
    if args.json:
        figures = {"paced_real_time": live, "unpaced": flat, "load_average_1min": round(load, 2)}
        write_json(args.json, json.dumps(figures, indent=2))


if __name__ == "__main__":
    run_main(main)
