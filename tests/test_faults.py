"""The fault catalogue of `meshtalk prep`: the user's data is never lost, a rerun after any
interruption gives the uninterrupted store byte for byte, and two writers lock out."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from meshtalk.cli.main import app
from meshtalk.pipelines.data.prep import OWN_NAMES, build, discover, segments
from meshtalk.pipelines.data.prep import run as prep
from meshtalk.pipelines.data.prep.config import SegmentResult
from meshtalk.pipelines.data.synth import SynthConfig
from meshtalk.pipelines.data.synth import run as synth

from .conftest import builtin_prep_config

# Runs `meshtalk ARGS...` with one prep function wrapped ('MODULE.NAME' inside the prep package):
# on its Nth call, before or after it, the process pauses (until a file appears), is killed (-9),
# or gets Ctrl-C (its whole group).
FAULT_SCRIPT = """
import importlib, os, signal, sys, time
from pathlib import Path
from meshtalk.cli.main import main

where, when, nth, action, flag = sys.argv[1:6]
module_name, name = where.rsplit(".", 1)
module = importlib.import_module("meshtalk.pipelines.data.prep." + module_name)
signal.signal(signal.SIGINT, signal.default_int_handler)  # even if started with it ignored
original, calls = getattr(module, name), []

def act():
    if action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    elif action == "interrupt":
        os.killpg(0, signal.SIGINT)
        time.sleep(5)
    else:
        Path(flag + ".ready").write_text(str(os.getpid()))
        while not Path(flag).exists():
            time.sleep(0.05)

def wrapper(*args, **kwargs):
    calls.append(1)
    if when == "before" and len(calls) == int(nth):
        act()
    result = original(*args, **kwargs)
    if when == "after" and len(calls) == int(nth):
        act()
    return result

setattr(module, name, wrapper)
sys.argv = ["meshtalk", *sys.argv[6:]]
main()
"""


def _cli_args(root: Path, out: Path, *extra: str) -> list[str]:
    landmarks = str(root / "topology" / "landmarks.yaml")
    return ["prep", str(root), "-o", str(out), "--crop", "none", "--landmarks", landmarks, *extra]


def _with_fault(root, out, name, when, nth, action, *extra, flag="") -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", FAULT_SCRIPT, name, when, str(nth), action, str(flag)]
        + _cli_args(root, out, *extra),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # Ctrl-C goes to its group only
    )


def _cli(root, out, *extra):
    return CliRunner().invoke(app, _cli_args(root, out, *extra))


def _store_bytes(out: Path) -> dict[str, bytes]:
    """Every file of a store (prep's lock and marker aside); the manifest without its date."""
    files = {}
    for path in sorted(out.rglob("*")):
        relative = path.relative_to(out)
        if relative.parts[0] in OWN_NAMES or not path.is_file():
            continue
        data = path.read_bytes()
        if relative.name == "manifest.json" and len(relative.parts) == 1:
            manifest = json.loads(data)
            manifest.pop("created")
            data = json.dumps(manifest, sort_keys=True).encode()
        files[str(relative)] = data
    return files


def _assert_same_store(out: Path, reference: Path) -> None:
    got, expected = _store_bytes(out), _store_bytes(reference)
    assert sorted(got) == sorted(expected)
    different = [name for name in expected if got[name] != expected[name]]
    assert not different, different


def _snapshot(folder: Path) -> dict[str, tuple[int, bytes]]:
    """Every file under `folder` with its size and content: to prove nothing was touched."""
    return {
        str(p.relative_to(folder)): (p.stat().st_size, p.read_bytes())
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def other_store(tmp_path_factory) -> Path:
    """A store of another dataset, to be replaced with --force."""
    root = tmp_path_factory.mktemp("other") / "multiface"
    synth(SynthConfig(output=root, identities=2, sentences=2, grid=16, seed=5))
    return prep(builtin_prep_config(root, tmp_path_factory.mktemp("other_store") / "data"))


@pytest.fixture
def dataset(tiny_dataset, tmp_path) -> Path:
    copy = tmp_path / "multiface"
    shutil.copytree(tiny_dataset, copy)
    return copy


# --- data loss ----------------------------------------------------------------------------------


@pytest.mark.parametrize("where", ["itself", "inside", "parent"])
def test_force_never_writes_into_the_input(dataset, where):
    out = {"itself": dataset, "inside": dataset / "prepared", "parent": dataset.parent}[where]
    before = _snapshot(dataset)
    result = _cli(dataset, out, "--force")
    assert result.exit_code == 1
    assert result.stderr.startswith(f"error: {out}: the output must not be, contain or lie inside")
    assert "Traceback" not in result.stderr
    assert _snapshot(dataset) == before
    assert not (dataset / "prepared").exists()


def test_force_refuses_a_folder_that_is_not_a_store(tiny_dataset, tmp_path):
    user = tmp_path / "thesis"
    (user / "figures").mkdir(parents=True)
    (user / "draft.tex").write_text("weeks of work")
    (user / "figures" / "plot.png").write_bytes(b"\x89PNG")
    before = _snapshot(user)
    for extra in ([], ["--force"]):
        result = _cli(tiny_dataset, user, *extra)
        assert result.exit_code == 1, result.stderr
        assert result.stderr.startswith(f"error: {user}: is a folder of other files")
        assert _snapshot(user) == before
        assert sorted(p.name for p in user.iterdir()) == ["draft.tex", "figures"]


def test_force_replaces_only_the_store(tiny_dataset, tiny_store, other_store, tmp_path):
    out = tmp_path / "data"
    shutil.copytree(other_store, out)
    (out / "notes.txt").write_text("mine")
    result = _cli(tiny_dataset, out, "--force")
    assert result.exit_code == 0, result.stderr
    assert (out / "notes.txt").read_text() == "mine"
    (out / "notes.txt").unlink()
    _assert_same_store(out, tiny_store)


@pytest.mark.parametrize("missing_audio", [False, True])
def test_segment_names_from_frame_list_stay_inside(dataset, tmp_path, missing_audio):
    first, second = sorted(p for p in dataset.iterdir() if (p / "tracked_mesh").is_dir())[:2]
    victim = sorted((second / "tracked_mesh").glob("SEN_*"))[0].name
    climbing = f"../../{second.name}/tracked_mesh/{victim}"
    frame_list = first / "frame_list.txt"
    own = sorted((first / "tracked_mesh").glob("SEN_*"))[0].name
    frame_list.write_text(frame_list.read_text().replace(f"{own} ", f"{climbing} "))
    if missing_audio:
        (first / "audio" / f"{own}.wav").unlink()
    before = _snapshot(tmp_path)
    out = tmp_path / "data"
    prep(builtin_prep_config(dataset, out))
    after = _snapshot(tmp_path)
    assert {k: v for k, v in after.items() if not k.startswith("data/")} == before
    problems = json.loads((out / "manifest.json").read_text())["problems"]
    refused = [p for p in problems if climbing in p["message"]]
    assert len(refused) == 1 and refused[0]["action"] == "segment skipped"
    assert refused[0]["path"] == str(frame_list) and "line " in refused[0]["message"]


def test_two_writers_lock_out(tiny_dataset, tiny_store, tmp_path):
    out, flag = tmp_path / "data", tmp_path / "go"
    first = _with_fault(
        tiny_dataset, out, "build._complete_identity", "after", 1, "pause", flag=flag
    )
    try:
        deadline = time.monotonic() + 120
        while not Path(f"{flag}.ready").exists():
            assert first.poll() is None, first.communicate()
            assert time.monotonic() < deadline
            time.sleep(0.05)
        for extra in ([], ["--force"]):
            second = _cli(tiny_dataset, out, *extra)
            assert second.exit_code == 1
            assert second.stderr.startswith(f"error: {out}: in use by pid {first.pid}")
    finally:
        flag.write_text("")
        _, stderr = first.communicate(timeout=300)
    assert first.returncode == 0, stderr
    _assert_same_store(out, tiny_store)


# --- interruptions ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "when", "nth"),
    [
        ("build._complete_identity", "after", 2),  # two identities done
        ("output.swap_in", "before", 1),  # the finished store still in .partial
        ("output.move", "before", 2),  # the old manifest moved aside, nothing else
        ("output.move", "before", 9),  # half of the new store moved in
        ("output.move", "after", 12),  # the new manifest in place, the old store not yet deleted
    ],
)
def test_kill_9_during_force_then_rerun(
    tiny_dataset, tiny_store, other_store, tmp_path, name, when, nth
):
    out = tmp_path / "data"
    shutil.copytree(other_store, out)
    killed = _with_fault(tiny_dataset, out, name, when, nth, "kill", "--force")
    killed.communicate(timeout=300)
    assert killed.returncode == -signal.SIGKILL
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]  # nothing outside -o
    # At every instant a manifest means a complete store (the old one or the new one).
    if (out / "manifest.json").exists():
        whole = [tiny_store, other_store]
        assert any(sorted(_store_bytes(out)) == sorted(_store_bytes(s)) for s in whole)
    result = _cli(tiny_dataset, out, "--force")
    assert result.exit_code == 0, result.stderr
    _assert_same_store(out, tiny_store)
    assert not (out / ".old").exists() and not (out / ".partial").exists()


def test_kill_9_on_a_first_run_resumes_without_force(tiny_dataset, tiny_store, tmp_path):
    out = tmp_path / "data"
    killed = _with_fault(tiny_dataset, out, "build._complete_identity", "after", 1, "kill")
    killed.communicate(timeout=300)
    assert killed.returncode == -signal.SIGKILL and not (out / "manifest.json").exists()
    result = _cli(tiny_dataset, out)
    assert result.exit_code == 0, result.stderr
    _assert_same_store(out, tiny_store)


def test_ctrl_c_with_workers_then_rerun_is_byte_identical(tiny_dataset, tmp_path):
    reference = prep(builtin_prep_config(tiny_dataset, tmp_path / "reference", workers=2))
    out = tmp_path / "data"
    stopped = _with_fault(
        tiny_dataset, out, "build._complete_identity", "after", 1, "interrupt", "--workers", "2"
    )
    _, stderr = stopped.communicate(timeout=300)
    assert stopped.returncode == 130, stderr
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr, stderr
    assert "interrupted: rerun the same command to resume" in stderr
    assert len(list((out / ".partial").glob("identities/*/identity.json"))) >= 1
    result = _cli(tiny_dataset, out, "--workers", "2")
    assert result.exit_code == 0, result.stderr
    _assert_same_store(out, reference)


def test_statistics_do_not_depend_on_completion_order(tiny_dataset, tmp_path):
    identities, _ = discover.discover(builtin_prep_config(tiny_dataset, tmp_path / "x"))
    identity = identities[0]
    rng = np.random.default_rng(0)
    results = [SegmentResult(identity.name, "neutral", "neutral", frames=3)]
    results[0].template = rng.normal(size=(5, 3)).astype(np.float32)
    results[0].num_vertices = 5
    for k in range(6):
        frames = (rng.normal(size=(int(rng.integers(3, 40)), 5, 3)) * 10**k).astype(np.float32)
        result = SegmentResult(identity.name, f"SEN_{k}", "speech", frames=len(frames))
        result.stats, result.num_vertices = segments.segment_moments(frames), 5
        results.append(result)
    config = builtin_prep_config(tiny_dataset, tmp_path / "x")
    saved = []
    for order in (results, results[::-1], results[2:] + results[:2]):
        partial = tmp_path / f"order{len(saved)}"
        build._complete_identity(identity, list(order), config, partial)
        saved.append((partial / "identities" / identity.name / "stats.npz").read_bytes())
    assert saved[0] == saved[1] == saved[2]


# --- surprises of the filesystem -----------------------------------------------------------------


def test_full_disk_keeps_nothing_half_written(tiny_dataset, tiny_store, other_store, tmp_path):
    out = tmp_path / "data"
    shutil.copytree(other_store, out)
    old = _store_bytes(out)
    original, calls = np.save, []

    def full_disk(*args, **kwargs):
        calls.append(1)
        if len(calls) == 7:
            raise OSError(errno.ENOSPC, "No space left on device")
        return original(*args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(np, "save", full_disk)
        result = _cli(tiny_dataset, out, "--force")
    assert result.exit_code == 1
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert lines == [
        f"error: {out}: no space left on device (nothing half-written was kept; "
        "rerun once this is fixed)"
    ]
    assert _store_bytes(out) == old  # the old store is untouched
    assert not (out / ".partial").exists()
    result = _cli(tiny_dataset, out, "--force")
    assert result.exit_code == 0, result.stderr
    _assert_same_store(out, tiny_store)


def test_read_only_or_unwritable_output_is_one_line(tiny_dataset, tmp_path, monkeypatch):
    out = tmp_path / "data"
    original = Path.mkdir

    def read_only(self, *args, **kwargs):
        if self == out:
            raise OSError(errno.EROFS, "Read-only file system", str(self))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", read_only)
    result = _cli(tiny_dataset, out)
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines() == [
        f"error: {out}: cannot create the output folder (Read-only file system)"
    ]
    monkeypatch.undo()

    out.mkdir()
    access = os.access  # root ignores chmod: the refusal is simulated

    def no_write(path, mode, **kwargs):
        return not (path == out and mode & os.W_OK) and access(path, mode, **kwargs)

    monkeypatch.setattr(os, "access", no_write)
    result = _cli(tiny_dataset, out)
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines() == [
        f"error: {out}: cannot write into the output folder (no permission or read-only)"
    ]
    assert list(out.iterdir()) == []
