"""The sampler's weights: each layer's per-step products as the sampler reads them.

`step_weights` gathers, for every layer of a `ContextModel`, the matrices one step multiplies by
(float, or int8 with one bfloat16 scale per output row); `schedule` groups the heads into rounds
whose codes a step draws together; `quantised` is the float model with the int8 weights, whose
distribution `weights="int8"` samples. `PriorSampler` (models/sampler.py) runs them.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from meshtalk.models.prior import ContextModel, MaskedLayer


def mask_offset(layer: MaskedLayer, heads: int) -> int:
    """o such that output block j of the layer reads input blocks < j + o (0: strict, 1: with j).

    Raises ValueError for a mask of any other form.
    """
    mask = layer.mask[..., 0] != 0
    out_per_head, in_per_head = mask.shape[0] // heads, mask.shape[1] // heads
    for offset in (0, 1):
        expected = torch.zeros_like(mask)
        for j in range(heads):
            expected[j * out_per_head : (j + 1) * out_per_head, : (j + offset) * in_per_head] = 1
        if torch.equal(mask, expected):
            return offset
    raise ValueError("the prior's mask is not block lower-triangular over heads")


WEIGHTS = ("float", "int8")
INT8_INNER = 16
"""torch's int8 x bfloat16 CPU kernel needs an inner dimension that is a multiple of this."""


def int8_rows(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 per output row: (out, in) -> q (out, in) int8, scale (out,) bfloat16.

    weight ~ q * scale[:, None]. Quantising q * scale again gives the same q and scale.
    """
    weight = weight.detach().float()
    largest = weight.abs().amax(dim=1)
    scale = torch.where(largest > 0, largest / 127, torch.ones_like(largest)).to(torch.bfloat16)
    q = (weight / scale.float()[:, None]).round_().clamp_(-127, 127).to(torch.int8)
    return q, scale


def step_weights(
    model: ContextModel, *, int8: bool = False, masked: list[torch.Tensor] | None = None
) -> tuple[list[list[torch.Tensor]], list[torch.Tensor | None]]:
    """The (out, in) weights that one sampling step multiplies, per layer after the embedding.

    Middle layers: [far tap (step t-1-d), near tap (step t-1), masked weight (step t)]; logits:
    [masked weight]. With `int8`, each layer's weights are int8 with one bfloat16 scale per
    output row shared by all of them (the second list); otherwise the scales are None. `masked`:
    the masked (out, in) weights of the layers after the embedding, if already at hand.
    """
    if masked is None:
        masked = [layer.masked_weight()[..., 0].detach() for layer in model.layers()[1:]]
    weights = []
    for layer, weight in zip(model.context_layers, masked[:-1], strict=True):
        historic = layer.historic.weight.detach()
        weights.append([historic[..., 0], historic[..., 1], weight])
    weights.append([masked[-1]])
    if not int8:
        return weights, [None] * len(weights)
    rounded, scales = [], []
    for parts in weights:
        q, scale = int8_rows(torch.cat(parts, dim=1))
        rounded.append(list(q.split([p.shape[1] for p in parts], dim=1)))
        scales.append(scale)
    return rounded, scales


def quantised(model: ContextModel) -> ContextModel:
    """A copy of the prior whose per-step weights are what `weights="int8"` samples with.

    Every layer after the embedding has its masked weight and both taps of its causal
    convolution rounded to int8 with one scale per output row (shared by the three); the
    embedding (a table lookup when sampling) and the audio projections (one batched product per
    chunk) stay as they are.
    """
    model = copy.deepcopy(model)
    rounded, scales = step_weights(model, int8=True)
    with torch.no_grad():
        for index, layer in enumerate(model.layers()[1:]):
            values = [q.float() * scales[index].float()[:, None] for q in rounded[index]]
            *taps, masked = values
            layer.masked_linear.weight[..., 0] = masked.to(layer.masked_linear.weight.dtype)
            for tap, value in enumerate(taps):
                layer.historic.weight[..., tap] = value.to(layer.historic.weight.dtype)
    return model


@dataclass(frozen=True)
class Round:
    """Heads sampled together, and per layer the blocks computed before sampling them.

    The last round of a step samples no head: it completes the blocks that only the next steps
    read (through the causal convolutions).
    """

    heads: tuple[int, int]
    blocks: tuple[tuple[int, int], ...]


def schedule(model: ContextModel, offsets: list[int] | None = None) -> list[Round]:
    """Rounds of one step: which head blocks each layer computes before which heads are drawn."""
    heads = model.config.heads
    layers = model.layers()
    # needs[l][j]: highest current-step head that block j of layer l depends on (-1: none).
    needs, previous = [], None
    for index, layer in enumerate(layers):
        offset = mask_offset(layer, heads) if offsets is None else offsets[index]
        row = []
        for j in range(heads):
            last_input = j + offset - 1
            if last_input < 0:
                row.append(-1)
            elif previous is None:
                row.append(last_input)
            else:
                row.append(max(previous[: last_input + 1]))
        needs.append(row)
        previous = row
    if any(needs[-1][h] >= h for h in range(heads)):
        raise ValueError("the prior's masks let a head depend on itself")
    rounds, sampled, done = [], 0, [0] * len(layers)
    while sampled < heads:
        ready = [sum(1 for need in row if need < sampled) for row in needs]
        blocks = tuple((done[i], ready[i]) for i in range(len(layers)))
        rounds.append(Round((sampled, ready[-1]), blocks))
        done, sampled = ready, ready[-1]
    # The next steps read every block of the layers below the logits: finish them.
    rest = tuple((done[i], heads) for i in range(len(layers) - 1)) + ((heads, heads),)
    if any(first < last for first, last in rest):
        rounds.append(Round((heads, heads), rest))
    return rounds


def _float_product(base, source, weight, target) -> None:
    torch.addmm(base, source, weight, out=target)


def _int8_product(base, source, weight, target) -> None:
    if weight is None:  # no input column is read yet
        target.copy_(base)
    else:
        torch.add(base, torch._weight_int8pack_mm(source, *weight), out=target)


def _int8_matmul(x: torch.Tensor, weight: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """(..., in) bfloat16 times int8 rows (out, in) with their scales -> (..., out) bfloat16."""
    flat = torch._weight_int8pack_mm(x.reshape(-1, x.shape[-1]), *weight)
    return flat.view(*x.shape[:-1], flat.shape[-1])


def _padded(columns: int) -> int:
    return -(-columns // INT8_INNER) * INT8_INNER


PHASES = 16
"""Steps between two moves of the history buffers (the buffers' views are prepared per phase)."""
CHUNK = 64
"""Frames whose audio contributions and noise the step's static buffers hold at once."""


def sample_in_chunks(push, audio_code: torch.Tensor, chunk: int) -> torch.Tensor:
    """(B, T, audio_dim) audio codes -> (B, T, H) codes through `push`, `chunk` frames at a time.

    Raises ValueError for T = 0 (audio shorter than one frame) or chunk < 1.
    """
    if audio_code.dim() != 3:
        raise ValueError(f"expected (B, T, audio_dim) audio codes, got {tuple(audio_code.shape)}")
    if audio_code.shape[1] == 0:
        raise ValueError(
            f"no frames to sample: audio codes of shape {tuple(audio_code.shape)} "
            "(audio shorter than one frame has none)"
        )
    if chunk < 1:
        raise ValueError(f"chunk must be at least 1 frame, got {chunk}")
    parts = [
        push(audio_code[:, start : start + chunk]) for start in range(0, audio_code.shape[1], chunk)
    ]
    return torch.cat(parts, dim=1)


def _layer_inputs(
    model: ContextModel, codes: torch.Tensor, audio_code: torch.Tensor
) -> list[torch.Tensor]:
    """(B, T, H) codes and (B, T, audio_dim) audio codes -> the input (B, T, H * channels) of each
    middle layer of `model` at every step, as `ContextModel.forward` computes them."""
    config = model.config
    b, t, _ = codes.shape
    dtype = next(model.parameters()).dtype
    one_hot = F.one_hot(codes, config.classes).to(dtype).reshape(b, t, -1).transpose(1, 2)
    audio = audio_code.transpose(1, 2) if config.audio_conditioning else None
    x = model.embedding(one_hot, None)
    if config.input_activation:
        x = F.leaky_relu(x, config.leaky_slope)
    inputs = []
    for layer in model.context_layers:
        inputs.append(x.transpose(1, 2))
        x = F.leaky_relu(layer(x, audio), config.leaky_slope)
    return inputs


def pad_columns(weight: torch.Tensor, columns: int) -> torch.Tensor:
    """`weight` with zero columns appended up to `columns`."""
    return F.pad(weight, (0, columns - weight.shape[1]))


def pack_rows(parts: list[torch.Tensor], scale, rows: slice, columns: int, dtype, stored_width):
    """Rows of [earlier steps' taps | masked weight's leading columns], ready for a product.

    float (`stored_width` None): transposed (columns, rows) in `dtype`; int8: int8 rows with
    their scales, each tap padded to `stored_width` and the weight to the kernel's multiple (as
    the stored inputs are); None when nothing is read.
    """
    *taps, weight = parts
    if stored_width is None:
        whole = torch.cat([p[rows] for p in taps] + [weight[rows, :columns]], dim=1)
        return whole.t().contiguous().to(dtype)
    pieces = [pad_columns(p[rows], stored_width) for p in taps]
    if columns:
        pieces.append(pad_columns(weight[rows, :columns], _padded(columns)))
    if not pieces:
        return None
    return torch.cat(pieces, dim=1).contiguous(), scale[rows].contiguous()


def read_columns(weight, int8: bool) -> int:
    """Input columns a packed weight reads."""
    if weight is None:
        return 0
    return weight[0].shape[1] if int8 else weight.shape[0]


def weight_bytes(weight) -> int:
    """Bytes of a packed weight (a tensor, an (int8 rows, scales) pair, or None)."""
    parts = () if weight is None else weight if isinstance(weight, tuple) else (weight,)
    return sum(part.numel() * part.element_size() for part in parts)
