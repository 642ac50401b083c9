"""Sampling the prior in time and memory linear in the length, and streaming.

`PriorSampler` evaluates exactly the function of `ContextModel.forward`, one step at a time:

- only the receptive field is kept: each middle layer's inputs live in a buffer of a fixed number
  of steps (the last 1 + max dilation move to its front every few steps), so memory does not grow
  with the length;
- the audio contribution of all frames of a chunk is one batched matrix product, and the far tap
  of a causal convolution with dilation d > 1 is one product every d steps;
- within a step, a layer's head block is computed once, as soon as the heads it depends on are
  known. With the masks of SPEC section 7 (head h reads heads < h in every layer), the logits of
  head h depend on the current step's codes of heads <= h - (number of layers) only, so several
  heads are sampled together in one round (H=16: 3 rounds per step instead of 16). A round's
  product for a layer also applies the near tap (and with d = 1 the far tap) to those rows: the
  earlier steps' inputs sit just before the current one, so it is one matrix product;
- codes are drawn on the model's device (Gumbel-max with a seeded generator, or argmax), with no
  copy to the host per step.

With one sequence a step reads every weight of the model once (about 9M for the release's sizes)
and does little arithmetic with it, so on a CPU its time is that of streaming the weights through
the cores plus the cost of calling each operation. `weights="int8"` stores the per-step weights as
int8 with one bfloat16 scale per output row of each layer (`step_weights`) and computes in bfloat16
(CPU only): 4x fewer bytes. It samples exactly the distribution of `quantised(model)`, the float
model with those weights, up to bfloat16 rounding of the activations.

`push` takes audio codes chunk by chunk and returns the codes of those frames at once: the prior
reads a[<=t] only, so a frame is determined as soon as its audio code is known.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from meshtalk.models.prior import ContextModel
from meshtalk.models.sampler_graph import capture_frames, use_graph
from meshtalk.models.sampler_weights import (
    CHUNK,
    PHASES,
    WEIGHTS,
    _float_product,
    _int8_matmul,
    _int8_product,
    _layer_inputs,
    _padded,
    mask_offset,
    pack_rows,
    pad_columns,
    quantised,
    read_columns,
    sample_in_chunks,
    schedule,
    step_weights,
    weight_bytes,
)


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
        graph: replay one frame's step as a CUDA graph (captured once per phase of the history
            buffers); None: on CUDA unless recording logits. Same codes as without.

    One frame's step (`_frame`) reads and writes only buffers made once (the chunk's audio
    contributions and noise, picked by a frame index tensor on the device), allocates nothing,
    never waits for the device and branches only on the step's phase, so it can be captured.
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
        graph: bool | None = None,
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
        self.heads, self.classes = config.heads, config.classes
        self.width = config.heads * config.channels_per_head
        self.slope = config.leaky_slope
        self.input_activation = config.input_activation  # after the embedding (SPEC section 4)
        parameter = next(model.parameters())
        self.device, self.dtype = parameter.device, parameter.dtype
        self.model_dtype = parameter.dtype
        self.noise_dtype = torch.promote_types(parameter.dtype, torch.float32)
        self.int8 = weights == "int8"
        if self.int8:
            if self.device.type != "cpu":
                raise ValueError(f"int8 weights are for the CPU; the model is on {self.device}")
            self.dtype = torch.bfloat16
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(seed)
        layers = model.layers()
        self.offsets = [mask_offset(layer, self.heads) for layer in layers]
        self.rounds = schedule(model, self.offsets)
        self.dilations = [layer.dilation for layer in model.context_layers]
        # Columns of one step's stored layer input (int8: padded to the kernel's multiple).
        self.stored_width = _padded(self.width) if self.int8 else self.width
        # Earlier inputs that the current step's product reads besides the current one: t-1, and
        # t-2 too when the dilation is 1 (the far tap then reads the step just before).
        self.taps = [2 if d == 1 else 1 for d in self.dilations]
        # History of every middle layer's input: step t at slot `reach` + t % phases; every
        # `phases` steps the last `reach` slots move to the front.
        self.reach = 1 + max(self.dilations)
        self.phases = max(PHASES, self.reach)
        self._prepare_weights()
        self._prepare_buffers()
        self.graphs: list | None = None
        if use_graph(self.device, self.phases, self.dilations, self.record_logits, graph):
            self.graphs = capture_frames(self._frame, self.frame_index, self.device, self.phases)
        self.reset(seed)

    def reset(self, seed: int | None = None) -> None:
        """Start a new sequence (the weights stay prepared); `seed` reseeds the noise."""
        if seed is not None:
            self.generator.manual_seed(seed)
        for buffer in (*self.history, *self.far_out.values(), self.top, self.embedded):
            buffer.zero_()
        self.noise.copy_(self.biases[-1].expand_as(self.noise))
        self.recorded = []
        self.step = 0

    @property
    def weight_bytes_per_step(self) -> float:
        """Bytes of weights one step reads: every round's packed weights, and the far taps'
        (read once every d steps) over d. With one sequence, a step that reads more than the
        CPU's last-level cache streams them from memory, so memory bandwidth over this number
        bounds the steps per second of any kernel."""

        rounds = sum(weight_bytes(weight) for row in self.round_weights for weight in row)
        far = sum(weight_bytes(w) / self.dilations[index] for index, w in self.far.items())
        return rounds + far

    @torch.no_grad()
    def _prepare_weights(self) -> None:
        model, k, c = self.model, self.model.config.channels_per_head, self.classes
        layers = model.layers()
        self.per_head = [(c, k)] + [(k, k)] * len(model.context_layers) + [(k, c)]
        offsets = self.offsets
        masked = [layer.masked_weight()[..., 0].detach() for layer in layers]
        # Embedding of a one-hot input: row (head i, class c) of the masked weight, transposed.
        self.embedding_rows = masked[0].t().to(self.dtype).contiguous()
        self.biases = [layer.masked_linear.bias.detach().to(self.dtype) for layer in layers]
        # Per layer after the embedding: the (out, in) weights of its far tap, near tap and
        # masked current-step projection (the logits: the last only), and with int8 their rows'
        # shared scales (`step_weights`).
        weights, scales = step_weights(model, int8=self.int8, masked=masked[1:])
        # Far taps of dilation d > 1: the far tap of the d steps t..t+d-1 reads inputs that are
        # all known at step t, so it is one product every d steps (d times fewer weight reads).
        # With d = 1 it is part of each round's product, as is the near tap.
        self.far = {}
        for index, taps in enumerate(self.taps):
            far = weights[index][0]
            if taps == 1:
                if self.int8:
                    self.far[index] = (pad_columns(far, self.stored_width), scales[index])
                else:
                    self.far[index] = far.t().contiguous().to(self.dtype)
        parts = [w[2 - taps :] for w, taps in zip(weights[:-1], self.taps, strict=True)]
        parts.append(weights[-1])
        # Per round and layer after the embedding: the new rows over the columns they read.
        self.round_weights = []
        for round_ in self.rounds:
            row = []
            for index in range(1, len(layers)):
                (first, last), (inp, out) = round_.blocks[index], self.per_head[index]
                rows = slice(first * out, last * out)
                columns = max(0, (last - 1 + offsets[index]) * inp)
                row.append(pack_rows(parts[index - 1], scales[index - 1], rows, columns, self.dtype,
                                     self.stored_width if self.int8 else None))  # fmt: skip
            self.round_weights.append(row)
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
        else:
            self._product, self._matmul = _float_product, torch.matmul

    def _prepare_buffers(self) -> None:
        """Buffers reused every step, and per phase the views of each round into them."""
        b, w, c, s = self.batch, self.width, self.classes, self.stored_width
        zeros = dict(device=self.device, dtype=self.dtype)
        layers = len(self.dilations)
        self.history = [torch.zeros(b, self.reach + self.phases, s, **zeros) for _ in range(layers)]
        self.top = torch.zeros(b, s, **zeros)  # input of the logits layer
        self.context = torch.zeros(b, layers, w, **zeros)  # audio, biases and far taps
        self.logits = torch.zeros(b, self.heads * c, **zeros)
        self.embedded = torch.zeros(b, w, **zeros)
        # The logits' biases plus the noise of the current step (argmax: the biases alone); `reset`
        # fills it.
        self.noise = torch.empty(b, self.heads * c, device=self.device, dtype=self.noise_dtype)
        self.chosen = torch.zeros(b, self.heads, dtype=torch.long, device=self.device)
        # A chunk of frames: audio contributions, noise and codes, and the frame being stepped.
        g, layer_count = CHUNK, len(self.dilations)
        self.chunk_pre = torch.zeros(b, g, layer_count, w, **zeros)
        self.chunk_noise = torch.zeros(b, g, self.heads * c, device=self.device,
                                       dtype=self.noise_dtype)  # fmt: skip
        self.chunk_codes = torch.zeros(b, g, self.heads, dtype=torch.long, device=self.device)
        self.frame_index = torch.zeros(1, dtype=torch.long, device=self.device)
        self.frame_noise = torch.zeros_like(self.chunk_noise[:, :1])
        self.drawn = torch.empty(0, device=self.device, dtype=self.noise_dtype)
        # Far taps: their products for the steps t..t+d-1.
        self.far_out = {i: torch.zeros(b, self.dilations[i], w, **zeros) for i in self.far}
        k = self.per_head[0][1]
        flat = [h.view(b, -1) for h in self.history]
        self.views = []
        for phase in range(self.phases):
            now = (self.reach + phase) * s  # first column of the current step

            def output(layer: int, rows: slice, now=now) -> torch.Tensor:
                if layer < layers:
                    return flat[layer][:, now + rows.start : now + rows.stop]
                return self.top[:, rows]

            rounds = []
            for round_, weights in zip(self.rounds, self.round_weights, strict=True):
                first, last = round_.blocks[0]
                embedding = None
                if last > first:
                    blocks = slice(first * k, last * k)
                    embedding = (self.embedded[:, blocks], output(0, blocks))
                products = []
                for index in range(1, layers + 1):
                    (first, last), (_, out) = round_.blocks[index], self.per_head[index]
                    if last <= first:
                        continue
                    rows, weight = slice(first * out, last * out), weights[index - 1]
                    start = now - self.taps[index - 1] * s
                    source = flat[index - 1][:, start : start + read_columns(weight, self.int8)]
                    base = self.context[:, index - 1, rows]
                    products.append((base, source, weight, output(index, rows)))
                first, last = round_.heads
                draw = None
                if last > first:
                    # The logits' rows are those of the heads drawn in this round.
                    n, weight = last - first, weights[-1]
                    rows = slice(first * c, last * c)
                    scores = torch.zeros(b, n * c, device=self.device, dtype=self.noise_dtype)
                    partial = torch.zeros(b, n * c, **zeros)
                    draw = (
                        self.top[:, : read_columns(weight, self.int8)],
                        weight,
                        self.noise[:, rows],
                        self.chosen[:, first:last],
                        torch.arange(first, last, device=self.device) * c,
                        torch.zeros(b, n, dtype=torch.long, device=self.device),
                        torch.zeros(b, n, w, **zeros),
                        torch.zeros(b, w, **zeros),
                        (self.biases[-1][rows].expand(b, -1), self.logits[:, rows]),
                        (scores, partial),
                    )
                rounds.append((embedding, products, draw))
            self.views.append(rounds)

    @torch.inference_mode()
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
            pre = self.constant.expand(b * n, -1)
        else:
            pre = torch.addmm(self.constant, audio_code.reshape(b * n, -1), self.audio_weight)
        pre = pre.reshape(b, n, len(self.history), self.width).to(self.dtype)
        if not self.argmax:
            # Gumbel noise -log(-log(u)), times the temperature: argmax(l + T g) = argmax(l/T + g).
            noise = torch.rand(
                b, n, self.heads * self.classes, generator=self.generator,
                device=self.device, dtype=self.noise_dtype, out=self.drawn,
            )  # fmt: skip
            noise.log_().neg_().log_().neg_()
            if self.temperature != 1:
                noise *= self.temperature
        codes = torch.empty(b, n, self.heads, dtype=torch.long, device=self.device)
        for first in range(0, n, CHUNK):
            last = min(n, first + CHUNK)
            self.chunk_pre[:, : last - first].copy_(pre[:, first:last])
            if not self.argmax:
                self.chunk_noise[:, : last - first].copy_(noise[:, first:last])
            self.frame_index.zero_()
            for _ in range(first, last):
                phase = self.step % self.phases
                if self.graphs is not None:
                    self.graphs[phase].replay()
                else:
                    self._frame(self.step)
                if self.record_logits:
                    self.recorded.append(self.logits.view(b, self.heads, self.classes).clone())
                self.step += 1
            codes[:, first:last] = self.chunk_codes[:, : last - first]
        return codes

    def _frame(self, step: int) -> None:
        """One frame (the `frame_index`-th of the chunk) at step `step`; fills `chosen`, writes
        the codes into `chunk_codes` and advances `frame_index`. Capturable: no allocation, no
        host synchronisation, no branch on values; what it does depends on the step's phase
        (and the far taps' step % d) only, so a graph per phase replays any step of it when
        every dilation divides the number of phases."""
        b, phase = self.batch, step % self.phases
        context = self.context.view(b, 1, *self.context.shape[1:])
        torch.index_select(self.chunk_pre, 1, self.frame_index, out=context)
        # Every d steps the far taps of the next d steps (one product); each step adds its own.
        for index, weight in self.far.items():
            d = self.dilations[index]
            if step % d == 0:
                start = self.reach + phase - 1 - d  # slot of step - 1 - d
                source = self.history[index][:, start : start + d]
                self._far_product(source, weight, self.far_out[index])
            self.context[:, index] += self.far_out[index][:, step % d]
        if not self.argmax:
            torch.index_select(self.chunk_noise, 1, self.frame_index, out=self.frame_noise)
            torch.add(self.frame_noise.view(b, -1), self.biases[-1], out=self.noise)
        self._step(phase)
        self.chunk_codes.index_copy_(1, self.frame_index, self.chosen.view(b, 1, -1))
        self.frame_index += 1

    def _far_product(self, source: torch.Tensor, weight, target: torch.Tensor) -> None:
        """(B, d, in) inputs times a far tap's weight into (B, d, out)."""
        if self.int8:
            target.copy_(_int8_matmul(source, weight))
        else:
            torch.matmul(source, weight, out=target)

    def _step(self, phase: int) -> None:
        """One frame's layers from `context` (audio, biases, far taps) and `noise`; fills
        `chosen` (and with `record_logits`, `logits`)."""
        slope, product = self.slope, self._product
        leaky_relu, leaky_relu_ = torch._C._nn.leaky_relu, F.leaky_relu_
        embedded, embedding_rows = self.embedded, self.embedding_rows
        input_activation = self.input_activation
        embedded.copy_(self.biases[0].expand_as(embedded))
        for embedding, products, draw in self.views[phase]:
            if embedding is not None:
                if input_activation:
                    leaky_relu(embedding[0], slope, out=embedding[1])
                else:
                    embedding[1].copy_(embedding[0])
            for base, source, weight, target in products:
                product(base, source, weight, target)
                leaky_relu_(target, slope)
            if draw is None:
                continue
            source, weight, noise, chosen, offsets, index, rows, total, record, buffers = draw
            scores = self._scores(noise, source, weight, *buffers)
            torch.argmax(scores.view(chosen.shape[0], chosen.shape[1], -1), dim=-1, out=chosen)
            if self.record_logits:
                product(record[0], source, weight, record[1])
            # Embed the drawn codes: the sum of their rows.
            torch.add(chosen, offsets, out=index)
            torch.index_select(embedding_rows, 0, index.view(-1), out=rows.view(-1, rows.shape[-1]))
            torch.sum(rows, dim=1, out=total)
            embedded += total
        if phase == self.phases - 1:  # the last `reach` steps move to the front
            for history in self.history:
                history[:, : self.reach] = history[:, self.phases :]

    def _scores(self, noise, source, weight, scores, partial) -> torch.Tensor:
        """Logits (without their biases, which `noise` holds) plus `noise`, into `scores`."""
        if weight is None:
            return noise
        if self.int8:
            return torch.add(noise, torch._weight_int8pack_mm(source, *weight), out=scores)
        if weight.dtype == noise.dtype:
            return torch.addmm(noise, source, weight, out=scores)
        torch.mm(source, weight, out=partial)
        return torch.add(noise, partial, out=scores)

    def sample(self, audio_code: torch.Tensor, chunk: int = 1024) -> torch.Tensor:
        """(B, T, audio_dim) audio codes -> (B, T, H) codes, `chunk` frames at a time.

        Raises ValueError for T = 0 (audio shorter than one frame) or chunk < 1.
        """
        return sample_in_chunks(self.push, audio_code, chunk)

    @torch.inference_mode()
    def prime(self, codes: torch.Tensor, audio_code: torch.Tensor) -> None:
        """Start the sequence with known codes, drawing nothing: `push` then samples the frames
        after them, conditioned on them as if they had been drawn (continuing codes that came
        from elsewhere, e.g. from the encoder).

        The known frames go through the full-sequence layers (`ContextModel.forward`'s), of which
        only the last frames that the next steps can read are computed; their layer inputs fill
        the history buffers. With int8 weights, the layers are those of `quantised(model)`.

        Args:
            codes: (B, n, H) class indices of the first n frames.
            audio_code: (B, n, audio_dim) audio codes of those frames.

        Raises:
            ValueError: the sampler has stepped since `reset`, or the shapes do not fit.
        """
        if self.step:
            raise ValueError(f"prime starts a sequence; {self.step} frames were pushed (reset)")
        if codes.dim() != 3 or codes.shape[0] != self.batch or codes.shape[2] != self.heads:
            raise ValueError(
                f"expected ({self.batch}, n, {self.heads}) codes, got {tuple(codes.shape)}"
            )
        if audio_code.dim() != 3 or audio_code.shape[:2] != codes.shape[:2]:
            raise ValueError(
                f"expected audio codes of {tuple(codes.shape[:2])} frames, got "
                f"{tuple(audio_code.shape)}"
            )
        frames = codes.shape[1]
        if frames == 0:
            return
        if self.int8 and getattr(self, "_primer", None) is None:
            self._primer = quantised(self.model)
        model = self._primer if self.int8 else self.model
        # The next steps read layer inputs back to step n - 2 * max dilation - 1 (the far taps
        # of the current block), each of which depends on the receptive field before it.
        keep = min(frames, model.config.receptive_field + 2 * self.reach)
        first = frames - keep
        inputs = _layer_inputs(
            model,
            codes[:, first:].to(self.device),
            audio_code[:, first:].to(self.device, self.model_dtype),
        )
        phase = frames % self.phases  # step n - j sits in slot reach + phase - j
        for history, layer_input in zip(self.history, inputs, strict=True):
            recent = layer_input[:, -self.reach :]
            count = recent.shape[1]
            slots = history[:, self.reach + phase - count : self.reach + phase, : self.width]
            slots.copy_(recent.to(self.dtype))
        for index, weight in self.far.items():
            # The block of d steps the next step belongs to began at a multiple of d; its far
            # products read steps start - 1 - d .. start - 2 (zero before the first).
            d = self.dilations[index]
            start = frames - frames % d
            source = torch.zeros(self.batch, d, self.stored_width, device=self.device,
                                 dtype=self.dtype)  # fmt: skip
            for j in range(d):
                position = start - 1 - d + j - first
                if position >= 0:
                    source[:, j, : self.width] = inputs[index][:, position].to(self.dtype)
            self._far_product(source, weight, self.far_out[index])
        self.step = frames
