"""Speed and memory of `meshtalk animate`: random weights of the release's sizes, MeshTalk topology.

Side by side in one run, on the CPU:

1. for the real sentence in ../shared/reference/speech, and for it repeated to 10 s and 60 s, with
   the sampler's float weights (animate's default) and its int8 weights (--int8): the seconds of
   sampling alone (a `PriorSampler` over the same audio codes, nothing else; the faster of one and
   two torch threads), the wall-clock seconds of the whole `animate` without video, their ratio
   (the issue's target: at most 1.25), the busy seconds of each stage inside `animate` (loading,
   audio codes, sampling, decoding, smoothing, writing npz + PC2; sampling, decoding + smoothing
   and writing overlap in three threads), the CPU seconds of both and the lowest ratio that
   animate's CPU time allows on the cores there are (its CPU seconds / cores / sampling alone),
   and the real-time factor;
2. with the video, 10 s and 60 s of speech to an mp4 (target: 60 s in at most 20 s with the
   default settings): the wall clock, the wait for the video process after the last frame, and
   beside it the earlier path (animate without video, then `render_video` from the npz in this
   process with x264 veryfast);
3. render + encode alone: the video process (`VideoStage`) fed 960 frames of that animation,
   beside the earlier path (`render_video` in this process with x264 veryfast; target >= 100
   frames/s), and MeshRenderer alone at 640x480;
4. x264 settings on the sentence's frames: encoding frames/s, megabytes per minute, PSNR against
   the rendered frames and against the earlier setting's;
5. peak resident memory of a child process (`meshtalk animate --int8`) animating 3 and 30
   minutes of speech with the video (`--memory-minutes`; and 120 minutes with `--hours-long`,
   with or without the video), each beside its ratio to the 3-minute row: memory must not grow
   with the length of the speech (target: ratio within 1.2, peak below 1536 MB).

    python benchmarks/animate.py [--memory-minutes 3,30] [--hours-long [--long-no-video]]
        [--memory-only] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile
import torch
from _measure import add_json_option, check_json, peak_tree_rss, run_main, write_json
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT.parent / "shared" / "reference"
SPEECH = REFERENCE / "speech" / "example_sentence.wav"
TOPOLOGY = REFERENCE / "meshtalk_topology"
STAGES = ("load", "audio_codes", "sampling", "decoding", "smoothing", "writing", "video")
EARLIER_OPTIONS = {"preset": "veryfast", "crf": "20"}
"""The x264 setting of animate's videos before #34."""
ALTERNATIVES = [("superfast", {"preset": "superfast", "crf": "20"})]
"""Other settings measured beside them."""


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
    start, cpu = time.perf_counter(), cpu_seconds()
    result = animate(config)
    wall = time.perf_counter() - start
    return {"frames": result.frames, "duration_s": result.duration_s, "wall_s": wall,
            "cpu_s": cpu_seconds() - cpu, **result.seconds}  # fmt: skip


def cpu_seconds() -> float:
    """CPU seconds this process has used so far, all its threads, user and system."""
    times = os.times()
    return times.user + times.system


def sampling_alone(run_dir: Path, speech: Path, int8: bool) -> dict[int, tuple[float, float]]:
    """Seconds and CPU seconds of the sampler alone over the speech's audio codes, for one and for
    all of torch's threads."""
    from meshtalk.models.sampler import PriorSampler
    from meshtalk.pipelines.checkpoint import load_run
    from meshtalk.pipelines.inference.animate import CHUNK_FRAMES
    from meshtalk.pipelines.io.audio import load_audio

    run = load_run(run_dir, torch.device("cpu"))
    threads = torch.get_num_threads()
    seconds = {}
    with torch.inference_mode():
        codes = run.front_end.audio_codes(run.latent.encoder.audio_encoder, load_audio(speech))
        # Warmed up first, so that the first setting timed does not pay torch's first calls.
        warm = PriorSampler(run.prior, weights="int8" if int8 else "float")
        warm.push(codes[:, :CHUNK_FRAMES])
        for count in sorted({1, threads}):
            torch.set_num_threads(count)
            start, cpu = time.perf_counter(), cpu_seconds()
            sampler = PriorSampler(run.prior, weights="int8" if int8 else "float")
            for first in range(0, codes.shape[1], CHUNK_FRAMES):
                sampler.push(codes[:, first : first + CHUNK_FRAMES])
            seconds[count] = (time.perf_counter() - start, cpu_seconds() - cpu)
    torch.set_num_threads(threads)
    return seconds


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


def video_alone(animation: Path, frames: int) -> dict:
    """Render + encode alone, frames/s: the video process (`VideoStage`, as animate runs it) fed
    the first `frames` frames of an animation npz, beside the earlier path (`render_video` in this
    process with the earlier x264 setting, veryfast) on the same frames."""
    from meshtalk.pipelines.export.npz import iter_rows
    from meshtalk.pipelines.io import video as video_module
    from meshtalk.pipelines.render import render_video
    from meshtalk.pipelines.render.stage import VideoStage

    with np.load(animation, allow_pickle=False) as archive:
        faces, template = archive["faces"], archive["template"]
    count = (frames // 64) * 64

    def chunks():
        return (rows for rows, _ in zip(iter_rows(animation, "vertices", 64), range(count // 64)))

    out = animation.parent / "alone"
    out.mkdir(exist_ok=True)
    start = time.perf_counter()
    with VideoStage([out / "stage.mp4"], faces, template, fps=30, audio_rate=16000,
                    size=(640, 480), audio=False) as stage:  # fmt: skip
        for chunk in chunks():
            stage.write([chunk])
        stage.finish([None])
    stage_fps = count / (time.perf_counter() - start)
    options = video_module.VIDEO_OPTIONS
    video_module.VIDEO_OPTIONS = EARLIER_OPTIONS
    try:
        start = time.perf_counter()
        render_video(chunks(), faces, out / "earlier.mp4", fps=30, template=template)
        earlier_fps = count / (time.perf_counter() - start)
    finally:
        video_module.VIDEO_OPTIONS = options
    return {"frames": count, "video_process_fps": stage_fps,
            "earlier_in_process_fps": earlier_fps, "speedup": stage_fps / earlier_fps}  # fmt: skip


def earlier_video(animation: Path) -> float:
    """Seconds of the earlier path's video: `render_video` from the npz after the animation, in
    this process, x264 veryfast, with the npz's speech."""
    from meshtalk.pipelines.export.npz import iter_rows
    from meshtalk.pipelines.io import video as video_module
    from meshtalk.pipelines.render import render_video

    with np.load(animation, allow_pickle=False) as archive:
        faces, template = archive["faces"], archive["template"]
    options = video_module.VIDEO_OPTIONS
    video_module.VIDEO_OPTIONS = EARLIER_OPTIONS
    try:
        start = time.perf_counter()
        audio = iter_rows(animation, "audio", 1 << 16)
        path = animation.parent / "earlier.mp4"
        frames = iter_rows(animation, "vertices")
        render_video(frames, faces, path, fps=30, audio=audio, template=template)
        return time.perf_counter() - start
    finally:
        video_module.VIDEO_OPTIONS = options


def encoder_quality(animation: Path) -> list[dict]:
    """The x264 settings side by side on an animation's frames: encoding frames/s (one thread),
    bytes per minute, and PSNR (RGB, dB) of the decoded frames against the rendered ones and
    against the earlier setting's."""
    import io

    import av

    from meshtalk.pipelines.io.video import VIDEO_OPTIONS
    from meshtalk.pipelines.render import MeshRenderer

    with np.load(animation, allow_pickle=False) as archive:
        vertices, faces, template = archive["vertices"], archive["faces"], archive["template"]
    with MeshRenderer(faces, template, size=(640, 480)) as renderer:
        rendered = [renderer.render(frame) for frame in vertices]

    def encode(options: dict) -> tuple[float, int, list]:
        buffer = io.BytesIO()
        with av.open(buffer, "w", format="mp4") as container:
            stream = container.add_stream("libx264", rate=30, options=options)
            stream.width, stream.height, stream.pix_fmt = 640, 480, "yuv420p"
            stream.codec_context.thread_count = 1
            start = time.perf_counter()
            for index, image in enumerate(rendered):
                frame = av.VideoFrame.from_ndarray(image, format="rgb24")
                frame.pts = index
                container.mux(stream.encode(frame))
            container.mux(stream.encode(None))
            seconds = time.perf_counter() - start
        size = buffer.getbuffer().nbytes
        buffer.seek(0)
        with av.open(buffer) as container:
            frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]
        return seconds, size, frames

    def psnr(first, second) -> float:
        error = np.mean([(a.astype(np.float64) - b) ** 2 for a, b in zip(first, second)])
        return float(10 * np.log10(255**2 / error))

    rows, earlier = [], None
    settings = [("earlier", EARLIER_OPTIONS), ("animate's", VIDEO_OPTIONS), *ALTERNATIVES]
    for label, options in settings:
        seconds, size, frames = encode(options)
        earlier = frames if earlier is None else earlier
        rows.append({
            "setting": label, "x264_options": options,
            "encode_fps_one_thread": len(frames) / seconds,
            "megabytes_per_minute": size / 1e6 * 1800 / len(frames),
            "psnr_db_vs_rendered": psnr(frames, rendered),
            "psnr_db_vs_earlier": None if label == "earlier" else psnr(frames, earlier),
        })  # fmt: skip
    return rows


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
    parser.add_argument(
        "--memory-minutes", default="3,30",
        help="minutes of speech of the memory rows, comma-separated ('' for none)",
    )  # fmt: skip
    add_json_option(parser)
    args = parser.parse_args()
    check_json(parser, args)
    console = Console()
    figures: dict = {"threads": torch.get_num_threads(), "runs": [], "with_video": []}
    lengths = [(float(m), True) for m in args.memory_minutes.split(",") if m.strip()]
    if args.hours_long:
        lengths += [(3.0, False), (120.0, False)] if args.long_no_video else [(120.0, True)]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        run = release_run(tmp / "run")
        figures["long_speech_memory"] = long_speech_rows(tmp, run, lengths)
        if lengths:
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
                alone = sampling_alone(run, speech, int8)
                faster = min(alone.values())  # the faster thread setting
                row["sampling_alone_s"], row["sampling_alone_cpu_s"] = faster
                row["sampling_alone_one_thread_s"] = alone[1][0]  # as inside animate
                row["animate_over_sampling_alone"] = row["wall_s"] / row["sampling_alone_s"]
                row["animate_over_sampling_alone_one_thread"] = row["wall_s"] / alone[1][0]
                # The lowest ratio animate's own CPU time allows on these cores, all of it
                # overlapped perfectly: above 1.25 the target needs less work, not more overlap.
                row["cores"] = len(os.sched_getaffinity(0))
                row["ratio_floor_from_cpu_time"] = (
                    row["cpu_s"] / row["cores"] / row["sampling_alone_s"]
                )
                row["rtf"] = row["duration_s"] / row["wall_s"]
                figures["runs"].append(row)
        for label, seconds in (("10 s", 10.0), ("60 s", 60.0)):
            speech = speech_file(tmp, seconds)
            for weights in ("float", "int8"):
                row = stage_seconds(run, speech, tmp / "video", video=True, int8=weights == "int8")
                row.update(speech=label, weights=weights, default_settings=weights == "int8")
                # The earlier path side by side: animate without video, then the video rendered
                # from the npz in this process with x264 veryfast.
                alike = next(r for r in figures["runs"] if r["speech"] == label
                             and r["weights"] == weights)  # fmt: skip
                row["earlier_video_after_s"] = earlier_video(tmp / "video" / "animation.npz")
                row["earlier_path_s"] = alike["wall_s"] + row["earlier_video_after_s"]
                row["earlier_path_over_now"] = row["earlier_path_s"] / row["wall_s"]
                figures["with_video"].append(row)
        figures["render_encode_alone"] = video_alone(tmp / "video" / "animation.npz", 960)
        figures["render_fps"] = render_rate()
        stage_seconds(run, speech_file(tmp, None), tmp / "sentence", video=False)
        figures["encoders"] = encoder_quality(tmp / "sentence" / "animation.npz")
    figures["uptime_load_average"] = list(os.getloadavg())
    print_tables(console, figures)
    if args.json:
        write_json(args.json, json.dumps(figures, indent=2) + "\n")


def print_tables(console: Console, figures: dict) -> None:
    table = Table(title="meshtalk animate --no-video, release sizes (random weights), CPU")
    columns = ("speech", "weights", "frames", "sampling alone", "1 thread", "animate", "ratio",
               "ratio 1 thread", "CPU s", "floor", *STAGES[:-1])  # fmt: skip
    for column in (*columns, "RTF"):
        table.add_column(column, justify="right")
    for row in figures["runs"]:
        table.add_row(
            row["speech"], row["weights"], str(row["frames"]), f"{row['sampling_alone_s']:.2f}",
            f"{row['sampling_alone_one_thread_s']:.2f}", f"{row['wall_s']:.2f}",
            f"{row['animate_over_sampling_alone']:.2f}",
            f"{row['animate_over_sampling_alone_one_thread']:.2f}",
            f"{row['sampling_alone_cpu_s']:.2f} / {row['cpu_s']:.2f}",
            f"{row['ratio_floor_from_cpu_time']:.2f}",
            *(f"{row[k]:.2f}" for k in STAGES[:-1]), f"{row['rtf']:.1f}x",
        )  # fmt: skip
    console.print(table)
    console.print(
        "seconds; ratio = animate's wall clock without video / sampling alone, the faster of one "
        "and two torch threads (target <= 1.25); ratio 1 thread: over sampling alone with one "
        "thread, as animate samples; CPU s: CPU seconds of sampling alone (the faster setting) / "
        "of animate; floor: animate's CPU seconds / the cores / sampling alone, the lowest ratio "
        "that work allows even if every stage overlapped perfectly; "
        "the stage columns are busy seconds inside animate (sampling, decoding + smoothing and "
        "writing run side by side)"
    )
    table = Table(title="meshtalk animate with the video (speech to an mp4)")
    for column in ("speech", "weights", "wall (s)", "sampling", "wait for the video", "RTF",
                   "earlier path (s)", "earlier / now"):  # fmt: skip
        table.add_column(column, justify="right")
    for row in figures["with_video"]:
        weights = row["weights"] + (" (default)" if row["default_settings"] else "")
        table.add_row(
            row["speech"], weights, f"{row['wall_s']:.2f}", f"{row['sampling']:.2f}",
            f"{row['video']:.2f}", f"{row['duration_s'] / row['wall_s']:.1f}x",
            f"{row['earlier_path_s']:.2f}", f"{row['earlier_path_over_now']:.2f}",
        )  # fmt: skip
    console.print(table)
    alone = figures["render_encode_alone"]
    console.print(
        "target: 60 s of speech to an mp4 in <= 20 s with the default settings; render + encode "
        f"alone: the video process {alone['video_process_fps']:.0f} frames/s (target >= 100), "
        f"the earlier path {alone['earlier_in_process_fps']:.0f} ({alone['speedup']:.2f}x), "
        f"{alone['frames']} frames; MeshRenderer alone {figures['render_fps']:.0f} frames/s"
    )
    table = Table(title="x264 settings on the sentence's frames (640x480)")
    for column in ("setting", "options", "encode fps (1 thread)", "MB/min", "PSNR vs rendered",
                   "PSNR vs earlier"):  # fmt: skip
        table.add_column(column, justify="right")
    for row in figures["encoders"]:
        options = " ".join(f"{k}={v}" for k, v in row["x264_options"].items())
        table.add_row(
            row["setting"], options, f"{row['encode_fps_one_thread']:.0f}",
            f"{row['megabytes_per_minute']:.2f}", f"{row['psnr_db_vs_rendered']:.2f}",
            "-" if row["psnr_db_vs_earlier"] is None else f"{row['psnr_db_vs_earlier']:.2f}",
        )  # fmt: skip
    console.print(table)
    console.print(f"load average (1, 5, 15 min) at the end: {figures['uptime_load_average']}")
    if figures["long_speech_memory"]:
        print_long_rows(console, figures["long_speech_memory"])


if __name__ == "__main__":
    run_main(main)
