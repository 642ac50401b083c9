"""Faults during training: kill -9 inside a checkpoint's swap, two writers, a full disk, umask,
and resuming after prep was run again on the same data."""

from __future__ import annotations

import errno
import json
import os
import signal
import stat
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from meshtalk.cli.main import app
from meshtalk.pipelines import checkpoint as ckpt
from meshtalk.pipelines.checkpoint import format as checkpoint_format
from meshtalk.pipelines.data.prep import run as prep
from meshtalk.pipelines.errors import MeshtalkError
from meshtalk.pipelines.train.latent import run
from tests.conftest import builtin_prep_config
from tests.test_train_latent import parameters, tiny_run, tiny_yaml

PROJECT = Path(__file__).resolve().parents[1]


def cli_train(store: Path, output: Path, config: Path, *extra: str):
    common = ["train", "latent", "--data", str(store), "-o", str(output), "--config", str(config)]
    return CliRunner().invoke(app, [*common, "--device", "cpu", "--no-progress", *extra])


def assert_same_run(run_dir: Path, reference: Path) -> None:
    """Parameters and optimizer state bit for bit, and the same step."""
    expected = parameters(reference)
    for name, value in parameters(run_dir).items():
        assert torch.equal(value, expected[name]), name
    optimizer = ckpt.load_tensors(run_dir / "latent" / ckpt.OPTIMIZER_FILE)
    expected = ckpt.load_tensors(reference / "latent" / ckpt.OPTIMIZER_FILE)
    assert optimizer.keys() == expected.keys()
    for name, value in optimizer.items():
        assert torch.equal(value, expected[name]), name
    step = ckpt.read_trainer_state(run_dir / "latent")["step"]
    assert step == ckpt.read_trainer_state(reference / "latent")["step"]


@pytest.fixture(scope="module")
def whole(tiny_store, tmp_path_factory) -> Path:
    """An uninterrupted 4-step run, made under umask 022."""
    old = os.umask(0o022)
    try:
        return run(tiny_run(tiny_store, tmp_path_factory.mktemp("whole") / "run"))
    finally:
        os.umask(old)


@pytest.fixture
def config_file(tmp_path) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(tiny_yaml())  # the settings of tiny_run
    return path


def test_run_files_and_checkpoint_folders_follow_the_umask(whole):
    paths = [whole, *whole.rglob("*")]
    assert any(p.name == "latent" for p in paths) and any(p.suffix == ".safetensors" for p in paths)
    for path in paths:
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode == (0o755 if path.is_dir() else 0o644), (path, oct(mode))


KILL_IN_SWAP = """
import os, signal, sys
from pathlib import Path
from meshtalk.pipelines.io import atomic as atomic
from meshtalk.pipelines.train.latent import run
from tests.test_train_latent import tiny_run

real_replace = os.replace

def replace_or_die(source, target):
    # Die like kill -9 between replace_dir's two renames: the old checkpoint moved away, the new
    # one not yet in place.
    if Path(target).name == "latent" and atomic.old_name(Path(target)).exists():
        os.kill(os.getpid(), signal.SIGKILL)
    real_replace(source, target)

atomic.os.replace = replace_or_die
run(tiny_run(Path(sys.argv[1]), Path(sys.argv[2])))
"""


def test_kill_inside_the_checkpoint_swap_then_resume_equals_uninterrupted(
    whole, tiny_store, tmp_path
):
    out = tmp_path / "run"
    killed = subprocess.run(
        [sys.executable, "-c", KILL_IN_SWAP, str(tiny_store), str(out)],
        cwd=PROJECT,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    # The state the issue saw: no latent/, the step-2 checkpoint at .latent.old, a finished temp.
    assert not (out / "latent").exists() and (out / ".latent.old" / "trainer.json").is_file()
    assert list(out.glob(".latent.*.tmp"))
    # Without --resume the run is not silently replaced.
    with pytest.raises(MeshtalkError, match="already holds a latent run"):
        run(tiny_run(tiny_store, out))
    resumed = run(replace(tiny_run(tiny_store, out), resume=True))
    invocations = json.loads((resumed / "run.json").read_text())["latent"]["invocations"]
    assert invocations[-1]["from_step"] == 2
    assert not list(out.glob(".latent*"))  # the old folder and the temporary one are gone
    assert_same_run(resumed, whole)


def test_resume_with_only_the_old_checkpoint_uses_it(whole, tiny_store, tmp_path):
    out = run(tiny_run(tiny_store, tmp_path / "run", steps=2))
    os.replace(out / "latent", out / ".latent.old")  # killed right after the first rename
    resumed = run(replace(tiny_run(tiny_store, out), resume=True))
    assert (
        json.loads((resumed / "run.json").read_text())["latent"]["invocations"][-1]["from_step"]
        == 2
    )
    assert_same_run(resumed, whole)


HOLD_LOCK = """
import sys
from meshtalk.pipelines.io import lock as lock
with lock.exclusive(sys.argv[1], "meshtalk train latent"):
    print("held", flush=True)
    sys.stdin.read()
"""


def test_a_second_writer_gets_one_line_naming_the_first(tiny_store, tmp_path, config_file):
    out = tmp_path / "run"
    out.mkdir()
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(out)],
        cwd=PROJECT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        result = cli_train(tiny_store, out, config_file)
    finally:
        holder.communicate("")
    assert result.exit_code == 1
    first = result.stderr.splitlines()[0]
    assert first.startswith(f"error: {out}: in use by pid {holder.pid} (meshtalk train latent)")
    assert sorted(p.name for p in out.iterdir()) == [".meshtalk.lock"]  # nothing written
    # Once the first writer is gone, the same command runs.
    assert cli_train(tiny_store, out, config_file, "--steps", "1").exit_code == 0


def test_a_full_disk_during_a_checkpoint_keeps_the_previous_one(
    whole, tiny_store, tmp_path, config_file, monkeypatch
):
    out = tmp_path / "run"
    real_save = checkpoint_format.save_file

    def full_disk(tensors, filename, *args, **kwargs):
        if Path(filename).parent.name == "decoder" and (out / "latent").is_dir():
            raise OSError(errno.ENOSPC, "No space left on device", filename)
        return real_save(tensors, filename, *args, **kwargs)

    monkeypatch.setattr(checkpoint_format, "save_file", full_disk)
    result = cli_train(tiny_store, out, config_file)
    assert result.exit_code == 1
    assert result.stderr.splitlines()[0] == (
        f"error: {out / 'latent'}: cannot write the step-4 checkpoint (No space left on device); "
        "the previous checkpoint is kept"
    )
    assert ckpt.read_trainer_state(out / "latent")["step"] == 2
    assert not list(out.glob(".latent.*"))  # the temporary folder is removed
    monkeypatch.setattr(checkpoint_format, "save_file", real_save)
    assert cli_train(tiny_store, out, config_file, "--resume").exit_code == 0
    assert_same_run(out, whole)


def test_resume_after_prep_again_on_the_same_data(tiny_dataset, tmp_path):
    store = tmp_path / "data"
    prep(builtin_prep_config(tiny_dataset, store))
    out = run(tiny_run(store, tmp_path / "run", steps=2))
    manifest = (store / "manifest.json").read_bytes()
    time.sleep(1.1)  # another creation time in the manifest
    prep(builtin_prep_config(tiny_dataset, store, force=True))
    assert (store / "manifest.json").read_bytes() != manifest
    resumed = run(replace(tiny_run(store, out, steps=3), resume=True))
    assert ckpt.read_trainer_state(resumed / "latent")["step"] == 3
    # A run.json written before content digests (only the manifest's hash) is still resumable.
    record = json.loads((out / "run.json").read_text())
    del record["latent"]["data"]["content_sha256"]
    (out / "run.json").write_text(json.dumps(record))
    run(replace(tiny_run(store, out, steps=4), resume=True))
    # Data that differs is refused.
    np.save(store / "std.npy", np.load(store / "std.npy") * 2)
    with pytest.raises(MeshtalkError, match="cannot resume: the data differs"):
        run(replace(tiny_run(store, out, steps=5), resume=True))


def test_a_record_from_before_a_model_setting_existed_resumes_with_its_old_value(
    tiny_store, tmp_path
):
    from meshtalk.pipelines.train.loop import RunRecord

    def record(fusion: str) -> RunRecord:
        return RunRecord(tmp_path, "latent", {"model": {"decoder_fusion": fusion}}, tiny_store)

    old = record("codes_first")
    old.start("cpu", 1, 0)
    saved = json.loads((tmp_path / "run.json").read_text())
    del saved["latent"]["settings"]["model"]["decoder_fusion"]  # written before the field
    (tmp_path / "run.json").write_text(json.dumps(saved))
    record("codes_first").check_resumable()  # the value such runs had
    with pytest.raises(MeshtalkError, match="recorded before the setting existed.*--config"):
        record("template_first").check_resumable()
