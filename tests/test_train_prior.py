"""`meshtalk train prior`: cached targets, outputs, reproducibility, resume, processes, errors."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from meshtalk.cli.main import app
from meshtalk.models.prior import prior_preset
from meshtalk.pipelines import checkpoint as ckpt
from meshtalk.pipelines.errors import MeshtalkError
from meshtalk.pipelines.train.latent import run as train_latent
from meshtalk.pipelines.train.loop import MetricsLog
from meshtalk.pipelines.train.prior import (
    PriorTrainingConfig,
    TrainPriorConfig,
    load_config_file,
    run,
)
from meshtalk.pipelines.train.targets import TARGETS_FILE
from tests.test_train_latent import tiny_run, two_processes_and_one

TINY_PRIOR = PriorTrainingConfig(
    steps=4, batch_size=2, frames=8, lr=1e-3, val_every=2, checkpoint_every=2, log_every=1
)


@pytest.fixture(scope="module")
def latent_run(tiny_store, tmp_path_factory) -> Path:
    return train_latent(tiny_run(tiny_store, tmp_path_factory.mktemp("latent") / "run", steps=3))


def prior_run(latent: Path, store: Path, output: Path, **training) -> TrainPriorConfig:
    return TrainPriorConfig(
        latent=latent,
        data=store,
        output=output,
        model=prior_preset("tiny"),
        training=replace(TINY_PRIOR, **training),
        device="cpu",
        progress=False,
    )


def parameters(run_dir: Path) -> dict[str, torch.Tensor]:
    return ckpt.load_run(run_dir).prior.state_dict()


def test_a_run_caches_targets_and_writes_checkpoint_metrics_and_pictures(
    latent_run, tiny_store, tmp_path
):
    out = run(prior_run(latent_run, tiny_store, tmp_path / "run"))
    trained = ckpt.load_run(out)
    model, config = trained.prior, trained.stages["prior"].configs["prior"]
    assert config["latent"]["model"]["heads"] == model.config.heads == 4
    assert json.loads((out / "prior" / "trainer.json").read_text())["step"] == 4
    rows = MetricsLog.read(out / "prior_metrics.csv")
    perplexity = [float(r["value"]) for r in rows if r["name"] == "val/perplexity"]
    assert len(perplexity) == 3 and all(p >= 1.0 for p in perplexity)
    assert perplexity[0] == pytest.approx(16, rel=0.2)  # nearly uniform before training
    for picture in ("prior_loss_curve.png", "prior_codes.png"):
        assert (out / picture).read_bytes()[:4] == b"\x89PNG"
    targets = ckpt.load_tensors(out / TARGETS_FILE)
    codes = [v for k, v in targets.items() if k.endswith("/codes")]
    assert codes and all(c.dtype == torch.int64 and c.shape[1] == 4 for c in codes)
    assert max(int(c.max()) for c in codes) < 16
    record = json.loads((out / "run.json").read_text())["prior"]
    assert record["settings"]["latent"]["path"] == str((latent_run / "latent").resolve())
    # The cache is reused by the next run on the same stage-1 checkpoint and data.
    stamp = (out / TARGETS_FILE).stat().st_mtime_ns
    run(replace(prior_run(latent_run, tiny_store, tmp_path / "run", steps=5), resume=True))
    assert (out / TARGETS_FILE).stat().st_mtime_ns == stamp


def test_same_seed_same_parameters_and_resume_equals_uninterrupted(
    latent_run, tiny_store, tmp_path
):
    whole = run(prior_run(latent_run, tiny_store, tmp_path / "whole"))
    first = run(prior_run(latent_run, tiny_store, tmp_path / "parts", steps=2))
    assert json.loads((first / "prior" / "trainer.json").read_text())["step"] == 2
    resumed = run(replace(prior_run(latent_run, tiny_store, tmp_path / "parts"), resume=True))
    reference = parameters(whole)
    for name, value in parameters(resumed).items():
        assert torch.equal(value, reference[name]), name
    with pytest.raises(MeshtalkError, match="already holds a prior run"):
        run(prior_run(latent_run, tiny_store, tmp_path / "whole"))


def test_two_gloo_processes_equal_one_process(latent_run, tiny_store, tmp_path):
    config = tmp_path / "ddp.yaml"
    config.write_text("model: {preset: tiny}\ntrain: {steps: 2, batch_size: 2, frames: 8}\n")
    command = ["train", "prior", "--latent", str(latent_run), "--data", str(tiny_store)]
    ddp, single = two_processes_and_one([*command, "--config", str(config)], tmp_path)
    reference = parameters(single)
    for name, value in parameters(ddp).items():
        torch.testing.assert_close(value, reference[name], rtol=1e-5, atol=1e-5, msg=name)


def test_bad_input_is_one_line(latent_run, tiny_store, tmp_path):
    runner = CliRunner()
    base = ["train", "prior", "--data", str(tiny_store), "-o", str(tmp_path / "r")]
    result = runner.invoke(app, [*base, "--latent", str(tmp_path)])
    assert result.exit_code == 1 and result.output.count("\n") == 1
    assert "holds no stage-1 checkpoint" in result.output
    clash = tmp_path / "clash.yaml"
    clash.write_text("model: {preset: tiny, heads: 8}\n")
    result = runner.invoke(app, [*base, "--latent", str(latent_run), "--config", str(clash)])
    assert result.exit_code == 1 and "heads 8 (stage 1 has 4)" in result.output
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: {preset: huge}\ntrain: {frames: -1, colour: red}\n")
    with pytest.raises(MeshtalkError) as caught:
        load_config_file(bad)
    message = str(caught.value)
    for part in ("unknown preset 'huge'", "train.colour: unknown key", "frames must be positive"):
        assert part in message


def test_shipped_prior_configs_load_and_match_the_latent_presets():
    from meshtalk.pipelines.train.latent import load_config_file as load_latent_config

    folder = Path(__file__).parents[1] / "examples" / "configs"
    for preset in ("tiny", "release", "paper"):
        prior, training = load_config_file(folder / f"prior-{preset}.yaml")
        latent, _ = load_latent_config(folder / f"latent-{preset}.yaml")
        assert (prior.heads, prior.classes, prior.audio_dim) == (
            latent.heads,
            latent.classes,
            latent.code_dim,
        )
        assert training.steps > 0
