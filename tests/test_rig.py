"""`meshtalk rig`: ARKit names and files, the bounded solver against scipy, known weights solved
back on a procedural rig and on ICT-FaceKit's head, the bundled model's animation carried onto
that head with the residual the report states, bad rigs, and the rig GLB in the real clients."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from meshtalk.cli.main import app
from meshtalk.pipelines.export.arkit import (
    ARKIT_NAMES,
    LIVE_LINK_COLUMNS,
    arkit_name,
    match_targets,
    timecode,
)
from meshtalk.pipelines.export.blendshape_solver import BlendshapeSolver
from meshtalk.pipelines.export.rig import read_accessor, read_rig
from meshtalk.pipelines.inference.rig import RigConfig, solve_rig
from tests.rigs import (
    ICT,
    RigData,
    ict_rig,
    known_weight_animation,
    procedural_data,
    random_weights,
    write_rig_glb,
)

runner = CliRunner()


def arkit_columns(data: RigData) -> list[int]:
    return [index for index, name in enumerate(data.names) if arkit_name(name) is not None]


def solved_back(result_weights: np.ndarray, data: RigData, truth: np.ndarray) -> np.ndarray:
    """|solved - true| per frame and ARKit target of the rig."""
    columns = arkit_columns(data)
    order = [ARKIT_NAMES.index(arkit_name(data.names[c])) for c in columns]
    return np.abs(result_weights[:, order] - truth[:, columns])


@pytest.fixture(scope="module")
def procedural(tmp_path_factory) -> tuple[Path, RigData]:
    folder = tmp_path_factory.mktemp("procedural")
    data = procedural_data()
    return write_rig_glb(folder / "rig.glb", data), data


@pytest.fixture(scope="module")
def ict(tmp_path_factory) -> tuple[Path, RigData]:
    if not (ICT / "shapes.npz").is_file():
        pytest.skip("../shared/reference/ict_facekit is not beside the project")
    path = tmp_path_factory.mktemp("ict") / "ict.glb"
    return path, ict_rig(path)


def test_arkit_names_aliases_and_live_link_columns():
    assert len(ARKIT_NAMES) == len(set(ARKIT_NAMES)) == 52
    assert arkit_name("eyeBlink_L") == "eyeBlinkLeft"
    assert arkit_name("EYEBLINKRIGHT") == arkit_name("eyeBlink_r") == "eyeBlinkRight"
    assert arkit_name("blendShape.jawOpen") == "jawOpen"
    assert arkit_name("viseme_aa") is None and arkit_name("jawOpenish") is None
    assert match_targets(["viseme_aa", "JawOpen", "jawOpen"]) == {"jawOpen": 1}
    assert len(LIVE_LINK_COLUMNS) == 63 and LIVE_LINK_COLUMNS[:3] == (
        "Timecode",
        "BlendShapeCount",
        "EyeBlinkLeft",
    )
    jaw = LIVE_LINK_COLUMNS.index("JawForward")
    assert LIVE_LINK_COLUMNS[jaw : jaw + 4] == ("JawForward", "JawRight", "JawLeft", "JawOpen")
    mouth = LIVE_LINK_COLUMNS.index("MouthPucker")
    assert LIVE_LINK_COLUMNS[mouth + 1 : mouth + 3] == ("MouthRight", "MouthLeft")
    assert LIVE_LINK_COLUMNS[-9:][:3] == ("HeadYaw", "HeadPitch", "HeadRoll")
    assert LIVE_LINK_COLUMNS[-1] == "RightEyeRoll" and LIVE_LINK_COLUMNS[53] == "TongueOut"
    assert timecode(0, 30.0) == "00:00:00:00.000"
    assert timecode(31, 30.0) == "00:00:01:01.000"
    assert timecode(3600 * 30 + 61 * 30 + 29, 30.0) == "01:01:01:29.000"
    assert timecode(1, 25.0) == "00:00:00:01.000"
    assert timecode(1, 29.97) == "00:00:00:01.001"


def test_solver_matches_scipy_lsq_linear_where_bounds_hold(procedural):
    from scipy.optimize import lsq_linear

    _, data = procedural
    rng = np.random.default_rng(3)
    weights = rng.uniform(-0.5, 1.5, (40, len(data.names)))  # beyond the box: bounds active
    frames = np.einsum("tm,mvc->tvc", weights, data.targets)
    frames += rng.normal(0, 2e-4, frames.shape)
    solver = BlendshapeSolver(data.targets)
    solved = solver.solve(frames)
    assert solver.stats.inside < len(frames) and solver.stats.unconverged == 0
    basis = data.targets.reshape(len(data.targets), -1).T.astype(np.float64)
    for frame, solution in zip(frames, solved, strict=True):
        reference = lsq_linear(basis, frame.ravel(), bounds=(0, 1), method="bvls", tol=1e-12).x
        assert np.abs(solution - reference).max() < 1e-5
        assert solution.min() >= 0 and solution.max() <= 1
        cost = np.linalg.norm(basis @ solution - frame.ravel())
        assert cost <= np.linalg.norm(basis @ reference - frame.ravel()) * (1 + 1e-9)


def test_known_weights_solved_back_on_a_procedural_rig_through_the_cli(procedural, tmp_path):
    path, data = procedural
    truth = random_weights(90, len(data.names), seed=1)
    truth[:, [i for i, n in enumerate(data.names) if arkit_name(n) is None]] = 0.0
    animation = known_weight_animation(tmp_path / "known.npz", data, truth, fps=30.0)
    out = tmp_path / "out"
    result = runner.invoke(app, ["rig", str(animation), str(path), "-o", str(out), "--no-progress"])
    assert result.exit_code == 0, result.output
    assert sorted(json.loads((out / "rig.json").read_text())["files"]) == [
        "arkit_a2f.json",
        "arkit_livelink.csv",
        "fit.json",
        "rig.glb",
    ]
    with open(out / "arkit_livelink.csv", newline="") as handle:
        rows = list(csv.reader(handle))
    assert tuple(rows[0]) == LIVE_LINK_COLUMNS and len(rows) == 91
    assert all(len(row) == 63 and row[1] == "61" for row in rows[1:])
    assert all(re.fullmatch(r"\d\d:\d\d:\d\d:\d\d\.\d{3}", row[0]) for row in rows[1:])
    assert rows[31][0] == "00:00:01:00.000"
    csv_weights = np.array([[float(v) for v in row[2:54]] for row in rows[1:]])
    a2f = json.loads((out / "arkit_a2f.json").read_text())
    assert (a2f["exportFps"], a2f["numPoses"], a2f["numFrames"]) == (30.0, 52, 90)
    assert a2f["facsNames"] == list(ARKIT_NAMES)
    weights = np.array(a2f["weightMat"])
    assert weights.shape == (90, 52)
    error = solved_back(weights, data, truth)
    assert error.max() < 0.02 and error.max() < 1e-4  # exact but for float32 frames
    reordered = [LIVE_LINK_COLUMNS.index(n[0].upper() + n[1:]) - 2 for n in ARKIT_NAMES]
    assert np.abs(csv_weights[:, reordered] - weights).max() < 1e-5
    fit = json.loads((out / "fit.json").read_text())
    assert fit["residual"]["residual_max_mm"] < 0.01 < fit["residual"]["motion_max_mm"]
    assert fit["targets_ignored"] == ["viseme_aa"] and "mouthPucker" in fit["targets_missing"]
    assert "residual max" in result.output or fit["carried"] == "same topology"


def test_the_rig_glb_carries_the_solved_weights(procedural, tmp_path):
    from pygltflib import GLTF2

    path, data = procedural
    truth = random_weights(20, len(data.names), seed=2)
    truth[:, [i for i, n in enumerate(data.names) if arkit_name(n) is None]] = 0.0
    animation = known_weight_animation(tmp_path / "known.npz", data, truth, fps=24.0)
    solve_rig(RigConfig(animation=animation, rig=path, output=tmp_path / "out"))
    glb = tmp_path / "out" / "rig.glb"
    gltf = GLTF2.load_binary(glb)
    (animation_,) = gltf.animations
    sampler = animation_.samplers[0]
    assert sampler.interpolation == "LINEAR"
    assert animation_.channels[0].target.path == "weights"
    times = read_accessor(gltf, glb, sampler.input)[:, 0]
    assert np.allclose(times, np.arange(20) / 24.0)
    keyed = read_accessor(gltf, glb, sampler.output).reshape(20, len(data.names))
    assert np.abs(keyed - truth).max() < 1e-4
    again = read_rig(glb)  # the user's rig itself is unchanged
    assert np.array_equal(again.neutral, data.neutral)
    assert np.array_equal(again.targets, data.targets)


def test_a_rig_of_two_primitives_with_sparse_targets_reads_as_one_mesh(procedural, tmp_path):
    from tests import clients

    _, data = procedural
    split = read_rig(write_rig_glb(tmp_path / "split.glb", data, split=True, node_scale=0.01))
    assert np.array_equal(split.neutral, data.neutral)
    assert np.abs(split.targets - data.targets).max() <= 1e-6  # sparse: a micrometre dropped
    assert split.scale == pytest.approx(0.01)  # millimetres reported in metres' terms
    half = len(data.neutral) // 2
    assert split.faces.max() < len(data.neutral) and (split.faces >= half).any()
    truth = random_weights(10, len(data.names), seed=7)
    truth[:, [i for i, n in enumerate(data.names) if arkit_name(n) is None]] = 0.0
    same = RigData(data.neutral, split.faces, data.targets, data.names)  # the split's triangles
    animation = known_weight_animation(tmp_path / "known.npz", same, truth)
    result = solve_rig(
        RigConfig(animation=animation, rig=tmp_path / "split.glb", output=tmp_path / "out")
    )
    assert result.fit["carried"] == "same topology"
    assert solved_back(result.weights, data, truth).max() < 1e-3
    if clients.missing("validator") is None:
        counts = clients.glb_issues(clients.validate_glb(tmp_path / "out" / "rig.glb"))
        assert counts["numErrors"] == 0 and counts["numWarnings"] == 0, counts


def test_known_weights_solved_back_on_the_ict_facekit_rig(ict, tmp_path):
    path, data = ict
    rig = read_rig(path)
    assert len(rig.arkit) == 51 and "tongueOut" not in rig.arkit  # the kit has no tongueOut
    assert rig.arkit["eyeBlinkLeft"] == data.names.index("eyeBlink_L")
    truth = random_weights(48, len(data.names), seed=4)
    truth[:, [i for i, n in enumerate(data.names) if arkit_name(n) is None]] = 0.0
    animation = known_weight_animation(tmp_path / "known.npz", data, truth)
    result = solve_rig(RigConfig(animation=animation, rig=path, output=tmp_path / "out"))
    assert solved_back(result.weights, data, truth).max() < 0.02
    assert result.fit["residual"]["residual_max_mm"] < 0.05
    assert result.fit["targets_missing"] == ["tongueOut"]
    assert set(result.fit["targets_ignored"]) == {
        "PupilDilate_L",
        "PupilDilate_R",
        "cheekRaiser_L",
        "cheekRaiser_R",
    }


def test_the_bundled_models_animation_onto_the_ict_rig_states_its_residual(ict, tmp_path, caplog):
    """The bundled model animates the ICT-FaceKit head (26,719 vertices, mm); its frames solved on
    the same head as an ARKit rig (m): the same topology, so nothing is transferred, and the rig's
    shapes express nearly all of the motion (what they leave: the turned eyeballs, which are
    rotations, and the shapes a rig of ARKit's 52 lacks)."""
    import logging

    from meshtalk.pipelines.data.resources import default_model
    from meshtalk.pipelines.inference.animate import AnimateConfig
    from meshtalk.pipelines.inference.animate import run as animate

    path, _ = ict
    animate(
        AnimateConfig(speech=default_model.example_path(), output=tmp_path / "anim", video=False)
    )
    with caplog.at_level(logging.INFO):
        result = solve_rig(
            RigConfig(
                animation=tmp_path / "anim" / "animation.npz", rig=path, output=tmp_path / "out"
            )
        )
    fit = json.loads((tmp_path / "out" / "fit.json").read_text())
    residual = fit["residual"]
    assert fit["carried"] == "same topology" and fit["frames"] == 178
    assert not (tmp_path / "out" / "transfer.npz").exists()
    assert (tmp_path / "out" / "speech.wav").is_file()  # the animation's speech, beside the GLB
    assert 0 <= residual["residual_mean_mm"] < 0.2 * residual["motion_mean_mm"]
    assert residual["residual_mean_mm"] <= residual["residual_max_mm"]
    assert residual["explained_fraction"] > 0.9
    assert result.weights[:, ARKIT_NAMES.index("jawOpen")].max() > 0.05
    stated = f"residual max {residual['residual_max_mm']:.3g} mm"
    assert stated in caplog.text


def _bad_rig(tmp_path: Path, kind: str) -> Path:
    data = procedural_data(grid=6)
    path = tmp_path / f"{kind}.glb"
    if kind == "text":
        path.write_text("solid cube\n")
    elif kind == "no_targets":
        write_rig_glb(path, RigData(data.neutral, data.faces, data.targets[:0], []))
    elif kind == "count":
        write_rig_glb(path, RigData(data.neutral, data.faces, data.targets[:, :-3], data.names))
    elif kind == "visemes":
        write_rig_glb(
            path, RigData(data.neutral, data.faces, data.targets[:2], ["viseme_aa", "viseme_O"])
        )
    return path


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("text", "not a GLB"),
        ("no_targets", "has no morph targets"),
        ("count", "has 33 vertices, its mesh 36"),
        (
            "visemes",
            "has no ARKit targets (eyeBlinkLeft ... tongueOut, or eyeBlink_L): its 2 "
            "morph targets are viseme_aa, viseme_O",
        ),
    ],
)
def test_bad_rigs_are_one_line_each(procedural, tmp_path, kind, message):
    path, data = procedural
    animation = known_weight_animation(tmp_path / "a.npz", data, np.zeros((3, len(data.names))))
    out = tmp_path / "out"
    bad = _bad_rig(tmp_path, kind)
    result = runner.invoke(app, ["rig", str(animation), str(bad), "-o", str(out)])
    assert result.exit_code == 1
    assert result.output.count("\n") == 1 and result.output.startswith(f"error: {bad}: ")
    assert message in result.output and "Traceback" not in result.output
    assert not out.exists()


def test_bad_animations_and_a_users_folder_are_refused(procedural, tmp_path):
    path, data = procedural
    no_vertices = tmp_path / "empty.npz"
    np.savez(no_vertices, template=data.neutral, fps=np.float64(30))
    out = tmp_path / "out"
    result = runner.invoke(app, ["rig", str(no_vertices), str(path), "-o", str(out)])
    assert result.exit_code == 1 and result.output.count("\n") == 1
    assert "missing vertices" in result.output and not out.exists()
    animation = known_weight_animation(tmp_path / "a.npz", data, np.zeros((3, len(data.names))))
    out.mkdir()
    (out / "rig.glb").write_text("the user's own")
    result = runner.invoke(app, ["rig", str(animation), str(path), "-o", str(out)])
    assert result.exit_code == 1 and "folder of other files" in result.output
    result = runner.invoke(app, ["rig", str(animation), str(path), "-o", str(out), "--force"])
    assert result.exit_code == 1 and "was not written by meshtalk rig" in result.output
    assert (out / "rig.glb").read_text() == "the user's own"
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == ["rig.glb"]


def _posed(data: RigData, weights: np.ndarray) -> np.ndarray:
    return data.neutral[None] + np.einsum("tm,mvc->tvc", weights, data.targets)


@pytest.fixture(scope="module")
def solved_procedural(procedural, tmp_path_factory) -> tuple[Path, RigData, np.ndarray]:
    """rig.glb solved from known weights on the procedural rig, and the poses it must show."""
    path, data = procedural
    folder = tmp_path_factory.mktemp("clients")
    truth = random_weights(12, len(data.names), seed=5)
    truth[:, [i for i, n in enumerate(data.names) if arkit_name(n) is None]] = 0.0
    animation = known_weight_animation(folder / "known.npz", data, truth, fps=24.0)
    solve_rig(RigConfig(animation=animation, rig=path, output=folder / "out"))
    return folder / "out" / "rig.glb", data, _posed(data, truth)


@pytest.fixture(scope="module")
def solved_ict(ict, tmp_path_factory) -> tuple[Path, RigData, np.ndarray]:
    """rig.glb solved from known weights on ICT-FaceKit's rig (4 frames), and its poses."""
    path, data = ict
    folder = tmp_path_factory.mktemp("ict_clients")
    truth = random_weights(4, len(data.names), seed=6)
    truth[:, [i for i, n in enumerate(data.names) if arkit_name(n) is None]] = 0.0
    animation = known_weight_animation(folder / "ict.npz", data, truth, fps=24.0)
    solve_rig(RigConfig(animation=animation, rig=path, output=folder / "out"))
    return folder / "out" / "rig.glb", data, _posed(data, truth)


@pytest.mark.parametrize("rig", ["solved_procedural", "solved_ict"])
def test_the_rig_glb_passes_the_khronos_validator(rig, request):
    from tests import clients

    clients.require("validator")
    glb, _, _ = request.getfixturevalue(rig)
    counts = clients.glb_issues(clients.validate_glb(glb))
    assert counts["numErrors"] == 0 and counts["numWarnings"] == 0, counts


@pytest.mark.parametrize("rig", ["solved_procedural", "solved_ict"])
def test_three_js_plays_the_rig_glb_as_solved(rig, request):
    from tests import clients

    clients.require("three")
    glb, _, posed = request.getfixturevalue(rig)
    frames = [0, len(posed) // 2, len(posed) - 1]
    shown = clients.three_positions(glb, 24.0, frames)
    assert np.abs(shown - posed[frames]).max() < 1e-6  # metres: a micrometre


@pytest.mark.parametrize("rig", ["solved_procedural", "solved_ict"])
def test_blender_plays_the_rig_glb_as_solved(rig, request):
    from tests import clients

    clients.require("blender")
    glb, _, posed = request.getfixturevalue(rig)
    shown = clients.blender_positions("glb", glb, 24.0, len(posed))
    assert shown.shape == posed.shape
    assert np.abs(shown - posed).max() < 1e-5  # 0.01 mm on every frame
