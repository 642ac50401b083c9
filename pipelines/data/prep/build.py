"""`meshtalk prep`: the run -- segments to workers, identities completed, the store finished."""

from __future__ import annotations

import json
import logging
import shutil
import signal
import threading
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import asdict
from pathlib import Path

import numpy as np

from meshtalk.pipelines.data.layout import FPS, SPEECH_PREFIX
from meshtalk.pipelines.data.layout import STORE_FACES_FILE as FACES_FILE
from meshtalk.pipelines.data.masks import MASK_NAMES
from meshtalk.pipelines.data.prep import output, segments
from meshtalk.pipelines.data.prep.config import (
    MANIFEST,
    MARKER,
    OLD,
    PARTIAL,
    STORE_FORMAT,
    PrepConfig,
    Problem,
    SegmentResult,
    SegmentTask,
)
from meshtalk.pipelines.data.prep.discover import Identity, choose_topology, discover
from meshtalk.pipelines.data.prep.report import show_report
from meshtalk.pipelines.errors import MeshtalkError
from meshtalk.pipelines.io.atomic import atomic_path, write_text_atomic
from meshtalk.pipelines.io.lock import exclusive
from meshtalk.pipelines.io.pictures import save_vertex_maps
from meshtalk.pipelines.io.provenance import versions

log = logging.getLogger(__name__)


def run(config: PrepConfig) -> Path:
    """Build the store; returns its path. Raises MeshtalkError when nothing usable was made."""
    started = time.perf_counter()
    config, chosen = choose_topology(config)
    log.info("%s", chosen)
    output.check_output(config)
    output.make_output(config.output)
    with exclusive(config.output, "meshtalk prep"):
        output.recover(config.output)
        if output.is_store(config.output) and not config.force:
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
        show_report(problems, [], config)
        raise MeshtalkError(
            config.root,
            f"nothing usable: no identity could be prepared ({len(problems)} problems above)",
        )
    speech = {i.name: [s for s in i.segments if s.startswith(SPEECH_PREFIX)] for i in identities}
    assignment = assign_splits(config.splits, speech)
    partial = output.open_partial(config)

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
            audio[task.identity, task.segment] = segments.segment_audio(
                task, identity.path, work_dir(identity), config.front_end, config.channel
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
                result = segments.process_segment(
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
                        segments.process_segment,
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
        stats = segments.merge_stats(stats, result.stats)
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
                saved_stats = (int(saved["count"]), saved["mean"], saved["m2"])
                stats = segments.merge_stats(stats, saved_stats)
    if not records or stats is None or len(sizes) > 1:
        show_report(problems, records, config)
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
    faces = _topology_faces(config, len(template))
    (partial / FACES_FILE).parent.mkdir(exist_ok=True)
    if faces is not None:
        with atomic_path(partial / FACES_FILE, suffix=".npy") as tmp:
            np.save(tmp, faces)
    manifest = _manifest(config, records, assignment, problems, int(count), next(iter(sizes)))
    write_text_atomic(partial / MANIFEST, json.dumps(manifest, indent=1))
    output.swap_in(config.output)
    show_report(problems, records, config, time.perf_counter() - started)
    return config.output


def _topology_faces(config: PrepConfig, num_vertices: int) -> np.ndarray | None:
    """Triangles of the dataset's own `topology/template.ply` when it has the prepared meshes'
    vertex count (they let a trained run animate meshes of other topologies); else None."""
    from meshtalk.pipelines.data.layout import TOPOLOGY_DIR, TOPOLOGY_TEMPLATE
    from meshtalk.pipelines.io.mesh import read_mesh

    path = Path(config.root) / TOPOLOGY_DIR / TOPOLOGY_TEMPLATE
    if not path.is_file():
        return None
    mesh = read_mesh(path)
    if len(mesh.vertices) != num_vertices or len(mesh.faces) == 0:
        return None
    return np.asarray(mesh.faces, dtype=np.int32)


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
    front_end = config.front_end
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
        "front_end": front_end.to_dict(),
        "mel": asdict(front_end.mel),  # `mel` and `audio_window`: for readers before front_end
        "audio_window": front_end.audio_window(),
        "masks": list(MASK_NAMES),
        "train_frames": train_frames,
        "identities": records,
        "splits": splits,
        "problems": [asdict(p) for p in problems],
    }
