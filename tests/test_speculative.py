"""Speculative sampling of the prior: exact distribution, the plain sampler's argmax codes."""

from __future__ import annotations

import itertools

import pytest
import torch
from scipy.stats import chisquare

from meshtalk.models.prior import ContextModel, PriorModelConfig, prior_preset
from meshtalk.models.sampler import PriorSampler
from meshtalk.models.speculative import SpeculativeSampler, distil_draft

SAMPLES = 100_000


def enumerable(seed: int, scale: float) -> ContextModel:
    """H=2 heads of C=3 classes: 81 outcomes over 2 frames."""
    torch.manual_seed(seed)
    config = PriorModelConfig(
        heads=2, classes=3, audio_dim=4, channels_per_head=4, dilations=(1, 2)
    )
    model = ContextModel(config).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.mul_(scale)
    return model


def exact_probabilities(model: ContextModel, audio: torch.Tensor) -> torch.Tensor:
    """(81,) probabilities of every code sequence of 2 frames, in itertools.product order."""
    outcomes = torch.tensor(list(itertools.product(range(3), repeat=4))).view(-1, 2, 2)
    with torch.no_grad():
        logp = model.log_likelihood(outcomes, audio.expand(len(outcomes), -1, -1))
    return logp.sum(dim=(1, 2)).exp().double()


def frequencies(codes: torch.Tensor) -> torch.Tensor:
    flat = codes.reshape(len(codes), -1)
    index = ((flat[:, 0] * 3 + flat[:, 1]) * 3 + flat[:, 2]) * 3 + flat[:, 3]
    return torch.bincount(index, minlength=81).double()


def p_value(sampler: SpeculativeSampler, prior: ContextModel, temperature: float = 1.0) -> float:
    torch.manual_seed(5)
    audio = torch.randn(1, 2, 4)
    codes = sampler.push(audio.expand(SAMPLES, -1, -1))
    with torch.no_grad():
        scaled = ContextModel(prior.config).eval()
        scaled.load_state_dict(prior.state_dict())
        for layer in scaled.layers():  # logits / temperature: the last layer's weights
            if layer is scaled.logits:
                layer.masked_linear.weight.div_(temperature)
                layer.masked_linear.bias.div_(temperature)
    probabilities = exact_probabilities(scaled, audio)
    expected = probabilities / probabilities.sum() * SAMPLES
    return chisquare(frequencies(codes), expected).pvalue


@pytest.fixture(scope="module")
def pair() -> tuple[ContextModel, ContextModel]:
    return enumerable(0, 3.0), enumerable(1, 3.0)


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_speculative_samples_match_the_exact_distribution(pair, temperature):
    prior, draft = pair
    sampler = SpeculativeSampler(
        prior, draft, block=2, batch=SAMPLES, seed=3, temperature=temperature
    )
    assert p_value(sampler, prior, temperature) > 1e-3
    # The draft differs from the prior: rejections and residual draws happened.
    assert 0.2 < sampler.acceptance_rate < 0.95


class AcceptsTooMuch(SpeculativeSampler):
    """A wrong rule: at a rejection, draw from p instead of the residual max(0, p - q)."""

    def _residual(self, p, q):
        return super()._residual(p, torch.zeros_like(q))


def test_a_wrong_acceptance_rule_fails_the_test(pair):
    prior, draft = pair
    sampler = AcceptsTooMuch(prior, draft, block=2, batch=SAMPLES, seed=3)
    assert p_value(sampler, prior) < 1e-6


def test_the_draft_itself_is_not_the_prior(pair):
    """The chi-square test has power: the draft's own distribution is rejected."""
    prior, draft = pair
    sampler = SpeculativeSampler(draft, draft, block=2, batch=SAMPLES, seed=3)
    assert p_value(sampler, prior) < 1e-6


def release_case(weights: str) -> tuple[torch.Tensor, torch.Tensor, SpeculativeSampler]:
    torch.manual_seed(0)
    prior = ContextModel(prior_preset("release")).eval()
    torch.manual_seed(1)
    audio = torch.randn(2, 40, 128)
    plain = PriorSampler(prior, argmax=True, batch=2, weights=weights).sample(audio)
    # The prior as its own draft: most proposals agree, so blocks of several frames pass.
    sampler = SpeculativeSampler(prior, prior, argmax=True, batch=2, block=6, weights=weights)
    streamed = torch.cat([sampler.push(audio[:, i : i + 7]) for i in range(0, 40, 7)], dim=1)
    return plain, streamed, sampler


def test_argmax_gives_the_plain_samplers_codes_at_release_sizes():
    plain, streamed, sampler = release_case("float")
    assert torch.equal(streamed, plain)
    assert sampler.stats["blocks"] < 40  # blocks of several frames were accepted


def test_int8_argmax_agrees_with_the_plain_int8_sampler_up_to_rounding():
    """bfloat16 sums in another order can swap near-tied classes: nearly all codes agree."""
    plain, streamed, _ = release_case("int8")
    assert (plain == streamed).float().mean() > 0.97


def test_a_distilled_draft_is_accepted_more_than_a_random_one():
    prior = enumerable(0, 3.0)
    torch.manual_seed(2)
    audio = torch.randn(8, 30, 4)
    draft = distil_draft(prior, audio, channels_per_head=4, steps=150)
    rates = []
    for candidate in (enumerable(1, 3.0), draft):
        sampler = SpeculativeSampler(prior, candidate, block=4, batch=8, seed=0)
        sampler.sample(audio)
        rates.append(sampler.acceptance_rate)
    assert rates[1] > rates[0] + 0.1


def test_bad_drafts_and_settings_are_refused(pair):
    prior, _ = pair
    other = ContextModel(PriorModelConfig(heads=2, classes=4, audio_dim=4, channels_per_head=4))
    with pytest.raises(ValueError, match="classes"):
        SpeculativeSampler(prior, other)
    with pytest.raises(ValueError, match="block"):
        SpeculativeSampler(prior, prior, block=0)
    with pytest.raises(ValueError, match="temperature"):
        SpeculativeSampler(prior, prior, temperature=0)
