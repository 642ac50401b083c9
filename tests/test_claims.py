"""The pieces of benchmarks/claims.py: the audio-only regression, the expression-only encoder input,
and the blink and upper-face measures. (Its `--quick` run takes over a minute: not run here.)"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest
import torch

from meshtalk.models.config import latent_preset
from meshtalk.models.latent import LatentAutoencoder
from meshtalk.models.regression import AudioRegression

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def claims():
    sys.path.insert(0, str(BENCHMARKS))
    try:
        importlib.import_module("claims")  # the script imports, and with it its measures
        yield importlib.import_module("_claims_measures")
    finally:
        sys.path.remove(str(BENCHMARKS))


def small_config(**overrides):
    return latent_preset("tiny", num_vertices=30, audio_dropout=0.0, **overrides)


def span(b: int, t: int, window: int = 101) -> tuple[torch.Tensor, torch.Tensor]:
    """A mel span of t consecutive frames (3.33 mel frames apart) and where each window starts."""
    starts = (torch.arange(t) * 10 // 3).expand(b, t)
    return torch.randn(b, int(starts.max()) + window, 80), starts.contiguous()


def test_regression_starts_from_the_template_and_learns():
    torch.manual_seed(0)
    model = AudioRegression(small_config())
    template = torch.randn(2, 30, 3)
    mel, starts = span(2, 6)
    torch.nn.init.zeros_(model.head[-1].weight)
    torch.nn.init.zeros_(model.head[-1].bias)
    out = model(template, mel, starts)
    assert out.shape == (2, 6, 30, 3)
    torch.testing.assert_close(out, template.unsqueeze(1).expand_as(out))
    # the offsets are in units of the per-vertex deviation
    model.set_statistics(torch.full((30, 3), 2.0))
    torch.nn.init.constant_(model.head[-1].bias, 0.5)
    torch.testing.assert_close(
        model(template, mel, starts) - template.unsqueeze(1), torch.ones(2, 6, 30, 3)
    )
    batch = {"template": template, "mel": mel, "mel_starts": starts}
    batch["vertices"] = template.unsqueeze(1) + torch.randn(2, 6, 30, 3)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    first = model.loss(batch).item()
    for _ in range(30):
        optimizer.zero_grad()
        model.loss(batch).backward()
        optimizer.step()
    assert model.loss(batch).item() < 0.5 * first


def test_expression_only_input_ignores_the_audio():
    torch.manual_seed(0)
    for fusion_input, depends in (("expression", False), ("both", True)):
        model = LatentAutoencoder(small_config(fusion_input=fusion_input)).eval()
        expression = torch.randn(1, 4, model.config.code_dim)
        one = model.encoder.fusion_model(expression, torch.randn(1, 4, model.config.code_dim))
        two = model.encoder.fusion_model(expression, torch.randn(1, 4, model.config.code_dim))
        assert (not torch.allclose(one, two)) == depends, fusion_input
    with pytest.raises(ValueError, match="fusion_input"):
        small_config(fusion_input="audio")


def test_blinks_are_counted_once_per_closing(claims):
    closure = torch.tensor([0.0, 0.6, 0.7, 0.4, 0.6, 0.1, 0.8, 0.0, 0.49, 0.2])
    # closes at 0.6; 0.4 is not open enough to count the second 0.6; 0.1 reopens; 0.8 closes
    assert claims.count_blinks(closure) == 2
    assert claims.count_blinks(torch.zeros(20)) == 0


def test_eyelid_closure_and_upper_face_motion(claims):
    template = torch.zeros(6, 3)
    template[[0, 1], 1] = 4.0  # two eyes: upper lid vertex 4 mm above the lower one
    eyes = [([0], [2]), ([1], [3])]
    frames = template.expand(3, 6, 3).clone()
    frames[1, [0, 1], 1] = 2.0  # half closed
    frames[2, [0, 1], 1] = 0.0  # closed
    torch.testing.assert_close(
        claims.eyelid_closure(frames, template, eyes), torch.tensor([0.0, 0.5, 1.0])
    )
    # a vertex moving +-1 mm along x every other frame has a standard deviation of 1 mm
    motion = torch.zeros(4, 6, 3)
    motion[:, 5, 0] = torch.tensor([1.0, -1.0, 1.0, -1.0])
    weights = torch.tensor([0.0, 0, 0, 0, 1, 1])
    assert float(claims.upper_face_motion_std(motion, weights)) == pytest.approx(0.5)
