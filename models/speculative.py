"""Speculative sampling of the prior: a cheap draft proposes, the prior checks K frames at once.

With one sequence, `PriorSampler` reads every weight of the prior once per frame, so on a CPU it
runs at the speed of streaming the weights from memory. `SpeculativeSampler` reads them once per
block of up to K frames and still samples exactly the prior's distribution (Leviathan et al. 2023,
Chen et al. 2023), with the codes ordered (t, h) as the prior factorises them:

1. a draft (a small `ContextModel` with the same heads and classes, e.g. `distil_draft`'s)
   proposes the codes of the next K frames, all heads, drawing each from its own distribution q;
2. the prior evaluates those K frames in one teacher-forced pass over its receptive field (the
   layer inputs of the last frames are kept; one product per layer for the K frames);
3. in (t, h) order, each proposed code x is accepted with probability min(1, p(x) / q(x)); at the
   first rejection the code is drawn from normalise(max(0, p - q)) and the rest of the block is
   dropped. The next block starts at the head after it (the frame's earlier heads fixed).

Every code so drawn has exactly the prior's conditional distribution given the codes before it,
whatever the draft. With `argmax`, the draft proposes its most likely class, a proposal is accepted
when it is the prior's most likely class, and a rejection takes that class: the plain sampler's
codes (up to the rounding of a different summation order of the same products).

Takes side by side (batch B) each keep their own position: a block starts, for each take, where
that take's last block stopped, so one take's rejection never holds another back; the window is
the same K frames for all (a take nearer the end of the audio uses fewer). `push` returns the codes
of all frames of the audio given, so K is bounded by the audio available and adds no latency.

With `weights="int8"`, the prior's per-step weights are those of `PriorSampler(weights="int8")`
(int8 rows with bfloat16 scales, bfloat16 arithmetic, CPU only): it samples `quantised(model)`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from meshtalk.models.prior import ContextModel, PriorModelConfig
from meshtalk.models.sampler_weights import (
    INT8_INNER,
    WEIGHTS,
    sample_in_chunks,
    schedule,
    step_weights,
)


def _pad_columns(x: torch.Tensor, columns: int) -> torch.Tensor:
    return x if x.shape[-1] == columns else F.pad(x, (0, columns - x.shape[-1]))


class WindowModel:
    """A `ContextModel`'s function on a few new frames given its layer inputs of the frames before.

    The state of a sequence is, for every middle layer, its input at the last `reach` frames
    (B, reach, width); `run` computes the layer inputs and logits of n new frames, teacher forced
    on their codes, with one product per layer for the n frames. Codes -1 are not known yet (they
    contribute nothing: only heads after them read them, through the masks).
    """

    def __init__(self, model: ContextModel, *, int8: bool = False) -> None:
        config = model.config
        parameter = next(model.parameters())
        if int8 and parameter.device.type != "cpu":
            raise ValueError(f"int8 weights are for the CPU; the model is on {parameter.device}")
        self.config, self.int8 = config, int8
        self.device, self.model_dtype = parameter.device, parameter.dtype
        self.dtype = torch.bfloat16 if int8 else parameter.dtype
        self.heads, self.classes = config.heads, config.classes
        self.width = config.heads * config.channels_per_head
        self.dilations = list(config.dilations)
        self.reach = 1 + max(self.dilations)
        self.slope = config.leaky_slope
        with torch.no_grad():
            self._prepare(model)

    def _prepare(self, model: ContextModel) -> None:
        layers = model.layers()
        masked = [layer.masked_weight()[..., 0].detach() for layer in layers]
        zero = torch.zeros(1, self.width, device=self.device, dtype=self.model_dtype)
        # Embedding of the codes: the sum of rows (head, class) of the masked weight; row H*C is
        # the zero row of an unknown code.
        self.embedding = torch.cat([masked[0].t(), zero]).to(self.dtype).contiguous()
        self.embedding_bias = layers[0].masked_linear.bias.detach().to(self.dtype)
        self.logit_bias = layers[-1].masked_linear.bias.detach().float()
        weights, scales = step_weights(model, int8=self.int8, masked=masked[1:])
        # Per middle layer: [far tap (t-1-d) | near tap (t-1) | masked (t)] over 3 x width inputs.
        self.inner = 3 * self.width
        self.padded = -(-self.inner // INT8_INNER) * INT8_INNER if self.int8 else self.inner
        self.layer_weights = []
        for parts, scale in zip(weights[:-1], scales[:-1], strict=True):
            whole = torch.cat(parts, dim=1)
            if self.int8:
                self.layer_weights.append((_pad_columns(whole, self.padded).contiguous(), scale))
            else:
                self.layer_weights.append(whole.t().contiguous())
        logits = weights[-1][0]
        self.logit_columns = -(-self.width // INT8_INNER) * INT8_INNER if self.int8 else self.width
        if self.int8:
            self.logit_weight = (_pad_columns(logits, self.logit_columns).contiguous(), scales[-1])
        else:
            self.logit_weight = logits.t().contiguous()
        constant = [
            layer.masked_linear.bias + layer.historic.bias for layer in model.context_layers
        ]
        self.audio_weight = None
        if model.config.audio_conditioning:
            self.audio_weight = (
                torch.cat([layer.unmasked_linear.weight[..., 0] for layer in model.context_layers])
                .t()
                .detach()
            )
            constant = [
                c + layer.unmasked_linear.bias
                for c, layer in zip(constant, model.context_layers, strict=True)
            ]
        self.constant = torch.cat(constant).detach()

    @property
    def weight_bytes(self) -> int:
        """Bytes of weights one `run` reads (whatever its number of frames; the embedding is a
        lookup of H rows per frame and is not counted)."""

        def size(weight) -> int:
            parts = weight if isinstance(weight, tuple) else (weight,)
            return sum(part.numel() * part.element_size() for part in parts)

        return sum(size(w) for w in self.layer_weights) + size(self.logit_weight)

    def history(self, batch: int) -> list[torch.Tensor]:
        """The state before the first frame: zero layer inputs (the model's zero padding)."""
        return [
            torch.zeros(batch, self.reach, self.width, device=self.device, dtype=self.dtype)
            for _ in self.dilations
        ]

    def audio(self, audio_code: torch.Tensor) -> torch.Tensor:
        """(B, n, audio_dim) -> (B, n, layers, width): audio projections and constant biases."""
        b, n, _ = audio_code.shape
        layers = len(self.dilations)
        if self.audio_weight is None:
            pre = self.constant.expand(b * n, -1)
        else:
            flat = audio_code.reshape(b * n, -1).to(self.device, self.model_dtype)
            pre = torch.addmm(self.constant, flat, self.audio_weight)
        return pre.reshape(b, n, layers, self.width).to(self.dtype)

    def run(
        self, history: list[torch.Tensor], codes: torch.Tensor, pre: torch.Tensor
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Logits and layer inputs of n frames.

        Args:
            history: per middle layer (B, >= reach, width): its inputs at the frames before
                (the last `reach` are read).
            codes: (B, n, H) class indices, -1 where not known.
            pre: (B, n, layers, width) from `audio`.

        Returns:
            (B, n, H, C) float32 logits and per middle layer its (B, n, width) inputs.
        """
        b, n, h = codes.shape
        c, reach, slope = self.classes, self.reach, self.slope
        offsets = torch.arange(h, device=codes.device) * c
        index = torch.where(codes < 0, h * c, codes + offsets)
        x = self.embedding[index.reshape(-1)].view(b, n, h, -1).sum(dim=2) + self.embedding_bias
        if self.config.input_activation:
            x = F.leaky_relu(x, slope)
        inputs = []
        for layer, (d, weight) in enumerate(zip(self.dilations, self.layer_weights, strict=True)):
            inputs.append(x)
            window = torch.cat([history[layer][:, -reach:], x], dim=1)
            far = window[:, reach - 1 - d : reach - 1 - d + n]
            near = window[:, reach - 1 : reach - 1 + n]
            z = torch.cat([far, near, x], dim=2)
            x = F.leaky_relu(self._product(z, weight, self.padded) + pre[:, :, layer], slope)
        logits = self._product(x, self.logit_weight, self.logit_columns).float() + self.logit_bias
        return logits.view(b, n, h, c), inputs

    def _product(self, x: torch.Tensor, weight, columns: int) -> torch.Tensor:
        if not self.int8:
            return x @ weight
        flat = _pad_columns(x.reshape(-1, x.shape[-1]), columns)
        out = torch._weight_int8pack_mm(flat.contiguous(), *weight)
        return out.view(*x.shape[:-1], -1)


def check_draft(prior: PriorModelConfig, draft: PriorModelConfig) -> None:
    """Raises ValueError when a draft cannot propose codes for the prior."""
    for field in ("heads", "classes", "audio_dim", "audio_conditioning"):
        if getattr(prior, field) != getattr(draft, field):
            raise ValueError(
                f"the draft's {field} ({getattr(draft, field)}) differs from the prior's "
                f"({getattr(prior, field)})"
            )


class SpeculativeSampler:
    """Draws codes from a `ContextModel` with a draft's proposals, for B sequences side by side.

    Args:
        model: the prior (its device and dtype are used).
        draft: a `ContextModel` with the prior's heads, classes and audio codes (float weights).
        block: K, frames the draft proposes and the prior checks in one pass.
        batch, temperature, argmax, seed, weights: as `PriorSampler`'s.

    `stats` counts, since `reset`: blocks (passes of the prior), frames, proposed (draft codes
    judged, up to and including each block's first rejection) and accepted.
    """

    def __init__(
        self,
        model: ContextModel,
        draft: ContextModel,
        *,
        block: int = 8,
        batch: int = 1,
        temperature: float = 1.0,
        argmax: bool = False,
        seed: int = 0,
        weights: str = "float",
    ) -> None:
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        if weights not in WEIGHTS:
            raise ValueError(f"weights must be one of {', '.join(WEIGHTS)}, got {weights!r}")
        if block < 1:
            raise ValueError(f"block must be at least 1 frame, got {block}")
        check_draft(model.config, draft.config)
        self.target = WindowModel(model, int8=weights == "int8")
        self.draft = WindowModel(draft)
        self.device = self.target.device
        self.block, self.batch = block, batch
        self.temperature, self.argmax = temperature, argmax
        self.heads, self.classes = model.config.heads, model.config.classes
        self.rounds = [r.heads for r in schedule(draft) if r.heads[1] > r.heads[0]]
        self.generator = torch.Generator(device=self.device)
        self.reset(seed)

    def reset(self, seed: int | None = None) -> None:
        """Start new sequences; `seed` reseeds the noise."""
        if seed is not None:
            self.generator.manual_seed(seed)
        self.target_history = self.target.history(self.batch)
        self.draft_history = self.draft.history(self.batch)
        self.step = 0
        self.stats = {"blocks": 0, "frames": 0, "proposed": 0, "accepted": 0}

    @property
    def acceptance_rate(self) -> float:
        """Accepted over judged draft codes since `reset` (nan before any)."""
        judged = self.stats["proposed"]
        return self.stats["accepted"] / judged if judged else math.nan

    @property
    def weight_bytes_per_frame(self) -> float:
        """Weight bytes read per frame since `reset`: the prior's per block and the draft's per
        pass, over the frames sampled (per take: the batch shares every read)."""
        frames = self.stats["frames"]
        if not frames:
            return math.nan
        draft_passes = self.stats["blocks"] * (self.block * len(self.rounds) + 1)
        read = self.stats["blocks"] * self.target.weight_bytes
        return (read + draft_passes * self.draft.weight_bytes) / frames

    def sample(self, audio_code: torch.Tensor, chunk: int = 1024) -> torch.Tensor:
        """(B, T, audio_dim) audio codes -> (B, T, H) codes, `chunk` frames at a time."""
        return sample_in_chunks(self.push, audio_code, chunk)

    @torch.inference_mode()
    def push(self, audio_code: torch.Tensor) -> torch.Tensor:
        """(B, n, audio_dim) audio codes of the next n frames -> (B, n, H) int64 codes."""
        b, n, _ = audio_code.shape
        if b != self.batch:
            raise ValueError(f"expected a batch of {self.batch} sequences, got {b}")
        codes = torch.empty(b, n, self.heads, dtype=torch.long, device=self.device)
        if n == 0:
            return codes
        target_pre, draft_pre = self.target.audio(audio_code), self.draft.audio(audio_code)
        done = torch.zeros(b, dtype=torch.long, device=self.device)  # complete frames per take
        partial = torch.full((b, self.heads), -1, dtype=torch.long, device=self.device)
        takes = torch.arange(b, device=self.device)
        while True:
            first = int(done.min())
            if first >= n:
                break
            k = min(self.block, n - first)
            frames = done[:, None] + torch.arange(k, device=self.device)
            available = (n - done).clamp(max=k)  # frames of this block each take may use
            picked = frames.clamp(max=n - 1)
            proposed, q, draft_inputs = self._propose(partial, draft_pre[takes[:, None], picked])
            logits, target_inputs = self.target.run(
                self.target_history, proposed, target_pre[takes[:, None], picked]
            )
            advance, partial = self._judge(proposed, q, logits, partial, available)
            keep = torch.arange(k, device=self.device) < advance[:, None]
            rows, columns = keep.nonzero(as_tuple=True)
            codes[rows, done[rows] + columns] = proposed[rows, columns]
            self.target_history = _advance(self.target_history, target_inputs, advance)
            self.draft_history = _advance(self.draft_history, draft_inputs, advance)
            done = done + advance
            self.stats["blocks"] += 1
        self.stats["frames"] += n
        self.step += n
        return codes

    def _draw(self, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(..., C) logits -> codes drawn from q and q itself (argmax: q is one-hot)."""
        if self.argmax:
            chosen = logits.argmax(dim=-1)
            return chosen, F.one_hot(chosen, self.classes).float()
        q = torch.softmax(logits / self.temperature, dim=-1)
        noise = torch.rand(logits.shape, generator=self.generator, device=self.device)
        chosen = (q.log() - (-noise.log()).log()).argmax(dim=-1)
        return chosen, q

    def _propose(
        self, partial: torch.Tensor, pre: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        """The draft's codes of the block's k frames (frame 0's known heads kept), its q at every
        (t, h), and its layer inputs of the k frames."""
        b, k = pre.shape[:2]
        draft, h = self.draft, self.heads
        proposed = torch.full((b, k, h), -1, dtype=torch.long, device=self.device)
        q = torch.zeros(b, k, h, self.classes, device=self.device)
        # Each middle layer's inputs: the history, then the block's frames as they are computed.
        windows = [
            torch.cat([past, past.new_zeros(b, k, past.shape[2])], dim=1)
            for past in self.draft_history
        ]
        reach = draft.reach
        for t in range(k):
            current = partial.clone() if t == 0 else proposed[:, t]
            for index, (first, last) in enumerate(self.rounds):
                if index == 0 and t > 0:
                    # The previous frame, now complete, with this one: its inputs for the history.
                    history = [window[:, t - 1 : t - 1 + reach] for window in windows]
                    pair = torch.stack([proposed[:, t - 1], current], dim=1)
                    logits, inputs = draft.run(history, pair, pre[:, t - 1 : t + 1])
                    for window, value in zip(windows, inputs, strict=True):
                        window[:, reach + t - 1] = value[:, 0]
                    logits = logits[:, 1]
                else:
                    history = [window[:, t : t + reach] for window in windows]
                    logits = draft.run(history, current[:, None], pre[:, t : t + 1])[0][:, 0]
                chosen, q[:, t, first:last] = self._draw(logits[:, first:last])
                slots = current[:, first:last]
                slots.copy_(torch.where(slots < 0, chosen, slots))
            proposed[:, t] = current
        history = [window[:, k - 1 : k - 1 + reach] for window in windows]
        _, inputs = draft.run(history, proposed[:, k - 1 :], pre[:, k - 1 :])
        for window, value in zip(windows, inputs, strict=True):
            window[:, reach + k - 1] = value[:, 0]
        return proposed, q, [window[:, reach:] for window in windows]

    def _judge(
        self,
        proposed: torch.Tensor,
        q: torch.Tensor,
        logits: torch.Tensor,
        partial: torch.Tensor,
        available: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Accept or reject the proposals in (t, h) order; fix the codes at each take's first
        rejection in `proposed`. Returns the complete frames each take advances by and the
        known heads of its next frame (-1: not known)."""
        b, k, h = proposed.shape
        if self.argmax:
            p = F.one_hot(logits.argmax(dim=-1), self.classes).float()
        else:
            p = torch.softmax(logits / self.temperature, dim=-1)
        p_x = p.gather(-1, proposed[..., None])[..., 0].view(b, k * h)
        q_x = q.gather(-1, proposed[..., None])[..., 0].view(b, k * h)
        position = torch.arange(k * h, device=self.device)
        known = (partial >= 0).sum(dim=1)  # frame 0's heads fixed before this block
        judged = (position >= known[:, None]) & (position < (available * h)[:, None])
        uniform = torch.rand(b, k * h, generator=self.generator, device=self.device)
        rejected = judged & ~(uniform * q_x < p_x)
        any_rejected = rejected.any(dim=1)
        stop = torch.where(any_rejected, rejected.int().argmax(dim=1), available * h)
        self.stats["proposed"] += int((judged & (position <= stop[:, None])).sum())
        self.stats["accepted"] += int((judged & (position < stop[:, None])).sum())
        frame, head = stop // h, stop % h
        advance = torch.where(any_rejected, frame, available)
        partial = torch.full_like(partial, -1)
        rows = any_rejected.nonzero(as_tuple=True)[0]
        if rows.numel():
            frame, head = frame[rows], head[rows]
            target, draft = p[rows, frame, head], q[rows, frame, head]
            replacement = self._residual(target, draft)
            proposed[rows, frame, head] = replacement
            prefix = proposed[rows, frame]
            later = torch.arange(h, device=self.device) > head[:, None]
            partial[rows] = torch.where(later, -1, prefix)
        return advance, partial

    def _residual(self, p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
        """(R, C) distributions at rejected positions -> (R,) codes from normalise(max(0, p - q))
        (argmax: the prior's most likely class)."""
        if self.argmax:
            return p.argmax(dim=-1)
        residual = (p - q).clamp(min=0)
        # p - q has mass wherever a rejection is possible; rounding can leave none: then p.
        empty = residual.sum(dim=-1, keepdim=True) <= 0
        residual = torch.where(empty, p, residual)
        noise = torch.rand(residual.shape, generator=self.generator, device=self.device)
        return (residual.log() - (-noise.log()).log()).argmax(dim=-1)


def _advance(
    history: list[torch.Tensor], block: list[torch.Tensor], advance: torch.Tensor
) -> list[torch.Tensor]:
    """Per take, the last `reach` layer inputs after `advance` more complete frames."""
    reach = history[0].shape[1]
    index = advance[:, None] + torch.arange(reach, device=advance.device)
    result = []
    for past, new in zip(history, block, strict=True):
        window = torch.cat([past, new], dim=1)
        result.append(window.gather(1, index[..., None].expand(-1, -1, window.shape[2])))
    return result


def distil_draft(
    prior: ContextModel,
    audio_code: torch.Tensor,
    *,
    channels_per_head: int = 8,
    steps: int = 300,
    learning_rate: float = 3e-3,
    seed: int = 0,
) -> ContextModel:
    """A small draft trained to match the prior's distributions on the prior's own samples.

    The prior samples codes for the given audio (`PriorSampler`, B sequences side by side); the
    draft, the prior's sizes with `channels_per_head`, learns KL(p || q) at every (t, h) of those
    sequences, teacher forced (full batch, Adam).

    Args:
        prior: the trained prior.
        audio_code: (B, T, audio_dim) audio codes, e.g. of the training speech.

    Returns:
        The draft, in eval mode, on the prior's device.
    """
    from dataclasses import replace

    from meshtalk.models.sampler import PriorSampler

    parameter = next(prior.parameters())
    audio_code = audio_code.to(parameter.device, parameter.dtype)
    codes = PriorSampler(prior, batch=audio_code.shape[0], seed=seed).sample(audio_code)
    one_hot = F.one_hot(codes, prior.config.classes).to(parameter.dtype)
    with torch.no_grad():
        target = torch.log_softmax(prior(one_hot, audio_code).float(), dim=-1)
    torch.manual_seed(seed)
    draft = ContextModel(replace(prior.config, channels_per_head=channels_per_head))
    draft = draft.to(parameter.device, parameter.dtype).train()
    optimiser = torch.optim.Adam(
        [p for p in draft.parameters() if p.requires_grad], lr=learning_rate
    )
    for _ in range(steps):
        logq = torch.log_softmax(draft(one_hot, audio_code).float(), dim=-1)
        loss = (target.exp() * (target - logq)).sum(dim=-1).mean()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    return draft.eval()
