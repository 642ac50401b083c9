"""`load_run`: a run comes back as it was trained, old runs still load, bad runs are one line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from meshtalk.pipelines import checkpoint as ckpt
from meshtalk.pipelines.data.store import PreparedStore
from meshtalk.pipelines.data.synth.face import builtin_vertex_count
from meshtalk.pipelines.errors import MeshtalkError
from meshtalk.pipelines.io.mesh import read_mesh
from meshtalk.pipelines.train.latent import LatentStage
from meshtalk.pipelines.train.prior import PriorStage
from meshtalk.pipelines.train.targets import TARGETS_FILE, segment_key
from meshtalk.pipelines.transfer.source import run_template_mesh
from tests.test_train_latent import tiny_run
from tests.test_train_prior import prior_run

OLD_RUN = Path(__file__).parent / "fixtures" / "run_v0"


@pytest.fixture(scope="module")
def trained(tiny_store, tmp_path_factory):
    """A tiny run of both stages in one folder, and the models as training left them in memory."""
    out = tmp_path_factory.mktemp("loader") / "run"
    latent = LatentStage(tiny_run(tiny_store, out, steps=3))
    latent.run()
    prior = PriorStage(prior_run(out, tiny_store, out, steps=3))
    prior.run()
    return out, latent.model.eval(), prior.model.eval()


def segment_inputs(store: PreparedStore) -> tuple[str, dict[str, torch.Tensor]]:
    """A validation segment's key and its meshes, template and mel span, batched by one."""
    segment = store.split("val")[0]
    mel, starts = store.audio_span(segment, store.frames(segment)["mel_index"])
    inputs = {
        "vertices": torch.from_numpy(np.array(store.vertices(segment)))[None],
        "template": torch.from_numpy(np.array(store.template(segment.identity)))[None],
        "mel": torch.from_numpy(mel)[None],
        "mel_starts": torch.from_numpy(starts)[None],
    }
    return segment_key(segment), inputs


@torch.no_grad()
def test_a_loaded_run_computes_what_training_computed(trained, tiny_store, tiny_dataset):
    out, latent, prior = trained
    run = ckpt.load_run(out)
    assert run.folder == out and run.num_vertices == builtin_vertex_count(24)
    assert {name: stage.step for name, stage in run.stages.items()} == {"latent": 3, "prior": 3}
    assert run.stages["prior"].record["settings"]["latent"]["path"] == str(out / "latent")
    store = PreparedStore(tiny_store)
    # The topology stage 1 trained on: the store's masks and its first training identity.
    assert np.array_equal(run.template, store.template(store.split("train")[0].identity))
    assert run.masks.keys() == store.masks.keys()
    assert all(np.array_equal(run.masks[name], store.masks[name]) for name in store.masks)
    # The triangles of synth's topology/template.ply travel prep -> store -> run (for transfers).
    faces = read_mesh(tiny_dataset / "topology" / "template.ply").faces
    assert np.array_equal(store.faces, faces) and len(faces) > 0
    assert np.array_equal(run_template_mesh(run, out).faces, faces)
    key, inputs = segment_inputs(store)
    expression, audio = run.latent.codes(*inputs.values())
    # The audio codes and argmax codes stage-2 training cached, computed again by the loaded run.
    targets = ckpt.load_tensors(out / TARGETS_FILE)
    assert torch.equal(audio[0], targets[f"{key}/audio"])
    codes = run.latent.encoder.fusion_model(expression, audio).argmax(dim=-1)
    assert torch.equal(codes[0], targets[f"{key}/codes"])
    # The same decoded vertices and prior logits as the models in memory at the end of training.
    trained_expression, trained_audio = latent.codes(*inputs.values())
    assert torch.equal(trained_audio, audio) and torch.equal(trained_expression, expression)
    decoded = run.latent.decode(inputs["template"], expression, audio, sample=False)
    reference = latent.decode(inputs["template"], expression, audio, sample=False)
    assert decoded.shape == inputs["vertices"].shape and torch.equal(decoded, reference)
    # A waveform through the run's audio front end: the audio codes of the trained encoder.
    tone = np.sin(2 * np.pi * 220 * np.arange(16000) / 16000).astype(np.float32)
    from_waveform = run.front_end.audio_codes(run.latent.encoder.audio_encoder, tone)
    assert from_waveform.shape == (1, 30, latent.config.code_dim)
    assert torch.equal(from_waveform, run.front_end.audio_codes(latent.encoder.audio_encoder, tone))
    one_hot = F.one_hot(codes, run.prior.config.classes).float()
    assert torch.equal(run.prior(one_hot, audio), prior(one_hot, audio))
    assert not run.latent.training and not run.prior.training


def test_the_run_folder_or_its_stage_1_folder(trained, tmp_path):
    out, latent, _ = trained
    only_stage_1 = ckpt.load_run(out / "latent")
    assert only_stage_1.folder == out and only_stage_1.prior is not None
    assert ckpt.load_run(out, prior=False).prior is None
    alone = shutil.copytree(out / "latent", tmp_path / "stage1")
    loaded = ckpt.load_run(alone)
    assert (
        loaded.folder == alone and loaded.prior is None and loaded.stages["latent"].record is None
    )
    for name, value in loaded.latent.state_dict().items():
        assert torch.equal(value, latent.state_dict()[name]), name
    # A checkpoint mid-swap (only at its old name) is read where the swap left it.
    copy = shutil.copytree(out, tmp_path / "swapped")
    (copy / "latent").rename(copy / ".latent.old")
    assert ckpt.load_run(copy).stages["latent"].folder == copy / ".latent.old"


def test_a_prior_trained_into_another_folder_finds_its_stage_1(trained, tiny_store, tmp_path):
    out, _, prior = trained
    separate = tmp_path / "prior-only"
    PriorStage(prior_run(out, tiny_store, separate, steps=1)).run()
    assert not (separate / "latent").exists()
    run = ckpt.load_run(separate)
    assert run.folder == separate and run.stages["latent"].folder == out / "latent"
    assert run.stages["prior"].step == 1 and run.stages["latent"].record is not None
    record = json.loads((separate / "run.json").read_text())
    record["prior"]["settings"]["latent"]["path"] = str(tmp_path / "gone")
    (separate / "run.json").write_text(json.dumps(record))
    with pytest.raises(MeshtalkError) as caught:
        ckpt.load_run(separate)
    assert str(caught.value) == (
        f"{separate / 'run.json'}: records stage 1 at {tmp_path / 'gone'}, "
        "which holds no stage-1 checkpoint"
    )


@torch.no_grad()
def test_a_run_written_before_the_loader_loads_and_computes_what_it_did():
    """tests/fixtures/run_v0 (see its README.md): the outputs of make_expected.py, new APIs."""
    expected = np.load(OLD_RUN / "expected.npz")
    run = ckpt.load_run(OLD_RUN)
    assert "front_end" not in run.latent_config  # written before the front end was saved
    assert (run.front_end.window, run.front_end.framing, run.front_end.fps) == (
        "release",
        "true",
        30,
    )
    assert run.num_vertices == 256 and run.stages["prior"].step == 2
    audio = run.front_end.audio_codes(run.latent.encoder.audio_encoder, expected["samples"])
    np.testing.assert_allclose(audio[0].numpy(), expected["audio_codes"], rtol=0, atol=1e-5)
    vertices = torch.from_numpy(expected["vertices"])[None]
    template = torch.from_numpy(expected["template"])[None]
    expression = run.latent.encoder.expression_encoder(vertices, template)
    audio = audio[:, :20]
    codes = run.latent.encoder.fusion_model(expression[:, :20], audio).argmax(dim=-1)
    assert np.array_equal(codes[0].numpy(), expected["codes"])
    decoded = run.latent.decode(template, expression[:, :20], audio, sample=False)
    np.testing.assert_allclose(decoded[0].numpy(), expected["decoded"], rtol=0, atol=1e-5)
    logits = run.prior(F.one_hot(codes, run.prior.config.classes).float(), audio)
    np.testing.assert_allclose(logits[0].numpy(), expected["prior_logits"], rtol=0, atol=1e-5)


def one_line_error(path: Path) -> str:
    with pytest.raises(MeshtalkError) as caught:
        ckpt.load_run(path)
    message = str(caught.value)
    assert "\n" not in message
    return message


def test_bad_runs_are_one_line_naming_the_file(trained, tmp_path):
    out = trained[0]
    assert one_line_error(tmp_path) == f"{tmp_path}: holds no stage-1 checkpoint " + (
        "(latent/encoder/config.json)"
    )
    copy = shutil.copytree(out, tmp_path / "weights")
    weights = copy / "latent" / "decoder" / ckpt.WEIGHTS_FILE
    weights.write_bytes(weights.read_bytes()[:100])
    assert one_line_error(copy).startswith(f"{weights}: not a readable safetensors file (")

    copy = shutil.copytree(out, tmp_path / "decoder")
    config_file = copy / "latent" / "decoder" / ckpt.CONFIG_FILE
    config = json.loads(config_file.read_text())
    config["model"]["heads"] = 2
    config_file.write_text(json.dumps(config))
    assert one_line_error(copy).startswith(f"{config_file}: model: differs from the encoder's")

    copy = shutil.copytree(out, tmp_path / "prior")
    config_file = copy / "prior" / "prior" / ckpt.CONFIG_FILE
    config = json.loads(config_file.read_text())
    config["model"]["classes"] = 8
    config_file.write_text(json.dumps(config))
    assert one_line_error(copy) == (
        f"{config_file}: model: does not fit the run's stage 1: classes 8 (stage 1 has 16)"
    )
    assert ckpt.load_run(copy, prior=False).prior is None  # stage 1 alone still loads

    copy = shutil.copytree(out, tmp_path / "trainer")
    (copy / "prior" / ckpt.TRAINER_FILE).write_text("{")
    assert one_line_error(copy).startswith(f"{copy / 'prior' / ckpt.TRAINER_FILE}: not valid JSON")


def test_a_component_shares_its_weights_with_a_run_beside_it(trained, tmp_path):
    """latent/decoder/shared.json (the bundled low-latency model's decoder is the default's):
    loaded equal to the named file; a changed file, a missing one or one outside the folder that
    holds the runs is a one-line error naming shared.json."""
    from meshtalk.pipelines.io.provenance import file_sha256

    out, latent, _ = trained
    default = shutil.copytree(out, tmp_path / "bundle" / "run")
    twin = shutil.copytree(out, tmp_path / "bundle" / "live")
    weights = twin / "latent" / "decoder" / "model.safetensors"
    weights.unlink()
    shared = twin / "latent" / "decoder" / "shared.json"
    digest = file_sha256(default / "latent" / "decoder" / "model.safetensors")
    record = {"weights": "../../../run/latent/decoder/model.safetensors", "sha256": digest}
    shared.write_text(json.dumps(record))
    loaded = ckpt.load_run(twin)
    for name, value in loaded.latent.state_dict().items():
        assert torch.equal(value, latent.state_dict()[name]), name
    assert loaded.stages["latent"].weights_sha256("decoder") == digest
    shared.write_text(json.dumps({**record, "sha256": "0" * 64}))
    assert "whose SHA-256 is not the recorded one" in one_line_error(twin)
    outside = {**record, "weights": "../../../../elsewhere/model.safetensors"}
    shared.write_text(json.dumps(outside))
    assert "outside" in one_line_error(twin)
    shared.write_text(json.dumps({**record, "weights": "../../../gone/model.safetensors"}))
    assert "which is missing" in one_line_error(twin)
