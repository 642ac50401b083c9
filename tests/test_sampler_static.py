"""The sampler's per-frame step is capturable (static buffers, no sync) and keeps its results."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from meshtalk.models.prior import prior_preset
from meshtalk.models.sampler import PriorSampler
from meshtalk.models.sampler_weights import CHUNK
from tests.test_prior import logits_of, random_prior

SYNCS = {torch.ops.aten._local_scalar_dense.default, torch.ops.aten.item.default}


def storages(value, found: set[int]) -> set[int]:
    """Data pointers of the storages of every tensor held by `value` (attributes, containers)."""
    if isinstance(value, torch.Tensor):
        found.add(value.untyped_storage().data_ptr())
    elif isinstance(value, dict):
        for item in value.values():
            storages(item, found)
    elif isinstance(value, list | tuple):
        for item in value:
            storages(item, found)
    return found


class Allocations(TorchDispatchMode):
    """Records every operation that returns a tensor in new memory, and every host sync."""

    def __init__(self, known: set[int]) -> None:
        super().__init__()
        self.known, self.new, self.syncs, self.ops = known, [], [], 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops += 1
        if func in SYNCS:
            self.syncs.append(str(func))
        out = func(*args, **(kwargs or {}))
        for tensor in out if isinstance(out, list | tuple) else [out]:
            if isinstance(tensor, torch.Tensor):
                pointer = tensor.untyped_storage().data_ptr()
                if pointer not in self.known:  # new memory (its views are not counted again)
                    self.new.append(str(func))
                    self.known.add(pointer)
        return out


@pytest.mark.parametrize("weights", ["float", "int8"])
@pytest.mark.parametrize("argmax", [False, True])
@pytest.mark.parametrize("batch", [1, 3])
def test_a_frame_step_allocates_nothing_and_never_waits_for_the_device(weights, argmax, batch):
    config = prior_preset("tiny", channels_per_head=16)  # int8 needs a multiple of 16 columns
    model = random_prior(config, seed=1)
    sampler = PriorSampler(model, batch=batch, argmax=argmax, seed=2, weights=weights)
    sampler.push(torch.randn(batch, 40, config.audio_dim))  # fills the chunk's buffers
    known = storages(vars(sampler), set())
    known |= {p.untyped_storage().data_ptr() for p in model.parameters()}
    sampler.frame_index.zero_()
    with Allocations(known) as mode, torch.inference_mode():
        for step in range(sampler.phases + 2):  # every phase, far taps and the history move
            sampler._frame(step)
    assert mode.ops > 20
    assert mode.syncs == []
    if weights == "float":
        assert mode.new == []
    else:  # the int8 kernel (CPU only, never captured) returns new tensors, of copied rows
        int8_kernel = {"aten._weight_int8pack_mm.default", "aten.reshape.default"}
        assert "aten._weight_int8pack_mm.default" in mode.new
        assert set(mode.new) <= int8_kernel, mode.new


@pytest.mark.parametrize("dilations", [(1, 2, 4, 8), (1, 3)])
@pytest.mark.parametrize("temperature", [1.0, 0.6])
def test_seeded_codes_are_the_gumbel_max_of_the_full_forward_pass(dilations, temperature):
    config = prior_preset("tiny", heads=6, dilations=dilations)
    model = random_prior(config, seed=4)
    batch, frames, pushed = 2, 2 * CHUNK + 11, 50
    audio = torch.randn(batch, frames, config.audio_dim)
    sampler = PriorSampler(model, batch=batch, seed=7, temperature=temperature, record_logits=True)
    codes = sampler.sample(audio, chunk=pushed)  # chunks of 50 frames cross the buffers' 64
    full = logits_of(model, codes, audio)
    torch.testing.assert_close(torch.stack(sampler.recorded, dim=1), full, rtol=1e-4, atol=1e-4)
    # The same noise, drawn per push as the sampler draws it.
    generator = torch.Generator().manual_seed(7)
    noise = [
        torch.rand(
            batch, min(pushed, frames - s), config.heads * config.classes, generator=generator
        )
        for s in range(0, frames, pushed)
    ]
    gumbel = -torch.log(-torch.log(torch.cat(noise, dim=1))) * temperature
    expected = (full + gumbel.view_as(full)).argmax(dim=-1)
    assert torch.equal(codes, expected)
    assert len(codes.unique()) > config.classes // 2


def test_pushes_of_any_length_equal_one_pass_across_chunk_buffers():
    config = prior_preset("tiny")
    model = random_prior(config, seed=5)
    audio = torch.randn(1, 3 * CHUNK + 5, config.audio_dim)
    once = PriorSampler(model, seed=3).sample(audio)
    sampler = PriorSampler(model, seed=3)
    cuts = [0, 1, CHUNK, CHUNK + 1, 2 * CHUNK + 7, audio.shape[1]]
    parts = [sampler.push(audio[:, a:b]) for a, b in zip(cuts, cuts[1:], strict=False)]
    assert torch.equal(torch.cat(parts, dim=1), once)


def test_the_graph_path_is_for_cuda():
    model = random_prior(prior_preset("tiny"))
    assert PriorSampler(model).graphs is None  # the CPU default: eager steps
    with pytest.raises(ValueError, match="graph=True is for CUDA"):
        PriorSampler(model, graph=True)


@pytest.mark.gpu
@pytest.mark.parametrize("argmax", [False, True])
def test_cuda_graph_replay_equals_eager_steps_and_the_full_forward_pass(argmax):
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    config = replace(prior_preset("release"), input_activation=True)
    model = random_prior(config, seed=2).cuda()
    audio = torch.randn(2, 150, config.audio_dim, device="cuda")
    graphed = PriorSampler(model, batch=2, seed=3, argmax=argmax, graph=True)
    assert graphed.graphs is not None
    eager = PriorSampler(model, batch=2, seed=3, argmax=argmax, graph=False, record_logits=True)
    codes = graphed.sample(audio, chunk=100)
    assert torch.equal(codes, eager.sample(audio, chunk=100))
    full = logits_of(model, codes, audio)
    torch.testing.assert_close(torch.stack(eager.recorded, 1), full, rtol=1e-4, atol=1e-4)
