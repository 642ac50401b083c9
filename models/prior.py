"""Stage 2: the audio-conditioned autoregressive prior over the categorical codes (SPEC section 4).

A PixelCNN-like model over time x heads. Every layer is a 1x1 convolution over the current step
whose weight is masked so that head h reads only heads < h of its input, plus (in the four middle
layers) an unmasked 1x1 projection of the current audio code and a causal dilated convolution that
reads steps t-1 and t-1-d; a leaky ReLU follows each middle layer (and, for priors trained here
before `PriorModelConfig.input_activation` existed, the input layer too). Parameter and buffer
names follow the authors' `context_model.pkl` one to one (SPEC section 7). The full-sequence
`forward` is the teacher-forced model; `PriorSampler` (in `meshtalk.models.sampler`) evaluates the
same function one step at a time.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class PriorModelConfig:
    """Sizes of the autoregressive prior."""

    heads: int = 16
    """H: categorical heads per frame (as in stage 1)."""
    classes: int = 128
    """C: classes per head (as in stage 1)."""
    audio_dim: int = 128
    """Size of the stage-1 audio code that conditions the prior."""
    channels_per_head: int = 64
    """Hidden channels of each head in every layer."""
    dilations: tuple[int, ...] = (1, 2, 4, 8)
    """Dilation of each middle layer's causal convolution over earlier steps."""
    audio_conditioning: bool = True
    """Add the audio projections; off: a prior over codes alone (for comparison)."""
    leaky_slope: float = 0.2
    """Negative slope of the leaky ReLUs."""
    input_activation: bool = False
    """Apply the leaky ReLU after the input (embedding) layer too. False: after the four middle
    layers only, as the authors' release (SPEC section 4), in training and in the sampler; True:
    what priors trained here before this field existed do (configs without it load with it)."""

    def __post_init__(self) -> None:
        from meshtalk.models.config import MAX_PARAMETERS, size_problems, widths_problems

        limits = {"heads": 1024, "classes": 4096, "audio_dim": 4096, "channels_per_head": 4096}
        problems = size_problems(self, limits)  # bounded before anything is allocated
        problems += widths_problems("dilations", self.dilations, 1024)
        if not isinstance(self.input_activation, bool):
            value = self.input_activation
            problems.append(f"input_activation must be true or false, got {value!r}")
        if not problems and self.parameter_estimate > MAX_PARAMETERS:
            problems.append(
                f"these sizes make a prior of about {self.parameter_estimate / 1e6:.0f}M "
                f"parameters, more than {MAX_PARAMETERS / 1e6:.0f}M (fewer heads or channels)"
            )
        if problems:
            raise ValueError("; ".join(problems))

    @property
    def parameter_estimate(self) -> int:
        """About how many parameters the prior has (its 1x1 and causal convolutions)."""
        hidden, layers = self.heads * self.channels_per_head, len(self.dilations)
        inner = layers * (3 * hidden * hidden + self.audio_dim * hidden)
        return inner + 2 * hidden * self.heads * self.classes

    @property
    def receptive_field(self) -> int:
        """Frames (the current one included) that one step's logits can depend on."""
        return 1 + sum(1 + d for d in self.dilations)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> PriorModelConfig:
        """From a saved config.json's `model` mapping. Configs written before `input_activation`
        existed belong to priors with the activation after their input layer."""
        values = dict(values)
        values.setdefault("input_activation", True)
        if isinstance(values.get("dilations"), list):
            values["dilations"] = tuple(values["dilations"])
        return cls(**values)


PRIOR_PRESETS: dict[str, PriorModelConfig] = {
    "release": PriorModelConfig(),
    "paper": PriorModelConfig(heads=64),
    "tiny": PriorModelConfig(heads=4, classes=16, audio_dim=32, channels_per_head=16),
}
"""Sizes matching the stage-1 presets of the same name."""


def prior_preset(name: str, **overrides) -> PriorModelConfig:
    """A preset with some fields replaced."""
    if name not in PRIOR_PRESETS:
        raise ValueError(f"unknown preset '{name}' (choose from {', '.join(PRIOR_PRESETS)})")
    return replace(PRIOR_PRESETS[name], **overrides)


def head_mask(heads: int, in_per_head: int, out_per_head: int) -> torch.Tensor:
    """(H*out, H*in, 1) mask: output block h reads input blocks < h only."""
    mask = torch.zeros(heads * out_per_head, heads * in_per_head, 1)
    for h in range(1, heads):
        mask[h * out_per_head : (h + 1) * out_per_head, : h * in_per_head] = 1
    return mask


class MaskedLayer(nn.Module):
    """One prior layer: masked current-step projection, audio projection, optional history.

    `masked_linear` and `unmasked_linear` are 1x1 convolutions; `historic` (if `dilation`) is a
    kernel-2 convolution applied to the input shifted right by one step, so output t reads
    inputs t-1-dilation and t-1.
    """

    def __init__(
        self,
        *,
        heads: int,
        in_per_head: int,
        out_per_head: int,
        audio_dim: int,
        dilation: int | None,
    ) -> None:
        super().__init__()
        self.dilation = dilation
        self.register_buffer("mask", head_mask(heads, in_per_head, out_per_head))
        self.masked_linear = nn.Conv1d(heads * in_per_head, heads * out_per_head, 1)
        self.unmasked_linear = nn.Conv1d(audio_dim, heads * out_per_head, 1)
        if dilation is not None:
            self.historic = nn.Conv1d(
                heads * in_per_head, heads * out_per_head, 2, dilation=dilation
            )

    def masked_weight(self) -> torch.Tensor:
        return self.masked_linear.weight * self.mask

    def forward(self, x: torch.Tensor, audio: torch.Tensor | None) -> torch.Tensor:
        """(B, H*in, T) input and (B, audio_dim, T) audio codes (or None) -> (B, H*out, T)."""
        y = F.conv1d(x, self.masked_weight(), self.masked_linear.bias)
        if audio is not None:
            y = y + self.unmasked_linear(audio)
        if self.dilation is not None:
            shifted = F.pad(x, (1 + self.dilation, 0))[..., :-1]
            y = y + self.historic(shifted)
        return y


class ContextModel(nn.Module):
    """p(c | a) = prod_t prod_h p(c[t, h] | c[<t], c[t, <h], a[<=t])."""

    def __init__(self, config: PriorModelConfig) -> None:
        super().__init__()
        self.config = config
        h, c, k = config.heads, config.classes, config.channels_per_head
        self.embedding = MaskedLayer(
            heads=h, in_per_head=c, out_per_head=k, audio_dim=config.audio_dim, dilation=None
        )
        self.context_layers = nn.ModuleList(
            MaskedLayer(
                heads=h, in_per_head=k, out_per_head=k, audio_dim=config.audio_dim, dilation=d
            )
            for d in config.dilations
        )
        self.logits = MaskedLayer(
            heads=h, in_per_head=k, out_per_head=c, audio_dim=config.audio_dim, dilation=None
        )
        # Kept for the release's names but never used: frozen, so no optimizer or DDP expects
        # gradients for them.
        unused = [self.embedding, self.logits]
        if not config.audio_conditioning:
            unused += list(self.context_layers)
        for layer in unused:
            layer.unmasked_linear.requires_grad_(False)

    def layers(self) -> list[MaskedLayer]:
        """The embedding, the middle layers and the logits layer, in order."""
        return [self.embedding, *self.context_layers, self.logits]

    def forward(self, one_hot: torch.Tensor, audio_code: torch.Tensor) -> torch.Tensor:
        """Teacher-forced logits.

        Args:
            one_hot: (B, T, H, C) codes (one-hot, or any weights over the classes).
            audio_code: (B, T, audio_dim) stage-1 audio codes of the same frames.

        Returns:
            (B, T, H, C) unnormalised logits of c[t, h] given c[<t], c[t, <h] and a[<=t].
        """
        b, t, h, c = one_hot.shape
        slope = self.config.leaky_slope
        audio = audio_code.transpose(1, 2) if self.config.audio_conditioning else None
        x = self.embedding(one_hot.reshape(b, t, h * c).transpose(1, 2), None)
        if self.config.input_activation:
            x = F.leaky_relu(x, slope)
        for layer in self.context_layers:
            x = F.leaky_relu(layer(x, audio), slope)
        logits = self.logits(x, None)
        return logits.transpose(1, 2).reshape(b, t, h, c)

    def log_likelihood(self, codes: torch.Tensor, audio_code: torch.Tensor) -> torch.Tensor:
        """(B, T, H) class indices -> (B, T, H) log p of each code (teacher forced)."""
        one_hot = F.one_hot(codes, self.config.classes).to(audio_code.dtype)
        logprobs = F.log_softmax(self(one_hot, audio_code).float(), dim=-1)
        return logprobs.gather(-1, codes.unsqueeze(-1)).squeeze(-1)
