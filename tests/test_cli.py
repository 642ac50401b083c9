"""The command line end to end, as the README runs it."""

from __future__ import annotations

import subprocess
import sys
import time

import numpy as np
from typer.testing import CliRunner

from meshtalk.cli.main import app
from meshtalk.pipelines.data.store import PreparedStore
from meshtalk.pipelines.data.synth.face import builtin_vertex_count


def test_help_is_fast_and_lists_commands():
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "meshtalk.cli.main", "--help"], capture_output=True, text=True
    )
    elapsed = time.perf_counter() - start
    assert done.returncode == 0
    assert "synth" in done.stdout and "prep" in done.stdout
    assert elapsed < 5  # measured 0.3 s; the bound only catches heavy imports at the top
    for command in ("synth", "prep"):
        assert CliRunner().invoke(app, [command, "--help"]).exit_code == 0


def test_synth_then_prep(tmp_path):
    runner = CliRunner()
    data = tmp_path / "multiface"
    result = runner.invoke(
        app, ["synth", str(data), "--identities", "1", "--sentences", "3", "--grid", "20"]
    )
    assert result.exit_code == 0, result.output
    result = runner.invoke(
        app,
        [
            "prep",
            str(data),
            "-o",
            str(tmp_path / "data"),
            "--crop",
            "none",
            "--landmarks",
            str(data / "topology" / "landmarks.yaml"),
            "--window",
            "release",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "problems: 0 warning" in result.stderr
    store = PreparedStore(tmp_path / "data")
    assert store.num_vertices == builtin_vertex_count(20)
    assert store.manifest["audio_window"]["name"] == "release"
    assert (tmp_path / "data" / "masks.png").stat().st_size > 1000
    # Same seed, same bytes.
    again = tmp_path / "again"
    runner.invoke(
        app, ["synth", str(again), "--identities", "1", "--sentences", "3", "--grid", "20"]
    )
    for wav in data.glob("*/audio/*.wav"):
        assert wav.read_bytes() == (again / wav.relative_to(data)).read_bytes()
    first = sorted(data.glob("*/tracked_mesh/SEN_01*/*.bin"))[0]
    assert np.array_equal(
        np.fromfile(first, "<f4"), np.fromfile(again / first.relative_to(data), "<f4")
    )
