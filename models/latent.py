"""Stage 1 as one module: encoders + Gumbel quantiser + vertex decoder, and its training losses."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from meshtalk.models.config import LatentModelConfig
from meshtalk.models.decoder import VertexUNet
from meshtalk.models.encoders import LatentEncoder


def gumbel_one_hot(
    logprobs: torch.Tensor, gumbel: torch.Tensor | None = None, tau: float = 1.0
) -> torch.Tensor:
    """Straight-through Gumbel-softmax: a hard one-hot forward, the soft sample's gradient back.

    Args:
        logprobs: (..., C) log-probabilities.
        gumbel: Gumbel(0, 1) noise of the same shape; drawn from the global generator if None.
        tau: softmax temperature.

    Returns:
        (..., C) one-hot codes.
    """
    if gumbel is None:
        gumbel = -torch.empty_like(logprobs).exponential_().log()
    soft = F.softmax((logprobs + gumbel) / tau, dim=-1)
    hard = F.one_hot(soft.argmax(dim=-1), soft.shape[-1]).to(soft.dtype)
    return hard - soft.detach() + soft


def argmax_one_hot(logprobs: torch.Tensor) -> torch.Tensor:
    """(..., C) log-probabilities -> one-hot of the most likely class."""
    return F.one_hot(logprobs.argmax(dim=-1), logprobs.shape[-1]).to(logprobs.dtype)


def squared_error(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(..., V, 3) -> (..., V) squared vertex distances."""
    return (prediction - target).pow(2).sum(dim=-1)


def masked_error(
    prediction: torch.Tensor, target: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """Mean over frames of the mask-weighted squared vertex error, normalised by the mask sum."""
    return (squared_error(prediction, target) * mask).sum(dim=-1).mean() / mask.sum()


PARTNER_KEYS = ("vertices", "template", "mel", "mel_starts")
"""What a batch holds of each item's cross-modality partner, as partner_<key>."""


def code_usage(logprobs: torch.Tensor) -> torch.Tensor:
    """1 - the mean over heads of each head's perplexity over a batch, as a share of its classes.

    (B, T, H, C) log-probabilities -> a scalar in [0, 1 - 1/C]: 0 when every head's probability,
    averaged over the batch's frames, is spread evenly over its classes; 1 - 1/C when each head
    gives one class to every frame (the codes then carry nothing). The diversity term of
    wav2vec 2.0's Gumbel quantiser (Baevski et al. 2020).
    """
    mean = logprobs.exp().flatten(0, -3).mean(dim=0)  # (H, C)
    entropy = -(mean * mean.clamp_min(1e-12).log()).sum(dim=-1)
    return 1.0 - entropy.exp().mean() / logprobs.shape[-1]


def partner_inputs(batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, ...]:
    """The partner's (vertices, template, mel, mel_starts), the arguments of `codes`."""
    return tuple(batch[f"partner_{key}"] for key in PARTNER_KEYS)


class LatentAutoencoder(nn.Module):
    """Encoder and decoder of stage 1; `forward` returns the training losses (SPEC section 5)."""

    def __init__(self, config: LatentModelConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = LatentEncoder(config)
        self.decoder = VertexUNet(config)

    def set_statistics(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        """Per-vertex mean and standard deviation (V, 3) of the training meshes."""
        for module in (self.encoder.expression_encoder, self.decoder):
            module.mean.copy_(mean.view_as(module.mean))
            module.stddev.copy_(std.view_as(module.stddev))

    def codes(
        self,
        vertices: torch.Tensor,
        template: torch.Tensor,
        mel: torch.Tensor,
        mel_starts: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(expression codes, audio codes), each (B, T, code_dim), of meshes (B, T, V, 3) of a
        face with neutral template (B, V, 3) and their mel span (see AudioEncoder.encode_span)."""
        audio = self.encoder.audio_encoder.encode_span(mel, mel_starts)
        return self.encoder.expression_encoder(vertices, template), audio

    def decode(
        self,
        template: torch.Tensor,
        expression_code: torch.Tensor,
        audio_code: torch.Tensor,
        gumbel: torch.Tensor | None = None,
        sample: bool = True,
    ) -> torch.Tensor:
        """Fuse two codes, quantise (Gumbel if `sample`, else argmax) and decode onto a template."""
        logprobs = self.encoder.fusion_model(expression_code, audio_code)
        one_hot = gumbel_one_hot(logprobs, gumbel) if sample else argmax_one_hot(logprobs)
        return self.decoder(template, one_hot)

    def forward(
        self,
        batch: dict[str, torch.Tensor],
        masks: dict[str, torch.Tensor],
        gumbel: torch.Tensor | None = None,
        cross_modality: bool = True,
        upper_face_weight: float = 1.0,
        code_usage_weight: float = 0.0,
    ) -> dict[str, torch.Tensor]:
        """Training losses of one batch.

        Args:
            batch: template (B, V, 3), vertices (B, T, V, 3), mel (B, L, n_mels), mel_starts
                (B, T), and the cross-modality partner's partner_vertices, partner_template,
                partner_mel, partner_mel_starts (another segment of the same length).
            masks: mouth, upper_face and eyelids, each (V,).
            gumbel: (3, B, T, H, C) Gumbel noise for the three decodings, or None to draw it.
            cross_modality: add the two cross-modality terms; otherwise plain reconstruction.
            upper_face_weight: weight of eyelids and upper_face_from_expression in the total
                (1: equal weights).
            code_usage_weight: weight of `code_usage` of the quantiser's distribution in the
                total; 0: the term is neither computed nor returned (the method).

        Returns:
            reconstruction, eyelids, and if `cross_modality` mouth_from_audio and
            upper_face_from_expression, and code_usage if weighted, each a scalar (unweighted),
            and their weighted sum as total.
        """
        noise = [None] * 3 if gumbel is None else gumbel.unbind(0)
        target, template = batch["vertices"], batch["template"]
        expression, audio = self.codes(target, template, batch["mel"], batch["mel_starts"])
        logprobs = self.encoder.fusion_model(expression, audio)
        prediction = self.decoder(template, gumbel_one_hot(logprobs, noise[0]))
        losses = {
            "reconstruction": squared_error(prediction, target).mean(),
            "eyelids": masked_error(prediction, target, masks["eyelids"]),
        }
        if cross_modality:
            other_expression, other_audio = self.codes(*partner_inputs(batch))
            own_audio = self.decode(template, other_expression, audio, noise[1])
            own_expression = self.decode(template, expression, other_audio, noise[2])
            losses["mouth_from_audio"] = masked_error(own_audio, target, masks["mouth"])
            losses["upper_face_from_expression"] = masked_error(
                own_expression, target, masks["upper_face"]
            )
        if code_usage_weight > 0:
            losses["code_usage"] = code_usage(logprobs)
        weights = dict.fromkeys(("eyelids", "upper_face_from_expression"), upper_face_weight)
        weights["code_usage"] = code_usage_weight
        losses["total"] = sum(weights.get(name, 1.0) * value for name, value in losses.items())
        return losses
