"""Sampling the prior in time and memory linear in the length, and streaming.

`PriorSampler` evaluates exactly the function of `ContextModel.forward`, one step at a time:

- only the receptive field is kept: each middle layer keeps its last 1 + dilation inputs in a ring
  buffer, so memory does not grow with the length;
- the audio contribution of all frames of a chunk is one batched matrix product;
- within a step, a layer's head block is computed once, as soon as the heads it depends on are
  known. With the masks of SPEC section 7 (head h reads heads < h in every layer), the logits of
  head h depend on the current step's codes of heads <= h - (number of layers) only, so several
  heads are sampled together in one round (H=16: 3 rounds per step instead of 16);
- codes are drawn on the model's device (Gumbel-max with a seeded generator, or argmax), with no
  copy to the host per step.

With one sequence a step reads every weight of the model once (about 9M for the release's sizes)
and does little arithmetic with it, so on a CPU its time is the time to stream the weights from
memory. `weights="int8"` stores the per-step weights as int8 with one bfloat16 scale per output row
(`int8_rows`) and computes in bfloat16 (CPU only): 4x fewer bytes, which then fit in the CPU's
last-level cache. It samples exactly the distribution of `quantised(model)`, the float model with
those weights, up to bfloat16 rounding of the activations.

`push` takes audio codes chunk by chunk and returns the codes of those frames at once: the prior
reads a[<=t] only, so a frame is determined as soon as its audio code is known.
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


def _dequantised(weight: torch.Tensor) -> torch.Tensor:
    q, scale = int8_rows(weight)
    return (q.float() * scale.float()[:, None]).to(weight.dtype)


def quantised(model: ContextModel) -> ContextModel:
    """A copy of the prior whose per-step weights are what `weights="int8"` samples with.

    The masked weights of every layer after the embedding and both taps of every causal
    convolution are rounded to int8 per output row; the embedding (a table lookup when sampling)
    and the audio projections (one batched product per chunk) stay as they are.
    """
    model = copy.deepcopy(model)
    with torch.no_grad():
        for layer in [*model.context_layers, model.logits]:
            weight = layer.masked_linear.weight
            weight[..., 0] = _dequantised(layer.masked_weight()[..., 0])
        for layer in model.context_layers:
            for tap in range(layer.historic.weight.shape[-1]):
                layer.historic.weight[..., tap] = _dequantised(layer.historic.weight[..., tap])
    return model


@dataclass(frozen=True)
class Round:
    """Heads sampled together, and per layer the blocks computed before sampling them.

    The last round of a step samples no head: it completes the blocks that only the next steps
    read (through the causal convolutions).
    """

    heads: tuple[int, int]
    blocks: tuple[tuple[int, int], ...]


def schedule(model: ContextModel) -> list[Round]:
    """Rounds of one step: which head blocks each layer computes before which heads are drawn."""
    heads = model.config.heads
    layers = [model.embedding, *model.context_layers, model.logits]
    # needs[l][j]: highest current-step head that block j of layer l depends on (-1: none).
    needs, previous = [], None
    for layer in layers:
        offset = mask_offset(layer, heads)
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


def _int8_accumulate(target, source, weight) -> None:
    target += torch._weight_int8pack_mm(source, *weight)


def _int8_matmul(x: torch.Tensor, weight: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """(..., in) bfloat16 times int8 rows (out, in) with their scales -> (..., out) bfloat16."""
    flat = torch._weight_int8pack_mm(x.reshape(-1, x.shape[-1]), *weight)
    return flat.view(*x.shape[:-1], flat.shape[-1])


class PriorSampler:
    """Draws codes from a `ContextModel`, step by step, for a batch of B sequences.

    Args:
        model: the prior (its device and dtype are used).
        batch: B, sequences sampled side by side.
        temperature: logits are divided by it before drawing (ignored with `argmax`).
        argmax: take the most likely class instead of drawing.
        seed: seed of the Gumbel noise (same seed, same codes on the same device).
        record_logits: keep the logits used at every (t, h) (for tests).
        weights: "float" (the model's own weights and dtype) or "int8" (int8 weights, bfloat16
            arithmetic, on the CPU: the distribution of `quantised(model)`).
    """

    def __init__(
        self,
        model: ContextModel,
        *,
        batch: int = 1,
        temperature: float = 1.0,
        argmax: bool = False,
        seed: int = 0,
        record_logits: bool = False,
        weights: str = "float",
    ) -> None:
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        if weights not in WEIGHTS:
            raise ValueError(f"weights must be one of {', '.join(WEIGHTS)}, got {weights!r}")
        self.model, self.batch = model, batch
        self.temperature, self.argmax = temperature, argmax
        self.record_logits = record_logits
        self.recorded: list[torch.Tensor] = []
        config = model.config
        self.heads, self.classes, self.width = (
            config.heads,
            config.classes,
            config.heads * config.channels_per_head,
        )
        self.slope = config.leaky_slope
        parameter = next(model.parameters())
        self.device, self.dtype = parameter.device, parameter.dtype
        self.int8 = weights == "int8"
        if self.int8:
            if self.device.type != "cpu":
                raise ValueError(f"int8 weights are for the CPU; the model is on {self.device}")
            self.dtype = torch.bfloat16
        self.model_dtype = parameter.dtype
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(seed)
        self.rounds = schedule(model)
        self._prepare_weights()
        self.step = 0
        # Columns of the stored layer inputs (int8: padded to the kernel's multiple with zeros).
        self.stored_width = self.width
        if self.int8:
            self.stored_width = -(-self.width // INT8_INNER) * INT8_INNER
        b, w = batch, self.stored_width
        self.history = [
            torch.zeros(b, 1 + layer.dilation, w, device=self.device, dtype=self.dtype)
            for layer in model.context_layers
        ]
        self._prepare_buffers()

    def _packed(self, key: tuple, weight: torch.Tensor, rows: slice, columns: int):
        """Rows and leading columns of an (out, in) weight, ready for `_product` and `_matmul`.

        float: the transposed slice (columns, rows) in the model's dtype; int8: the slice of the
        whole matrix's per-row quantisation (so that every slice shares its rows' scales); `key`
        names the matrix.
        """
        if not self.int8:
            return weight[rows, :columns].t().contiguous()
        if key not in self._int8_cache:
            self._int8_cache[key] = int8_rows(weight)
        q, scale = self._int8_cache[key]
        q, scale = q[rows, :columns], scale[rows].contiguous()
        # The int8 kernel reads the inner dimension 16 at a time: pad it with zero weights (the
        # input buffers have as many columns, the extra ones zero or not yet read).
        padded = -(-columns // INT8_INNER) * INT8_INNER
        if padded == 0:
            return None
        return F.pad(q, (0, padded - columns)).contiguous(), scale

    @torch.no_grad()
    def _prepare_weights(self) -> None:
        model, k, c = self.model, self.model.config.channels_per_head, self.classes
        layers = [model.embedding, *model.context_layers, model.logits]
        per_head = [(c, k)] + [(k, k)] * len(model.context_layers) + [(k, c)]
        offsets = [mask_offset(layer, self.heads) for layer in layers]
        self._int8_cache: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}
        masked = [layer.masked_weight()[..., 0] for layer in layers]
        # Embedding of a one-hot input: row (head i, class c) of the masked weight, transposed.
        self.embedding_rows = masked[0].t().to(self.dtype).contiguous()
        self.biases = [layer.masked_linear.bias.detach().to(self.dtype) for layer in layers]
        # Per round and layer after the embedding: the new rows' weights over the columns they read.
        self.round_weights = []
        for round_ in self.rounds:
            weights = []
            for index in range(1, len(layers)):
                (first, last), (inp, out) = round_.blocks[index], per_head[index]
                columns = max(0, (last - 1 + offsets[index]) * inp)
                rows = slice(first * out, last * out)
                weights.append(self._packed(("masked", index), masked[index], rows, columns))
            self.round_weights.append(weights)
        # Causal convolutions: the near tap (step t-1) is a product per frame; the far tap (step
        # t-1-d) of the d frames t..t+d-1 reads inputs that are all known at frame t, so for d > 1
        # it is one product every d frames (d times fewer weight reads for that tap).
        everything, width = slice(None), self.width
        self.far = [
            self._packed(("far", i), layer.historic.weight[..., 0], everything, width)
            for i, layer in enumerate(model.context_layers)
        ]
        self.near = [
            self._packed(("near", i), layer.historic.weight[..., 1], everything, width)
            for i, layer in enumerate(model.context_layers)
        ]
        self._int8_cache = {}
        self.dilations = [layer.dilation for layer in model.context_layers]
        self.far_ahead: list[torch.Tensor | None] = [None] * len(self.dilations)
        constant = [
            layer.masked_linear.bias + layer.historic.bias for layer in model.context_layers
        ]
        if model.config.audio_conditioning:
            self.audio_weight = torch.cat(
                [layer.unmasked_linear.weight[..., 0] for layer in model.context_layers]
            ).t()
            constant = [
                b + layer.unmasked_linear.bias
                for b, layer in zip(constant, model.context_layers, strict=True)
            ]
        else:
            self.audio_weight = None
        self.constant = torch.cat(constant).detach()
        if self.int8:
            self._product, self._matmul = _int8_product, _int8_matmul
            self._accumulate = _int8_accumulate
        else:
            self._product, self._matmul = _float_product, torch.matmul
            self._accumulate = torch.Tensor.addmm_
        self.per_head = per_head
        # Per round: (layer, rows, columns, weight) of every layer that computes new blocks, the
        # logits' bias over those rows, and the class-row offsets of the heads drawn.
        self.plans = []
        for round_, weights in zip(self.rounds, self.round_weights, strict=True):
            steps = []
            for index in range(1, len(layers)):
                (first, last), (_, out) = round_.blocks[index], per_head[index]
                if last > first:
                    rows = slice(first * out, last * out)
                    weight = weights[index - 1]
                    if not self.int8:
                        columns = weight.shape[0]
                    else:
                        columns = 0 if weight is None else weight[0].shape[1]
                    steps.append((index, rows, columns, weight))
            first, last = round_.heads
            offsets = torch.arange(first, last, device=self.device) * c
            self.plans.append((round_.blocks[0], steps, offsets))

    def _prepare_buffers(self) -> None:
        """Per-frame buffers, reused every frame, and each round's views into them."""
        b, w, c = self.batch, self.width, self.classes
        zeros = dict(device=self.device, dtype=self.dtype)
        self.inputs = [
            torch.zeros(b, self.stored_width, **zeros) for _ in range(1 + len(self.history))
        ]
        self.context = [torch.zeros(b, w, **zeros) for _ in self.history]
        self.logits = torch.zeros(b, self.heads * c, **zeros)
        self.embedded = torch.zeros(b, w, **zeros)
        k, last_layer = self.per_head[0][1], 1 + len(self.history)
        self.round_views = []
        for ((first, last), steps, offsets), round_ in zip(self.plans, self.rounds, strict=True):
            embedding = None
            if last > first:
                blocks = slice(first * k, last * k)
                embedding = (self.embedded[:, blocks], self.inputs[0][:, blocks])
            products = []
            for index, rows, columns, weight in steps:
                source = self.inputs[index - 1][:, :columns]
                if index < last_layer:
                    target = self.inputs[index][:, rows]
                    products.append(
                        (self.context[index - 1][:, rows], source, weight, target, True)
                    )
                else:
                    bias = self.biases[-1][rows].expand(b, -1)
                    products.append((bias, source, weight, self.logits[:, rows], False))
            heads = round_.heads
            drawn = self.logits[:, heads[0] * c : heads[1] * c].view(b, heads[1] - heads[0], c)
            self.round_views.append((embedding, products, heads, drawn, offsets))

    @torch.no_grad()
    def push(self, audio_code: torch.Tensor) -> torch.Tensor:
        """Codes of the next frames given their audio codes.

        Args:
            audio_code: (B, n, audio_dim) audio codes of the next n frames.

        Returns:
            (B, n, H) int64 class indices, on the model's device.
        """
        b, n, _ = audio_code.shape
        if b != self.batch:
            raise ValueError(f"expected a batch of {self.batch} sequences, got {b}")
        audio_code = audio_code.to(self.device, self.model_dtype)
        # The audio contribution (and the constant biases) of every middle layer and frame at once.
        if self.audio_weight is None:
            pre = self.constant.expand(b, n, -1)
        else:
            pre = torch.addmm(self.constant, audio_code.reshape(b * n, -1), self.audio_weight)
            pre = pre.view(b, n, -1)
        pre = pre.view(b, n, len(self.history), self.width).to(self.dtype)
        noise = None
        if not self.argmax:
            noise = torch.empty(b, n, self.heads, self.classes, device=self.device)
            noise.exponential_(generator=self.generator).log_().neg_()
            noise = noise.to(self.model_dtype)
        codes = torch.empty(b, n, self.heads, dtype=torch.long, device=self.device)
        for t in range(n):
            self._step(pre[:, t], None if noise is None else noise[:, t], codes[:, t])
        return codes

    def _step(self, pre: torch.Tensor, noise: torch.Tensor | None, codes: torch.Tensor) -> None:
        """One frame: pre (B, layers, width) audio + biases, noise (B, H, C); fills codes (B, H)."""
        slope, step = self.slope, self.step
        # History: each middle layer reads its input at t-1-d and t-1.
        for index, ring in enumerate(self.history):
            d, size = self.dilations[index], ring.shape[1]  # slot s % size: input of step s
            if step % d == 0:
                slots = [(step - 1 - d + j) % size for j in range(d)]
                self.far_ahead[index] = self._matmul(ring[:, slots], self.far[index])
            context = self.context[index]
            torch.add(pre[:, index], self.far_ahead[index][:, step % d], out=context)
            self._accumulate(context, ring[:, (step - 1) % size], self.near[index])
        self.embedded.copy_(self.biases[0].expand_as(self.embedded))
        for embedding, products, (first, last), drawn, offsets in self.round_views:
            if embedding is not None:
                F.leaky_relu_(embedding[1].copy_(embedding[0]), slope)
            for base, source, weight, target, activate in products:
                self._product(base, source, weight, target)
                if activate:
                    F.leaky_relu_(target, slope)
            if first == last:
                continue
            if noise is None:
                chosen = drawn.argmax(dim=-1)
            else:
                drawn = drawn.to(noise.dtype) / self.temperature
                chosen = (drawn + noise[:, first:last]).argmax(dim=-1)
            codes[:, first:last] = chosen
            self.embedded += self.embedding_rows[offsets + chosen].sum(dim=1)  # (B, n) rows
        for index, ring in enumerate(self.history):
            ring[:, step % ring.shape[1]] = self.inputs[index]
        if self.record_logits:
            self.recorded.append(self.logits.view(self.batch, self.heads, self.classes).clone())
        self.step += 1

    def sample(self, audio_code: torch.Tensor, chunk: int = 1024) -> torch.Tensor:
        """(B, T, audio_dim) audio codes -> (B, T, H) codes, `chunk` frames at a time."""
        parts = [
            self.push(audio_code[:, start : start + chunk])
            for start in range(0, audio_code.shape[1], chunk)
        ]
        return torch.cat(parts, dim=1)
