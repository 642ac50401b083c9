"""The stage-1 encoders: audio, expression, and their fusion into per-head categorical logits.

Parameter names follow the authors' `encoder.pkl` one to one (SPEC section 7), so importing it is a
pure renaming-free load.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import torchaudio
from torch import nn

from meshtalk.models.config import LatentModelConfig, MelConfig


def leaky(x: torch.Tensor, slope: float) -> torch.Tensor:
    return F.leaky_relu(x, slope)


class AudioEncoder(nn.Module):
    """Log-mel windows of `window` mel frames -> one audio code per frame.

    A stack of 'valid' 1-D convolutions over mel time, each residual layer averaged with its
    centre-cropped input, then a mean over the remaining time steps and a linear code. The stack is
    translation-equivariant, so `encode_span` computes it once over an utterance and pools each
    frame's window from it; `forward` runs it on every window separately (the reference).
    """

    @classmethod
    def of(cls, config: LatentModelConfig) -> AudioEncoder:
        """The audio encoder of a stage-1 model's config."""
        return cls(
            mel=config.mel,
            channels=config.audio_channels,
            kernel=config.audio_kernel,
            dilations=config.audio_dilations,
            code_dim=config.code_dim,
            dropout=config.audio_dropout,
            slope=config.leaky_slope,
            window=config.audio_window_frames,
            mel_mean=0.0 if config.mel_mean is None else config.mel_mean,
            mel_std=1.0 if config.mel_std is None else config.mel_std,
        )

    def __init__(
        self,
        *,
        mel: MelConfig,
        channels: int,
        kernel: int,
        dilations: tuple[int, ...],
        code_dim: int,
        dropout: float,
        slope: float,
        window: int,
        mel_mean: float = 0.0,
        mel_std: float = 1.0,
    ) -> None:
        super().__init__()
        self.mel_config, self.dropout, self.slope = mel, dropout, slope
        self.mel_mean, self.mel_std = mel_mean, mel_std
        # Not used here: log-mel is computed by the audio front end (meshtalk.pipelines.frontend),
        # the one implementation. The module stays for its buffers, which carry the authors'
        # checkpoint names audio_encoder.melspec.spectrogram.window and
        # audio_encoder.melspec.mel_scale.fb (SPEC section 7), so their encoder.pkl loads as is.
        self.melspec = torchaudio.transforms.MelSpectrogram(
            sample_rate=mel.sample_rate,
            n_fft=mel.n_fft,
            win_length=mel.win_length,
            hop_length=mel.hop_length,
            n_mels=mel.n_mels,
        )
        self.convert_dimensions = nn.Conv1d(mel.n_mels, channels, kernel)
        self.convs = nn.ModuleList(
            nn.Conv1d(channels, channels, kernel, dilation=d) for d in dilations
        )
        self.code = nn.Linear(channels, code_dim)
        self.receptive_field = 1 + (kernel - 1) * (1 + sum(dilations))
        self.window = window
        if window < self.receptive_field:
            raise ValueError(
                f"audio window of {window} mel frames is shorter than the audio encoder's "
                f"receptive field of {self.receptive_field}"
            )

    def features(self, mel: torch.Tensor) -> torch.Tensor:
        """(N, n_mels, L) log-mel -> (N, channels, L - receptive_field + 1).

        Output p depends on mel frames p .. p + receptive_field - 1 only.
        """
        x = leaky(self.convert_dimensions((mel - self.mel_mean) / self.mel_std), self.slope)
        for conv in self.convs:
            y = leaky(conv(x), self.slope)
            y = F.dropout(y, self.dropout, self.training)
            crop = (x.shape[-1] - y.shape[-1]) // 2
            x = (x[..., crop : x.shape[-1] - crop] + y) / 2
        return x

    def forward(self, windows: torch.Tensor) -> torch.Tensor:
        """Reference path: encode every frame's window separately.

        Args:
            windows: (B, T, n_mels, W) log-mel window of each frame, W = `window`.

        Returns:
            (B, T, code_dim) audio codes.
        """
        b, t, n_mels, w = windows.shape
        if w != self.window:
            raise ValueError(f"windows of {w} mel frames given to an encoder of {self.window}")
        pooled = self.features(windows.reshape(b * t, n_mels, w)).mean(dim=-1)
        return self.code(pooled).view(b, t, -1)

    def encode_span(self, mel: torch.Tensor, starts: torch.Tensor) -> torch.Tensor:
        """Fast path: one convolution pass over a mel span, each frame's window pooled from it.

        Equal to `forward` on the windows mel[starts[k] : starts[k] + window] (up to float
        rounding; exactly so without dropout).

        Args:
            mel: (B, L, n_mels) log-mel holding every window.
            starts: (B, T) int64, first mel frame of each frame's window in `mel`.

        Returns:
            (B, T, code_dim) audio codes.
        """
        features = self.features(mel.transpose(1, 2))  # (B, C, L - R + 1)
        outputs_per_window = self.window - self.receptive_field + 1
        if outputs_per_window > 1:
            features = F.avg_pool1d(features, outputs_per_window, stride=1)
        index = starts.unsqueeze(1).expand(-1, features.shape[1], -1)
        pooled = torch.gather(features, 2, index).transpose(1, 2)  # (B, T, C)
        return self.code(pooled)


class ExpressionEncoder(nn.Module):
    """Tracked meshes -> one expression code per frame (per-vertex normalisation, MLP, optionally
    a LayerNorm, LSTM)."""

    def __init__(
        self,
        *,
        num_vertices: int,
        hidden: int,
        code_dim: int,
        slope: float,
        input: str = "mesh",
        norm: bool = False,
    ) -> None:
        super().__init__()
        self.slope, self.input = slope, input
        self.register_buffer("mean", torch.zeros(1, 1, num_vertices, 3))
        self.register_buffer("stddev", torch.ones(1, 1, num_vertices, 3))
        self.layers = nn.ModuleList(
            [nn.Linear(num_vertices * 3, hidden), nn.Linear(hidden, code_dim)]
        )
        # Optional (`LatentModelConfig.expression_norm`), absent from the authors' release.
        self.norm = nn.LayerNorm(code_dim) if norm else None
        self.lstm = nn.LSTM(code_dim, code_dim, batch_first=True)
        self.code = nn.Linear(code_dim, code_dim)

    def forward(self, vertices: torch.Tensor, template: torch.Tensor | None = None) -> torch.Tensor:
        """(B, T, V, 3) meshes of faces whose neutral is template (B, V, 3) -> (B, T, code_dim).

        With input 'mesh' the template is not read: (vertices - mean) / stddev, as the authors'
        release; with 'offset' the encoder reads (vertices - template) / stddev.
        """
        if self.input == "offset":
            if template is None:
                raise ValueError("an 'offset' expression encoder needs the neutral template")
            x = ((vertices - template.unsqueeze(1)) / self.stddev).flatten(2)
        else:
            x = ((vertices - self.mean) / self.stddev).flatten(2)
        for layer in self.layers:
            x = leaky(layer(x), self.slope)
        if self.norm is not None:
            x = self.norm(x)
        x, _ = self.lstm(x)
        return self.code(x)


class FusionModel(nn.Module):
    """(expression code, audio code) -> per-head log-probabilities over the classes."""

    def __init__(
        self,
        *,
        code_dim: int,
        hidden: int,
        heads: int,
        classes: int,
        slope: float,
        audio: bool = True,
    ) -> None:
        super().__init__()
        self.heads, self.classes, self.audio = heads, classes, audio
        self.mlp = nn.Sequential(
            nn.Linear(2 * code_dim, hidden),
            nn.LeakyReLU(slope),
            nn.Linear(hidden, hidden),
            nn.LeakyReLU(slope),
            nn.Linear(hidden, heads * classes),
        )

    def forward(self, expression_code: torch.Tensor, audio_code: torch.Tensor) -> torch.Tensor:
        """(B, T, D) and (B, T, D) -> (B, T, H, C) log-softmax over C.

        Without `audio` (expression-only input), the audio code is read as zeros.
        """
        if not self.audio:
            audio_code = torch.zeros_like(audio_code)
        logits = self.mlp(torch.cat([expression_code, audio_code], dim=-1))
        logits = logits.view(*logits.shape[:-1], self.heads, self.classes)
        return F.log_softmax(logits, dim=-1)


class LatentEncoder(nn.Module):
    """The three encoder parts under the names of the authors' `encoder.pkl`."""

    def __init__(self, config: LatentModelConfig) -> None:
        super().__init__()
        self.config = config
        self.audio_encoder = AudioEncoder.of(config)
        self.expression_encoder = ExpressionEncoder(
            num_vertices=config.num_vertices,
            hidden=config.expression_hidden,
            code_dim=config.code_dim,
            slope=config.leaky_slope,
            input=config.expression_input,
            norm=config.expression_norm,
        )
        self.fusion_model = FusionModel(
            code_dim=config.code_dim,
            hidden=config.fusion_hidden,
            heads=config.heads,
            classes=config.classes,
            slope=config.leaky_slope,
            audio=config.fusion_input == "both",
        )

    def forward(
        self,
        vertices: torch.Tensor,
        template: torch.Tensor,
        mel: torch.Tensor,
        mel_starts: torch.Tensor,
    ) -> torch.Tensor:
        """(B, T, V, 3) meshes of a face with neutral template (B, V, 3) and their audio span
        (see `AudioEncoder.encode_span`) -> (B, T, H, C) log-probabilities."""
        audio_code = self.audio_encoder.encode_span(mel, mel_starts)
        return self.fusion_model(self.expression_encoder(vertices, template), audio_code)
