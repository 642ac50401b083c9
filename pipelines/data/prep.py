"""`meshtalk prep`: Multiface (or Multiface-layout) data -> a memory-mapped training store.

Store layout (all arrays are `.npy`, memory-mapped when read):

    DATA/manifest.json                    sources, settings, versions, identities, segments, splits
    DATA/mean.npy, std.npy                (V, 3) per-vertex statistics over the training frames
    DATA/masks/<name>.npy                 (V,) region masks (see masks.MASK_NAMES)
    DATA/masks.png                        the masks drawn on the first identity's template
    DATA/identities/<ID>/template.npy     (V, 3) neutral face
    DATA/identities/<ID>/<SEGMENT>/vertices.npy  (T, V, 3) float32 observed frames, mm
    DATA/identities/<ID>/<SEGMENT>/mel.npy       (M, 80) float32 log-mel of the padded utterance
    DATA/identities/<ID>/<SEGMENT>/frames.npz    frame_ids, times_s, mel_index (T,), poses (T, 3, 4)
    DATA/.meshtalk-store, DATA/.meshtalk.lock    prep made this folder; one writer at a time

The store is built in `DATA/.partial/` and moved into place when complete, `manifest.json` last,
so a folder with a manifest holds a complete store. Each finished identity carries a marker with its
statistics; a rerun after an interruption keeps finished identities and redoes the others, so no
frame is counted twice, and statistics are merged in name order, so the rerun's store is byte for
byte the uninterrupted one. Prep writes and deletes only inside `DATA`, which it locks.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import signal
import threading
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from meshtalk.pipelines.data.masks import MASK_NAMES
from meshtalk.pipelines.data.topology import CROP_PRESETS, MULTIFACE_NUM_VERTICES, kept_vertices
from meshtalk.pipelines.errors import MeshtalkError
from meshtalk.pipelines.features import AUDIO_WINDOWS, PAD_SECONDS, MelConfig, frame_mel_index
from meshtalk.pipelines.io.atomic import atomic_path, write_text_atomic
from meshtalk.pipelines.io.lock import LOCK_FILE, exclusive
from meshtalk.pipelines.io.pictures import save_vertex_maps
from meshtalk.pipelines.io.provenance import versions

log = logging.getLogger(__name__)

STORE_FORMAT = 1
FPS = 30
SPEECH_PREFIX = "SEN_"
MISSING_FRAMES_WARNING = 0.05
"""Fraction of a segment's listed frames without a mesh file above which prep warns."""
AUDIO_LENGTH_TOLERANCE_S = 1.0
"""Audio longer than its frames by more than this is trimmed, with a warning."""

MANIFEST = "manifest.json"
STORE_ENTRIES = ("identities", "masks", "mean.npy", "std.npy", "masks.png")
"""What prep puts in a store besides the manifest: all that `--force` replaces."""
PARTIAL = ".partial"
"""Inside the output: the store being built."""
OLD = ".old"
"""Inside the output: the replaced store's entries while the new ones move in."""
MARKER = ".meshtalk-store"
"""Inside the output: says the folder was made by prep, before it holds a manifest."""
OWN_NAMES = frozenset({PARTIAL, OLD, MARKER, LOCK_FILE})


@dataclass
class PrepConfig:
    """Settings of `meshtalk prep`."""

    root: Path
    """Multiface root: one folder per identity with tracked_mesh/, audio/ and frame_list.txt."""
    output: Path
    """Directory of the prepared store (created; built in OUTPUT/.partial/ first)."""
    crop: str = "meshtalk"
    """Vertex crop: 'meshtalk' (7306 -> 6172 vertices), 'none', or a file of indices to remove."""
    num_vertices: int | None = None
    """Vertices per tracked mesh; default: from each identity's vert_mean.bin, else 7306."""
    landmarks: str | None = None
    """Landmark preset or YAML file the masks are built from; default 'meshtalk' for that crop."""
    masks: Path | None = None
    """Mask directory (the authors' file names) to take instead of building masks."""
    window: str = "release"
    """Audio window per frame: 'release' (1 s centred, what the release's audio encoder needs) or
    'paper' (-500/+100 ms)."""
    splits: str = "paper"
    """Split protocol: 'paper', 'multiface', or a YAML file."""
    neutral_segment: str = "E001_Neutral_Eyes_Open"
    """Segment whose mean is each identity's neutral template."""
    workers: int = 1
    """Processes to use."""
    channel: int | None = None
    """Audio channel to use (0 = first); default: the average of all channels."""
    force: bool = False
    """Replace an existing store (never a folder prep did not make)."""
    progress: bool = True
    """Show a progress bar."""

    def __post_init__(self) -> None:
        self.root, self.output = Path(self.root), Path(self.output)
        problems = []
        if self.window not in AUDIO_WINDOWS:
            problems.append(
                f"--window must be one of {', '.join(AUDIO_WINDOWS)}, got '{self.window}'"
            )
        if self.workers < 1:
            problems.append(f"--workers must be at least 1, got {self.workers}")
        if self.channel is not None and self.channel < 0:
            problems.append(f"--channel must be at least 0, got {self.channel}")
        if name_problem(self.neutral_segment):
            problems.append(
                f"--neutral-segment '{self.neutral_segment}' {name_problem(self.neutral_segment)}"
            )
        if self.num_vertices is not None and self.num_vertices < 3:
            problems.append(f"--vertices must be at least 3, got {self.num_vertices}")
        if self.masks is not None and self.landmarks is not None:
            problems.append("give --masks or --landmarks, not both")
        if self.crop not in CROP_PRESETS and not Path(self.crop).is_file():
            problems.append(f"--crop '{self.crop}' is neither 'meshtalk', 'none' nor a file")
        if problems:
            raise MeshtalkError(None, "; ".join(problems))
        if self.landmarks is None and self.masks is None:
            if self.crop != "meshtalk":
                raise MeshtalkError(
                    None,
                    "masks need --landmarks FILE or --masks DIR for a topology other than "
                    "'meshtalk'",
                )
            self.landmarks = "meshtalk"


@dataclass
class Problem:
    """One bad input: the file, what is wrong, and what prep did about it."""

    path: str
    message: str
    action: str  # "frame skipped", "segment skipped", "identity skipped", "warning", "fatal"

    def line(self) -> str:
        return f"{self.path}: {self.message} ({self.action})"


@dataclass
class SegmentTask:
    """Work for one process: one segment of one identity."""

    identity: str
    segment: str
    frame_ids: list[int]
    kind: str  # "neutral" or "speech"
    split: str | None = None


@dataclass
class SegmentResult:
    identity: str
    segment: str
    kind: str
    frames: int = 0
    problems: list[Problem] = field(default_factory=list)
    template: np.ndarray | None = None
    stats: tuple[int, np.ndarray, np.ndarray] | None = None  # count, mean, M2 (float64)
    num_vertices: int | None = None


# --- discovery ------------------------------------------------------------------------------------


def name_problem(name: str) -> str | None:
    """Why `name` cannot be a file name inside its folder (None if it can).

    Names read from data files become paths; one that climbs out (`..`), is absolute or holds a
    separator would make prep read or write outside its folders.
    """
    if not name:
        return "is empty"
    if any(c in name for c in "/\\\0") or os.path.isabs(name):
        return "is a path, not a name (it holds a separator)"
    if name.startswith("."):
        return "is hidden or climbs out of its folder (starts with '.')"
    return None


@dataclass
class Identity:
    name: str
    path: Path
    segments: dict[str, list[int]]  # all segments -> sorted captured frame ids
    num_vertices: int
    problems: list[Problem]


def _read_frame_list(identity_dir: Path, problems: list[Problem]) -> dict[str, list[int]]:
    frame_list = identity_dir / "frame_list.txt"
    raw: dict[str, list[int]] = {}
    refused: set[str] = set()
    if frame_list.is_file():
        for line_number, line in enumerate(frame_list.read_text().splitlines(), 1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) != 2 or not parts[1].isdigit():
                problems.append(
                    Problem(
                        str(frame_list), f"line {line_number} is not 'SEGMENT FRAMEID'", "warning"
                    )
                )
                continue
            bad = name_problem(parts[0])
            if bad:
                if parts[0] not in refused:
                    message = f"line {line_number}: segment name '{parts[0]}' {bad}"
                    problems.append(Problem(str(frame_list), message, "segment skipped"))
                refused.add(parts[0])
                continue
            raw.setdefault(parts[0], []).append(int(parts[1]))
        return raw
    mesh_root = identity_dir / "tracked_mesh"
    problems.append(Problem(str(frame_list), "missing; frames taken from tracked_mesh/", "warning"))
    for segment_dir in sorted(p for p in mesh_root.iterdir() if p.is_dir()):
        if name_problem(segment_dir.name):
            problems.append(
                Problem(
                    str(segment_dir), f"name {name_problem(segment_dir.name)}", "segment skipped"
                )
            )
            continue
        ids = []
        for entry in segment_dir.glob("*.bin"):
            if entry.stem.isdigit():
                ids.append(int(entry.stem))
            else:
                problems.append(Problem(str(entry), "file name is not a frame id", "frame skipped"))
        raw[segment_dir.name] = sorted(ids)
    return raw


def _check_order(
    identity_dir: Path, raw: dict[str, list[int]], problems: list[Problem]
) -> dict[str, list[int]]:
    """Sort frame ids (never trust listing order); drop segments that repeat an id."""
    segments = {}
    source = identity_dir / "frame_list.txt"
    for name, ids in raw.items():
        if len(set(ids)) != len(ids):
            repeated = sorted({i for i in ids if ids.count(i) > 1})[:3]
            problems.append(
                Problem(
                    f"{source} [{name}]",
                    f"frame ids repeat ({', '.join(map(str, repeated))})",
                    "segment skipped",
                )
            )
            continue
        if any(b < a for a, b in zip(ids, ids[1:])):
            problems.append(
                Problem(
                    f"{source} [{name}]", "frame ids are not increasing; ordered by id", "warning"
                )
            )
        segments[name] = sorted(ids)
    return segments


def _identity_vertex_count(identity_dir: Path, configured: int | None) -> int:
    if configured is not None:
        return configured
    mean_file = identity_dir / "vert_mean.bin"
    if mean_file.is_file() and mean_file.stat().st_size % 12 == 0 and mean_file.stat().st_size > 0:
        return mean_file.stat().st_size // 12
    return MULTIFACE_NUM_VERTICES


def discover(config: PrepConfig) -> tuple[list[Identity], list[Problem]]:
    """Find identities (folders with tracked_mesh/) and their segments."""
    root = config.root
    if not root.is_dir():
        raise MeshtalkError(root, "dataset root not found")
    identities, problems = [], []
    candidates = sorted(p for p in root.iterdir() if p.is_dir() and (p / "tracked_mesh").is_dir())
    if not candidates:
        raise MeshtalkError(root, "no Multiface identities found (folders with tracked_mesh/)")
    for identity_dir in candidates:
        if name_problem(identity_dir.name):
            message = f"name {name_problem(identity_dir.name)}"
            problems.append(Problem(str(identity_dir), message, "identity skipped"))
            continue
        local: list[Problem] = []
        segments = _check_order(identity_dir, _read_frame_list(identity_dir, local), local)
        problems += local
        if config.neutral_segment not in segments:
            problems.append(
                Problem(
                    str(identity_dir),
                    f"no neutral segment '{config.neutral_segment}'",
                    "identity skipped",
                )
            )
            continue
        speech = [s for s in segments if s.startswith(SPEECH_PREFIX)]
        if not speech:
            problems.append(
                Problem(str(identity_dir), "no SEN_* speech segments", "identity skipped")
            )
            continue
        num_vertices = _identity_vertex_count(identity_dir, config.num_vertices)
        try:
            kept_vertices(config.crop, num_vertices)
        except MeshtalkError as error:
            problems.append(Problem(str(identity_dir), error.problem, "identity skipped"))
            continue
        identities.append(Identity(identity_dir.name, identity_dir, segments, num_vertices, local))
    return identities, problems


# --- per-segment work (runs in worker processes) ----------------------------------------------


def _frame_step(ids: list[int]) -> int:
    if len(ids) < 2:
        return 1
    return int(np.gcd.reduce(np.diff(np.asarray(ids)))) or 1


def _read_frames(
    task: SegmentTask,
    identity_dir: Path,
    num_vertices: int,
    kept: np.ndarray | None,
    problems: list[Problem],
) -> tuple[list[int], np.ndarray, np.ndarray]:
    """Observed frames of a segment, cropped: ids, (T, V, 3) float32 meshes, (T, 3, 4) poses.

    The hot loop of prep: each file is read straight into a preallocated buffer; a file that is
    not exactly one mesh is re-read by `read_bin` to name its problem.
    """
    from meshtalk.pipelines.io.mesh import read_bin, read_transform

    mesh_dir = os.path.join(identity_dir, "tracked_mesh", task.segment)
    size = num_vertices * 12
    buffer = _scratch("read", (len(task.frame_ids), num_vertices, 3))
    poses = np.full((len(task.frame_ids), 3, 4), np.nan, dtype=np.float32)
    ids: list[int] = []
    missing = 0
    for frame_id in task.frame_ids:
        stem = os.path.join(mesh_dir, f"{frame_id:06d}")
        row = buffer[len(ids)]
        try:
            with open(stem + ".bin", "rb") as handle:
                whole = os.fstat(handle.fileno()).st_size == size
                whole = whole and handle.readinto(memoryview(row).cast("B")) == size
        except FileNotFoundError:
            missing += 1
            continue  # a dropped frame: its id keeps the others aligned
        except OSError as error:  # a symlink loop, a folder, no permission
            message = f"cannot read mesh ({error.strerror or error})"
            problems.append(Problem(stem + ".bin", message, "frame skipped"))
            continue
        if not whole:
            try:
                read_bin(stem + ".bin", num_vertices)  # raises with the reason
            except MeshtalkError as error:
                problems.append(Problem(str(error.path), error.problem, "frame skipped"))
                continue
        try:
            with open(stem + "_transform.txt") as handle:
                values = np.array(handle.read().split(), dtype=np.float32)
            if values.size != 12 or not np.isfinite(values).all():
                raise ValueError
            poses[len(ids)] = values.reshape(3, 4)
        except FileNotFoundError:
            pass  # a pose is optional
        except (ValueError, OSError):
            try:
                read_transform(stem + "_transform.txt")  # raises with the reason
            except MeshtalkError as error:
                problems.append(Problem(str(error.path), error.problem, "warning"))
        ids.append(frame_id)
    if missing > MISSING_FRAMES_WARNING * len(task.frame_ids):
        message = (
            f"{missing} of {len(task.frame_ids)} frames listed have no mesh file "
            f"({100 * missing / len(task.frame_ids):.0f}% of the segment lost)"
        )
        problems.append(Problem(mesh_dir, message, "warning"))
    if not ids:
        return [], np.empty((0, num_vertices if kept is None else len(kept), 3), "<f4"), poses[:0]
    finite = np.isfinite(buffer[: len(ids)].reshape(len(ids), -1)).all(axis=1)
    for frame_id in np.asarray(ids)[~finite]:
        path = os.path.join(mesh_dir, f"{frame_id:06d}.bin")
        message = "mesh has NaN or infinite vertex coordinates"
        problems.append(Problem(path, message, "frame skipped"))
    meshes = buffer[: len(ids)] if finite.all() else buffer[: len(ids)][finite]
    ids = [i for i, ok in zip(ids, finite) if ok]
    if kept is not None:
        meshes = np.take(meshes, kept, axis=1, out=_scratch("crop", (len(ids), len(kept), 3)))
    return ids, meshes, poses[: len(finite)][finite]


_SCRATCH: dict[str, np.ndarray] = {}


def _scratch(name: str, shape: tuple[int, ...]) -> np.ndarray:
    """A float32 work array reused across segments in this process.

    Fresh large arrays cost a page fault per 4 KiB on first touch, which under virtualisation was
    the largest cost of prep; reusing them keeps memory bounded by the longest segment.
    """
    size = int(np.prod(shape))
    if name not in _SCRATCH or _SCRATCH[name].size < size:
        _SCRATCH[name] = np.empty(max(size, 1), dtype="<f4")
    return _SCRATCH[name][:size].reshape(shape)


def process_segment(
    task: SegmentTask, config: PrepConfig, work_dir: Path, identity_dir: Path, num_vertices: int
) -> SegmentResult:
    """Read, crop and check the meshes of one segment; for speech, write vertices and frame times.

    Runs in worker processes, which need numpy only; the audio is done by `segment_audio`.
    """
    result = SegmentResult(task.identity, task.segment, task.kind)
    kept = kept_vertices(config.crop, num_vertices)  # checked in discover()
    ids, meshes, poses = _read_frames(task, identity_dir, num_vertices, kept, result.problems)
    result.num_vertices = meshes.shape[1] if len(ids) else None
    where = f"{identity_dir}/tracked_mesh/{task.segment}"
    if not ids:
        skipped = [p for p in result.problems if p.action == "frame skipped"]
        reasons = {p.message for p in skipped}
        if len(reasons) == 1 and len(skipped) > 1:
            # Every frame failed alike (a vertex count from vert_mean.bin or --vertices that the
            # meshes do not have): one line for the segment, not one per frame.
            message = f"no readable frames: each of its {len(skipped)} meshes {reasons.pop()}"
            result.problems = [p for p in result.problems if p.action != "frame skipped"]
            result.problems.append(Problem(where, message, "segment skipped"))
        else:
            result.problems.append(Problem(where, "no readable frames", "segment skipped"))
        return result
    result.frames = len(ids)
    if task.kind == "neutral":
        result.template = meshes.astype(np.float64).mean(0).astype(np.float32)
        return result
    times = _frame_times(task.frame_ids, ids)
    segment_dir = work_dir / task.segment
    segment_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(segment_dir / "vertices.npy", suffix=".npy") as tmp:
        np.save(tmp, meshes)
    with atomic_path(segment_dir / "frames.npz", suffix=".npz") as tmp:
        np.savez(
            tmp,
            frame_ids=np.asarray(ids, np.int64),
            times_s=times,
            mel_index=frame_mel_index(times),
            poses=poses,
        )
    if task.split == "train":
        result.stats = segment_moments(meshes)
    return result


def segment_moments(frames: np.ndarray) -> tuple[int, np.ndarray, np.ndarray]:
    """(count, mean, M2) per coordinate of (T, V, 3) float32 frames, accumulated in float64.

    Deviations are taken from the first frame: they are small (millimetres of motion), so float32
    sums over one segment lose nothing that matters (about 1e-6 relative) and cost a third of
    float64 ones; segments are merged in float64.
    """
    shift = frames[0].astype(np.float64)
    deviation = np.subtract(frames, frames[0], out=_scratch("moments", frames.shape))
    total = deviation.sum(0).astype(np.float64)
    squares = np.square(deviation, out=deviation).sum(0).astype(np.float64)
    count = len(frames)
    return count, shift + total / count, squares - total**2 / count


def _frame_times(captured: list[int], ids: list[int]) -> np.ndarray:
    """Seconds from the segment's first captured frame, by frame id (never by position)."""
    return (np.asarray(ids) - captured[0]) / _frame_step(captured) / FPS


def segment_audio(
    task: SegmentTask, identity_dir: Path, work_dir: Path, channel: int | None = None
) -> list[Problem]:
    """Write the log-mel of a speech segment; a 'segment skipped' problem if it is unusable."""
    audio_path = identity_dir / "audio" / f"{task.segment}.wav"
    problems: list[Problem] = []
    last_frame_s = float(_frame_times(task.frame_ids, task.frame_ids[-1:])[0])
    try:
        mel = _segment_mel(audio_path, last_frame_s, problems, channel)
    except MeshtalkError as error:
        return [*problems, Problem(str(error.path or audio_path), error.problem, "segment skipped")]
    segment_dir = work_dir / task.segment
    segment_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(segment_dir / "mel.npy", suffix=".npy") as tmp:
        np.save(tmp, mel)
    return problems


def _segment_mel(
    audio_path: Path, last_frame_s: float, problems: list[Problem], channel: int | None = None
) -> np.ndarray:
    """The stored log-mel: the padded utterance up to the last frame's window, no further."""
    from meshtalk.pipelines.features import utterance_mel
    from meshtalk.pipelines.io.audio import read_audio, resample

    if not audio_path.is_file():
        raise MeshtalkError(audio_path, "audio file not found")
    mel_config = MelConfig()
    samples, source_rate = read_audio(audio_path, channel)
    if np.abs(samples).max() == 0:
        raise MeshtalkError(audio_path, "audio is silent")
    if source_rate < mel_config.sample_rate:
        empty_from = source_rate / 2
        problems.append(
            Problem(
                str(audio_path),
                f"recorded at {source_rate} Hz: the mel bands above {empty_from:.0f} Hz are empty",
                "warning",
            )
        )
    samples = resample(samples, source_rate, mel_config.sample_rate)
    audio_s = samples.size / mel_config.sample_rate
    if audio_s < last_frame_s - 0.5:
        problems.append(
            Problem(
                str(audio_path),
                f"audio lasts {audio_s:.2f} s but frames run to {last_frame_s:.2f} s",
                "warning",
            )
        )
    elif audio_s > last_frame_s + AUDIO_LENGTH_TOLERANCE_S:
        # The last frame's window reaches PAD_SECONDS past it; audio beyond is never used.
        keep_s = last_frame_s + PAD_SECONDS
        problems.append(
            Problem(
                str(audio_path),
                f"audio lasts {audio_s:.2f} s but frames end at {last_frame_s:.2f} s: "
                f"only the first {keep_s:.2f} s are kept",
                "warning",
            )
        )
        samples = samples[: round(keep_s * mel_config.sample_rate)]
        if np.abs(samples).max() == 0:
            raise MeshtalkError(audio_path, f"audio is silent over the first {keep_s:.2f} s")
    return utterance_mel(samples, last_frame_s)


# --- statistics ---------------------------------------------------------------------------------


def merge_stats(
    a: tuple[int, np.ndarray, np.ndarray] | None, b: tuple[int, np.ndarray, np.ndarray] | None
):
    """Chan et al.'s parallel merge of (count, mean, M2) moments."""
    if a is None:
        return b
    if b is None:
        return a
    n_a, mean_a, m2_a = a
    n_b, mean_b, m2_b = b
    n = n_a + n_b
    delta = mean_b - mean_a
    return n, mean_a + delta * (n_b / n), m2_a + m2_b + delta**2 * (n_a * n_b / n)


# --- the pipeline -------------------------------------------------------------------------------


def _settings_digest(config: PrepConfig) -> str:
    settings = {
        k: str(v)
        for k, v in asdict(config).items()
        if k not in ("workers", "force", "progress", "output")
    }
    for key in ("crop", "landmarks", "splits"):
        path = Path(str(getattr(config, key)))
        if path.is_file():
            settings[key + "_content"] = hashlib.sha256(path.read_bytes()).hexdigest()
    settings["format"] = STORE_FORMAT
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def _open_partial(config: PrepConfig) -> Path:
    partial = config.output / PARTIAL
    digest = _settings_digest(config)
    settings_file = partial / "settings.digest"
    if partial.exists() and (not settings_file.is_file() or settings_file.read_text() != digest):
        log.info("settings changed since the interrupted run: starting %s afresh", partial)
        shutil.rmtree(partial)
    (partial / "identities").mkdir(parents=True, exist_ok=True)
    write_text_atomic(settings_file, digest)
    return partial


# --- the output folder: checked, locked, recovered, replaced in place --------------------------


def _is_store(folder: Path) -> bool:
    """True if `folder` holds a complete store: a manifest with prep's format key."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(manifest, dict) and "format" in manifest


def _check_output(config: PrepConfig) -> None:
    """Refuse an output that overlaps the dataset or holds files prep did not make."""
    out, root = config.output.resolve(), config.root.resolve()
    if out == root or root in out.parents or out in root.parents:
        raise MeshtalkError(
            config.output,
            f"the output must not be, contain or lie inside the dataset ({config.root})",
        )
    if not out.exists():
        return
    if not out.is_dir():
        raise MeshtalkError(config.output, "exists and is not a folder")
    ours = (out / MARKER).is_file() or _is_store(out)
    if not ours and any(entry.name not in OWN_NAMES for entry in out.iterdir()):
        raise MeshtalkError(
            config.output,
            "is a folder of other files, not a meshtalk store; prep writes only into a new or "
            "empty folder or a store it made (--force replaces only a store)",
        )


def _make_output(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise MeshtalkError(
            out, f"cannot create the output folder ({error.strerror or error})"
        ) from None
    if not os.access(out, os.W_OK | os.X_OK):
        raise MeshtalkError(out, "cannot write into the output folder (no permission or read-only)")


def _move(source: Path, target: Path) -> None:
    """One rename of the store's replacement (a single place, so tests can stop between them)."""
    os.replace(source, target)


def _discard(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif os.path.lexists(path):
        path.unlink()


def _swap_in(out: Path) -> None:
    """Move the finished store from `.partial` into `out`, the old one aside, the manifest last.

    Safe to repeat after an interruption at any point: an entry still in `.partial` is new, so the
    one of that name in `out` is old (old entries all leave before new ones arrive), and a manifest
    in `out` while `.partial` still has one is the old one.
    """
    partial, old = out / PARTIAL, out / OLD
    old.mkdir(exist_ok=True)
    if (out / MANIFEST).exists():
        _discard(old / MANIFEST)
        _move(out / MANIFEST, old / MANIFEST)  # first: the folder never looks complete meanwhile
    for name in STORE_ENTRIES:
        if os.path.lexists(partial / name) and os.path.lexists(out / name):
            _discard(old / name)
            _move(out / name, old / name)
    for name in STORE_ENTRIES:
        if os.path.lexists(partial / name):
            _move(partial / name, out / name)
    _move(partial / MANIFEST, out / MANIFEST)
    shutil.rmtree(old)
    shutil.rmtree(partial)


def _recover(out: Path) -> None:
    """Finish a replacement that an earlier run began, or undo what it cannot finish."""
    partial, old = out / PARTIAL, out / OLD
    if not old.exists():
        # A build finished but not yet moved in: its last step is redone, to the same bytes.
        (partial / MANIFEST).unlink(missing_ok=True)
        return
    if (partial / MANIFEST).is_file():
        log.info("finishing the replacement of %s that an earlier run began", out)
        _swap_in(out)
    elif (out / MANIFEST).is_file():
        shutil.rmtree(old)  # the replacement was complete
        shutil.rmtree(partial, ignore_errors=True)
    else:
        for name in STORE_ENTRIES + (MANIFEST,):  # manifest last: complete again only at the end
            if os.path.lexists(old / name):
                _discard(out / name)
                _move(old / name, out / name)
        shutil.rmtree(old)


def run(config: PrepConfig) -> Path:
    """Build the store; returns its path. Raises MeshtalkError when nothing usable was made."""
    started = time.perf_counter()
    if not config.root.is_dir():
        raise MeshtalkError(config.root, "dataset root not found")
    _check_output(config)
    _make_output(config.output)
    with exclusive(config.output, "meshtalk prep"):
        _recover(config.output)
        if _is_store(config.output) and not config.force:
            raise MeshtalkError(config.output, "already exists (pass --force to replace it)")
        if not (config.output / MARKER).is_file():
            write_text_atomic(config.output / MARKER, "made by meshtalk prep\n")
        try:
            return _build(config, started)
        except Exception as error:
            # A fatal error leaves nothing half-made (an interruption keeps the work for a rerun);
            # a replacement already under way is finished by the next run instead.
            if not (config.output / OLD).exists():
                shutil.rmtree(config.output / PARTIAL, ignore_errors=True)
            if isinstance(error, OSError):  # a full disk, a read-only filesystem: one line
                reason = (error.strerror or str(error)).lower()
                raise MeshtalkError(
                    error.filename or config.output,
                    f"{reason} (nothing half-written was kept; rerun once this is fixed)",
                ) from None
            raise


def _build(config: PrepConfig, started: float) -> Path:
    from meshtalk.pipelines.data.splits import assign_splits
    from meshtalk.pipelines.io.progress import console

    identities, problems = discover(config)
    for problem in problems:
        console.print(problem.line(), markup=False, highlight=False)
    if not identities:
        _report(problems, [], config)
        raise MeshtalkError(
            config.root,
            f"nothing usable: no identity could be prepared ({len(problems)} problems above)",
        )
    speech = {i.name: [s for s in i.segments if s.startswith(SPEECH_PREFIX)] for i in identities}
    assignment = assign_splits(config.splits, speech)
    partial = _open_partial(config)

    finished = {
        i.name for i in identities if (partial / "identities" / i.name / "identity.json").is_file()
    }
    pending = [i for i in identities if i.name not in finished]
    if finished:
        log.info("resuming: %d identities already prepared", len(finished))
    for identity in pending:
        shutil.rmtree(partial / "identities" / identity.name, ignore_errors=True)

    tasks: list[tuple[SegmentTask, Identity]] = []
    for identity in pending:
        neutral = identity.segments[config.neutral_segment]
        tasks.append(
            (SegmentTask(identity.name, config.neutral_segment, neutral, "neutral"), identity)
        )
        for segment in speech[identity.name]:
            split = assignment.get((identity.name, segment))
            if split is not None:
                frames = identity.segments[segment]
                tasks.append(
                    (SegmentTask(identity.name, segment, frames, "speech", split), identity)
                )
    outcome = _execute(tasks, pending, config, partial)
    return _finish(config, partial, identities, assignment, problems, outcome, started)


def _ignore_interrupts() -> None:
    """Worker initializer: Ctrl-C is the parent's to handle (it stops the pool)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


class _InterruptsIgnored:
    """Ignore SIGINT while worker processes start: they inherit it and never print a traceback."""

    def __enter__(self) -> None:
        self.active = threading.current_thread() is threading.main_thread()
        if self.active:
            self.previous = signal.signal(signal.SIGINT, signal.SIG_IGN)

    def __exit__(self, *exc) -> None:
        if self.active:
            signal.signal(signal.SIGINT, self.previous or signal.default_int_handler)


def _execute(
    tasks: list[tuple[SegmentTask, Identity]],
    pending: list[Identity],
    config: PrepConfig,
    partial: Path,
) -> dict[str, list[Problem]]:
    """Meshes in worker processes (numpy only), audio in this process meanwhile.

    Returns each pending identity's segment problems, in name order.
    """
    from meshtalk.pipelines.io.progress import console, progress_bar

    remaining = {i.name: sum(1 for t, _ in tasks if t.identity == i.name) for i in pending}
    results: dict[str, list[SegmentResult]] = {i.name: [] for i in pending}
    by_name = {i.name: i for i in pending}
    audio: dict[tuple[str, str], list[Problem]] = {}
    outcome: dict[str, list[Problem]] = {}

    def work_dir(identity: Identity) -> Path:
        return partial / "identities" / identity.name

    def do_audio(task: SegmentTask, identity: Identity) -> None:
        if task.kind == "speech":
            audio[task.identity, task.segment] = segment_audio(
                task, identity.path, work_dir(identity), config.channel
            )

    def finish_one(result: SegmentResult, task: SegmentTask, progress, bar) -> None:
        extra = audio.pop((task.identity, task.segment), [])
        if any(p.action == "segment skipped" for p in extra) and result.frames:
            result.frames, result.stats = 0, None
            shutil.rmtree(work_dir(by_name[task.identity]) / task.segment, ignore_errors=True)
        result.problems += extra
        for problem in result.problems:
            console.print(problem.line(), markup=False, highlight=False)
        results[result.identity].append(result)
        remaining[result.identity] -= 1
        progress.advance(bar, len(task.frame_ids))
        if remaining[result.identity] == 0:
            outcome[result.identity] = _complete_identity(
                by_name[result.identity], results.pop(result.identity), config, partial
            )

    with progress_bar(disable=not config.progress) as progress:
        bar = progress.add_task("prep", total=sum(len(t.frame_ids) for t, _ in tasks))
        if config.workers == 1:
            for task, identity in tasks:
                result = process_segment(
                    task, config, work_dir(identity), identity.path, identity.num_vertices
                )
                do_audio(task, identity)
                finish_one(result, task, progress, bar)
            return outcome
        import multiprocessing

        import torch

        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # the cores belong to the mesh workers
        context = multiprocessing.get_context("spawn")
        pool = ProcessPoolExecutor(
            config.workers, mp_context=context, initializer=_ignore_interrupts
        )
        try:
            with _InterruptsIgnored():  # workers start here
                futures = {
                    pool.submit(
                        process_segment,
                        task,
                        config,
                        work_dir(identity),
                        identity.path,
                        identity.num_vertices,
                    ): task
                    for task, identity in tasks
                }
            # Consumed futures are dropped at once, so memory does not grow with the dataset.
            for task, identity in tasks:  # audio here while the workers read meshes
                do_audio(task, identity)
                for future in [f for f in futures if f.done() and _audio_ready(futures[f], audio)]:
                    finish_one(future.result(), futures.pop(future), progress, bar)
            while futures:
                done, _ = wait(futures, return_when=FIRST_COMPLETED)
                for future in done:
                    finish_one(future.result(), futures.pop(future), progress, bar)
        finally:
            # On Ctrl-C or an error: drop the queued segments, let the running ones end.
            pool.shutdown(wait=True, cancel_futures=True)
            torch.set_num_threads(threads)
    return outcome


def _audio_ready(task: SegmentTask, audio: dict) -> bool:
    return task.kind != "speech" or (task.identity, task.segment) in audio


def _complete_identity(
    identity: Identity, results: list[SegmentResult], config: PrepConfig, partial: Path
) -> list[Problem]:
    """Write an identity's template, statistics and marker once all its segments are done.

    Segments are taken in name order, never in the order workers finished them, so the moments
    merge to the same bits in every run. Returns the segments' problems in that order.
    """
    directory = partial / "identities" / identity.name
    results = sorted(results, key=lambda r: (r.kind != "neutral", r.segment))
    segment_problems = [p for r in results for p in r.problems]
    neutral = next((r for r in results if r.kind == "neutral"), None)
    speech = [r for r in results if r.kind == "speech" and r.frames > 0]
    sizes = {r.num_vertices for r in results if r.num_vertices}
    reason = None
    if neutral is None or neutral.template is None:
        reason = "neutral segment has no readable frames"
    elif not speech:
        reason = "no usable speech segment"
    elif len(sizes) > 1:
        reason = f"segments disagree on the vertex count ({sorted(sizes)})"
    if reason is not None:
        problem = Problem(str(identity.path), reason, "identity skipped")
        from meshtalk.pipelines.io.progress import console

        console.print(problem.line(), markup=False, highlight=False)
        shutil.rmtree(directory, ignore_errors=True)
        return [*segment_problems, problem]
    directory.mkdir(parents=True, exist_ok=True)
    with atomic_path(directory / "template.npy", suffix=".npy") as tmp:
        np.save(tmp, neutral.template)
    stats = None
    for result in speech:
        stats = merge_stats(stats, result.stats)
    if stats is not None:
        with atomic_path(directory / "stats.npz", suffix=".npz") as tmp:
            np.savez(tmp, count=stats[0], mean=stats[1], m2=stats[2])
    record = {
        "name": identity.name,
        "source": str(identity.path.resolve()),
        "num_vertices": int(neutral.template.shape[0]),
        "neutral_frames": neutral.frames,
        "segments": [{"name": r.segment, "frames": r.frames} for r in speech],
        "problems": [asdict(p) for p in identity.problems + segment_problems],
    }
    write_text_atomic(directory / "identity.json", json.dumps(record, indent=1))
    return segment_problems


def _finish(
    config: PrepConfig,
    partial: Path,
    identities: list[Identity],
    assignment: dict,
    found: list[Problem],
    outcome: dict[str, list[Problem]],
    started: float,
) -> Path:
    """Merge the identities' statistics in name order, write the rest, move the store in."""
    records = []
    problems = list(found)  # discovery's, then each identity's segments', in name order
    for identity in identities:
        marker = partial / "identities" / identity.name / "identity.json"
        if marker.is_file():
            record = json.loads(marker.read_text())
            records.append(record)
            problems += [Problem(**p) for p in record["problems"][len(identity.problems) :]]
        else:
            problems += outcome.get(identity.name, [])
    sizes = {r["num_vertices"] for r in records}
    if len(sizes) > 1:
        problems.append(
            Problem(
                str(config.root),
                f"identities disagree on the vertex count {sorted(sizes)}",
                "fatal",
            )
        )
    stats = None
    for record in records:
        stats_file = partial / "identities" / record["name"] / "stats.npz"
        if stats_file.is_file():
            with np.load(stats_file) as saved:
                stats = merge_stats(stats, (int(saved["count"]), saved["mean"], saved["m2"]))
    if not records or stats is None or len(sizes) > 1:
        _report(problems, records, config)
        reason = "no training frames" if records else "no identity could be prepared"
        raise MeshtalkError(
            config.root, f"nothing usable: {reason} ({len(problems)} problems above)"
        )
    count, mean, m2 = stats
    with atomic_path(partial / "mean.npy", suffix=".npy") as tmp:
        np.save(tmp, mean.astype(np.float32))
    with atomic_path(partial / "std.npy", suffix=".npy") as tmp:
        np.save(tmp, np.sqrt(m2 / max(count - 1, 1)).astype(np.float32))
    template = np.load(partial / "identities" / records[0]["name"] / "template.npy")
    masks = _make_masks(config, template)
    (partial / "masks").mkdir(exist_ok=True)
    for name, values in masks.items():
        with atomic_path(partial / "masks" / f"{name}.npy", suffix=".npy") as tmp:
            np.save(tmp, values)
    save_vertex_maps(partial / "masks.png", template, masks)
    manifest = _manifest(config, records, assignment, problems, int(count), next(iter(sizes)))
    write_text_atomic(partial / MANIFEST, json.dumps(manifest, indent=1))
    _swap_in(config.output)
    _report(problems, records, config, time.perf_counter() - started)
    return config.output


def _make_masks(config: PrepConfig, template: np.ndarray) -> dict[str, np.ndarray]:
    from meshtalk.pipelines.data.masks import build_masks, load_landmarks, read_mask_dir

    if config.masks is not None:
        return read_mask_dir(config.masks, len(template))
    return build_masks(template, load_landmarks(config.landmarks, len(template)))


def _manifest(
    config: PrepConfig,
    records: list[dict],
    assignment: dict,
    problems: list[Problem],
    train_frames: int,
    num_vertices: int,
) -> dict:
    splits: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    for record in records:
        for segment in record["segments"]:
            split = assignment.get((record["name"], segment["name"]))
            segment["split"] = split
            if split:
                splits[split].append(f"{record['name']}/{segment['name']}")
    window = AUDIO_WINDOWS[config.window]
    first, count = window.mel_offsets(MelConfig())
    return {
        "format": STORE_FORMAT,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "source": str(config.root.resolve()),
        "settings": {
            k: (str(v) if v is not None else None)
            for k, v in asdict(config).items()
            if k not in ("force", "progress", "output")
        },
        "versions": versions(("meshtalk", "numpy", "torch", "torchaudio", "soundfile")),
        "fps": FPS,
        "num_vertices": num_vertices,
        "mel": asdict(MelConfig()),
        "audio_window": {
            "name": window.name,
            "start_s": window.start_s,
            "end_s": window.end_s,
            "mel_first": first,
            "mel_frames": count,
        },
        "masks": list(MASK_NAMES),
        "train_frames": train_frames,
        "identities": records,
        "splits": splits,
        "problems": [asdict(p) for p in problems],
    }


def _report(
    problems: list[Problem], records: list[dict], config: PrepConfig, seconds: float | None = None
) -> None:
    from rich.table import Table

    from meshtalk.pipelines.io.progress import console

    table = Table(title="meshtalk prep", title_justify="left")
    for column in ("identity", "segments", "frames", "skipped frames", "skipped segments"):
        if column == "identity":
            table.add_column(column, overflow="fold")
        else:
            table.add_column(column, justify="right")
    for record in records:
        own = record["problems"]
        table.add_row(
            record["name"],
            str(len(record["segments"])),
            str(sum(s["frames"] for s in record["segments"])),
            str(sum(p["action"] == "frame skipped" for p in own)),
            str(sum(p["action"] == "segment skipped" for p in own)),
        )
    console.print(table)
    counts = {
        a: sum(p.action == a for p in problems)
        for a in ("warning", "frame skipped", "segment skipped", "identity skipped", "fatal")
    }
    summary = ", ".join(f"{n} {a}" for a, n in counts.items())
    frames = sum(s["frames"] for r in records for s in r["segments"])
    rate = f"; {frames / seconds:,.0f} frames/s" if seconds else ""
    console.print(f"problems: {summary}{rate}", markup=False, highlight=False)
    if seconds is not None:
        console.print(f"store: {config.output}", markup=False, highlight=False)
