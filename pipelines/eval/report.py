"""What `meshtalk eval` shows and writes: the table, the JSON, the pictures and the video.

OUT/ (with -o, all files appear at once):

    metrics.json        the results (`to_json`)
    error_map.png       per-vertex mean error of the samples and of the stage-1 reconstruction
    motion_std.png      per-vertex motion standard deviation of the data, the samples and the
                        reconstruction, on one scale (the paper's Figure 6)
    worst_segment.mp4   unless --no-video: the segment with the samples' largest lip vertex
                        error, the first take beside the data with their distance as a heat map
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from meshtalk.pipelines.errors import MeshtalkError
from meshtalk.pipelines.eval import metrics
from meshtalk.pipelines.eval.evaluate import (
    DATA,
    RECONSTRUCTION,
    SAMPLES,
    TEMPLATE,
    EvalConfig,
    EvalResults,
    RunPredictors,
    segments,
)
from meshtalk.pipelines.eval.scores import METRIC_DESCRIPTIONS, per_vertex
from meshtalk.pipelines.io.owned import check_new_file, json_written_by

log = logging.getLogger(__name__)

METHOD_DESCRIPTIONS = {
    SAMPLES: "codes drawn by the prior from the audio, decoded onto the identity's template "
    "(mean over takes)",
    RECONSTRUCTION: "stage 1 decoding the codes its encoder gives the true meshes and audio "
    "(argmax)",
    TEMPLATE: "the identity's neutral template in every frame",
    DATA: "the tracked meshes themselves",
}
PRIOR_DESCRIPTIONS = {
    "perplexity": "exp of the mean negative log-likelihood per code of the true codes (stage-1 "
    "encoder's argmax on the true meshes and audio) under the prior, teacher forced; the number "
    "of classes for a uniform prior",
    "cross_entropy_nats": "that mean negative log-likelihood (nats per code)",
}
SHORT = {
    "lip_vertex_error_mm": "LVE mm",
    "lip_vertex_error_squared_mm2": "LVE² mm²",
    "lip_vertex_error_centred_mm": "LVE centred mm",
    "mean_vertex_error_mm": "MVE mm",
    "upper_face_motion_std_mm": "upper std mm",
    "upper_face_dynamics_deviation_mm": "upper dev mm",
    "upper_face_dynamics_deviation_abs_mm": "|upper dev| mm",
    "blinks_per_minute": "blinks/min",
}
"""Column headings of the table."""
VIDEO_FILE = "worst_segment.mp4"
WRITTEN_BY = "meshtalk eval"
"""The `written_by` of the results document: what `--force` may replace."""


def check_outputs(config: EvalConfig) -> np.ndarray | None:
    """Refuse outputs that cannot be written, before any work; returns the video's faces."""
    from meshtalk.pipelines.data.store import PreparedStore
    from meshtalk.pipelines.inference.output import OutputFolder

    if config.json is not None and not config.json.parent.is_dir():
        raise MeshtalkError(config.json.parent, "no such folder for --json")
    if config.json is not None and config.json.is_dir():
        raise MeshtalkError(config.json, "is a folder; --json names a file")
    if config.json is not None:
        check_new_file(config.json, config.force, WRITTEN_BY, json_written_by(WRITTEN_BY))
    if config.output is None:
        return None
    OutputFolder(config.output, "eval", force=config.force).check()
    if not config.video:
        return None
    store = PreparedStore(config.data)
    return _faces(config, store)


def _faces(config: EvalConfig, store) -> np.ndarray:
    from meshtalk.pipelines.data.layout import TOPOLOGY_DIR, TOPOLOGY_TEMPLATE
    from meshtalk.pipelines.io.mesh import read_mesh

    mesh = config.mesh
    if mesh is None:
        source = store.manifest.get("source")
        found = Path(str(source)) / TOPOLOGY_DIR / TOPOLOGY_TEMPLATE if source else None
        if found is None or not found.is_file():
            raise MeshtalkError(
                config.data,
                "no mesh with faces for the video (its source has no topology/template.ply): "
                "give --mesh FILE or --no-video",
            )
        mesh = found
    read = read_mesh(mesh)
    if len(read.vertices) != store.num_vertices:
        raise MeshtalkError(
            mesh, f"has {len(read.vertices)} vertices; the store's meshes have {store.num_vertices}"
        )
    return read.faces


def to_json(results: EvalResults) -> dict:
    """The results as a self-explaining JSON document."""
    methods = results.methods
    worst = results.worst() if SAMPLES in methods else None
    document = {
        "written_by": WRITTEN_BY,
        "split": results.split,
        "takes": results.takes,
        **results.settings,
        "metric_descriptions": {**METRIC_DESCRIPTIONS, **PRIOR_DESCRIPTIONS},
        "method_descriptions": {m: METHOD_DESCRIPTIONS.get(m, m) for m in methods},
        "lip_vertex_rule": f"mouth mask > {metrics.LIP_THRESHOLD}",
        "lip_vertices": results.regions.lips.tolist(),
        "eyelid_pairs": results.regions.eyelid_pairs.tolist(),
        "overall": {m: results.overall(m) for m in methods},
        "identities": {
            identity: {m: results.by_identity(m)[identity] for m in methods}
            for identity in dict.fromkeys(s.identity for s in results.segments)
        },
        "prior": results.prior,
        "segments": [
            {
                "identity": s.identity,
                "segment": s.segment,
                "frames": next(iter(s.scores.values())).frames,
                "seconds": round(next(iter(s.scores.values())).seconds, 4),
                "methods": {m: score.figures for m, score in s.scores.items()},
            }
            for s in results.segments
        ],
    }
    if RECONSTRUCTION in methods:
        document["stage1_reconstruction_error_mm"] = document["overall"][RECONSTRUCTION][
            "mean_vertex_error_mm"
        ]
    if worst is not None:
        document["worst_segment"] = {
            "identity": worst.identity,
            "segment": worst.segment,
            "lip_vertex_error_mm": worst.scores[SAMPLES].figures["lip_vertex_error_mm"],
        }
    return document


def print_table(results: EvalResults) -> None:
    """On stderr: a table per identity and one overall, a metric per row, a method per column."""
    from meshtalk.pipelines.io.progress import console

    per_method = {m: results.by_identity(m) for m in results.methods}
    for identity in dict.fromkeys(s.identity for s in results.segments):
        console.print(_table(identity, {m: per_method[m][identity] for m in results.methods}))
    overall = {m: results.overall(m) for m in results.methods}
    console.print(_table(f"overall ({results.split} split)", overall))
    prior = results.prior
    if prior:
        console.print(
            f"prior perplexity of the true codes: {prior['perplexity']:.4g} "
            f"(uniform: {prior['classes']}), {prior['codes']} codes",
            markup=False,
            highlight=False,
        )


def _table(title: str, by_method: dict[str, dict[str, float]]):
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    table.add_column("metric")
    for method in by_method:
        table.add_column(method.replace("_", " "), justify="right")
    for key in METRIC_DESCRIPTIONS:
        cells = [f"{f[key]:.3f}" if key in f else "" for f in by_method.values()]
        table.add_row(SHORT[key], *cells)
    return table


def write(
    config: EvalConfig,
    results: EvalResults,
    predictors: RunPredictors | None,
    faces: np.ndarray | None,
) -> None:
    """Write the JSON file and OUT/ as the config asks."""
    from meshtalk.pipelines.inference.output import OutputFolder
    from meshtalk.pipelines.io.atomic import write_text_atomic

    text = json.dumps(to_json(results), indent=1) + "\n"
    if config.json is not None:
        write_text_atomic(config.json, text)
        log.info("wrote %s", config.json)
    if config.output is None:
        return
    out = OutputFolder(config.output, "eval", force=config.force)
    with out.writing() as partial:
        (partial / "metrics.json").write_text(text)
        write_pictures(results, partial)
        if config.video and predictors is not None and faces is not None:
            write_worst_video(config, results, predictors, faces, partial / VIDEO_FILE)
    log.info("wrote %s", config.output)


def write_pictures(results: EvalResults, folder: Path) -> None:
    """error_map.png and motion_std.png (see the module docstring) into a folder."""
    from meshtalk.pipelines.data.store import PreparedStore
    from meshtalk.pipelines.io.pictures import save_vertex_maps

    first = results.segments[0]
    face = PreparedStore(results.settings["data"]).template(first.identity)
    methods = results.methods

    def scores(method: str):
        return [s.scores[method] for s in results.segments]

    errors = {
        f"{m}: mean error (mm)": per_vertex(scores(m), "vertex_error")
        for m in methods
        if m in (SAMPLES, RECONSTRUCTION)
    }
    save_vertex_maps(folder / "error_map.png", face, errors)
    motion = {
        f"{m}: motion std (mm)": per_vertex(scores(m), "motion_std")
        for m in methods
        if m in (DATA, SAMPLES, RECONSTRUCTION)
    }
    if DATA in methods:  # the data first, as in the paper's figure
        motion = {f"{DATA}: motion std (mm)": motion.pop(f"{DATA}: motion std (mm)"), **motion}
    save_vertex_maps(folder / "motion_std.png", face, motion, shared_scale=True)


def write_worst_video(
    config: EvalConfig,
    results: EvalResults,
    predictors: RunPredictors,
    faces: np.ndarray,
    path: Path,
) -> None:
    """The worst segment's first take beside the data, with the speech where the source has it."""
    from meshtalk.pipelines.data.store import PreparedStore
    from meshtalk.pipelines.render.clip import render_video
    from meshtalk.pipelines.render.overlay import nice_maximum

    worst = results.worst()
    store = PreparedStore(config.data)
    data = next(
        d
        for d in segments(store, config.split)
        if (d.ref.identity, d.ref.name) == (worst.identity, worst.segment)
    )
    sample = predictors.samples(data)[0]
    timeline = np.round((data.times_s - data.times_s[0]) * data.fps).astype(np.int64)
    frames = min(int(timeline[-1]) + 1, max(1, round(config.video_seconds * data.fps)))
    held = np.searchsorted(timeline, np.arange(frames), side="right") - 1  # dropped: hold last
    audio = _segment_audio(store, data, frames / data.fps)
    largest = float(np.linalg.norm(sample[held] - data.vertices[held], axis=-1).max())
    log.info("rendering the worst segment %s/%s", worst.identity, worst.segment)
    render_video(
        sample[held],
        faces,
        path,
        fps=data.fps,
        audio=audio,
        audio_rate=store.front_end.sample_rate,
        template=data.template,
        compare=data.vertices[held],
        distance_max=nice_maximum(largest) if largest > 0 else None,
        titles=("samples", "data"),
        total=frames,
        progress=config.progress,
    )


def _segment_audio(store, data, seconds: float) -> np.ndarray | None:
    """The segment's speech from the store's source dataset, where it is still there."""
    from meshtalk.pipelines.io.audio import load_audio

    source = store.manifest.get("source")
    path = Path(str(source)) / data.ref.identity / "audio" / f"{data.ref.name}.wav"
    if not source or not path.is_file():
        log.info("no audio at %s: the video is silent", path)
        return None
    rate = store.front_end.sample_rate
    samples = load_audio(path, rate)
    first = max(0, round(float(data.times_s[0]) * rate))
    return samples[first : first + round(seconds * rate)]
