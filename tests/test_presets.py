"""Presets in code: each names both models and both stages; YAML files only override them."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from typer.testing import CliRunner

from meshtalk.cli.main import app
from meshtalk.pipelines.errors import MeshtalkError
from meshtalk.pipelines.presets import PRESETS, stage_settings

EXAMPLES = Path(__file__).parents[1] / "examples" / "configs"


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_a_preset_names_both_models_and_both_stages_that_fit_together(name):
    preset = PRESETS[name]
    latent, prior = preset.latent_model, preset.prior_model
    assert (prior.heads, prior.classes, prior.audio_dim) == (
        latent.heads,
        latent.classes,
        latent.code_dim,
    )
    assert preset.latent_training.steps > 0 and preset.prior_training.steps > 0
    assert stage_settings("latent", name) == (latent, preset.latent_training)
    assert stage_settings("prior", name) == (prior, preset.prior_training)


def test_the_release_is_the_default_and_the_sizes_are_the_authors():
    model, training = stage_settings("latent")
    assert (model.heads, model.classes, training.lr, training.steps) == (16, 128, 1e-4, 50_000)
    assert stage_settings("prior")[0].heads == 16
    assert PRESETS["paper"].latent_model.heads == 64


@pytest.mark.parametrize("name", sorted(PRESETS))
@pytest.mark.parametrize("stage", ["latent", "prior"])
def test_shipped_example_files_are_the_presets(name, stage):
    assert stage_settings(stage, None, EXAMPLES / f"{stage}-{name}.yaml") == PRESETS[name].stage(
        stage
    )
    # Only the CPU demos raise the upper face's weight (the method's weights are equal).
    if stage == "latent":
        expected = {"tiny": 3.0, "default": 6.0}.get(name, 1.0)
        assert PRESETS[name].latent_training.upper_face_weight == expected


def test_a_file_replaces_only_the_fields_it_names(tmp_path):
    path = tmp_path / "o.yaml"
    path.write_text("model: {heads: 8}\ntrain: {steps: 7}\n")
    model, training = stage_settings("latent", "tiny", path)
    assert model == replace(PRESETS["tiny"].latent_model, heads=8)
    assert training == replace(PRESETS["tiny"].latent_training, steps=7)
    # The old form, `model: {preset: ...}`, still names the preset.
    path.write_text("model: {preset: tiny}\n")
    assert stage_settings("latent", None, path) == PRESETS["tiny"].stage("latent")
    assert stage_settings("latent", None, path, steps=5)[1].steps == 5


def test_seed_replaces_the_settings_seed_alone(tmp_path):
    path = tmp_path / "o.yaml"
    path.write_text("train: {steps: 7, seed: 2}\n")
    model, training = stage_settings("latent", "tiny", path, seed=5)
    assert model == PRESETS["tiny"].latent_model
    assert training == replace(PRESETS["tiny"].latent_training, steps=7, seed=5)
    assert stage_settings("prior", "tiny", seed=3)[1].seed == 3
    assert stage_settings("latent", "tiny", path)[1].seed == 2


def test_preset_problems_are_one_line(tmp_path):
    path = tmp_path / "o.yaml"
    path.write_text("preset: tiny\nmodel: {heads: 0, colour: red}\n")
    with pytest.raises(MeshtalkError) as caught:
        stage_settings("latent", "paper", path)
    message = str(caught.value)
    assert "\n" not in message and str(path) in message
    for part in ("names 'tiny' but --preset is 'paper'", "model.colour: unknown key"):
        assert part in message
    path.write_text("preset: huge\n")
    with pytest.raises(MeshtalkError, match="unknown preset 'huge'"):
        stage_settings("prior", None, path)
    with pytest.raises(MeshtalkError, match="--preset must be one of"):
        stage_settings("latent", "huge")


def test_cli_preset_errors_are_one_line(tmp_path):
    runner = CliRunner()
    for stage in ("latent", "prior"):
        extra = ["--latent", str(tmp_path)] if stage == "prior" else []
        result = runner.invoke(
            app,
            ["train", stage, *extra, "--data", str(tmp_path), "-o", str(tmp_path / "r")]
            + ["--preset", "huge"],
        )
        assert result.exit_code == 1
        assert result.output.count("\n") == 1 and "--preset must be one of" in result.output
