"""benchmarks/_measure.py: what every benchmark does with a bad input and with --json --force."""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

import pytest

from meshtalk.pipelines.errors import MeshtalkError

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def measure():
    sys.path.insert(0, str(BENCHMARKS))
    try:
        yield importlib.import_module("_measure")
    finally:
        sys.path.remove(str(BENCHMARKS))


def parsed(measure, *argv: str):
    parser = argparse.ArgumentParser()
    measure.add_json_option(parser)
    return parser, parser.parse_args(list(argv))


def test_a_bad_input_is_one_line_and_status_1(measure):
    def main():
        raise MeshtalkError("speech.wav", "not a readable audio file")

    with pytest.raises(SystemExit) as exit_:
        measure.run_main(main)
    assert exit_.value.code == "error: speech.wav: not a readable audio file"


def test_force_replaces_figures_but_not_a_users_file(measure, tmp_path, capsys):
    figures, speech = tmp_path / "figures.json", tmp_path / "speech.wav"
    figures.write_text('{"takes": 3}')
    speech.write_bytes(b"RIFF....WAVE")
    measure.check_json(*parsed(measure, "--json", str(figures), "--force"))  # accepted
    with pytest.raises(SystemExit):
        measure.check_json(*parsed(measure, "--json", str(figures)))
    assert "exists; give --force" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        measure.check_json(*parsed(measure, "--json", str(speech), "--force"))
    assert "not a benchmark's JSON figures; not replaced" in capsys.readouterr().err
    assert speech.read_bytes() == b"RIFF....WAVE" and figures.read_text() == '{"takes": 3}'
