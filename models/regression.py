"""An audio-only regression of the vertices: the baseline the paper compares its latent space with.

The stage-1 audio encoder (the same layers and sizes) followed by a small MLP that maps each frame's
audio code straight to the face's displacement from its neutral template; trained with plain L2 on
the vertices. It sees nothing but the audio, so whatever in the face does not follow the audio
(blinks, brow raises) is regressed to its mean: the over-smoothed upper face of the paper's
Figure 6.
"""

from __future__ import annotations

import torch
from torch import nn

from meshtalk.models.config import LatentModelConfig
from meshtalk.models.encoders import AudioEncoder


class AudioRegression(nn.Module):
    """Audio -> vertices directly.

    Args:
        config: sizes of the audio encoder (`audio_*`, `code_dim`, `mel*`, `leaky_slope`) and the
            vertex count; the latent-space fields are not used.
        hidden: width of the MLP between the audio code and the vertex offsets.
    """

    def __init__(self, config: LatentModelConfig, hidden: int = 128) -> None:
        super().__init__()
        self.config = config
        self.audio_encoder = AudioEncoder.of(config)
        self.head = nn.Sequential(
            nn.Linear(config.code_dim, hidden),
            nn.LeakyReLU(config.leaky_slope),
            nn.Linear(hidden, hidden),
            nn.LeakyReLU(config.leaky_slope),
            nn.Linear(hidden, config.num_vertices * 3),
        )
        self.register_buffer("stddev", torch.ones(1, 1, config.num_vertices, 3))

    def set_statistics(self, std: torch.Tensor) -> None:
        """Per-vertex standard deviation (V, 3) of the training meshes: the offsets' scale."""
        self.stddev.copy_(std.view_as(self.stddev))

    def forward(
        self, template: torch.Tensor, mel: torch.Tensor, mel_starts: torch.Tensor
    ) -> torch.Tensor:
        """Meshes (B, T, V, 3) of faces with neutral template (B, V, 3) speaking a mel span.

        Args:
            template: (B, V, 3) neutral faces.
            mel: (B, L, n_mels) log-mel holding every frame's window.
            mel_starts: (B, T) first mel frame of each frame's window (see
                `AudioEncoder.encode_span`).
        """
        code = self.audio_encoder.encode_span(mel, mel_starts)
        b, t = code.shape[:2]
        offsets = self.head(code).view(b, t, -1, 3) * self.stddev
        return template.unsqueeze(1) + offsets

    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Mean squared vertex distance (mm^2) on a batch of template, vertices, mel, mel_starts."""
        prediction = self(batch["template"], batch["mel"], batch["mel_starts"])
        return (prediction - batch["vertices"]).pow(2).sum(dim=-1).mean()
