"""`meshtalk train latent`: outputs, reproducibility, resume, several processes, bad input."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from dataclasses import asdict, replace
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from meshtalk.cli.main import app
from meshtalk.models.config import latent_preset
from meshtalk.pipelines import checkpoint as ckpt
from meshtalk.pipelines.data.synth.face import builtin_vertex_count
from meshtalk.pipelines.errors import MeshtalkError
from meshtalk.pipelines.train.latent import (
    LatentTrainingConfig,
    TrainLatentConfig,
    load_config_file,
    run,
    warmed_up_noise,
)
from meshtalk.pipelines.train.loop import MetricsLog

TINY_TRAINING = LatentTrainingConfig(
    steps=4,
    batch_size=2,
    frames=8,
    lr=1e-3,
    val_every=2,
    val_segments=2,
    checkpoint_every=2,
    log_every=1,
    data_workers=0,
)


def tiny_run(store: Path, output: Path, **training) -> TrainLatentConfig:
    return TrainLatentConfig(
        data=store,
        output=output,
        model=latent_preset("tiny", audio_dropout=0.0),
        training=replace(TINY_TRAINING, **training),
        device="cpu",
        progress=False,
    )


def tiny_yaml(**training) -> str:
    """The settings of `tiny_run`, as a config file for the command line (YAML holds JSON).

    Every training field is spelt out, so the preset's own training settings do not apply.
    """
    settings = asdict(replace(TINY_TRAINING, **training))
    return json.dumps({"model": {"preset": "tiny", "audio_dropout": 0.0}, "train": settings})


def parameters(run_dir: Path) -> dict[str, torch.Tensor]:
    return ckpt.load_run(run_dir).latent.state_dict()


def test_a_run_writes_checkpoint_metrics_pictures_and_record(tiny_store, tmp_path):
    out = run(tiny_run(tiny_store, tmp_path / "run"))
    for component in ("encoder", "decoder"):
        assert (out / "latent" / component / "model.safetensors").is_file()
        config = json.loads((out / "latent" / component / "config.json").read_text())
        assert config["model"]["num_vertices"] == builtin_vertex_count(24)
        assert config["model"]["heads"] == 4
    assert json.loads((out / "latent" / "trainer.json").read_text())["step"] == 4
    names = {row["name"] for row in MetricsLog.read(out / "metrics.csv")}
    assert {"train/reconstruction", "train/eyelids", "train/mouth_from_audio"} <= names
    assert {"train/upper_face_from_expression", "val/reconstruction_mm"} <= names
    assert {"val/lip_vertex_error_mm", "val/audio_swap_mouth_over_upper"} <= names
    assert {"val/expression_swap_upper_over_mouth"} <= names
    steps = {
        int(r["step"]) for r in MetricsLog.read(out / "metrics.csv") if r["name"].startswith("val/")
    }
    assert steps == {0, 2, 4}
    for picture in ("loss_curve.png", "val_error_map.png"):
        assert (out / picture).read_bytes()[:4] == b"\x89PNG"
    record = json.loads((out / "run.json").read_text())["latent"]
    assert len(record["data"]["manifest_sha256"]) == 64
    assert record["settings"]["train"]["steps"] == 4
    assert "torch" in record["invocations"][0]["versions"]
    assert "git_commit" in record["invocations"][0]
    # The statistics of the data went into the model's buffers.
    model = ckpt.load_run(out).latent
    assert not torch.equal(model.decoder.mean, torch.zeros_like(model.decoder.mean))


def test_same_seed_same_parameters_and_resume_equals_uninterrupted(tiny_store, tmp_path):
    whole = run(tiny_run(tiny_store, tmp_path / "whole"))
    again = run(tiny_run(tiny_store, tmp_path / "again"))
    first = run(tiny_run(tiny_store, tmp_path / "parts", steps=2))
    assert json.loads((first / "latent" / "trainer.json").read_text())["step"] == 2
    resumed = run(replace(tiny_run(tiny_store, tmp_path / "parts"), resume=True))
    reference = parameters(whole)
    for other in (again, resumed):
        for name, value in parameters(other).items():
            assert torch.equal(value, reference[name]), name
    # The metrics of the resumed run continue, without the rows of a step counted twice.
    rows = [
        r for r in MetricsLog.read(resumed / "metrics.csv") if r["name"] == "val/reconstruction_mm"
    ]
    assert [int(r["step"]) for r in rows] == [0, 2, 4]
    assert len(json.loads((resumed / "run.json").read_text())["latent"]["invocations"]) == 2


def test_batch_size_one_trains_without_cross_modality_partner_from_the_batch(tiny_store, tmp_path):
    out = run(tiny_run(tiny_store, tmp_path / "one", batch_size=1, steps=3))
    rows = MetricsLog.read(out / "metrics.csv")
    values = [float(r["value"]) for r in rows if r["name"] == "train/mouth_from_audio"]
    assert len(values) == 3 and all(v > 0 and v == v for v in values)
    model = ckpt.load_run(out).latent
    untrained = latent_preset("tiny", num_vertices=576)
    assert model.config.heads == untrained.heads


def test_plain_l2_run_logs_no_cross_modality_terms(tiny_store, tmp_path):
    out = run(tiny_run(tiny_store, tmp_path / "l2", cross_modality=False, steps=2))
    names = {row["name"] for row in MetricsLog.read(out / "metrics.csv")}
    assert "train/reconstruction" in names and "train/mouth_from_audio" not in names


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def two_processes_and_one(command: list[str], tmp_path: Path) -> tuple[Path, Path]:
    """Run a `meshtalk` command with 2 CPU processes under torchrun (gloo) and in one process.

    Returns the run folders (-o) of the two processes and of the one.
    """
    command = [*command, "--device", "cpu", "--no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2"]
    launcher += ["--master-port", str(_free_port()), "-m", "meshtalk.cli.main"]
    done = subprocess.run(
        [*launcher, *command, "-o", str(tmp_path / "ddp")], env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-2000:]
    single = CliRunner().invoke(app, [*command, "-o", str(tmp_path / "single")])
    assert single.exit_code == 0, single.output
    return tmp_path / "ddp", tmp_path / "single"


def test_two_gloo_processes_equal_one_process(tiny_store, tmp_path):
    """torchrun with 2 CPU processes (gloo), global batch 2, one step: the same parameters."""
    config = tmp_path / "ddp.yaml"
    config.write_text(
        "model: {preset: tiny, audio_dropout: 0.0}\n"
        "train: {steps: 1, batch_size: 2, frames: 8, lr: 1.0e-3, val_segments: 2,"
        " data_workers: 0, log_every: 1}\n"
    )
    command = ["train", "latent", "--data", str(tiny_store), "--config", str(config)]
    ddp, single = two_processes_and_one(command, tmp_path)
    reference = parameters(single)
    for name, value in parameters(ddp).items():
        torch.testing.assert_close(value, reference[name], rtol=1e-5, atol=1e-5, msg=name)
    record = json.loads((tmp_path / "ddp" / "run.json").read_text())["latent"]
    assert record["invocations"][0]["world_size"] == 2


def test_existing_run_needs_resume_and_resume_needs_the_same_settings(tiny_store, tmp_path):
    run(tiny_run(tiny_store, tmp_path / "run", steps=2))
    with pytest.raises(MeshtalkError, match="already holds a latent run"):
        run(tiny_run(tiny_store, tmp_path / "run", steps=2))
    changed = replace(tiny_run(tiny_store, tmp_path / "run", lr=5e-4), resume=True)
    with pytest.raises(MeshtalkError, match="train.lr was 0.001, now 0.0005"):
        run(changed)
    fresh = run(replace(tiny_run(tiny_store, tmp_path / "fresh", steps=1), resume=True))
    assert json.loads((fresh / "latent" / "trainer.json").read_text())["step"] == 1
    again = run(replace(tiny_run(tiny_store, tmp_path / "fresh", steps=1), resume=True))
    assert json.loads((again / "latent" / "trainer.json").read_text())["step"] == 1


def test_seed_option_is_recorded_draws_other_weights_and_must_match_to_resume(tiny_store, tmp_path):
    config = tmp_path / "tiny.yaml"
    config.write_text(tiny_yaml(steps=1))
    runner = CliRunner()

    def train(output: str, *more: str):
        command = ["train", "latent", "--data", str(tiny_store), "--config", str(config)]
        return runner.invoke(app, [*command, "-o", str(tmp_path / output), "--no-progress", *more])

    assert train("a", "--seed", "7").exit_code == 0
    assert train("b").exit_code == 0
    record = json.loads((tmp_path / "a" / "run.json").read_text())["latent"]
    assert record["settings"]["train"]["seed"] == 7
    a, b = parameters(tmp_path / "a"), parameters(tmp_path / "b")
    assert any(not torch.equal(a[name], b[name]) for name in a)
    result = train("a", "--seed", "8", "--resume", "--steps", "2")
    assert result.exit_code == 1 and "train.seed was 7, now 8" in result.output


def test_config_file_problems_are_all_named_on_one_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "model:\n  preset: tiny\n  heads: many\n  colour: red\ntrain:\n  lr: fast\nextra: 1\n"
    )
    with pytest.raises(MeshtalkError) as caught:
        load_config_file(bad)
    message = str(caught.value)
    assert str(bad) in message and "\n" not in message
    for part in (
        "model.heads",
        "'many'",
        "model.colour: unknown key",
        "train.lr",
        "extra: unknown section",
    ):
        assert part in message
    bad.write_text("train:\n  steps: 0\n")
    with pytest.raises(MeshtalkError, match="steps must be positive, got 0"):
        load_config_file(bad)
    bad.write_text("train:\n  upper_face_weight: -1\n")
    with pytest.raises(MeshtalkError, match="upper_face_weight must be >= 0, got -1"):
        load_config_file(bad)
    bad.write_text("train:\n  gumbel_warmup: -5\n")
    with pytest.raises(MeshtalkError, match="gumbel_warmup must be >= 0, got -5"):
        load_config_file(bad)
    bad.write_text("model: [unclosed\n")
    with pytest.raises(MeshtalkError, match="not valid YAML at line"):
        load_config_file(bad)


def test_shipped_config_files_load():
    for path in sorted((Path(__file__).parents[1] / "examples" / "configs").glob("latent-*.yaml")):
        model, training = load_config_file(path)
        assert training.steps > 0 and model.heads in (4, 8, 16, 64), path
        # The release's and the paper's settings keep the method's equal weights; the CPU demos
        # raise the upper face for the synthetic data (benchmarks/quality.py measures it).
        expected = {
            "latent-tiny": 3.0,
            "latent-default": 6.0,
            "latent-ict-default": 6.0,
            "latent-ict-default-audio": 6.0,
            "latent-ict-live": 6.0,
        }.get(path.stem, 1.0)
        assert training.upper_face_weight == expected, path


def test_cli_errors_are_one_line(tiny_store, tmp_path):
    runner = CliRunner()
    result = runner.invoke(
        app, ["train", "latent", "--data", str(tmp_path / "nothing"), "-o", str(tmp_path / "r")]
    )
    assert result.exit_code == 1
    assert result.output.strip().count("\n") == 0 and "no manifest.json" in result.output
    result = runner.invoke(
        app,
        ["train", "latent", "--data", str(tiny_store), "-o", str(tmp_path / "r"), "--steps", "0"],
    )
    assert result.exit_code == 1 and "--steps: steps must be positive" in result.output
    paper = tmp_path / "release.yaml"
    paper.write_text("model: {preset: release}\n")
    result = runner.invoke(
        app,
        [
            "train",
            "latent",
            "--data",
            str(tiny_store),
            "-o",
            str(tmp_path / "r"),
            "--config",
            str(paper),
            "--device",
            "cuda" if not torch.cuda.is_available() else "nonsense",
        ],
    )
    assert result.exit_code == 1 and result.output.startswith("error: ")
    result = runner.invoke(app, ["train", "latent", "--help"])
    assert result.exit_code == 0 and "--resume" in result.output


def test_checkpoint_files_are_complete_or_absent(tiny_store, tmp_path):
    out = run(tiny_run(tiny_store, tmp_path / "run", steps=2))
    assert not list(out.glob(".latent*"))  # no temporary directory left behind
    state = ckpt.load_tensors(out / "latent" / ckpt.OPTIMIZER_FILE)
    assert any(name.endswith(".exp_avg") for name in state)


def test_gumbel_warmup_scales_the_noise_from_zero_to_full():
    noise = torch.full((3, 2, 4, 8, 16), 2.0)
    assert warmed_up_noise(noise, 0, 100).abs().max() == 0
    torch.testing.assert_close(warmed_up_noise(noise, 25, 100), noise * 0.25)
    assert warmed_up_noise(noise, 100, 100) is noise
    assert warmed_up_noise(noise, 0, 0) is noise  # no warm-up: the method's noise from step 0


def test_init_fine_tunes_a_run_and_frozen_parts_keep_its_weights(tiny_store, tmp_path):
    """--init starts from a run's weights; train.freeze keeps the named parts byte for byte (the
    bundled low-latency model's decoder is the default's); the rest trains."""
    base = run(tiny_run(tiny_store, tmp_path / "base"))
    frozen = ("decoder", "expression")
    tuned = run(replace(tiny_run(tiny_store, tmp_path / "tuned", freeze=frozen), init=base))
    before = dict(ckpt.load_run(base).latent.named_parameters())
    for name, value in ckpt.load_run(tuned).latent.named_parameters():
        kept = name.startswith(("decoder.", "encoder.expression_encoder."))
        assert torch.equal(value, before[name]) == kept, name
    record = json.loads((tuned / "run.json").read_text())["latent"]["settings"]
    assert record["init"]["path"] == str(base) and len(record["init"]["decoder_sha256"]) == 64
    assert record["train"]["freeze"] == list(frozen)
    # Without --init nothing can be frozen; an unknown part and a run of other sizes are named.
    with pytest.raises(MeshtalkError, match="needs --init"):
        run(tiny_run(tiny_store, tmp_path / "alone", freeze=("decoder",)))
    with pytest.raises(ValueError, match="unknown part lips"):
        replace(TINY_TRAINING, freeze=("lips",))
    other = replace(tiny_run(tiny_store, tmp_path / "other"), init=base)
    other = replace(other, model=latent_preset("tiny", audio_dropout=0.0, heads=2))
    with pytest.raises(MeshtalkError, match=r"does not fit this run \(--init\)"):
        run(other)
    assert not (tmp_path / "other" / "latent").exists()
