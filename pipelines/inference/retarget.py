"""`meshtalk retarget`: an animation (an `animate` npz) onto another face (SPEC 6).

Two cases, chosen by the target mesh:

* **Same topology** as the source animation (same vertex count and faces): the model re-encodes
  the source meshes (expression encoder, with the source's template) and their speech (audio
  encoder), the fusion gives the most likely codes, and the decoder draws them on the target's
  template: the target identity performs the source's performance.
* **Another topology** (a user's own head): the source's template is registered onto the target
  (similarity from landmarks or found automatically, then a non-rigid fit) and every frame's
  displacement is carried over to the target's vertices (`meshtalk.pipelines.transfer`). No model
  is needed. The target keeps its vertices, their order and its faces; the registration is saved
  as OUT/transfer.npz and reused with `transfer`.

The outputs are `animate`'s (animation.npz, .pc2, template, frames, mp4 with the source's speech).
The source npz needs `vertices` (T, V, 3), `template` (V, 3) and `fps`; `faces` for another
topology; `audio` and `audio_rate` (or `speech`) for the same topology; `frame_times` if present.
"""

from __future__ import annotations

import json
import logging
import time
import zipfile
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import numpy as np

from meshtalk.pipelines.errors import MeshtalkError
from meshtalk.pipelines.export import iter_rows, member_shape
from meshtalk.pipelines.export.formats import ExportOptions
from meshtalk.pipelines.export.npz import first_nonfinite_row, load_npz
from meshtalk.pipelines.inference.animate import VIDEO_SIZE, TakeWriter
from meshtalk.pipelines.inference.output import OutputFolder, export_problems
from meshtalk.pipelines.io.mesh import Mesh

log = logging.getLogger(__name__)

CHUNK_FRAMES = 256
"""Frames re-encoded, decoded or transferred and written at a time."""
REQUIRED = ("vertices", "template", "fps")
"""Members every source npz needs."""


@dataclass(kw_only=True)
class RetargetConfig(ExportOptions):
    """One `meshtalk retarget` run."""

    source: Path
    """An animation npz (`animate`'s, or any with vertices, template and fps)."""
    target: Path
    """PLY or OBJ mesh of the face to animate, at rest."""
    output: Path
    """Output folder (animate's files, and transfer.npz when a registration was made)."""
    model: Path | None = None
    """Run whose encoders and decoder retarget onto the same topology (None: the bundled model)."""
    speech: Path | None = None
    """Speech of the source animation, when its npz holds no audio (same topology only)."""
    transfer: Path | None = None
    """A transfer.npz of an earlier run onto the same target (another topology only)."""
    landmarks: Path | None = None
    """Landmark pairs for the registration: YAML {source: [...], target: [...]}, the MeshTalk
    preset's sets given on the target, or text lines 'SOURCE TARGET' (another topology only)."""
    device: str = "auto"
    """auto, cpu, cuda or mps (same topology)."""
    frames: str | None = None
    """Also write one mesh per frame: 'ply' or 'obj'."""
    video: bool = True
    """Render OUT/animation.mp4 with the speech (when the source has audio)."""
    scale: float = 1.0
    """Multiplies the PC2, template and per-frame exports."""
    size: tuple[int, int] = VIDEO_SIZE
    """Video width and height in pixels (even)."""
    force: bool = False
    """Write into a folder holding other files or an earlier retarget."""
    progress: bool = False
    """Show progress bars."""
    chunk_frames: int = CHUNK_FRAMES
    """Frames processed at a time."""

    def __post_init__(self) -> None:
        self.source, self.target, self.output = (
            Path(self.source),
            Path(self.target),
            Path(self.output),
        )
        problems = []
        problems += export_problems(self.size, self.chunk_frames, self.frames, self.scale, self)
        if self.transfer is not None and self.landmarks is not None:
            problems.append("--landmarks makes a new registration; it goes without --transfer")
        if problems:
            raise MeshtalkError(None, "; ".join(problems))


@dataclass
class RetargetResult:
    """What `retarget` wrote."""

    output: Path
    mode: str
    """'reencode' (same topology) or 'transfer' (another topology)."""
    frames: int
    seconds: dict[str, float] = field(default_factory=dict)
    """Wall-clock seconds: load, registration, encoding, decoding or transfer, writing, video."""


@dataclass
class SourceAnimation:
    """The members of a source npz that retargeting reads (vertices stay in the file)."""

    path: Path
    frames: int
    template: np.ndarray
    faces: np.ndarray | None
    fps: float
    frame_times: np.ndarray
    audio: np.ndarray | None
    audio_rate: int | None
    codes: np.ndarray | None

    def chunks(self, rows: int):
        """(n, V, 3) float32 vertices, `rows` frames at a time."""
        for chunk in iter_rows(self.path, "vertices", rows):
            yield np.asarray(chunk, dtype=np.float32)


def read_source(path: Path) -> SourceAnimation:
    """The source npz's members, checked (vertices are read later, a chunk at a time)."""
    path = Path(path)
    if not path.is_file():
        raise MeshtalkError(path, "source animation not found")
    with load_npz(path) as archive:
        missing = [name for name in REQUIRED if name not in archive.files]
        if missing:
            raise MeshtalkError(
                path, f"missing {', '.join(missing)} (an animation npz needs {', '.join(REQUIRED)})"
            )
        get = lambda name: archive[name] if name in archive.files else None  # noqa: E731
        try:
            template, faces, fps = archive["template"], get("faces"), archive["fps"]
            times, audio, rate, codes = (
                get("frame_times"),
                get("audio"),
                get("audio_rate"),
                get("codes"),
            )
        except (ValueError, OSError, EOFError, zipfile.BadZipFile) as error:
            raise MeshtalkError(path, f"holds an unreadable member ({error})") from None
    shape, dtype = member_shape(path, "vertices")
    problems = []
    if len(shape) != 3 or shape[2] != 3 or shape[0] < 1 or not np.issubdtype(dtype, np.floating):
        problems.append(f"vertices must be (T, V, 3) floats, found {dtype} {shape}")
    elif template.shape != shape[1:]:
        problems.append(f"template is {template.shape}, the vertices' frames {shape[1:]}")
    if not np.isfinite(template).all():
        problems.append("template holds NaN or infinite values")
    if np.ndim(fps) != 0 or not (np.isfinite(fps) and float(fps) > 0):
        problems.append(f"fps must be one positive number, got {fps}")
    if faces is not None and (
        faces.ndim != 2
        or faces.shape[1] != 3
        or not np.issubdtype(faces.dtype, np.integer)
        or (faces.size and (faces.min() < 0 or faces.max() >= template.shape[0]))
    ):
        problems.append("faces must be (F, 3) indices of the template's vertices")
    if (audio is None) != (rate is None):
        problems.append("audio and audio_rate go together")
    if problems:
        raise MeshtalkError(path, "; ".join(problems))
    bad = first_nonfinite_row(path, "vertices")
    if bad is not None:
        raise MeshtalkError(path, f"vertices of frame {bad} hold NaN or infinite values")
    frames = shape[0]
    if times is None or np.shape(times) != (frames,):
        times = np.arange(frames) / float(fps)
    return SourceAnimation(
        path=path,
        frames=frames,
        template=template.astype(np.float32),
        faces=None if faces is None else faces.astype(np.int64),
        fps=float(fps),
        frame_times=np.asarray(times, dtype=np.float64),
        audio=None if audio is None else np.asarray(audio, dtype=np.float32).reshape(-1),
        audio_rate=None if rate is None else int(rate),
        codes=codes if codes is not None and len(codes) == frames else None,
    )


def run(config: RetargetConfig) -> Path:
    """Retarget; returns the output folder."""
    return retarget(config).output


def retarget(config: RetargetConfig) -> RetargetResult:
    """Retarget the source animation onto the target mesh (see the module docstring)."""
    from meshtalk.pipelines.transfer import read_target

    started = time.perf_counter()
    seconds: dict[str, float] = {}
    out = OutputFolder(config.output, "retarget", force=config.force)
    out.check()
    source = read_source(config.source)
    target = read_target(config.target)
    same = len(target.vertices) == len(source.template) and (
        source.faces is None or np.array_equal(source.faces, target.faces)
    )
    if same and (config.transfer is not None or config.landmarks is not None):
        raise MeshtalkError(
            config.target,
            "is of the source's topology: it is re-encoded by the model, --transfer and "
            "--landmarks are for meshes of another topology",
        )
    seconds["load"] = time.perf_counter() - started
    mode = "reencode" if same else "transfer"
    log.info(
        "%s: %d frames of %d vertices onto %s (%d vertices): %s",
        config.source,
        source.frames,
        len(source.template),
        config.target,
        len(target.vertices),
        "same topology, re-encoded by the model" if same else "another topology, transferred",
    )
    provenance = {
        "command": "meshtalk retarget",
        "mode": mode,
        "source_file": config.source.name,
        "target_file": config.target.name,
    }
    with out.writing() as partial:
        suffix = config.target.suffix.lower()

        def make_writer(orientation=None) -> TakeWriter:  # once the inputs are checked
            return TakeWriter(partial, target, suffix, source.frames, config.frames, config.scale,
                              orientation=orientation, exports=config)  # fmt: skip

        if same:
            writer, audio, rate = _reencode(
                config, source, target, make_writer, seconds, provenance
            )
        else:
            writer, audio, rate = _transfer(
                config, source, target, make_writer, partial, seconds, provenance
            )
        clock = time.perf_counter()
        members = dict(frame_times=source.frame_times, fps=source.fps)
        if audio is not None:
            members.update(audio=audio, audio_rate=rate)
        writer.finish(**members, provenance=json.dumps(provenance, sort_keys=True))
        seconds["writing"] = seconds.get("writing", 0.0) + time.perf_counter() - clock
        if config.video:
            clock = time.perf_counter()
            fps = Fraction(source.fps).limit_denominator(10_000)
            writer.video(fps, audio, rate or 16000, config.size, config.progress)
            seconds["video"] = time.perf_counter() - clock
    log.info("wrote %s", config.output)
    return RetargetResult(output=config.output, mode=mode, frames=source.frames, seconds=seconds)


def _transfer(config, source, target, make_writer, partial, seconds, provenance):
    """Another topology: register (or read --transfer), then transfer chunk by chunk."""
    from meshtalk.pipelines.transfer import transfer_for
    from meshtalk.pipelines.transfer.picture import face_orientation
    from meshtalk.pipelines.transfer.source import save_transfer_files

    if source.faces is None:
        raise MeshtalkError(
            config.source, "has no faces: the source's triangles are needed to transfer its motion"
        )
    template = Mesh(vertices=source.template, faces=source.faces)
    transfer, seconds["registration"] = transfer_for(
        template,
        target,
        transfer_file=config.transfer,
        landmarks=config.landmarks,
        target_path=config.target,
    )
    save_transfer_files(partial, transfer, source.faces, target, made=config.transfer is None)
    provenance["transfer"] = transfer.info
    seconds["transfer"] = 0.0
    writer = make_writer(face_orientation(transfer))  # the video's camera faces the face
    for chunk in source.chunks(config.chunk_frames):
        clock = time.perf_counter()
        moved = transfer.apply(chunk, source.template)
        seconds["transfer"] += time.perf_counter() - clock
        writer.write(moved)
    if source.codes is not None:
        writer.codes.append(np.asarray(source.codes))
    return writer, source.audio, source.audio_rate


def _reencode(config, source, target, make_writer, seconds, provenance):
    """Same topology: encode the source meshes and speech, decode onto the target's template."""
    import torch
    import torch.nn.functional as F

    from meshtalk.pipelines.checkpoint import load_run
    from meshtalk.pipelines.data.resources import default_model
    from meshtalk.pipelines.io.audio import load_audio, resample
    from meshtalk.pipelines.train.loop import resolve_device

    model = Path(config.model) if config.model is not None else default_model.run_path()
    clock = time.perf_counter()
    run = load_run(model, resolve_device(config.device), prior=False)
    if run.num_vertices != len(target.vertices):
        raise MeshtalkError(
            model,
            f"the model's topology has {run.num_vertices} vertices, the source and target "
            f"{len(target.vertices)}: give --model of their topology",
        )
    front_end = run.front_end
    if config.speech is not None:
        samples = load_audio(config.speech, front_end.sample_rate)
        speech_file = config.speech
    elif source.audio is not None:
        samples = resample(source.audio, source.audio_rate, front_end.sample_rate)
        speech_file = config.source
    else:
        raise MeshtalkError(
            config.source, "holds no audio (audio, audio_rate): give its speech with --speech"
        )
    try:
        front_end.check_waveform(samples)
    except MeshtalkError as error:
        raise MeshtalkError(speech_file, error.problem) from None
    available = front_end.frame_count(samples.size)
    if available < source.frames:
        raise MeshtalkError(
            speech_file,
            f"the speech is too short for the animation: {available} frames of audio for "
            f"{source.frames} frames of meshes",
        )
    seconds["load"] += time.perf_counter() - clock
    writer = make_writer()
    latent = run.latent
    parameter = next(latent.decoder.parameters())
    as_tensor = lambda array: torch.from_numpy(np.ascontiguousarray(array)).to(  # noqa: E731
        parameter.device, parameter.dtype
    )
    with torch.inference_mode():
        clock = time.perf_counter()
        audio_codes = front_end.audio_codes(latent.encoder.audio_encoder, samples)
        audio_codes = audio_codes[:, : source.frames].to(parameter.dtype)
        vertices = np.concatenate(list(source.chunks(config.chunk_frames)))
        expression = latent.encoder.expression_encoder(
            as_tensor(vertices)[None], as_tensor(source.template)[None]
        )
        del vertices
        codes = latent.encoder.fusion_model(expression, audio_codes).argmax(dim=-1)  # (1, T, H)
        seconds["encoding"] = time.perf_counter() - clock
        target_template = as_tensor(target.vertices)[None]
        state, seconds["decoding"] = None, 0.0
        for first in range(0, source.frames, config.chunk_frames):
            clock = time.perf_counter()
            chunk = codes[:, first : first + config.chunk_frames]
            one_hot = F.one_hot(chunk, latent.config.classes).to(parameter.dtype)
            meshes, state = latent.decoder.decode(target_template, one_hot, state)
            seconds["decoding"] += time.perf_counter() - clock
            writer.write(meshes[0].float().cpu().numpy())
            writer.codes.append(chunk[0].cpu().numpy())
    provenance["model"] = str(Path(run.folder).resolve())
    cut = int(round(source.frames / source.fps * front_end.sample_rate))
    return writer, samples[: max(cut, 1)], front_end.sample_rate
