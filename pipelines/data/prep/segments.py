"""One segment's work: its meshes read, cropped and checked, its moments, its log-mel.

`process_segment` runs in worker processes and needs numpy only; `segment_audio` runs in the
parent meanwhile.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from meshtalk.pipelines.data.layout import FPS
from meshtalk.pipelines.data.prep.config import (
    AUDIO_LENGTH_TOLERANCE_S,
    MISSING_FRAMES_WARNING,
    PrepConfig,
    Problem,
    SegmentResult,
    SegmentTask,
)
from meshtalk.pipelines.data.topology import kept_vertices
from meshtalk.pipelines.errors import MeshtalkError
from meshtalk.pipelines.frontend import PAD_SECONDS, AudioFrontEnd
from meshtalk.pipelines.io.atomic import atomic_path


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
            mel_index=config.front_end.mel_index(times),
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
    task: SegmentTask,
    identity_dir: Path,
    work_dir: Path,
    front_end: AudioFrontEnd,
    channel: int | None = None,
) -> list[Problem]:
    """Write the log-mel of a speech segment through the store's front end; a 'segment skipped'
    problem if it is unusable."""
    audio_path = identity_dir / "audio" / f"{task.segment}.wav"
    problems: list[Problem] = []
    last_frame_s = float(_frame_times(task.frame_ids, task.frame_ids[-1:])[0])
    try:
        mel = _segment_mel(audio_path, last_frame_s, problems, front_end, channel)
    except MeshtalkError as error:
        return [*problems, Problem(str(error.path or audio_path), error.problem, "segment skipped")]
    segment_dir = work_dir / task.segment
    segment_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(segment_dir / "mel.npy", suffix=".npy") as tmp:
        np.save(tmp, mel)
    return problems


def _segment_mel(
    audio_path: Path,
    last_frame_s: float,
    problems: list[Problem],
    front_end: AudioFrontEnd,
    channel: int | None = None,
) -> np.ndarray:
    """The stored log-mel: the padded utterance up to the last frame's window, no further."""
    from meshtalk.pipelines.io.audio import read_audio, resample

    if not audio_path.is_file():
        raise MeshtalkError(audio_path, "audio file not found")
    mel_config = front_end.mel
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
    return front_end.utterance_mel(samples, last_frame_s)


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
