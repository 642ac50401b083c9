"""Bad run folders and configs: one line naming the file, exit code 1, nothing allocated."""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from meshtalk.cli.main import app
from meshtalk.models.config import LatentModelConfig
from meshtalk.models.prior import PriorModelConfig, prior_preset
from meshtalk.pipelines import checkpoint as ckpt
from meshtalk.pipelines.errors import MeshtalkError
from meshtalk.pipelines.train.latent import run as train_latent
from meshtalk.pipelines.train.prior import PriorTrainingConfig, TrainPriorConfig
from meshtalk.pipelines.train.prior import run as train_prior
from meshtalk.pipelines.train.targets import TARGETS_FILE
from tests.test_train_latent import tiny_run, tiny_yaml

LATENT_YAML = tiny_yaml(steps=2)  # the settings of the latent_run fixture
PRIOR_YAML = (
    "model: {preset: tiny}\n"
    "train: {steps: 1, batch_size: 2, frames: 8, lr: 1.0e-3, val_every: 1, checkpoint_every: 1,"
    " log_every: 1}\n"
)


@pytest.fixture(scope="module")
def latent_run(tiny_store, tmp_path_factory) -> Path:
    return train_latent(tiny_run(tiny_store, tmp_path_factory.mktemp("latent") / "run", steps=2))


@pytest.fixture
def configs(tmp_path) -> dict[str, Path]:
    (tmp_path / "latent.yaml").write_text(LATENT_YAML)
    (tmp_path / "prior.yaml").write_text(PRIOR_YAML)
    return {"latent": tmp_path / "latent.yaml", "prior": tmp_path / "prior.yaml"}


def invoke(*args: str):
    return CliRunner().invoke(app, [*args, "--device", "cpu", "--no-progress"])


def first_error_line(result) -> str:
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    return result.stderr.splitlines()[0]


def edit_model_config(run_dir: Path, **changes) -> Path:
    path = run_dir / "latent" / "encoder" / "config.json"
    config = json.loads(path.read_text())
    config["model"].update(changes)
    path.write_text(json.dumps(config))
    return path


def train_prior_cli(latent: Path, store: Path, output: Path, config: Path, *extra: str):
    return invoke(
        "train", "prior", "--latent", str(latent), "--data", str(store), "-o", str(output),
        "--config", str(config), *extra,
    )  # fmt: skip


def test_component_config_with_an_unknown_key(latent_run, tiny_store, tmp_path, configs):
    copy = shutil.copytree(latent_run, tmp_path / "copy")
    path = edit_model_config(copy, colour="red")
    line = first_error_line(train_prior_cli(copy, tiny_store, tmp_path / "p", configs["prior"]))
    assert line.startswith(f"error: {path}: model: unknown key 'colour' (known: ")
    with pytest.raises(MeshtalkError, match="unknown key 'colour'"):
        ckpt.load_run(copy / "latent")
    assert not (tmp_path / "p").exists()


def test_component_config_with_a_huge_vertex_count_is_refused_before_allocating(
    latent_run, tiny_store, tmp_path, configs
):
    copy = shutil.copytree(latent_run, tmp_path / "copy")
    path = edit_model_config(copy, num_vertices=10**12)
    started = time.perf_counter()
    line = first_error_line(train_prior_cli(copy, tiny_store, tmp_path / "p", configs["prior"]))
    assert line == f"error: {path}: model: num_vertices must be at most 1000000, got {10**12}"
    edit_model_config(copy, num_vertices=1_000_000)  # in range, but about 1G parameters
    line = first_error_line(train_prior_cli(copy, tiny_store, tmp_path / "p", configs["prior"]))
    assert line.startswith(f"error: {path}: model: these sizes make a model of about ")
    edit_model_config(copy, num_vertices=576, heads="four")
    line = first_error_line(train_prior_cli(copy, tiny_store, tmp_path / "p", configs["prior"]))
    assert line == f"error: {path}: model: heads must be a whole number, got 'four'"
    assert time.perf_counter() - started < 30


def test_every_size_is_bounded():
    for sizes in (
        {"heads": 10**6},
        {"classes": 10**7},
        {"audio_channels": 10**5},
        {"decoder_hidden": (10**6,)},
        {"audio_dilations": ()},
        {"num_vertices": 0},
    ):
        with pytest.raises(ValueError):
            LatentModelConfig(**sizes)
    for sizes in ({"heads": 10**5}, {"channels_per_head": 4096, "heads": 1024}, {"classes": 0}):
        with pytest.raises(ValueError):
            PriorModelConfig(**sizes)
    with pytest.raises(ValueError, match="unknown key 'colour'"):
        LatentModelConfig.from_dict({**LatentModelConfig().to_dict(), "colour": 1})


def test_yaml_config_with_a_huge_vertex_count(tiny_store, tmp_path):
    config = tmp_path / "huge.yaml"
    config.write_text("model: {preset: tiny, num_vertices: 1000000000000}\n")
    result = invoke("train", "latent", "--data", str(tiny_store), "-o", str(tmp_path / "r"),
                    "--config", str(config))  # fmt: skip
    line = first_error_line(result)
    assert line.startswith(f"error: {config}: model: num_vertices must be at most 1000000")


def test_corrupt_trainer_json_on_resume(latent_run, tiny_store, tmp_path, configs):
    copy = shutil.copytree(latent_run, tmp_path / "copy")
    (copy / "latent" / "trainer.json").write_text('{"stage": "latent", "st')
    result = invoke("train", "latent", "--data", str(tiny_store), "-o", str(copy),
                    "--config", str(configs["latent"]), "--resume")  # fmt: skip
    line = first_error_line(result)
    assert line.startswith(f"error: {copy / 'latent' / 'trainer.json'}: not valid JSON (")
    (copy / "latent" / "trainer.json").write_text('{"stage": "latent", "step": "two"}')
    result = invoke("train", "latent", "--data", str(tiny_store), "-o", str(copy),
                    "--config", str(configs["latent"]), "--resume")  # fmt: skip
    assert "'step' must be a whole number" in first_error_line(result)


def test_corrupt_run_json_on_resume(latent_run, tiny_store, tmp_path, configs):
    copy = shutil.copytree(latent_run, tmp_path / "copy")
    (copy / "run.json").write_text("[1, 2")
    result = invoke("train", "latent", "--data", str(tiny_store), "-o", str(copy),
                    "--config", str(configs["latent"]), "--resume")  # fmt: skip
    assert first_error_line(result).startswith(f"error: {copy / 'run.json'}: not valid JSON (")


def test_truncated_prior_targets_are_computed_again(latent_run, tiny_store, tmp_path, caplog):
    config = TrainPriorConfig(
        latent=latent_run,
        data=tiny_store,
        output=tmp_path / "prior",
        model=prior_preset("tiny"),
        training=PriorTrainingConfig(
            steps=1, batch_size=2, frames=8, val_every=1, checkpoint_every=1, log_every=1
        ),
        device="cpu",
        progress=False,
    )
    out = train_prior(config)
    targets = out / TARGETS_FILE
    before = {k: v.clone() for k, v in ckpt.load_tensors(targets).items()}
    whole = targets.read_bytes()
    targets.unlink()  # not truncated in place: loaded tensors may map the file
    targets.write_bytes(whole[: len(whole) // 2])
    with caplog.at_level(logging.WARNING):
        train_prior(config.__class__(**{**config.__dict__, "resume": True}))
    damaged = [r.getMessage() for r in caplog.records if "damaged" in r.getMessage()]
    assert len(damaged) == 1 and damaged[0].startswith(f"{targets}: damaged (")
    assert "\n" not in damaged[0]
    after = ckpt.load_tensors(targets)  # the same targets, computed again
    assert after.keys() == before.keys()
    assert all(torch.equal(after[k], before[k]) for k in before)


def test_output_that_is_a_file(tiny_store, latent_run, tmp_path, configs):
    existing = tmp_path / "notes.txt"
    existing.write_text("my notes\n")
    result = invoke("train", "latent", "--data", str(tiny_store), "-o", str(existing),
                    "--config", str(configs["latent"]))  # fmt: skip
    expected = f"error: {existing}: is a file, not a run directory (choose another -o)"
    assert first_error_line(result) == expected
    result = train_prior_cli(latent_run, tiny_store, existing, configs["prior"])
    assert first_error_line(result) == expected
    assert existing.read_text() == "my notes\n"
