"""Every bad input gets one line naming the file and the problem; nothing half-written."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import soundfile
from typer.testing import CliRunner

from meshtalk.cli.main import app
from meshtalk.pipelines.errors import MeshtalkError
from meshtalk.pipelines.prep import run as prep
from meshtalk.pipelines.synth import SynthConfig
from meshtalk.pipelines.synth import run as synth

from .conftest import builtin_prep_config


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
        (lambda p: p.write_bytes(p.read_bytes()[:-12]), "expected 256"),
        (lambda p: p.write_bytes(p.read_bytes()[:-5]), "truncated mesh"),
        (lambda p: p.write_bytes(b""), "mesh file is empty"),
        (lambda p: p.write_bytes(np.full(256 * 3, np.nan, "<f4").tobytes()), "NaN"),
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
    assert not out.exists()
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
        (["prep", "{root}", "-o", "{out}", "--crop", "none"], "masks need --landmarks"),
        (["synth", "{out}", "--identities", "0"], "--identities must be at least 1"),
        (["synth", "{out}", "--expression-drift", "2"], "--expression-drift must be in [0, 1]"),
        (
            ["synth", "{out}", "--template", "{missing}", "--masks", "{missing}"],
            "mesh file not found",
        ),
    ],
)
def test_cli_errors_are_one_line(dataset, tmp_path, args, message):
    values = {"root": dataset, "out": tmp_path / "out", "missing": tmp_path / "nope.obj"}
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
