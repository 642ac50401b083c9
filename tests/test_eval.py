"""`meshtalk eval` end to end on a tiny trained run: JSON, baselines, pictures, video, bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from meshtalk.cli.main import app
from meshtalk.pipelines.data.store import PreparedStore
from meshtalk.pipelines.data.synth.face import builtin_vertex_count
from meshtalk.pipelines.errors import MeshtalkError
from meshtalk.pipelines.eval import metrics
from meshtalk.pipelines.eval.evaluate import (
    METHODS,
    EvalConfig,
    RunPredictors,
    evaluate,
    evaluate_predictors,
    segments,
)
from meshtalk.pipelines.eval.scores import METRIC_DESCRIPTIONS


def invoke(*args: str):
    return CliRunner().invoke(app, ["eval", *args, "--no-progress", "--device", "cpu"])


@pytest.fixture(scope="module")
def evaluated(tiny_trained_run, tiny_store, tmp_path_factory) -> dict:
    """One CLI run with two takes: OUT/ and the --json file."""
    folder = tmp_path_factory.mktemp("eval")
    result = invoke(
        str(tiny_trained_run),
        str(tiny_store),
        "--takes",
        "2",
        "-o",
        str(folder / "out"),
        "--json",
        str(folder / "results.json"),
    )
    assert result.exit_code == 0, result.output
    return {"out": folder / "out", "json": folder / "results.json", "output": result.output}


def test_eval_writes_self_explaining_json_pictures_and_the_worst_segment_video(
    evaluated, tiny_store
):
    import av

    out = evaluated["out"]
    assert {p.name for p in out.iterdir()} >= {
        "metrics.json",
        "error_map.png",
        "motion_std.png",
        "worst_segment.mp4",
    }
    document = json.loads((out / "metrics.json").read_text())
    assert json.loads(evaluated["json"].read_text()) == document
    assert document["split"] == "test" and document["takes"] == 2
    assert set(document["overall"]) == set(METHODS)
    for method in ("samples", "stage1_reconstruction", "static_template"):
        assert set(document["overall"][method]) == set(METRIC_DESCRIPTIONS)
    assert set(document["overall"]["data"]) == {"upper_face_motion_std_mm", "blinks_per_minute"}
    assert set(document["metric_descriptions"]) >= set(METRIC_DESCRIPTIONS) | {"perplexity"}
    store = PreparedStore(tiny_store)
    assert document["lip_vertices"] == np.flatnonzero(store.masks["mouth"] > 0.5).tolist()
    assert document["lip_vertex_rule"] == "mouth mask > 0.5"
    prior = document["prior"]
    assert 1.0 < prior["perplexity"] <= prior["classes"] * 1.5
    assert prior["codes"] > 0
    reconstruction = document["overall"]["stage1_reconstruction"]["mean_vertex_error_mm"]
    assert document["stage1_reconstruction_error_mm"] == reconstruction
    tested = store.split("test")
    assert [s["segment"] for s in document["segments"]] == [s.name for s in tested]
    assert set(document["identities"]) == {s.identity for s in tested}
    assert document["worst_segment"]["segment"] in {s.name for s in tested}
    with av.open(str(out / "worst_segment.mp4")) as container:
        kinds = {stream.type for stream in container.streams}
        frames = sum(1 for _ in container.decode(video=0))
    assert kinds == {"video", "audio"} and frames >= tested[0].frames
    assert "overall (test split)" in evaluated["output"]


def test_the_static_templates_error_is_the_templates_distance_to_the_data(evaluated, tiny_store):
    """Recomputed here from the store: per segment, then weighted by frames."""
    document = json.loads(evaluated["json"].read_text())
    store = PreparedStore(tiny_store)
    lips = metrics.lip_vertices(store.masks["mouth"])
    values, frames = [], []
    for segment in store.split("test"):
        data = np.asarray(store.vertices(segment))
        template = np.asarray(store.template(segment.identity))
        distance = np.linalg.norm(data - template, axis=-1)  # (T, V)
        values.append(
            (distance[:, lips].max(axis=1).mean(), (distance[:, lips] ** 2).max(axis=1).mean())
        )
        values[-1] += (distance.mean(),)
        frames.append(len(data))
    expected = np.average(np.array(values), axis=0, weights=frames)
    template = document["overall"]["static_template"]
    assert template["lip_vertex_error_mm"] == pytest.approx(expected[0], rel=1e-5)
    assert template["lip_vertex_error_squared_mm2"] == pytest.approx(expected[1], rel=1e-5)
    assert template["mean_vertex_error_mm"] == pytest.approx(expected[2], rel=1e-5)
    assert template["upper_face_motion_std_mm"] == 0.0 and template["blinks_per_minute"] == 0.0
    data_motion = document["overall"]["data"]["upper_face_motion_std_mm"]
    assert template["upper_face_dynamics_deviation_mm"] == pytest.approx(-data_motion, rel=1e-5)


def test_a_seed_reproduces_the_samples_and_the_video_draws_them_again(tiny_trained_run, tiny_store):
    config = EvalConfig(run=tiny_trained_run, data=tiny_store, device="cpu", seed=3)
    first, predictors = evaluate(config)
    again, _ = evaluate(config)
    assert first.overall("samples") == again.overall("samples")
    data = next(segments(PreparedStore(tiny_store), "test"))
    assert np.array_equal(predictors.samples(data), predictors.samples(data))
    assert isinstance(predictors, RunPredictors)


def test_any_predictor_can_be_scored(tiny_store):
    """The entry point other models use (the claims benchmark): a perfect predictor scores 0."""
    store = PreparedStore(tiny_store)
    results = evaluate_predictors(store, "test", {"perfect": lambda data: data.vertices})
    perfect = results.overall("perfect")
    assert perfect["lip_vertex_error_mm"] == 0.0 and perfect["mean_vertex_error_mm"] == 0.0
    assert perfect["upper_face_dynamics_deviation_abs_mm"] == 0.0
    assert perfect["blinks_per_minute"] == results.overall("data")["blinks_per_minute"]
    by_identity = results.by_identity("perfect")
    assert set(by_identity) == {s.identity for s in store.split("test")}


@pytest.fixture(scope="module")
def other_topology(tmp_path_factory) -> Path:
    """A store of the built-in head at another resolution (another vertex count)."""
    from meshtalk.pipelines.data.prep import run as prep
    from meshtalk.pipelines.data.synth import SynthConfig
    from meshtalk.pipelines.data.synth import run as synth
    from tests.conftest import builtin_prep_config

    root = tmp_path_factory.mktemp("other")
    synth(SynthConfig(output=root / "mf", identities=1, sentences=3, grid=16, seed=1))
    prep(builtin_prep_config(root / "mf", root / "data"))
    return root


def test_bad_input_is_one_line(tiny_trained_run, tiny_store, other_topology, tmp_path):
    no_test = tmp_path / "no_test"
    shutil.copytree(tiny_store, no_test)
    manifest = json.loads((no_test / "manifest.json").read_text())
    for record in manifest["identities"]:
        for segment in record["segments"]:
            if segment.get("split") == "test":
                segment["split"] = "val"
    (no_test / "manifest.json").write_text(json.dumps(manifest))
    latent_only = tmp_path / "latent_only"
    shutil.copytree(tiny_trained_run, latent_only, ignore=shutil.ignore_patterns("prior*"))
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    run, store = str(tiny_trained_run), str(tiny_store)
    cases = {
        "has no prior": [str(latent_only), store],
        "has no 'test' segments": [run, str(no_test)],
        "another topology": [run, str(other_topology / "data")],
        "not a prepared store": [run, str(tmp_path)],
        "--split must be one of": [run, store, "--split", "dev"],
        "--takes must be between": [run, store, "--takes", "0"],
        "no such folder for --json": [run, store, "--json", str(tmp_path / "no" / "x.json")],
        f"has {builtin_vertex_count(16)} vertices": [
            run,
            store,
            "-o",
            str(tmp_path / "out"),
            "--mesh",
            str(other_topology / "mf" / "topology" / "template.ply"),
        ],
        "not a folder": [run, store, "-o", str(a_file)],
    }
    for problem, args in cases.items():
        result = invoke(*args)
        assert result.exit_code == 1, (problem, result.output)
        lines = result.output.strip().splitlines()
        assert lines[-1].startswith("error: ") and problem in lines[-1], (problem, result.output)
        assert "Traceback" not in result.output
    assert not (tmp_path / "out").exists()
    with pytest.raises(MeshtalkError, match="--temperature"):
        EvalConfig(run=tiny_trained_run, data=tiny_store, temperature=0)


def test_the_priors_perplexity_is_the_one_training_measured_on_the_same_split(
    tiny_trained_run, tiny_store
):
    from meshtalk.pipelines.train.loop import MetricsLog

    rows = MetricsLog.read(tiny_trained_run / "prior_metrics.csv")
    trained = [float(r["value"]) for r in rows if r["name"] == "val/perplexity"][-1]
    results, _ = evaluate(
        EvalConfig(run=tiny_trained_run, data=tiny_store, split="val", device="cpu")
    )
    assert results.prior["perplexity"] == pytest.approx(trained, rel=1e-3)
