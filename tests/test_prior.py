"""The autoregressive prior and its linear-time sampler."""

from __future__ import annotations

import math
import re
from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from meshtalk.models.prior import ContextModel, PriorModelConfig, prior_preset
from meshtalk.models.sampler import PriorSampler
from meshtalk.models.sampler_weights import int8_rows, quantised, schedule
from meshtalk.pipelines.train.validation import prior_figures as evaluate


def random_prior(config: PriorModelConfig, seed: int = 0, scale: float = 3.0) -> ContextModel:
    """Random weights, scaled up so that logits vary a lot between inputs."""
    torch.manual_seed(seed)
    model = ContextModel(config).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.mul_(scale)
    return model


def logits_of(model: ContextModel, codes: torch.Tensor, audio: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(F.one_hot(codes, model.config.classes).float(), audio)


def test_state_names_and_shapes_are_those_of_the_release():
    state = ContextModel(prior_preset("release")).state_dict()
    expected = {
        "embedding.mask": (1024, 2048, 1),
        "embedding.masked_linear.weight": (1024, 2048, 1),
        "embedding.masked_linear.bias": (1024,),
        "embedding.unmasked_linear.weight": (1024, 128, 1),
        "embedding.unmasked_linear.bias": (1024,),
        "logits.mask": (2048, 1024, 1),
        "logits.masked_linear.weight": (2048, 1024, 1),
        "logits.masked_linear.bias": (2048,),
        "logits.unmasked_linear.weight": (2048, 128, 1),
        "logits.unmasked_linear.bias": (2048,),
    }
    for i in range(4):
        layer = f"context_layers.{i}"
        expected |= {
            f"{layer}.mask": (1024, 1024, 1),
            f"{layer}.masked_linear.weight": (1024, 1024, 1),
            f"{layer}.masked_linear.bias": (1024,),
            f"{layer}.unmasked_linear.weight": (1024, 128, 1),
            f"{layer}.unmasked_linear.bias": (1024,),
            f"{layer}.historic.weight": (1024, 1024, 2),
            f"{layer}.historic.bias": (1024,),
        }
    assert {k: tuple(v.shape) for k, v in state.items()} == expected
    # Output block h reads input blocks < h only.
    mask = state["context_layers.0.mask"][..., 0]
    assert mask[:64].sum() == 0 and mask[64:128, :64].all() and mask[64:128, 64:].sum() == 0
    assert mask[-64:, : 15 * 64].all() and mask[-64:, 15 * 64 :].sum() == 0


def test_the_input_layer_has_an_activation_only_when_configured():
    """The release applies none after its embedding (the new default); priors saved before the
    field existed had one and keep it."""
    config = prior_preset("tiny")
    assert config.input_activation is False
    model = random_prior(config, seed=4)
    seen = []
    model.context_layers[0].register_forward_pre_hook(lambda m, args: seen.append(args[0]))
    codes, audio = torch.randint(0, 16, (1, 8, 4)), torch.randn(1, 8, 32)
    logits = logits_of(model, codes, audio)
    one_hot = F.one_hot(codes, 16).float().reshape(1, 8, 64).transpose(1, 2)
    embedded = model.embedding(one_hot, None)
    assert (embedded < 0).any()
    torch.testing.assert_close(seen[0], embedded)
    activated = ContextModel(replace(config, input_activation=True)).eval()
    activated.load_state_dict(model.state_dict())
    seen.clear()
    activated.context_layers[0].register_forward_pre_hook(lambda m, args: seen.append(args[0]))
    other = logits_of(activated, codes, audio)
    torch.testing.assert_close(seen[0], F.leaky_relu(embedded, 0.2))
    assert (other - logits).abs().max() > 1e-2
    values = config.to_dict()
    del values["input_activation"]
    assert PriorModelConfig.from_dict(values).input_activation is True
    assert PriorModelConfig.from_dict(config.to_dict()).input_activation is False
    with pytest.raises(ValueError, match="input_activation must be true or false"):
        replace(config, input_activation="yes")


def test_forward_shapes_and_receptive_field():
    config = prior_preset("tiny")
    assert config.receptive_field == 20
    model = random_prior(config)
    codes = torch.randint(0, 16, (2, 30, 4))
    audio = torch.randn(2, 30, 32)
    logits = logits_of(model, codes, audio)
    assert logits.shape == (2, 30, 4, 16)
    # Step 25 depends on steps 6..25 and on nothing earlier.
    changed = codes.clone()
    changed[:, 5] = (changed[:, 5] + 1) % 16
    assert torch.equal(logits_of(model, changed, audio)[:, 25], logits[:, 25])
    changed = codes.clone()
    changed[:, 6] = (changed[:, 6] + 1) % 16
    assert not torch.allclose(logits_of(model, changed, audio)[:, 25], logits[:, 25])


@pytest.mark.parametrize("config", [prior_preset("tiny"), prior_preset("tiny", heads=8)])
def test_changing_a_code_never_changes_the_logits_it_may_not_see(config):
    """c[t, h] must not affect logits at (t, h') for h' <= h, nor at any earlier step."""
    model = random_prior(config, seed=1)
    t_len, heads = 12, config.heads
    codes = torch.randint(0, config.classes, (1, t_len, heads))
    audio = torch.randn(1, t_len, config.audio_dim)
    base = logits_of(model, codes, audio)
    for t in (0, 5, 11):
        for h in range(heads):
            changed = codes.clone()
            changed[0, t, h] = (changed[0, t, h] + 1) % config.classes
            other = logits_of(model, changed, audio)
            assert torch.equal(other[:, :t], base[:, :t]), (t, h)
            assert torch.equal(other[:, t, : h + 1], base[:, t, : h + 1]), (t, h)
    # ... while the code does reach later steps.
    changed = codes.clone()
    changed[0, 5, 0] = (changed[0, 5, 0] + 1) % config.classes
    assert not torch.allclose(logits_of(model, changed, audio)[:, 6], base[:, 6])


def test_audio_reaches_the_logits_only_when_conditioned():
    config = prior_preset("tiny")
    codes = torch.randint(0, 16, (1, 10, 4))
    audio = torch.randn(1, 10, 32)
    for conditioned in (True, False):
        model = random_prior(
            PriorModelConfig(**{**config.to_dict(), "audio_conditioning": conditioned})
        )
        moved = logits_of(model, codes, audio + 1.0) - logits_of(model, codes, audio)
        assert (moved.abs().max() > 1e-3) == conditioned


@pytest.mark.parametrize(
    "config",
    [
        prior_preset("tiny"),
        prior_preset("tiny", heads=9, dilations=(1, 3)),
        prior_preset("release", channels_per_head=8),
    ],
)
@pytest.mark.parametrize("argmax", [False, True])
@pytest.mark.parametrize("input_activation", [False, True])
def test_sampler_logits_equal_the_full_forward_pass_on_the_sampled_codes(
    config, argmax, input_activation
):
    model = random_prior(replace(config, input_activation=input_activation), seed=2)
    audio = torch.randn(2, 45, config.audio_dim)
    sampler = PriorSampler(model, batch=2, seed=3, argmax=argmax, record_logits=True)
    codes = sampler.sample(audio, chunk=16)
    used = torch.stack(sampler.recorded, dim=1)
    full = logits_of(model, codes, audio)
    torch.testing.assert_close(used, full, rtol=1e-4, atol=1e-4)
    if argmax:
        assert torch.equal(codes, full.argmax(dim=-1))
    # The codes are not all alike: the test sees real variation.
    assert len(codes.unique()) > config.classes // 4


@pytest.mark.parametrize(
    "config",
    [
        prior_preset("tiny"),
        prior_preset("tiny", heads=5, channels_per_head=3, dilations=(1, 3)),
        prior_preset("release", channels_per_head=8),
    ],
)
def test_int8_sampler_follows_the_quantised_model(config):
    model = random_prior(config, seed=2)
    low = quantised(model)
    audio = torch.randn(2, 40, config.audio_dim)
    sampler = PriorSampler(model, batch=2, seed=3, record_logits=True, weights="int8")
    codes = sampler.sample(audio, chunk=16)
    used = torch.stack(sampler.recorded, dim=1).float()
    full, exact = logits_of(low, codes, audio), logits_of(model, codes, audio)
    # The quantised model is what it samples, up to bfloat16 rounding of the activations (about
    # 2^-8 relative), and it is close to the float model without being it.
    scale = full.abs().max()
    assert (used - full).abs().max() < 0.02 * scale
    assert 0 < (full - exact).abs().max() < 0.03 * scale
    assert len(codes.unique()) > config.classes // 4
    # Same seed, same codes; quantising again changes nothing.
    again = PriorSampler(model, batch=2, seed=3, weights="int8").sample(audio, chunk=16)
    assert torch.equal(codes, again)
    for name, value in quantised(low).state_dict().items():
        assert torch.equal(value, low.state_dict()[name]), name


def test_int8_rows_round_each_row_to_127_steps():
    weight = torch.tensor([[0.5, -1.0, 0.25], [0.0, 0.0, 0.0], [3.0, 1.0, -2.0]])
    q, scale = int8_rows(weight)
    assert q.dtype == torch.int8 and scale.dtype == torch.bfloat16
    assert q.abs().amax(dim=1).tolist() == [127, 0, 127]
    assert torch.allclose(q.float() * scale.float()[:, None], weight, atol=3.0 / 254)
    with pytest.raises(ValueError, match="weights must be one of float, int8"):
        PriorSampler(ContextModel(prior_preset("tiny")), weights="int4")


def test_release_masks_sample_several_heads_per_round():
    rounds = schedule(ContextModel(prior_preset("release", channels_per_head=2)))
    # 6 masked layers: head h depends on the current step's heads <= h - 6 only.
    assert [r.heads for r in rounds] == [(0, 6), (6, 12), (12, 16), (16, 16)]


def test_weight_bytes_per_step_count_each_weight_a_step_reads():
    model = ContextModel(prior_preset("release", channels_per_head=4))
    float_bytes = PriorSampler(model).weight_bytes_per_step
    # A step reads both taps of every middle layer (the far tap of dilation d once per d steps)
    # and the masked weights of the middle and logits layers: at least their nonzero entries,
    # at most all of them (a round's rows read the columns of its last head).
    taps = sum(
        layer.historic.weight[..., 0].numel()
        * (1 + (1 if layer.dilation == 1 else 1 / layer.dilation))
        for layer in model.context_layers
    )
    masked = model.layers()[1:]
    nonzero = sum(int(layer.mask.count_nonzero()) for layer in masked)
    dense = sum(layer.mask.numel() for layer in masked)
    assert 4 * (taps + nonzero) <= float_bytes <= 4 * (taps + dense)
    # int8 weights with a bfloat16 scale per row (and columns padded to the kernel's multiple).
    ratio = PriorSampler(model, weights="int8").weight_bytes_per_step / float_bytes
    assert 0.25 < ratio < 0.3


def test_seeded_sampling_is_reproducible_and_streaming_equals_one_pass():
    config = prior_preset("tiny")
    model = random_prior(config, seed=4)
    audio = torch.randn(1, 60, config.audio_dim)
    once = PriorSampler(model, seed=7).sample(audio)
    again = PriorSampler(model, seed=7).sample(audio, chunk=60)
    assert torch.equal(once, again)
    assert not torch.equal(once, PriorSampler(model, seed=8).sample(audio))
    # A sampler prepared once draws the same codes for a new sequence after reset(seed).
    reused = PriorSampler(model, seed=1, record_logits=True)
    reused.sample(audio[:, :23])
    reused.reset(seed=7)
    assert torch.equal(reused.sample(audio), once) and len(reused.recorded) == 60
    # Chunk by chunk (streaming): the same codes for the same noise, whatever the chunk sizes,
    # when the noise is drawn per frame in the same order.
    stream = PriorSampler(model, argmax=True)
    parts = [stream.push(audio[:, a:b]) for a, b in ((0, 1), (1, 17), (17, 18), (18, 60))]
    assert [p.shape[1] for p in parts] == [1, 16, 1, 42]
    assert torch.equal(torch.cat(parts, dim=1), PriorSampler(model, argmax=True).sample(audio))
    # Memory does not grow with the length: the state is the receptive field only.
    assert [buffer.shape[1] for buffer in stream.history] == [9 + 16] * 4


def test_temperature_sharpens_the_samples():
    config = prior_preset("tiny")
    model = random_prior(config, seed=5, scale=1.0)
    audio = torch.randn(1, 200, config.audio_dim)
    greedy = PriorSampler(model, argmax=True).sample(audio)
    cold = PriorSampler(model, temperature=0.05, seed=1).sample(audio)
    hot = PriorSampler(model, temperature=1.0, seed=1).sample(audio)
    assert (cold == greedy).float().mean() > (hot == greedy).float().mean()
    with pytest.raises(ValueError, match="temperature must be positive"):
        PriorSampler(model, temperature=0.0)


def test_a_uniform_prior_has_perplexity_c():
    config = prior_preset("tiny")
    model = ContextModel(config)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.zero_()
    sequences = [(torch.randint(0, 16, (40, 4)), torch.randn(40, 32)) for _ in range(3)]
    figures = evaluate(model, sequences, torch.device("cpu"))
    assert figures["perplexity"] == pytest.approx(config.classes, rel=1e-5)
    assert figures["cross_entropy"] == pytest.approx(math.log(config.classes), rel=1e-5)


def test_a_mask_of_another_form_is_refused():
    model = ContextModel(prior_preset("tiny"))
    with torch.no_grad():
        model.context_layers[1].mask.fill_(1.0)
    with pytest.raises(ValueError, match="not block lower-triangular"):
        PriorSampler(model)


def test_utterance_audio_codes_are_the_per_window_codes_of_every_frame():
    from meshtalk.models.config import latent_preset
    from meshtalk.models.encoders import LatentEncoder
    from meshtalk.pipelines.frontend import AudioFrontEnd

    torch.manual_seed(0)
    encoder = LatentEncoder(latent_preset("tiny", num_vertices=8)).audio_encoder.eval()
    samples = torch.randn(16000 + 8000).numpy()  # 1.5 s
    front_end = AudioFrontEnd()
    codes = front_end.audio_codes(encoder, samples)
    assert codes.shape == (1, 45, 32)
    mel = torch.from_numpy(front_end.utterance_mel(samples, 1.5))
    index = front_end.mel_index(torch.arange(45).numpy() / 30) - 50
    windows = torch.stack([mel[i : i + 101].T for i in index])[None]  # (1, T, 80, 101)
    with torch.no_grad():
        torch.testing.assert_close(codes, encoder(windows), rtol=1e-4, atol=1e-5)


def test_the_mel_of_long_audio_is_computed_in_chunks_with_the_same_values():
    from meshtalk.pipelines.frontend import AudioFrontEnd

    samples = torch.randn(16000 * 3 + 17).numpy()
    front_end = AudioFrontEnd()
    whole = front_end.utterance_mel(samples, 3.2, chunk_frames=100_000)
    assert whole.shape == (1 + (int(3.2 * 16000) + 16000) // 160, 80)
    for chunk in (7, 64):
        chunked = front_end.utterance_mel(samples, 3.2, chunk_frames=chunk)
        assert abs(chunked - whole).max() < 1e-4  # FFT batches may round differently


@pytest.mark.parametrize(
    ("samples", "message"),
    [
        (np.zeros(16000, np.float32), "audio is silent"),
        (np.full(100, 0.1, np.float32), "audio lasts 6.2 ms, shorter than one frame (33.3 ms"),
        (np.zeros(0, np.float32), "audio holds no samples"),
        (np.array([0.1, np.nan] * 8000, np.float32), "NaN or infinite"),
        (np.ones((16000, 2), np.float32), "audio must be mono"),
    ],
)
def test_audio_the_models_cannot_animate_is_a_meshtalk_error(samples, message):
    from meshtalk.models.config import latent_preset
    from meshtalk.models.encoders import LatentEncoder
    from meshtalk.pipelines.errors import MeshtalkError
    from meshtalk.pipelines.frontend import AudioFrontEnd

    encoder = LatentEncoder(latent_preset("tiny", num_vertices=8)).audio_encoder.eval()
    with pytest.raises(MeshtalkError, match=re.escape(message)):
        AudioFrontEnd().audio_codes(encoder, samples)


def test_one_frame_of_audio_is_enough_and_none_is_refused_by_the_sampler():
    from meshtalk.models.config import latent_preset
    from meshtalk.models.encoders import LatentEncoder
    from meshtalk.pipelines.frontend import AudioFrontEnd

    encoder = LatentEncoder(latent_preset("tiny", num_vertices=8)).audio_encoder.eval()
    model = random_prior(prior_preset("tiny"))
    codes = AudioFrontEnd().audio_codes(encoder, np.full(534, 0.1, np.float32))
    assert codes.shape[1] == 1 and PriorSampler(model).sample(codes).shape[1] == 1
    with pytest.raises(ValueError, match="no frames to sample"):
        PriorSampler(model).sample(codes[:, :0])
