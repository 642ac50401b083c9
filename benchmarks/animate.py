"""Speed and memory of `meshtalk animate`: random weights of the release's sizes, MeshTalk topology.

Side by side in one run, on the CPU:

1. for the real sentence in ../shared/reference/speech, and for it repeated to 10 s and 60 s, with
   the sampler's float weights (animate's default) and its int8 weights (--int8): the seconds of
   sampling alone (a `PriorSampler` over the same audio codes, nothing else; the faster of one and
   two torch threads), the wall-clock seconds of the whole `animate` without video, their ratio
   (the issue's target: at most 1.25), the busy seconds of each stage inside `animate` (loading,
   audio codes, sampling, decoding, smoothing, writing npz + PC2; sampling, decoding + smoothing
   and writing overlap in three threads), and the real-time factor with and without video;
2. render frames per second at 640x480 (MeshRenderer alone) and rendering + H.264 encoding
   (`render_video`, with the speech);
3. peak resident memory of a child process (`meshtalk animate --int8`) animating 3 and 30
   minutes of speech with the video (and 120 minutes with `--hours-long`, with or without the
   video), each beside its ratio to the 3-minute row: memory must not grow with the length of
   the speech (target: ratio within 1.2, peak below 1536 MB).

    python benchmarks/animate.py [--hours-long [--long-no-video]] [--memory-only] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile
import torch
from _measure import add_json_option, check_json, peak_tree_rss, write_json
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT.parent / "shared" / "reference"
SPEECH = REFERENCE / "speech" / "example_sentence.wav"
TOPOLOGY = REFERENCE / "meshtalk_topology"
STAGES = ("load", "audio_codes", "sampling", "decoding", "smoothing", "writing", "video")


def release_run(folder: Path) -> Path:
    """A run folder with the release's sizes, random weights and the MeshTalk topology's masks."""
    from dataclasses import replace

    from meshtalk.models.config import latent_preset
    from meshtalk.models.latent import LatentAutoencoder
    from meshtalk.models.prior import ContextModel, prior_preset
    from meshtalk.pipelines import checkpoint as ckpt
    from meshtalk.pipelines.data.masks import REFERENCE_MASK_FILES
    from meshtalk.pipelines.frontend import AudioFrontEnd
    from meshtalk.pipelines.io.mesh import read_mesh

    torch.manual_seed(0)
    sizes = replace(latent_preset("release"), mel_mean=-6.0, mel_std=3.0)
    latent, prior = LatentAutoencoder(sizes).eval(), ContextModel(prior_preset("release")).eval()
    front_end = AudioFrontEnd(mel=sizes.mel).with_statistics(sizes.mel_mean, sizes.mel_std)
    template = read_mesh(TOPOLOGY / "face_template.obj").vertices
    with torch.no_grad():  # statistics of the right scale, so the decoded faces look like faces
        latent.set_statistics(torch.from_numpy(template), torch.ones(len(template), 3))
    stage1 = {
        name: (
            getattr(latent, name),
            {
                "component": name,
                "stage": "latent",
                "model": sizes.to_dict(),
                "front_end": front_end.to_dict(),
            },
        )  # fmt: skip
        for name in ("encoder", "decoder")
    }
    ckpt.write_checkpoint(folder / "latent", stage1, None, {"stage": "latent", "step": 0})
    stage2 = {
        "prior": (
            prior,
            {
                "component": "prior",
                "stage": "prior",
                "model": prior.config.to_dict(),
                "latent": {"model": sizes.to_dict()},
            },
        )  # fmt: skip
    }
    ckpt.write_checkpoint(folder / "prior", stage2, None, {"stage": "prior", "step": 0})
    masks = {
        name: np.loadtxt(TOPOLOGY / file).astype(np.float32).ravel()
        for name, file in REFERENCE_MASK_FILES.items()
    }
    ckpt.save_topology(folder, masks, template, "random")
    return folder


def speech_file(folder: Path, seconds: float | None) -> Path:
    """The reference sentence (None), or it repeated to `seconds`, as a 16 kHz WAV (written a
    repeat at a time, so that hours of it cost this process no memory)."""
    if seconds is None:
        return SPEECH
    from meshtalk.pipelines.io.audio import load_audio

    sentence = load_audio(SPEECH)
    path = folder / f"speech_{seconds:g}s.wav"
    remaining = int(seconds * 16000)
    with soundfile.SoundFile(path, "w", 16000, 1, "PCM_16") as file:
        while remaining > 0:
            file.write(sentence[:remaining])
            remaining -= min(remaining, sentence.size)
    return path


def stage_seconds(run: Path, speech: Path, out: Path, video: bool, int8: bool = True) -> dict:
    """Animate once: the wall-clock seconds and each stage's busy seconds."""
    from meshtalk.pipelines.inference.animate import AnimateConfig, animate

    config = AnimateConfig(
        speech=speech,
        template=TOPOLOGY / "face_template.obj",
        output=out,
        model=run,
        int8=int8,
        device="cpu",
        video=video,
        force=True,
    )
    start = time.perf_counter()
    result = animate(config)
    wall = time.perf_counter() - start
    return {"frames": result.frames, "duration_s": result.duration_s, "wall_s": wall,
            **result.seconds}  # fmt: skip


def sampling_alone(run_dir: Path, speech: Path, int8: bool) -> float:
    """Seconds of the sampler alone over the speech's audio codes (the faster thread setting)."""
    from meshtalk.models.sampler import PriorSampler
    from meshtalk.pipelines.checkpoint import load_run
    from meshtalk.pipelines.inference.animate import CHUNK_FRAMES
    from meshtalk.pipelines.io.audio import load_audio

    run = load_run(run_dir, torch.device("cpu"))
    threads = torch.get_num_threads()
    best = float("inf")
    with torch.inference_mode():
        codes = run.front_end.audio_codes(run.latent.encoder.audio_encoder, load_audio(speech))
        for count in sorted({1, threads}):
            torch.set_num_threads(count)
            start = time.perf_counter()
            sampler = PriorSampler(run.prior, weights="int8" if int8 else "float")
            for first in range(0, codes.shape[1], CHUNK_FRAMES):
                sampler.push(codes[:, first : first + CHUNK_FRAMES])
            best = min(best, time.perf_counter() - start)
    torch.set_num_threads(threads)
    return best


def render_rate(frames: int = 300) -> float:
    """Frames per second of MeshRenderer alone at 640x480 on the MeshTalk template."""
    from meshtalk.pipelines.io.mesh import read_mesh
    from meshtalk.pipelines.render import MeshRenderer

    mesh = read_mesh(TOPOLOGY / "face_template.obj")
    rng = np.random.default_rng(0)
    with MeshRenderer(mesh.faces, mesh.vertices, size=(640, 480)) as renderer:
        renderer.render(mesh.vertices)  # warm up
        start = time.perf_counter()
        for _ in range(frames):
            moved = mesh.vertices + rng.normal(scale=0.5, size=mesh.vertices.shape)
            renderer.render(moved.astype(np.float32))
        return frames / (time.perf_counter() - start)


def peak_memory(run: Path, speech: Path, out: Path, video: bool) -> tuple[int, float]:
    """Peak RSS (bytes) and wall seconds of `meshtalk animate --int8` in a child process."""
    command = [
        sys.executable, "-m", "meshtalk.cli.main", "animate", str(speech),
        str(TOPOLOGY / "face_template.obj"), "-o", str(out), "--model", str(run),
        "--int8", "--device", "cpu", "--no-progress", "--force",
    ]  # fmt: skip
    if not video:
        command.append("--no-video")
    return peak_tree_rss(subprocess.Popen(command, stdout=subprocess.DEVNULL))


def long_speech_rows(tmp: Path, run: Path, lengths: list[tuple[float, bool]]) -> list[dict]:
    """Peak RSS of animating each (minutes, with video) of speech, beside the first row's with the
    same video setting."""
    rows = []
    for minutes, video in lengths:
        speech = speech_file(tmp, minutes * 60)
        peak, wall = peak_memory(run, speech, tmp / "long", video)
        speech.unlink()
        rows.append({"speech_minutes": minutes, "with_video": video,
                     "peak_rss_mb": peak / 2**20, "wall_s": wall})  # fmt: skip
    for row in rows:
        first = next(r for r in rows if r["with_video"] == row["with_video"])
        row["shortest_minutes_alike"] = first["speech_minutes"]
        row["peak_rss_over_shortest_alike"] = row["peak_rss_mb"] / first["peak_rss_mb"]
    return rows


def print_long_rows(console: Console, rows: list[dict]) -> None:
    table = Table(title="meshtalk animate --int8 of long speech: peak memory (child process tree)")
    for column in ("speech", "video", "peak RSS (MB)", "ratio", "wall (s)"):
        table.add_column(column, justify="right")
    for row in rows:
        table.add_row(
            f"{row['speech_minutes']:g} min", "with video" if row["with_video"] else "no video",
            f"{row['peak_rss_mb']:.0f}",
            f"{row['peak_rss_over_shortest_alike']:.3f} of {row['shortest_minutes_alike']:g} min",
            f"{row['wall_s']:.0f}",
        )  # fmt: skip
    console.print(table)
    console.print(
        "ratio: the peak over the shortest row's with the same video setting; target: every "
        "ratio within 1.2 and every peak below 1536 MB"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--hours-long", action="store_true", help="also 120 minutes of speech (an hour or more)"
    )
    parser.add_argument(
        "--long-no-video", action="store_true", help="the 120-minute row without the video"
    )
    parser.add_argument(
        "--memory-only", action="store_true", help="only the long-speech memory rows"
    )
    add_json_option(parser)
    args = parser.parse_args()
    check_json(parser, args)
    console = Console()
    figures: dict = {"threads": torch.get_num_threads(), "runs": []}
    lengths = [(3.0, True), (30.0, True)]
    if args.hours_long:
        lengths += [(3.0, False), (120.0, False)] if args.long_no_video else [(120.0, True)]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        run = release_run(tmp / "run")
        figures["long_speech_memory"] = long_speech_rows(tmp, run, lengths)
        print_long_rows(console, figures["long_speech_memory"])
        if args.memory_only:
            if args.json:
                write_json(args.json, json.dumps(figures, indent=2) + "\n")
            return
        stage_seconds(run, speech_file(tmp, None), tmp / "out", video=False)  # warm up
        for label, seconds in (("sentence", None), ("10 s", 10.0), ("60 s", 60.0)):
            speech = speech_file(tmp, seconds)
            for weights in ("float", "int8"):
                int8 = weights == "int8"
                row = stage_seconds(run, speech, tmp / "out", video=False, int8=int8)
                row.update(speech=label, weights=weights)
                row["sampling_alone_s"] = sampling_alone(run, speech, int8)
                row["animate_over_sampling_alone"] = row["wall_s"] / row["sampling_alone_s"]
                row["rtf"] = row["duration_s"] / row["wall_s"]
                figures["runs"].append(row)
        sentence = stage_seconds(run, speech_file(tmp, None), tmp / "out", video=True)
        figures["render_fps"] = render_rate()
        figures["render_encode_fps"] = sentence["frames"] / sentence["video"]
    table = Table(title="meshtalk animate, release sizes (random weights), CPU")
    columns = ("speech", "weights", "frames", "sampling alone", "animate", "ratio", *STAGES[:-1])
    for column in (*columns, "RTF", "RTF + video"):
        table.add_column(column, justify="right")
    for row in figures["runs"]:
        video = row["frames"] / figures["render_encode_fps"]
        row["rtf_with_video"] = row["duration_s"] / (row["wall_s"] + video)
        table.add_row(
            row["speech"], row["weights"], str(row["frames"]), f"{row['sampling_alone_s']:.2f}",
            f"{row['wall_s']:.2f}", f"{row['animate_over_sampling_alone']:.2f}",
            *(f"{row[k]:.2f}" for k in STAGES[:-1]),
            f"{row['rtf']:.1f}x", f"{row['rtf_with_video']:.1f}x",
        )  # fmt: skip
    console.print(table)
    console.print(
        "seconds; ratio = animate's wall clock without video / sampling alone (target <= 1.25); "
        "the stage columns are busy seconds inside animate (sampling, decoding + smoothing and "
        "writing run side by side); RTF + video adds the sentence's render + encode rate"
    )
    console.print(
        f"render {figures['render_fps']:.0f} frames/s at 640x480; render + H.264 + AAC "
        f"{figures['render_encode_fps']:.0f} frames/s (target >= 60)"
    )
    print_long_rows(console, figures["long_speech_memory"])
    if args.json:
        write_json(args.json, json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
