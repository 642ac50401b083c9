"""Stage-1 modules: shapes, the fast audio path, golden outputs, checkpoints."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from meshtalk.models.config import LATENT_PRESETS, LatentModelConfig, latent_preset
from meshtalk.models.latent import LatentAutoencoder, gumbel_one_hot
from meshtalk.pipelines import checkpoint as ckpt
from meshtalk.pipelines.errors import MeshtalkError
from meshtalk.pipelines.frontend import AudioFrontEnd

MASKS = ("mouth", "upper_face", "eyelids")

FIXTURES = Path(__file__).parent / "fixtures"


def small_config(**overrides) -> LatentModelConfig:
    return latent_preset("tiny", num_vertices=40, audio_dropout=0.0, **overrides)


def test_shapes_of_every_module():
    config = small_config()
    model = LatentAutoencoder(config)
    b, t, v, w = 2, 5, config.num_vertices, 101
    vertices, template = torch.randn(b, t, v, 3), torch.randn(b, v, 3)
    windows = torch.randn(b, t, 80, w)
    audio = model.encoder.audio_encoder(windows)
    expression = model.encoder.expression_encoder(vertices, template)
    assert audio.shape == expression.shape == (b, t, config.code_dim)
    logprobs = model.encoder.fusion_model(expression, audio)
    assert logprobs.shape == (b, t, config.heads, config.classes)
    torch.testing.assert_close(logprobs.exp().sum(-1), torch.ones(b, t, config.heads))
    codes = gumbel_one_hot(logprobs)
    assert codes.shape == logprobs.shape and torch.equal(codes.sum(-1), torch.ones(b, t, 4))
    assert model.decoder(template, codes).shape == (b, t, v, 3)
    with torch.inference_mode():  # in chunks, the template encoded once: the same meshes
        whole = model.decoder(template, codes)
        encoded = model.decoder.encode_template(template)
        first, state = model.decoder.decode(template, codes[:, :2], None, encoded)
        rest, _ = model.decoder.decode(template, codes[:, 2:], state, encoded)
    torch.testing.assert_close(torch.cat([first, rest], 1), whole)
    features = model.encoder.audio_encoder.features(windows[0])
    assert features.shape[-1] == w - config.audio_receptive_field + 1
    mel = AudioFrontEnd().log_mel(torch.randn(b, 16000).numpy())
    assert mel.shape == (b, 101, 80)  # 1 s of audio: 101 centred 10 ms frames


def test_release_names_and_shapes_match_the_authors_checkpoint():
    """A few entries of SPEC section 7, including the torchaudio front end's buffers."""
    model = LatentAutoencoder(LATENT_PRESETS["release"])
    encoder, decoder = model.encoder.state_dict(), model.decoder.state_dict()
    expected_encoder = {
        "audio_encoder.melspec.spectrogram.window": (800,),
        "audio_encoder.melspec.mel_scale.fb": (1025, 80),
        "audio_encoder.convert_dimensions.weight": (128, 80, 5),
        "audio_encoder.convs.5.weight": (128, 128, 5),
        "expression_encoder.mean": (1, 1, 6172, 3),
        "expression_encoder.layers.0.weight": (256, 18516),
        "expression_encoder.lstm.weight_hh_l0": (512, 128),
        "fusion_model.mlp.4.weight": (2048, 256),
    }
    expected_decoder = {
        "vertex_bias": (18516,),
        "encoder.0.weight": (512, 18516),
        "fusion.weight": (128, 2176),
        "temporal.weight_ih_l1": (512, 128),
        "decoder.2.weight": (18516, 512),
    }
    assert {k: tuple(encoder[k].shape) for k in expected_encoder} == expected_encoder
    assert {k: tuple(decoder[k].shape) for k in expected_decoder} == expected_decoder
    assert len(encoder) == 36 and len(decoder) == 25
    assert LATENT_PRESETS["release"].audio_receptive_field == 101


@pytest.mark.parametrize(
    ("dilations", "window"), [((2, 4, 6, 2, 4, 6), 101), ((1, 2, 3, 1, 2, 3), 61), ((1, 2), 101)]
)
def test_utterance_pass_equals_per_window_reference(dilations, window):
    """Where windows start on mel frames (as every window of a prepared store does); with a
    receptive field smaller than the window, the mean over the window's outputs is pooled too."""
    torch.manual_seed(0)
    config = small_config(
        audio_dilations=dilations, audio_window_frames=window, mel_mean=-8.0, mel_std=5.0
    )
    encoder = LatentAutoencoder(config).encoder.audio_encoder.eval()
    mel = torch.randn(2, 400, 80)
    starts = torch.tensor([[0, 3, 7, 10, 13, 17], [5, 8, 12, 15, 18, 22]])
    windows = torch.stack(
        [torch.stack([mel[b, s : s + window].T for s in row]) for b, row in enumerate(starts)]
    )
    reference = encoder(windows)
    fast = encoder.encode_span(mel, starts)
    torch.testing.assert_close(fast, reference, rtol=1e-5, atol=1e-5)


def test_window_shorter_than_receptive_field_is_refused():
    with pytest.raises(ValueError, match="receptive field of 101"):
        replace(LATENT_PRESETS["release"], audio_window_frames=61)
    encoder = LatentAutoencoder(LATENT_PRESETS["release"]).encoder.audio_encoder
    with pytest.raises(ValueError, match="windows of 61 mel frames given to an encoder of 101"):
        encoder(torch.zeros(1, 3, 80, 61))


def test_a_config_written_before_the_window_field_takes_its_window_from_the_caller():
    values = replace(LATENT_PRESETS["tiny"], audio_dilations=(1, 2)).to_dict()
    del values["audio_window_frames"]
    assert LatentModelConfig.from_dict(values).audio_window_frames == 101
    assert LatentModelConfig.from_dict(values, audio_window_frames=61).audio_window_frames == 61
    values["audio_window_frames"] = 81  # a saved value wins
    assert LatentModelConfig.from_dict(values, audio_window_frames=61).audio_window_frames == 81


def test_gumbel_straight_through_passes_gradients():
    logprobs = torch.randn(3, 4, 8, requires_grad=True)
    codes = gumbel_one_hot(torch.log_softmax(logprobs, -1))
    (codes * torch.arange(8.0)).sum().backward()
    assert logprobs.grad is not None and logprobs.grad.abs().sum() > 0


def deterministic_model(config: LatentModelConfig) -> LatentAutoencoder:
    """Weights that depend on nothing but their shapes (no random generator)."""
    model = LatentAutoencoder(config)
    with torch.no_grad():
        for index, (name, tensor) in enumerate(sorted(model.state_dict().items())):
            if "melspec" in name:
                continue
            values = torch.arange(tensor.numel(), dtype=torch.float64)
            filled = 0.5 * torch.sin(0.37 * values + index) / (1 + tensor.shape[-1]) ** 0.5
            if name.endswith(("stddev",)):
                filled = 1.0 + 0.5 * filled.abs()
            tensor.copy_(filled.view_as(tensor).float())
    return model.eval()


def golden_inputs(config: LatentModelConfig) -> dict[str, torch.Tensor]:
    b, t, v = 2, 6, config.num_vertices
    grid = torch.arange(b * t * v * 3, dtype=torch.float64)
    mel = torch.cos(0.013 * torch.arange(b * 130 * 80, dtype=torch.float64)).view(b, 130, 80)
    return {
        "vertices": torch.sin(0.01 * grid).view(b, t, v, 3).float(),
        "template": torch.cos(0.05 * torch.arange(b * v * 3.0)).view(b, v, 3).float(),
        "mel": (4 * mel - 6).float(),
        "mel_starts": torch.tensor([[0, 3, 7, 10, 13, 17], [1, 4, 8, 11, 14, 18]]),
    }


def golden_outputs(model: LatentAutoencoder, inputs: dict[str, torch.Tensor]) -> dict:
    with torch.no_grad():
        expression, audio = model.codes(
            inputs["vertices"], inputs["template"], inputs["mel"], inputs["mel_starts"]
        )
        logprobs = model.encoder.fusion_model(expression, audio)
        meshes = model.decode(inputs["template"], expression, audio, sample=False)
    return {
        "audio_code": audio,
        "expression_code": expression,
        "logprobs": logprobs,
        "meshes": meshes,
    }


def golden_config() -> LatentModelConfig:
    """The golden model encodes meshes as the authors' release does ('mesh'); its decoder reads
    [codes, template code] ('codes_first'), the order of the models the fixture was made with, so
    the fixture pins that order (`test_decoder_fusion_orders` relates it to the release's)."""
    return small_config(
        mel_mean=-6.0, mel_std=4.0, expression_input="mesh", decoder_fusion="codes_first"
    )


def test_golden_outputs_of_deterministic_weights():
    """Regenerate with: python tests/fixtures/make_golden.py"""
    model = deterministic_model(golden_config())
    outputs = golden_outputs(model, golden_inputs(model.config))
    expected = load_file(str(FIXTURES / "latent_golden.safetensors"))
    assert set(outputs) == set(expected)
    for name, value in outputs.items():
        torch.testing.assert_close(value, expected[name], rtol=1e-4, atol=1e-5, msg=name)


def test_decoder_fusion_orders():
    """'template_first' (the release's) reads [template code, codes]: with the fusion weight's
    column blocks swapped it decodes exactly as 'codes_first' (the golden fixture's order); with
    the same weights the fusion layers of the two orders differ."""
    old = deterministic_model(golden_config())
    new = LatentAutoencoder(replace(golden_config(), decoder_fusion="template_first")).eval()
    new.load_state_dict(old.state_dict())
    inputs = golden_inputs(old.config)
    expected = load_file(str(FIXTURES / "latent_golden.safetensors"))
    fused = []
    for model in (old, new):
        model.decoder.fusion.register_forward_hook(lambda m, i, o: fused.append(o))
    with torch.no_grad():
        expression, audio = old.codes(
            inputs["vertices"], inputs["template"], inputs["mel"], inputs["mel_starts"]
        )
        old_meshes = old.decode(inputs["template"], expression, audio, sample=False)
        new.decode(inputs["template"], expression, audio, sample=False)
        assert (fused[0] - fused[1]).abs().max() > 1e-2
        weight = new.decoder.fusion.weight
        codes = old.config.heads * old.config.classes
        weight.copy_(torch.cat([weight[:, codes:], weight[:, :codes]], dim=1))
        swapped = new.decode(inputs["template"], expression, audio, sample=False)
    torch.testing.assert_close(fused[2], fused[0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(swapped, old_meshes, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(swapped, expected["meshes"], rtol=1e-4, atol=1e-5)
    assert LatentModelConfig().decoder_fusion == "template_first"
    with pytest.raises(ValueError, match="decoder_fusion must be one of template_first"):
        replace(golden_config(), decoder_fusion="sideways")


def test_a_config_written_before_decoder_fusion_existed_reads_codes_first():
    values = LATENT_PRESETS["tiny"].to_dict()
    assert LatentModelConfig.from_dict(values).decoder_fusion == "template_first"
    del values["decoder_fusion"]
    assert LatentModelConfig.from_dict(values).decoder_fusion == "codes_first"


def test_offset_expression_input_is_the_release_encoder_on_the_displacement():
    """'offset' reads (mesh - template) / std: the 'mesh' encoder's input with the template in
    place of the mean. Two faces making the same expression get the same code."""
    mesh_model = deterministic_model(golden_config())
    offset_model = deterministic_model(replace(golden_config(), expression_input="offset"))
    inputs = golden_inputs(mesh_model.config)
    vertices, template = inputs["vertices"], inputs["template"]
    mean = mesh_model.encoder.expression_encoder.mean[0]
    with torch.no_grad():
        offset = offset_model.encoder.expression_encoder(vertices, template)
        shifted = mesh_model.encoder.expression_encoder(vertices - template[:, None] + mean)
        other_face = offset_model.encoder.expression_encoder(vertices + 3.0, template + 3.0)
    torch.testing.assert_close(offset, shifted, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(other_face, offset, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(offset, mesh_model.encoder.expression_encoder(vertices), atol=1e-3)
    with pytest.raises(ValueError, match="template"):
        offset_model.encoder.expression_encoder(vertices)


def test_save_load_is_bit_exact(tmp_path):
    torch.manual_seed(3)
    model = LatentAutoencoder(small_config())
    model.set_statistics(torch.randn(40, 3), torch.rand(40, 3) + 0.5)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss = sum(p.square().sum() for p in model.parameters())
    loss.backward()
    optimizer.step()
    names = {i: n for i, (n, _) in enumerate(model.named_parameters())}
    config = {"model": model.config.to_dict()}
    ckpt.write_checkpoint(
        tmp_path / "ck",
        {"encoder": (model.encoder, config), "decoder": (model.decoder, config)},
        (optimizer, names),
        {"step": 1},
    )
    loaded = LatentAutoencoder(
        LatentModelConfig.from_dict(
            ckpt.read_component_config(tmp_path / "ck" / "encoder")["model"]
        )
    )
    ckpt.load_component_state(tmp_path / "ck" / "encoder", loaded.encoder)
    ckpt.load_component_state(tmp_path / "ck" / "decoder", loaded.decoder)
    for (name, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), name
    optimizer2 = torch.optim.Adam(loaded.parameters(), lr=1e-3)
    ckpt.load_optimizer(tmp_path / "ck", optimizer2, names)
    for index, state in optimizer.state_dict()["state"].items():
        for key, value in state.items():
            assert torch.equal(optimizer2.state_dict()["state"][index][key], value)
    assert not list(tmp_path.glob(".ck*"))  # no temporary left behind


def test_loading_into_a_different_model_names_the_file(tmp_path):
    model = LatentAutoencoder(small_config())
    ckpt.save_component(tmp_path / "encoder", model.encoder, {})
    other = LatentAutoencoder(small_config(heads=8))
    with pytest.raises(MeshtalkError, match="fusion_model.mlp.4.weight has shape"):
        ckpt.load_component_state(tmp_path / "encoder", other.encoder)
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / ckpt.WEIGHTS_FILE).write_bytes(b"not safetensors")
    with pytest.raises(MeshtalkError, match="not a readable safetensors file"):
        ckpt.load_component_state(tmp_path / "broken", other.encoder)


def test_a_config_written_before_expression_input_existed_encodes_meshes():
    values = LATENT_PRESETS["tiny"].to_dict()
    assert LatentModelConfig.from_dict(values).expression_input == "offset"
    del values["expression_input"]
    assert LatentModelConfig.from_dict(values).expression_input == "mesh"


def test_expression_norm_puts_a_layer_norm_before_the_lstm():
    """Off by default (the release's names, nothing more); on, the LSTM reads the MLP's output
    normalised per frame, so however large the MLP's outputs grow, its gates see unit scale."""
    plain = LatentAutoencoder(small_config())
    assert not any(".norm." in name for name in plain.state_dict())
    values = small_config(expression_norm=True).to_dict()
    config = LatentModelConfig.from_dict(values)
    assert config.expression_norm
    del values["expression_norm"]
    assert not LatentModelConfig.from_dict(values).expression_norm  # older configs: none
    torch.manual_seed(0)
    encoder = LatentAutoencoder(config).encoder.expression_encoder
    assert {"norm.weight", "norm.bias"} <= set(encoder.state_dict())
    seen = []
    encoder.lstm.register_forward_hook(lambda module, inputs, output: seen.append(inputs[0]))
    with torch.no_grad():
        encoder.layers[1].weight.mul_(1000.0)  # an MLP whose outputs grew large
        encoder(torch.randn(2, 5, 40, 3), torch.zeros(2, 40, 3))
    lstm_input = seen[0]
    assert lstm_input.shape == (2, 5, config.code_dim)
    torch.testing.assert_close(lstm_input.mean(-1), torch.zeros(2, 5), atol=1e-4, rtol=0)
    deviation = lstm_input.std(-1, unbiased=False)
    torch.testing.assert_close(deviation, torch.ones(2, 5), atol=1e-3, rtol=0)
    with pytest.raises(ValueError, match="expression_norm must be true or false"):
        small_config(expression_norm="yes")


def test_config_rejects_impossible_values():
    with pytest.raises(ValueError, match="heads must be positive, got 0"):
        replace(LATENT_PRESETS["tiny"], heads=0)
    with pytest.raises(ValueError, match="audio_dropout must be in"):
        replace(LATENT_PRESETS["tiny"], audio_dropout=1.5)
    with pytest.raises(ValueError, match="expression_input must be one of offset, mesh"):
        replace(LATENT_PRESETS["tiny"], expression_input="points")


def loss_inputs(model: LatentAutoencoder) -> tuple[dict, dict, torch.Tensor]:
    """(batch, masks, zero Gumbel noise) for the training losses of a golden-config model: the
    golden inputs, each item's partner the batch flipped."""
    inputs = golden_inputs(model.config)
    v = model.config.num_vertices
    batch = {**inputs, **{f"partner_{k}": value.flip(0) for k, value in inputs.items()}}
    masks = {name: torch.linspace(0, 1, v) ** p for name, p in zip(MASKS, (1, 2, 3), strict=True)}
    return batch, masks, torch.zeros(3, 2, 6, model.config.heads, model.config.classes)


def test_upper_face_weight_scales_the_upper_face_terms_of_the_total():
    model = deterministic_model(golden_config())
    batch, masks, gumbel = loss_inputs(model)
    equal = model(batch, masks, gumbel)
    weighted = model(batch, masks, gumbel, upper_face_weight=4.0)
    upper = equal["eyelids"] + equal["upper_face_from_expression"]
    assert upper > 0
    torch.testing.assert_close(weighted["total"], equal["total"] + 3 * upper)
    for name in ("reconstruction", "eyelids", "mouth_from_audio", "upper_face_from_expression"):
        torch.testing.assert_close(weighted[name], equal[name])


def test_code_usage_is_zero_for_even_use_and_one_minus_one_over_c_for_one_class():
    from meshtalk.models.latent import code_usage

    b, t, h, c = 3, 4, 2, 8
    even = torch.full((b, t, h, c), 1.0 / c).log()
    assert abs(float(code_usage(even))) < 1e-6
    one_class = torch.full((b, t, h, c), -1e4)
    one_class[..., 5] = 0.0
    torch.testing.assert_close(code_usage(one_class), torch.tensor(1 - 1 / c))
    # each frame certain, but frames spread evenly over the classes: full use
    frames = 2 * c
    spread = torch.full((frames, h, c), -1e4)
    spread[torch.arange(frames), :, torch.arange(frames) % c] = 0.0
    assert abs(float(code_usage(spread.view(2, c, h, c)))) < 1e-6


def test_code_usage_weight_adds_the_term_to_the_total():
    model = deterministic_model(golden_config())
    batch, masks, gumbel = loss_inputs(model)
    plain = model(batch, masks, gumbel)
    assert "code_usage" not in plain
    weighted = model(batch, masks, gumbel, code_usage_weight=2.0)
    assert 0 < weighted["code_usage"] < 1
    torch.testing.assert_close(weighted["total"], plain["total"] + 2 * weighted["code_usage"])
    weighted["total"].backward()
    assert model.encoder.fusion_model.mlp[0].weight.grad.abs().sum() > 0
