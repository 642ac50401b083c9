"""`meshtalk animate`: speech + a template mesh -> an animation in files people open (SPEC 6).

audio -> audio codes (the run's front end) -> codes sampled by the prior, frame by frame
(`PriorSampler`, N takes side by side) -> decoded onto the template (the decoder's LSTM state
carried from chunk to chunk) -> forehead and neck smoothed over time -> written as they come:

    OUT/animation.npz     vertices (T, V, 3) float32 in the template's units, faces, template, fps,
                          frame_times (s), codes (T, H), audio (16 kHz float32), audio_rate and
                          provenance (a JSON string)
    OUT/animation.pc2     the same vertices as a PC2 point cache (times --scale)
    OUT/template.ply|obj  the template, in the format of the one given (times --scale)
    OUT/frames/           with --frames ply|obj: one mesh per frame (times --scale)
    OUT/animation.glb|usdz|usdc  with --formats: GLB/USD in metres (+ animation.wav; export/formats)
    OUT/animation.mp4     unless --no-video: the face front-on with the speech

With --takes N > 1 each take gets these files in OUT/take_<i>/. Every stage works on chunks of
frames and the speech is read in blocks (a first pass checks it and measures its loudness, then
its audio codes are computed a chunk at a time as the sampler needs them, and the npz's audio and
the video's AAC track are streamed), so memory does not grow with the length of the speech; all
files appear at once, at the end (`OutputFolder`).
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from meshtalk.pipelines.errors import MeshtalkError
from meshtalk.pipelines.export.formats import ExportOptions
from meshtalk.pipelines.export.npz import Rows
from meshtalk.pipelines.inference.generate import generate
from meshtalk.pipelines.inference.head import head_for
from meshtalk.pipelines.inference.output import OutputFolder, export_problems
from meshtalk.pipelines.inference.smoothing import SMOOTHED_REGIONS, RegionSmoother
from meshtalk.pipelines.inference.writer import TakeWriter
from meshtalk.pipelines.io.heap import bound_heap
from meshtalk.pipelines.io.mesh import Mesh, read_mesh, surface_problem
from meshtalk.pipelines.render.colours import video_mesh
from meshtalk.pipelines.render.stage import VideoStage

log = logging.getLogger(__name__)

CHUNK_FRAMES = 64
"""Frames sampled, decoded, smoothed and written at a time (5 MB of release-size vertices; small
enough that the three stages overlap on short clips too)."""
CHUNK_BYTES = 128 << 20
"""At most about this much float32 mesh data per chunk of frames (fewer frames for large meshes)."""
MAX_TAKES = 64
"""More takes than this are a typo rather than a wish (each is a full set of files)."""
VIDEO_SIZE = (640, 480)
"""Width and height of the video."""


@dataclass(kw_only=True)
class AnimateConfig(ExportOptions):
    """One `meshtalk animate` run."""

    speech: Path | None = None
    """Audio file of any common format, rate and channel count (None with `example`)."""
    channel: int | None = None
    """The channel of the speech to animate (0 = first); None averages them."""
    example: bool = False
    """Animate the bundled speech clip (a sentence spoken by eSpeak NG) instead of `speech`."""
    output: Path
    """Output folder (created; see the module docstring for what it holds)."""
    template: Path | None = None
    """PLY or OBJ mesh of the model's topology (vertex order as trained); its faces are used.
    None: the bundled default model's head (only with the bundled model)."""
    model: Path | None = None
    """A trained run folder with a prior (stage 2). None: the bundled default model (trained on
    synthetic speech of the ICT-FaceKit head, for trying the toolkit)."""
    seed: int = 0
    """Seed of the sampler's noise: the same seed gives the same animation on the same device."""
    temperature: float = 1.0
    """Logits are divided by it before drawing (below 1: closer to the most likely codes)."""
    argmax: bool = False
    """Take the most likely code at every step instead of drawing (deterministic)."""
    takes: int = 1
    """Samples of the same speech, each in its own folder OUT/take_<i>/ (1: directly in OUT)."""
    int8: bool | None = None
    """Sample with int8 weights (CPU only; about 4x fewer bytes read per step); None: int8 on the
    CPU, float elsewhere (int8's animations differ from float's by about 0.01 mm at the lips where
    two float takes differ by 0.6 mm: benchmarks/int8_default.py)."""
    device: str = "auto"
    """auto, cpu, cuda or mps."""
    smooth: bool | None = None
    """Smooth forehead and neck over time as the release does; None: when the run has masks."""
    frames: str | None = None
    """Also write one mesh per frame: 'ply' or 'obj' (None: none)."""
    video: bool = True
    """Render OUT/animation.mp4 with the speech."""
    scale: float = 1.0
    """Multiplies the PC2, template and per-frame exports (0.001: millimetres to metres);
    animation.npz stays in the template's units."""
    force: bool = False
    """Write into a folder holding other files or an earlier animation (only animate's own files
    are replaced)."""
    size: tuple[int, int] = VIDEO_SIZE
    """Video width and height in pixels (even)."""
    progress: bool = False
    """Show progress bars."""
    chunk_frames: int = CHUNK_FRAMES
    """Frames processed at a time."""
    allow_transfer: bool = True
    """A template of another topology than the model's: animate the model's own template and
    transfer the motion onto it (False: refuse it, as before)."""
    transfer: Path | None = None
    """A transfer.npz of an earlier run onto the same mesh, reused instead of registering again."""
    landmarks: Path | None = None
    """Landmark pairs (model template, mesh) for the registration (see `meshtalk retarget`)."""

    def __post_init__(self) -> None:
        from meshtalk.pipelines.data.resources import default_model

        problems = []
        if self.example:
            if self.speech is not None:
                problems.append("give either SPEECH or --example, not both")
            self.speech = default_model.example_path()
        elif self.speech is None:
            raise MeshtalkError(None, "give a SPEECH file to animate (or --example)")
        if self.model is None:
            self.model = default_model.run_path()
        if self.template is None and default_model.is_bundled(self.model):
            self.template = default_model.default_template()  # the default or its twin
        elif self.template is None:
            problems.append("give the template mesh of --model's topology (TEMPLATE)")
            self.template = Path()
        self.speech, self.template = Path(self.speech), Path(self.template)
        self.output, self.model = Path(self.output), Path(self.model)
        if not (isinstance(self.temperature, int | float) and self.temperature > 0):
            problems.append(f"--temperature must be positive, got {self.temperature}")
        elif not math.isfinite(self.temperature):
            problems.append(f"--temperature must be finite, got {self.temperature}")
        if not 1 <= self.takes <= MAX_TAKES:
            problems.append(f"--takes must be between 1 and {MAX_TAKES}, got {self.takes}")
        problems += export_problems(self.size, self.chunk_frames, self.frames, self.scale, self)
        if not self.allow_transfer and (self.transfer is not None or self.landmarks is not None):
            problems.append("--transfer and --landmarks go without --no-transfer")
        if self.channel is not None and not (
            isinstance(self.channel, int)
            and not isinstance(self.channel, bool)
            and self.channel >= 0
        ):
            problems.append(f"--channel must be 0 or more (0 is the first), got {self.channel}")
        if not 0 <= self.seed < 2**63:
            problems.append(f"--seed must be between 0 and 2^63 - 1, got {self.seed}")
        if problems:
            raise MeshtalkError(None, "; ".join(problems))


@dataclass
class AnimateResult:
    """What `animate` wrote and how long each stage took."""

    output: Path
    """OUT."""
    folders: list[Path]
    """Each take's folder (OUT itself for one take)."""
    frames: int
    """T, frames of the animation."""
    duration_s: float
    """Length of the speech."""
    seconds: dict[str, float] = field(default_factory=dict)
    """Busy seconds per stage: load, audio_codes, sampling, decoding, smoothing, writing (these
    four overlap), and video: the wait for the video process after the last frame."""


def run(config: AnimateConfig) -> Path:
    """Animate; returns the output folder."""
    return animate(config).output


def animate(config: AnimateConfig) -> AnimateResult:
    """Animate, returning where the files went and the time of each stage."""
    import torch

    from meshtalk.pipelines.checkpoint import load_run
    from meshtalk.pipelines.frontend_stream import stream_audio_codes
    from meshtalk.pipelines.train.loop import resolve_device
    from meshtalk.pipelines.transfer.picture import face_orientation

    bound_heap()  # hours of frames freed in three threads must not grow the heap
    seconds: dict[str, float] = dict.fromkeys(
        ("load", "audio_codes", "sampling", "decoding", "smoothing", "writing", "video"), 0.0
    )
    started = time.perf_counter()
    out = OutputFolder(config.output, "animate", force=config.force)
    out.check()  # before any work: a wrong -o is found at once
    device = resolve_device(config.device)
    if config.int8 and device.type != "cpu":
        raise MeshtalkError(None, f"--int8 samples on the CPU; --device resolved to {device.type}")
    config = copy.copy(config)  # the caller's keeps its None
    config.int8 = device.type == "cpu" if config.int8 is None else config.int8
    template = read_mesh(config.template)
    run = load_run(config.model, device)
    if run.prior is None:
        raise MeshtalkError(
            config.model, "has no prior (stage 2): train one with meshtalk train prior"
        )
    template, mapping, transfer = _model_template(config, run, template)
    if transfer is None and (config.video or len(template.faces)):  # a transfer checked its own
        problem = surface_problem(template)  # a point cloud animates without a video
        if problem is not None:
            raise MeshtalkError(config.template, problem)
    speech, scan = _speech_reader(config.speech, run.front_end, config.channel)
    seconds["load"] = time.perf_counter() - started
    smoother_masks = _smoothing_masks(config, run)
    front_end = run.front_end
    total = front_end.frame_count(scan.samples)
    fps = front_end.frame_rate()
    log.info(
        "%s: %.2f s of speech, %d frames at %.2f fps, %d take(s)",
        config.speech,
        scan.samples / front_end.sample_rate,
        total,
        float(fps),
        config.takes,
    )
    provenance = _provenance(config, run)
    if transfer is not None:
        provenance["transfer"] = transfer.transfer.info
    with out.writing() as partial, torch.inference_mode():
        folders = (
            [partial] if config.takes == 1 else [partial / f"take_{i}" for i in range(config.takes)]
        )
        audio_codes = stream_audio_codes(
            front_end,
            run.latent.encoder.audio_encoder,
            speech.sample_range(),
            scan.samples,
            scan.mean_abs,
        )
        suffix = config.template.suffix.lower()
        target = getattr(mapping, "mesh", template) if transfer is None else transfer.mesh
        # A million-vertex head: fewer frames per chunk, so that the chunks queued between the
        # stages stay small (a chunk of 64 frames of 1.6M vertices is 1.2 GB).
        config.chunk_frames = max(
            1, min(config.chunk_frames, CHUNK_BYTES // (12 * max(1, len(target.vertices))))
        )
        if transfer is not None:
            transfer.save(partial)
        orientation = None if transfer is None else face_orientation(transfer.transfer)
        writers = [
            TakeWriter(folder, target, suffix, total, config.frames, config.scale, mapping,
                       orientation, exports=config)
            for folder in folders
        ]  # fmt: skip
        smoothers = [RegionSmoother(smoother_masks) for _ in folders] if smoother_masks else None
        with contextlib.ExitStack() as stack:
            stack.push(_abandon(writers))  # on an error: nothing left open in the partial folder
            video = None
            if config.video:  # drawn and encoded in a child process while the sampler runs
                faces, colours = video_mesh(target, getattr(mapping, "parts", None))
                video = stack.enter_context(
                    VideoStage(
                        [folder / "animation.mp4" for folder in folders],
                        faces,
                        target.vertices,
                        fps=fps,
                        audio_rate=front_end.sample_rate,
                        size=config.size,
                        orientation=orientation,
                        colours=colours,
                        frame_on=getattr(mapping, "frame_on", None),
                    )
                )
            generate(config, run, template, audio_codes, total, writers, smoothers, seconds, video)
            clock = time.perf_counter()
            for index, writer in enumerate(writers):
                take = {**provenance, "take": index}
                writer.finish(
                    frame_times=front_end.frame_times(scan.samples),
                    fps=float(fps),
                    audio=Rows((scan.samples,), np.float32, speech.blocks()),
                    audio_rate=front_end.sample_rate,
                    provenance=json.dumps(take, sort_keys=True),
                )
            seconds["writing"] += time.perf_counter() - clock
            if video is not None:  # the rest of the frames and the speech's AAC track
                clock = time.perf_counter()
                video.finish([writer.npz_path for writer in writers])
                seconds["video"] = time.perf_counter() - clock
    final = [config.output / folder.relative_to(partial) for folder in folders]
    log.info("wrote %s", ", ".join(str(folder) for folder in final))
    return AnimateResult(
        output=config.output,
        folders=final,
        frames=total,
        duration_s=scan.samples / front_end.sample_rate,
        seconds=seconds,
    )


def _abandon(writers):
    """An exit callback that closes each take's npz quietly when the block fails."""

    def on_exit(kind, error, trace) -> bool:
        if kind is not None:
            for writer in writers:
                writer.npz.abort()
        return False

    return on_exit


def _model_template(config: AnimateConfig, run, template: Mesh):
    """(mesh to animate, frame mapping or None, `PreparedTransfer` or None) for `template`.

    A template of the model's topology is animated directly. Another mesh (with transfer
    allowed) is reached through the run's own template: it is animated and each chunk of
    frames is transferred onto the mesh before it is written.
    """
    if len(template.vertices) == run.num_vertices and config.transfer is None:
        return template, None, None
    head = None if config.transfer is not None else head_for(config.template, template, run)
    if head is not None:  # a rig beside it: the whole head follows the face (inference/head.py)
        return head.source, head, None
    if not config.allow_transfer:
        raise MeshtalkError(
            config.template,
            f"has {len(template.vertices)} vertices but the model's topology has "
            f"{run.num_vertices} ({config.model}); use a template of the model's topology",
        )
    from meshtalk.pipelines.transfer.source import prepare_transfer

    try:
        prepared = prepare_transfer(
            run,
            config.model,
            config.template,
            transfer_file=config.transfer,
            landmarks=config.landmarks,
        )
    except MeshtalkError as error:
        if error.path != config.template:
            raise
        raise MeshtalkError(
            config.template,
            f"has {len(template.vertices)} vertices, not the {run.num_vertices} of the model's "
            f"topology, and cannot take its motion by transfer: {error.problem}",
        ) from None
    log.info(
        "%s is not of the model's topology (%d vertices, the model's %d): animating the model's "
        "template and transferring the motion onto it",
        config.template,
        len(template.vertices),
        run.num_vertices,
    )
    return prepared.source, prepared.mapping, prepared


def _speech_reader(path: Path, front_end, channel: int | None = None):
    """The speech as a `SpeechReader` at the front end's rate and its first pass (`SpeechScan`),
    checked (every problem names the file); nothing holds the whole clip."""
    from meshtalk.pipelines.io.audio import SpeechReader

    reader = SpeechReader(path, front_end.sample_rate, channel)
    scan = reader.scan()
    try:
        front_end.check_length(scan.samples, scan.nonzero)
    except MeshtalkError as error:
        raise MeshtalkError(path, error.problem) from None
    return reader, scan


def _speech(path: Path, front_end, channel: int | None = None) -> np.ndarray:
    """16 kHz mono samples of the whole speech, checked (every problem names the file)."""
    from meshtalk.pipelines.io.audio import load_audio

    samples = load_audio(path, front_end.sample_rate, channel)
    try:
        front_end.check_waveform(samples)
    except MeshtalkError as error:
        raise MeshtalkError(path, error.problem) from None
    return np.ascontiguousarray(samples, dtype=np.float32)


def _smoothing_masks(config: AnimateConfig, run) -> list[np.ndarray]:
    """The masks to smooth by (forehead, neck), or [] when smoothing is off or impossible."""
    if config.smooth is False:
        return []
    masks = run.masks or {}
    missing = [name for name in SMOOTHED_REGIONS if name not in masks]
    if missing:
        log.info(
            "%s: no %s mask stored with the run; forehead and neck are not smoothed",
            config.model,
            " or ".join(missing),
        )
        return []
    return [masks[name] for name in SMOOTHED_REGIONS]


def _provenance(config: AnimateConfig, run) -> dict:
    """What produced the animation: model, settings, speech and template files, version."""
    from meshtalk.pipelines.io.provenance import file_sha256, versions

    hashes = {
        f"{stage}/{name}": digest
        for stage, checkpoint in sorted(run.stages.items())
        for name, digest in sorted(checkpoint.config_sha256.items())
    }
    config_hash = hashlib.sha256(json.dumps(hashes, sort_keys=True).encode()).hexdigest()
    return {
        "command": "meshtalk animate",
        "model": str(Path(run.folder).resolve()),
        "model_config_sha256": config_hash,
        "model_steps": {stage: checkpoint.step for stage, checkpoint in run.stages.items()},
        "seed": config.seed,
        "temperature": config.temperature,
        "argmax": config.argmax,
        "takes": config.takes,
        "int8": config.int8,
        "smooth": bool(_smoothing_masks_quiet(config, run)),
        "framing": run.front_end.framing,
        "audio_file": config.speech.name,
        "channel": config.channel,
        "audio_sha256": file_sha256(config.speech),
        "template_file": config.template.name,
        "template_sha256": file_sha256(config.template),
        "scale": config.scale,
        "meshtalk": versions(("meshtalk",))["meshtalk"],
    }


def _smoothing_masks_quiet(config: AnimateConfig, run) -> bool:
    masks = run.masks or {}
    return config.smooth is not False and all(name in masks for name in SMOOTHED_REGIONS)
