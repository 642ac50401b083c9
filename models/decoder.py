"""The stage-1 vertex decoder: categorical codes + a template mesh -> animated meshes."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from meshtalk.models.config import LatentModelConfig
from meshtalk.models.encoders import leaky


class VertexUNet(nn.Module):
    """UNet-style decoder under the names of the authors' `vertex_unet.pkl`.

    The normalised template is encoded by an MLP whose layer inputs are kept as skips; the template
    code and the codes are fused per frame (in the order of `config.decoder_fusion`: the release
    reads [template code, one-hot codes]) and run through an LSTM; the way back up adds the skip
    of the same size after each layer, ending with the normalised template itself, so the output
    cannot ignore the template.
    """

    def __init__(self, config: LatentModelConfig) -> None:
        super().__init__()
        self.config = config
        v3 = config.num_vertices * 3
        widths = (v3, *config.decoder_hidden)
        self.slope = config.leaky_slope
        self.vertex_bias = nn.Parameter(torch.zeros(v3))
        self.register_buffer("mean", torch.zeros(1, 1, config.num_vertices, 3))
        self.register_buffer("stddev", torch.ones(1, 1, config.num_vertices, 3))
        self.encoder = nn.ModuleList(
            nn.Linear(widths[i], widths[i + 1]) for i in range(len(widths) - 1)
        )
        bottleneck = widths[-1]
        self.fusion = nn.Linear(config.heads * config.classes + bottleneck, bottleneck)
        self.temporal = nn.LSTM(
            bottleneck, bottleneck, num_layers=config.temporal_layers, batch_first=True
        )
        self.decoder = nn.ModuleList(
            nn.Linear(widths[i], widths[i - 1]) for i in range(len(widths) - 1, 0, -1)
        )

    def forward(
        self,
        template: torch.Tensor,
        codes: torch.Tensor,
        state: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Decode codes onto a template.

        Args:
            template: (B, V, 3) neutral face.
            codes: (B, T, H, C) one-hot (or soft) codes.
            state: optional LSTM state to continue from (for decoding a long sequence in chunks).

        Returns:
            (B, T, V, 3) meshes.
        """
        return self.decode(template, codes, state)[0]

    def encode_template(self, template: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """(B, V, 3) template -> its code (B, bottleneck) and the skips of the way back up.

        What `decode` computes first; a caller decoding one template in many chunks computes it
        once and passes it as `encoded` (the template encoder's weights are then read only once).
        """
        x = ((template - self.mean[0]) / self.stddev[0]).flatten(1)  # (B, V*3)
        skips = []
        for layer in self.encoder:
            skips.append(x)
            x = leaky(layer(x), self.slope)
        return x, skips

    def decode(
        self,
        template: torch.Tensor,
        codes: torch.Tensor,
        state: tuple[torch.Tensor, torch.Tensor] | None = None,
        encoded: tuple[torch.Tensor, list[torch.Tensor]] | None = None,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """Like `forward`, also returning the LSTM state after the last frame (`encoded`: the
        template's `encode_template`, when already computed)."""
        b, t = codes.shape[:2]
        x, skips = self.encode_template(template) if encoded is None else encoded
        x = x.unsqueeze(1).expand(b, t, -1)
        parts = [x, codes.flatten(2)]
        if self.config.decoder_fusion == "codes_first":
            parts.reverse()
        x = leaky(self.fusion(torch.cat(parts, dim=-1)), self.slope)
        x, state = self.temporal(x, state)
        if torch.is_grad_enabled():
            for layer, skip in zip(self.decoder, reversed(skips)):
                x = leaky(layer(x), self.slope) + skip.unsqueeze(1)
            x = (x + self.vertex_bias).view(b, t, -1, 3)
            return x * self.stddev + self.mean, state
        # Inference: the same arithmetic in place, so the (B, T, V*3) output is allocated once.
        for layer, skip in zip(self.decoder, reversed(skips)):
            x = F.leaky_relu_(layer(x), self.slope).add_(skip.unsqueeze(1))
        x = x.add_(self.vertex_bias).view(b, t, -1, 3)
        return x.mul_(self.stddev).add_(self.mean), state
