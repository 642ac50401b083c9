"""Every bad input gets one line naming the file and the problem; nothing half-written."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import soundfile
from typer.testing import CliRunner

from meshtalk.cli.main import app
from meshtalk.pipelines.data.prep import run as prep
from meshtalk.pipelines.data.synth import SynthConfig
from meshtalk.pipelines.data.synth import run as synth
from meshtalk.pipelines.data.synth.face import builtin_vertex_count
from meshtalk.pipelines.errors import MeshtalkError

from .conftest import builtin_prep_config

SMALL_V = builtin_vertex_count(16)
"""Vertices of the grid-16 built-in head the small dataset is made of."""


@pytest.fixture(scope="module")
def small_dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad") / "multiface"
    synth(SynthConfig(output=root, identities=2, sentences=3, grid=16, seed=3, drop_rate=0.0))
    return root


@pytest.fixture
def dataset(small_dataset, tmp_path):
    copy = tmp_path / "multiface"
    shutil.copytree(small_dataset, copy)
    return copy


def _identity(root, index=0):
    return sorted(p for p in root.iterdir() if (p / "tracked_mesh").is_dir())[index]


def _speech(identity):
    return sorted((identity / "tracked_mesh").glob("SEN_*"))[0]


def _problems(root, tmp_path):
    out = prep(builtin_prep_config(root, tmp_path / "data"))
    return json.loads((out / "manifest.json").read_text())["problems"]


def _find(problems, text):
    found = [p for p in problems if text in p["message"]]
    assert found, f"no problem mentions {text!r}: {problems}"
    return found[0]


def test_missing_audio(dataset, tmp_path):
    segment = _speech(_identity(dataset))
    (_identity(dataset) / "audio" / f"{segment.name}.wav").unlink()
    problem = _find(_problems(dataset, tmp_path), "audio file not found")
    assert (
        problem["path"].endswith(f"{segment.name}.wav") and problem["action"] == "segment skipped"
    )


@pytest.mark.parametrize(
    ("corrupt", "message"),
    [
        (lambda p: p.write_bytes(p.read_bytes()[:-12]), f"expected {SMALL_V}"),
        (lambda p: p.write_bytes(p.read_bytes()[:-5]), "truncated mesh"),
        (lambda p: p.write_bytes(b""), "mesh file is empty"),
        (lambda p: p.write_bytes(np.full(SMALL_V * 3, np.nan, "<f4").tobytes()), "NaN"),
    ],
)
def test_bad_frames_are_skipped_and_named(dataset, tmp_path, corrupt, message):
    frame = sorted(_speech(_identity(dataset)).glob("*.bin"))[5]
    corrupt(frame)
    problem = _find(_problems(dataset, tmp_path), message)
    assert problem["path"] == str(frame) and problem["action"] == "frame skipped"
    store = tmp_path / "data"
    ids = np.load(
        store / "identities" / _identity(dataset).name / frame.parent.name / "frames.npz"
    )["frame_ids"]
    assert int(frame.stem) not in ids.tolist()  # the frame is gone, the others keep their ids


@pytest.mark.parametrize(
    ("write", "message"),
    [
        (lambda p: p.write_bytes(b""), "not a readable audio file"),
        (lambda p: p.write_bytes(b"RIFF\x00\x00junkjunk" * 20), "not a readable audio file"),
        (lambda p: soundfile.write(p, np.zeros(0), 48_000), "holds no samples"),
        (lambda p: soundfile.write(p, np.zeros(48_000), 48_000), "audio is silent"),
    ],
)
def test_bad_audio(dataset, tmp_path, write, message):
    segment = _speech(_identity(dataset))
    wav = _identity(dataset) / "audio" / f"{segment.name}.wav"
    wav.unlink()
    write(wav)
    problem = _find(_problems(dataset, tmp_path), message)
    assert problem["path"] == str(wav) and problem["action"] == "segment skipped"


def test_unsorted_and_repeated_ids(dataset, tmp_path):
    identity = _identity(dataset)
    frame_list = identity / "frame_list.txt"
    lines = frame_list.read_text().splitlines()
    speech = [i for i, line in enumerate(lines) if line.startswith("SEN_01")]
    lines[speech[0]], lines[speech[1]] = lines[speech[1]], lines[speech[0]]  # unsorted
    second = [i for i, line in enumerate(lines) if line.startswith("SEN_02")]
    lines.insert(second[3], lines[second[2]])  # repeated id
    frame_list.write_text("\n".join(lines) + "\n")
    problems = _problems(dataset, tmp_path)
    unsorted = _find(problems, "not increasing")
    assert "SEN_01" in unsorted["path"] and unsorted["action"] == "warning"
    repeated = _find(problems, "frame ids repeat")
    assert "SEN_02" in repeated["path"] and repeated["action"] == "segment skipped"
    # The unsorted segment is still prepared, ordered by id.
    ids = np.load(
        next((tmp_path / "data" / "identities" / identity.name).glob("SEN_01*")) / "frames.npz"
    )["frame_ids"]
    assert (np.diff(ids) > 0).all()


def test_identity_without_neutral_segment(dataset, tmp_path):
    identity = _identity(dataset, 1)
    shutil.rmtree(identity / "tracked_mesh" / "E001_Neutral_Eyes_Open")
    frame_list = identity / "frame_list.txt"
    frame_list.write_text(
        "".join(x for x in frame_list.read_text().splitlines(True) if not x.startswith("E001"))
    )
    problem = _find(_problems(dataset, tmp_path), "no neutral segment")
    assert problem["path"] == str(identity) and problem["action"] == "identity skipped"


def test_nothing_usable_exits_non_zero_with_one_line(dataset, tmp_path):
    for wav in dataset.glob("*/audio/*.wav"):
        wav.write_bytes(b"")
    landmarks = dataset / "topology" / "landmarks.yaml"
    out = tmp_path / "data"
    result = CliRunner().invoke(
        app, ["prep", str(dataset), "-o", str(out), "--crop", "none", "--landmarks", str(landmarks)]
    )
    assert result.exit_code == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and str(dataset) in last and "nothing usable" in last
    assert "Traceback" not in result.stderr
    # Nothing half-made is kept: only prep's hidden marker and lock remain.
    assert sorted(p.name for p in out.iterdir()) == [".meshtalk-store", ".meshtalk.lock"]
    with pytest.raises(MeshtalkError):
        prep(builtin_prep_config(dataset, out))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["prep", "{missing}", "-o", "{out}"], "dataset root not found"),
        (["prep", "{root}", "-o", "{out}", "--window", "wide"], "--window must be one of"),
        (
            ["prep", "{root}", "-o", "{out}", "--crop", "meshtalk"],
            "crop 'meshtalk' needs 7306-vertex",
        ),
        (["prep", "{bare}", "-o", "{out}", "--crop", "none"], "masks need --landmarks"),
        (["prep", "{bare}", "-o", "{out}"], "masks need --landmarks"),
        (["synth", "{out}", "--identities", "0"], "--identities must be at least 1"),
        (["synth", "{out}", "--expression-drift", "2"], "--expression-drift must be in [0, 1]"),
        (
            ["synth", "{out}", "--template", "{missing}", "--masks", "{missing}"],
            "mesh file not found",
        ),
    ],
)
def test_cli_errors_are_one_line(dataset, tmp_path, args, message):
    if "{bare}" in args:  # a dataset without its own topology/: nothing to build masks from
        shutil.rmtree(dataset / "topology")
    values = {
        "root": dataset,
        "bare": dataset,
        "out": tmp_path / "out",
        "missing": tmp_path / "nope.obj",
    }
    result = CliRunner().invoke(app, [a.format(**values) for a in args])
    assert result.exit_code != 0
    lines = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and message in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


def test_debug_shows_the_traceback(tmp_path):
    result = CliRunner().invoke(
        app, ["--debug", "prep", str(tmp_path / "nope"), "-o", str(tmp_path / "o")]
    )
    assert result.exit_code != 0 and isinstance(result.exception, MeshtalkError)


def test_existing_store_is_not_overwritten_without_force(tiny_dataset, tiny_store):
    with pytest.raises(MeshtalkError, match="already exists"):
        prep(builtin_prep_config(tiny_dataset, tiny_store))


# --- prep: segments without readable frames, unreadable files, odd audio -------------------------


def test_empty_segment_folder_skips_the_segment(dataset, tmp_path):
    segment = _speech(_identity(dataset))
    for entry in segment.iterdir():
        entry.unlink()
    problem = _find(_problems(dataset, tmp_path), "no readable frames")
    assert problem["path"].endswith(f"tracked_mesh/{segment.name}")
    assert problem["action"] == "segment skipped"
    assert not (tmp_path / "data" / ".partial").exists()


def test_vert_mean_of_another_vertex_count_skips_the_identity(dataset, tmp_path):
    identity = _identity(dataset, 1)
    (identity / "vert_mean.bin").write_bytes(np.zeros((100, 3), "<f4").tobytes())
    problems = _problems(dataset, tmp_path)
    segment = _find(problems, f"has {SMALL_V} vertices, expected 100")  # one line per segment
    assert (
        segment["action"] == "segment skipped"
        and "no readable frames: each of its" in segment["message"]
    )
    assert not [p for p in problems if p["action"] == "frame skipped"]
    skipped = _find(problems, "neutral segment has no readable frames")
    assert skipped["path"] == str(identity) and skipped["action"] == "identity skipped"


def test_wrong_vertex_count_for_all_data_is_one_line(dataset, tmp_path):
    out = tmp_path / "data"
    landmarks = str(dataset / "topology" / "landmarks.yaml")
    args = ["prep", str(dataset), "-o", str(out), "--crop", "none", "--landmarks", landmarks]
    result = CliRunner().invoke(app, [*args, "--vertices", "100"])
    assert result.exit_code == 1 and "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and f"error: {dataset}: nothing usable" in errors[0]
    assert not (out / ".partial").exists() and not (out / "manifest.json").exists()


def test_symlink_loop_is_a_skipped_frame(dataset, tmp_path):
    frame = sorted(_speech(_identity(dataset)).glob("*.bin"))[5]
    frame.unlink()
    frame.symlink_to(frame.name)  # ELOOP
    problem = _find(_problems(dataset, tmp_path), "cannot read mesh")
    assert problem["path"] == str(frame) and problem["action"] == "frame skipped"
    assert "symbolic links" in problem["message"]


def test_segment_that_lost_frames_is_reported(dataset, tmp_path):
    segment = _speech(_identity(dataset))
    frames = sorted(segment.glob("*.bin"))
    for frame in frames[1::2]:
        frame.unlink()
    problem = _find(_problems(dataset, tmp_path), "frames listed have no mesh file")
    assert problem["path"] == str(segment) and problem["action"] == "warning"
    assert f"{len(frames[1::2])} of {len(frames)}" in problem["message"]


@pytest.mark.parametrize("name", ["/tmp/elsewhere", "sub/segment", ".hidden"])
def test_segment_names_that_are_not_names_are_refused(dataset, tmp_path, name):
    identity = _identity(dataset)
    frame_list = identity / "frame_list.txt"
    own = _speech(identity).name
    frame_list.write_text(frame_list.read_text().replace(f"{own} ", f"{name} "))
    problem = _find(_problems(dataset, tmp_path), f"segment name '{name}'")
    assert problem["path"] == str(frame_list) and problem["action"] == "segment skipped"


def _wav(dataset):
    identity = _identity(dataset)
    return identity / "audio" / f"{_speech(identity).name}.wav"


def test_8_khz_audio_is_a_warning(dataset, tmp_path):
    wav = _wav(dataset)
    samples, rate = soundfile.read(wav, dtype="float32")
    soundfile.write(wav, samples[:: rate // 8000], 8000)
    problem = _find(_problems(dataset, tmp_path), "recorded at 8000 Hz")
    assert problem["path"] == str(wav) and problem["action"] == "warning"
    assert "above 4000 Hz are empty" in problem["message"]


def test_audio_much_longer_than_the_frames_is_trimmed(dataset, tmp_path):
    wav = _wav(dataset)
    samples, rate = soundfile.read(wav, dtype="float32")
    noise = np.random.default_rng(0).normal(0, 0.05, 100 * rate).astype(np.float32)
    soundfile.write(wav, np.concatenate([samples, noise]), rate)
    problem = _find(_problems(dataset, tmp_path), "only the first")
    assert problem["path"] == str(wav) and problem["action"] == "warning"
    segment = tmp_path / "data" / "identities" / _identity(dataset).name / _speech_name(dataset)
    last_s = float(np.load(segment / "frames.npz")["times_s"][-1])
    # 0.5 s of silence, the audio up to the end of the last frame's window (0.5 s after it),
    # 0.5 s of silence: not the 105 s of the file.
    assert np.load(segment / "mel.npy").shape[0] <= round((last_s + 1.5) * 100) + 2


def _speech_name(dataset):
    return _speech(_identity(dataset)).name


def test_stereo_in_antiphase_asks_for_a_channel(dataset, tmp_path):
    wav = _wav(dataset)
    samples, rate = soundfile.read(wav, dtype="float32")
    soundfile.write(wav, np.stack([samples, -samples], axis=1), rate)
    problem = _find(_problems(dataset, tmp_path), "channels cancel; use --channel")
    assert problem["path"] == str(wav) and problem["action"] == "segment skipped"
    out = prep(builtin_prep_config(dataset, tmp_path / "data", channel=1, force=True))
    assert (out / "identities" / _identity(dataset).name / _speech_name(dataset)).is_dir()


def test_synth_onto_an_existing_file_is_one_line(tmp_path):
    target = tmp_path / "file"
    target.write_text("mine")
    result = CliRunner().invoke(app, ["synth", str(target)])
    assert result.exit_code == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [
        f"error: {target}: exists and is not a folder (synth writes a dataset folder)"
    ]
    assert target.read_text() == "mine"


@pytest.mark.parametrize("pattern", ["../*", "/abs/*", "a/b/c", ".x"])
def test_split_patterns_must_be_names(tmp_path, pattern):
    from meshtalk.pipelines.data.splits import assign_splits

    splits = tmp_path / "splits.yaml"
    splits.write_text(f"train: ['{pattern}']\n")
    with pytest.raises(MeshtalkError, match="is not an 'IDENTITY/SEGMENT'|is not an 'IDENTITY"):
        assign_splits(splits, {"id": ["SEN_01"]})
