"""`meshtalk dub`: new speech on an existing performance (SPEC 6, Dub).

The expression encoder reads the original animation's meshes (with its own template), the audio
encoder reads the new speech, the fusion turns the two into codes (the most likely, or drawn at a
temperature) and the decoder draws them on the original template: the lips follow the new
speech, the eyes and brows keep the original performance.

ORIGINAL.npz is an `animate` (or `dub`) output, or any npz holding at least

    vertices   (T, V, 3) float   the performance, V the model's vertex count, in its units
    template   (V, 3) float      the neutral face of the performance
    fps        scalar            frames per second of `vertices`

and optionally `faces` (F, 3) int (needed for the video and the template mesh export). Frames at
another rate than the model's are resampled in time (linear interpolation).

Lengths: the dub lasts as long as the new speech. A shorter speech ends the animation with it;
frames after the original's end are continued by the prior (stage 2), sampled from the new
speech's audio codes and conditioned on the dubbed codes before them.

Outputs, as `animate`'s (OUT/animation.npz, animation.pc2, template.ply, animation.mp4 with the new
speech) and with `compare` OUT/compare.mp4: original | dubbed | their per-vertex distance. The
original is read a chunk of frames at a time, so long performances take flat memory.
"""

from __future__ import annotations

import json
import logging
import math
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from meshtalk.pipelines.errors import MeshtalkError
from meshtalk.pipelines.export import iter_rows
from meshtalk.pipelines.export.formats import ExportOptions
from meshtalk.pipelines.export.npz import first_nonfinite_row, load_npz, member_shape
from meshtalk.pipelines.inference.animate import (
    CHUNK_FRAMES,
    VIDEO_SIZE,
    TakeWriter,
    _smoothing_masks,
    _speech,
)
from meshtalk.pipelines.inference.head import bundled_head_for
from meshtalk.pipelines.inference.output import OutputFolder, export_problems
from meshtalk.pipelines.inference.smoothing import RegionSmoother
from meshtalk.pipelines.io.mesh import Mesh, surface_problem

log = logging.getLogger(__name__)

REQUIRED = ("vertices", "template", "fps")
"""Members every ORIGINAL.npz must hold."""
COMPARE_FILE = "compare.mp4"


@dataclass(kw_only=True)
class DubConfig(ExportOptions):
    """One `meshtalk dub` run."""

    original: Path
    """The performance: an npz with vertices (T, V, 3), template (V, 3), fps (faces optional)."""
    speech: Path
    """The new speech: an audio file of any common format, rate and channel count."""
    channel: int | None = None
    """The speech's channel to use (0 = first); None averages them."""
    output: Path
    """Output folder (created; see the module docstring for what it holds)."""
    model: Path | None = None
    """A trained run folder (stage 1; stage 2 too where the speech outlasts the original); None:
    the bundled default model (for performances on its head)."""
    temperature: float | None = None
    """None: the fusion's most likely codes (deterministic), and the prior's continuation drawn at
    temperature 1. A number: both drawn with the log-probabilities divided by it."""
    seed: int = 0
    """Seed of the noise of the drawn codes."""
    device: str = "auto"
    """auto, cpu, cuda or mps."""
    smooth: bool | None = None
    """Smooth forehead and neck over time as `animate` does; None: when the run has masks."""
    video: bool = True
    """Render OUT/animation.mp4 with the new speech."""
    compare: bool = False
    """Also render OUT/compare.mp4: the original beside the dub, and their distance."""
    force: bool = False
    """Write into a folder holding other files or an earlier dub (only dub's files replaced)."""
    size: tuple[int, int] = VIDEO_SIZE
    """Video width and height in pixels (even)."""
    progress: bool = False
    """Show progress bars."""
    chunk_frames: int = CHUNK_FRAMES
    """Frames read, encoded, decoded and written at a time."""

    def __post_init__(self) -> None:
        self.original, self.speech = Path(self.original), Path(self.speech)
        if self.model is None:
            from meshtalk.pipelines.data.resources import default_model

            self.model = default_model.run_path()
        self.output, self.model = Path(self.output), Path(self.model)
        problems = []
        if self.temperature is not None and not (
            isinstance(self.temperature, int | float)
            and math.isfinite(self.temperature)
            and self.temperature > 0
        ):
            problems.append(f"--temperature must be positive and finite, got {self.temperature}")
        if not 0 <= self.seed < 2**63:
            problems.append(f"--seed must be between 0 and 2^63 - 1, got {self.seed}")
        problems += export_problems(self.size, self.chunk_frames, options=self)
        if self.compare and not self.video:
            problems.append("--compare renders a video: it goes without --no-video")
        if problems:
            raise MeshtalkError(None, "; ".join(problems))


@dataclass
class DubResult:
    """What `dub` wrote."""

    output: Path
    """OUT."""
    frames: int
    """T, frames of the dub (those of the new speech)."""
    encoded_frames: int
    """Frames whose codes came from the original and the speech (the rest from the prior)."""
    original_frames: int
    """Frames of the original, at the model's frame rate."""
    seconds: dict[str, float] = field(default_factory=dict)
    """Wall-clock seconds per stage: load, encoding, continuing, writing, video."""


@dataclass
class Original:
    """ORIGINAL.npz, checked; its vertices stay on disk until read a chunk at a time."""

    path: Path
    frames: int
    """Frames in the file (at `fps`)."""
    template: np.ndarray
    faces: np.ndarray | None
    fps: float

    def chunks(self, rate: float, size: int) -> Iterator[np.ndarray]:
        """(n, V, 3) float32 frames at `rate` frames per second, `size` at a time."""
        rows = iter_rows(self.path, "vertices", size)
        if math.isclose(self.fps, rate, rel_tol=1e-6):
            for chunk in rows:
                yield np.asarray(chunk, dtype=np.float32)
            return
        yield from _resampled(rows, self.frames, self.fps, rate, size)

    def frames_at(self, rate: float) -> int:
        """Frames of the performance at `rate` (frame i at time i / rate, within its span)."""
        if math.isclose(self.fps, rate, rel_tol=1e-6):
            return self.frames
        return math.floor((self.frames - 1) * rate / self.fps + 1e-9) + 1


def read_original(path: Path, num_vertices: int) -> Original:
    """Check ORIGINAL.npz (every problem one line naming the file) and read all but vertices."""
    path = Path(path)
    if not path.is_file():
        raise MeshtalkError(path, "original animation not found")
    try:
        with load_npz(path) as archive:
            names = set(archive.files)
            missing = [name for name in REQUIRED if name not in names]
            if missing:
                raise MeshtalkError(
                    path,
                    f"has no {', '.join(missing)} (an original needs vertices (T, V, 3), "
                    "template (V, 3) and fps)",
                )
            template = np.asarray(archive["template"])
            fps = np.asarray(archive["fps"])
            faces = np.asarray(archive["faces"]) if "faces" in names else None
    except MeshtalkError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:
        raise MeshtalkError(path, f"not a readable .npz archive ({error})") from None
    shape, dtype = member_shape(path, "vertices")
    if len(shape) != 3 or shape[2] != 3 or dtype.kind not in "fiu":
        raise MeshtalkError(path, f"vertices must be (T, V, 3) numbers, got {shape} {dtype}")
    if shape[0] == 0:
        raise MeshtalkError(path, "vertices hold no frames")
    if shape[1] != num_vertices:
        raise MeshtalkError(
            path, f"has {shape[1]} vertices per frame; the model's topology has {num_vertices}"
        )
    if template.shape != (num_vertices, 3) or template.dtype.kind not in "fiu":
        raise MeshtalkError(path, f"template must be ({num_vertices}, 3), got {template.shape}")
    if not np.isfinite(template).all():
        raise MeshtalkError(path, "template holds NaN or infinite values")
    bad = first_nonfinite_row(path, "vertices")
    if bad is not None:
        raise MeshtalkError(path, f"vertices of frame {bad} hold NaN or infinite values")
    rate = float(fps.reshape(-1)[0]) if fps.size == 1 and fps.dtype.kind in "fiu" else math.nan
    if not (math.isfinite(rate) and rate > 0):
        raise MeshtalkError(path, f"fps must be one positive number, got {fps.tolist()!r}")
    if faces is not None:
        if faces.ndim != 2 or faces.shape[1] != 3 or faces.dtype.kind not in "iu":
            raise MeshtalkError(path, f"faces must be (F, 3) integers, got {faces.shape}")
        if faces.size and (faces.min() < 0 or faces.max() >= num_vertices):
            raise MeshtalkError(path, f"faces index vertices outside 0..{num_vertices - 1}")
    return Original(
        path=path,
        frames=int(shape[0]),
        template=template.astype(np.float32),
        faces=None if faces is None else faces.astype(np.int64),
        fps=rate,
    )


def run(config: DubConfig) -> Path:
    """Dub; returns the output folder."""
    return dub(config).output


def dub(config: DubConfig) -> DubResult:
    """Dub the original with the new speech, returning what was written."""
    import torch

    from meshtalk.pipelines.checkpoint import load_run
    from meshtalk.pipelines.train.loop import resolve_device

    seconds = dict.fromkeys(("load", "encoding", "continuing", "writing", "video"), 0.0)
    started = time.perf_counter()
    out = OutputFolder(config.output, "dub", force=config.force)
    out.check()
    device = resolve_device(config.device)
    run_ = load_run(config.model, device)
    # An animation of the bundled whole head: its face area is dubbed, the head follows.
    head = bundled_head_for(config.original, run_)
    original = read_original(config.original, run_.num_vertices if head is None else head.count)
    if original.faces is None and config.video:
        raise MeshtalkError(
            config.original, "has no faces, which the video needs (--no-video writes the rest)"
        )
    if original.faces is not None and (config.video or len(original.faces)):
        problem = surface_problem(Mesh(vertices=original.template, faces=original.faces))
        if problem is not None:
            raise MeshtalkError(config.original, problem)
    front_end = run_.front_end
    samples = _speech(config.speech, front_end, config.channel)
    fps = front_end.frame_rate()
    total = front_end.frame_count(samples.size)
    original_frames = original.frames_at(float(fps))
    encoded = min(total, original_frames)
    if total > encoded and run_.prior is None:
        raise MeshtalkError(
            config.model,
            f"has no prior (stage 2), which continues the {total - encoded} frames of the new "
            f"speech after the original's end ({(total - encoded) / float(fps):.2f} s)",
        )
    if not math.isclose(original.fps, float(fps), rel_tol=1e-6):
        log.info(
            "%s: %g fps resampled to the model's %.4g fps", original.path, original.fps, float(fps)
        )
    log.info(
        "%s: %d frames of the original re-voiced, %d continued by the prior (speech %.2f s)",
        config.original,
        encoded,
        total - encoded,
        samples.size / front_end.sample_rate,
    )
    seconds["load"] = time.perf_counter() - started
    mesh = Mesh(
        vertices=original.template,
        faces=original.faces if original.faces is not None else np.zeros((0, 3), np.int64),
    )
    masks = _smoothing_masks(config, run_)
    with out.writing() as partial, torch.inference_mode():
        audio_codes = front_end.audio_codes(run_.latent.encoder.audio_encoder, samples)
        suffix, face = (".ply", None) if head is None else (".obj", head.rig.face_area)
        target = mesh if head is None else head.mesh
        writer = TakeWriter(partial, target, suffix, total, None, 1.0, head, exports=config)
        dubber = _Dubber(config, run_, original.template[:face], masks)
        clock = time.perf_counter()
        chunks = original.chunks(float(fps), config.chunk_frames)
        for first in range(0, encoded, config.chunk_frames):
            chunk = next(chunks)[: encoded - first, :face]
            codes = dubber.encode(chunk, audio_codes[:, first : first + len(chunk)])
            writer.codes.append(codes)
            writer.write(dubber.decode(codes))
        chunks.close()
        seconds["encoding"] = time.perf_counter() - clock
        clock = time.perf_counter()
        if total > encoded:
            dubber.continue_after(np.concatenate(writer.codes), audio_codes[:, :encoded])
            for first in range(encoded, total, config.chunk_frames):
                codes = dubber.sample(audio_codes[:, first : first + config.chunk_frames])
                writer.codes.append(codes)
                writer.write(dubber.decode(codes))
        writer.write(dubber.finish())
        seconds["continuing"] = time.perf_counter() - clock
        clock = time.perf_counter()
        writer.finish(
            frame_times=front_end.frame_times(samples.size),
            fps=float(fps),
            audio=samples,
            audio_rate=front_end.sample_rate,
            provenance=json.dumps(_provenance(config, run_, encoded, total), sort_keys=True),
        )
        seconds["writing"] = time.perf_counter() - clock
        if config.video:
            clock = time.perf_counter()
            writer.video(fps, samples, front_end.sample_rate, config.size, config.progress)
            if config.compare:
                _compare(config, original, writer, float(fps), samples, front_end.sample_rate)
            seconds["video"] = time.perf_counter() - clock
    log.info("wrote %s", config.output)
    return DubResult(
        output=config.output,
        frames=total,
        encoded_frames=encoded,
        original_frames=original_frames,
        seconds=seconds,
    )


class _Dubber:
    """Codes of the dub (encoded, then continued by the prior) and their decoding, chunk by chunk;
    the expression encoder's and the decoder's LSTM states carry from chunk to chunk."""

    def __init__(self, config: DubConfig, run, template: np.ndarray, masks) -> None:
        import torch

        self.config, self.run = config, run
        self.parameter = next(run.latent.decoder.parameters())
        self.template = torch.from_numpy(template).to(self.parameter.device, self.parameter.dtype)
        self.generator = torch.Generator(device=self.parameter.device)
        self.generator.manual_seed(config.seed)
        self.expression_state = None
        self.decoder_state = None
        self.sampler = None
        self.smoother = RegionSmoother(masks) if masks else None

    def encode(self, frames: np.ndarray, audio_codes) -> np.ndarray:
        """(n, V, 3) original frames and (1, n, D) audio codes -> (n, H) codes."""
        import torch

        encoder = self.run.latent.encoder
        vertices = torch.from_numpy(np.array(frames, dtype=np.float32)).to(self.template)[None]
        expression = self._expression_codes(encoder.expression_encoder, vertices)
        logprobs = encoder.fusion_model(expression, audio_codes.to(expression.dtype))[0].float()
        if self.config.temperature is None:
            return logprobs.argmax(dim=-1).cpu().numpy()
        uniform = torch.rand(
            logprobs.shape, generator=self.generator, device=logprobs.device
        ).clamp_(min=1e-20)
        gumbel = -(-uniform.log()).log()
        return (logprobs / self.config.temperature + gumbel).argmax(dim=-1).cpu().numpy()

    def _expression_codes(self, encoder, vertices):
        """`ExpressionEncoder.forward` over one chunk, its LSTM state carried to the next."""
        from meshtalk.models.encoders import leaky

        if encoder.input == "offset":
            x = ((vertices - self.template[None, None]) / encoder.stddev).flatten(2)
        else:
            x = ((vertices - encoder.mean) / encoder.stddev).flatten(2)
        for layer in encoder.layers:
            x = leaky(layer(x), encoder.slope)
        x, self.expression_state = encoder.lstm(x, self.expression_state)
        return encoder.code(x)

    def continue_after(self, codes: np.ndarray, audio_codes) -> None:
        """Prime the prior's sampler with the (T, H) dubbed codes and their audio codes."""
        import torch

        from meshtalk.models.sampler import PriorSampler

        temperature = self.config.temperature
        self.sampler = PriorSampler(
            self.run.prior,
            temperature=1.0 if temperature is None else temperature,
            seed=self.config.seed,
        )
        known = torch.from_numpy(codes).to(self.parameter.device)[None]
        self.sampler.prime(known, audio_codes)

    def sample(self, audio_codes) -> np.ndarray:
        """(1, n, D) audio codes of the next frames -> (n, H) codes drawn from the prior."""
        return self.sampler.push(audio_codes)[0].cpu().numpy()

    def decode(self, codes: np.ndarray) -> np.ndarray:
        """(n, H) codes -> (m, V, 3) frames ready to write (smoothing holds a few back)."""
        import torch
        import torch.nn.functional as F

        classes = self.run.latent.config.classes
        one_hot = F.one_hot(torch.from_numpy(codes).to(self.parameter.device), classes)
        meshes, self.decoder_state = self.run.latent.decoder.decode(
            self.template[None], one_hot[None].to(self.parameter.dtype), self.decoder_state
        )
        meshes = meshes[0].float().cpu().numpy()
        return meshes if self.smoother is None else self.smoother.push(meshes)

    def finish(self) -> np.ndarray:
        """The frames the smoother still holds."""
        if self.smoother is None:
            return np.zeros((0, len(self.template), 3), np.float32)
        return self.smoother.finish()


def _resampled(
    rows: Iterator[np.ndarray], frames: int, rate_in: float, rate_out: float, size: int
) -> Iterator[np.ndarray]:
    """Frames at `rate_in` (in chunks) -> frames at `rate_out` by linear interpolation in time,
    `size` at a time; the output's frame i is at time i / rate_out, up to the input's last."""
    total = math.floor((frames - 1) * rate_out / rate_in + 1e-9) + 1
    window = np.zeros((0, 0, 3), np.float32)  # input frames window_first.. held
    window_first = 0
    source = iter(rows)
    for first in range(0, total, size):
        positions = np.arange(first, min(total, first + size)) * (rate_in / rate_out)
        low = np.minimum(np.floor(positions + 1e-9).astype(int), frames - 1)
        high = np.minimum(low + 1, frames - 1)
        needed = int(high.max())
        while window_first + len(window) <= needed:
            chunk = np.asarray(next(source), dtype=np.float32)
            window = chunk if len(window) == 0 else np.concatenate([window, chunk])
        weight = np.clip(positions - low, 0.0, 1.0).astype(np.float32)[:, None, None]
        lower, upper = window[low - window_first], window[high - window_first]
        yield (1 - weight) * lower + weight * upper
        keep = int(low.max()) - window_first  # later outputs read from the last low on
        window, window_first = window[keep:], window_first + keep


def _compare(config: DubConfig, original: Original, writer: TakeWriter, fps, samples, rate):
    """OUT/compare.mp4: the original (its last frame held after its end) | the dub."""
    from meshtalk.pipelines.render import render_video

    def original_frames() -> Iterator[np.ndarray]:
        shown, last = 0, original.template
        for chunk in original.chunks(fps, config.chunk_frames):
            chunk = chunk[: writer.total - shown]
            if len(chunk):
                yield chunk
                shown, last = shown + len(chunk), chunk[-1]
            if shown >= writer.total:
                return
        while shown < writer.total:
            count = min(config.chunk_frames, writer.total - shown)
            yield np.broadcast_to(last, (count, *last.shape))
            shown += count

    render_video(
        original_frames(),
        writer.template.faces,
        writer.folder / COMPARE_FILE,
        fps=fps,
        audio=samples,
        audio_rate=rate,
        size=config.size,
        template=original.template,
        compare=iter_rows(writer.npz_path, "vertices"),
        titles=("original", "dubbed"),
        total=writer.total,
        progress=config.progress,
    )


def _provenance(config: DubConfig, run, encoded: int, total: int) -> dict:
    """What produced the dub: model, settings, original and speech files, version."""
    from meshtalk.pipelines.io.provenance import file_sha256, versions

    return {
        "command": "meshtalk dub",
        "model": str(Path(run.folder).resolve()),
        "model_steps": {stage: checkpoint.step for stage, checkpoint in run.stages.items()},
        "seed": config.seed,
        "temperature": config.temperature,
        "argmax": config.temperature is None,
        "encoded_frames": encoded,
        "continued_frames": total - encoded,
        "original_file": config.original.name,
        "original_sha256": file_sha256(config.original),
        "audio_file": config.speech.name,
        "audio_sha256": file_sha256(config.speech),
        "framing": run.front_end.framing,
        "meshtalk": versions(("meshtalk",))["meshtalk"],
    }
