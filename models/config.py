"""Typed sizes of the stage-1 model (encoders, fusion, decoder) and its presets."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace


@dataclass(frozen=True)
class MelConfig:
    """Log-mel settings of the audio front end (SPEC section 3)."""

    sample_rate: int = 16000
    """Audio sample rate in Hz the features are computed at."""
    n_mels: int = 80
    """Number of mel bands."""
    n_fft: int = 2048
    """FFT size in samples."""
    win_length: int = 800
    """Analysis window in samples (50 ms)."""
    hop_length: int = 160
    """Hop between mel frames in samples (10 ms)."""
    log_floor: float = 1e-10
    """The power mel spectrogram is clamped at this value before the log."""

    @property
    def frames_per_second(self) -> float:
        return self.sample_rate / self.hop_length


EXPRESSION_INPUTS = ("offset", "mesh")


@dataclass(frozen=True)
class LatentModelConfig:
    """Sizes of the MeshTalk encoders, fusion and vertex decoder (SPEC section 4)."""

    num_vertices: int = 6172
    """V: vertices of the face topology (set from the prepared data when training)."""
    heads: int = 16
    """H: categorical latent heads per frame."""
    classes: int = 128
    """C: classes per head."""
    audio_channels: int = 128
    """Channels of the audio encoder's convolutions."""
    audio_kernel: int = 5
    """Kernel size of every audio convolution."""
    audio_dilations: tuple[int, ...] = (2, 4, 6, 2, 4, 6)
    """Dilations of the residual audio convolutions after the first one."""
    audio_dropout: float = 0.2
    """Dropout after each residual audio convolution in training."""
    mel_mean: float | None = None
    """Log-mel is standardised as (mel - mel_mean) / mel_std before the first convolution. None:
    taken from the training data when training starts (raw log-mel, 0 and 1, is what the
    release's weights expect). Without it the log-mel's large mean (about -11) lets Adam's
    first steps blow up the audio codes, saturating the Gumbel softmax for good."""
    mel_std: float | None = None
    """See `mel_mean`."""
    code_dim: int = 128
    """Size of the audio code and of the expression code (and the expression LSTM)."""
    expression_input: str = "offset"
    """What the expression encoder reads. 'offset': each frame's displacement from the identity's
    neutral template, divided by the per-vertex deviation, so the code carries the expression and
    not the face's shape; with the absolute meshes and a handful of identities, shape differences
    swamp the expression (a blink moves an eyelid by a fraction of how much eyelids differ between
    faces) and the expression path learns nothing in a CPU-sized run. 'mesh': (mesh - mean) / std,
    what the authors' release encodes (use it with their weights)."""
    expression_hidden: int = 256
    """Width of the expression encoder's first layer."""
    fusion_hidden: int = 256
    """Width of the fusion MLP's hidden layers."""
    decoder_hidden: tuple[int, ...] = (512, 256, 128)
    """Widths of the vertex decoder's template encoder; mirrored on the way up."""
    temporal_layers: int = 2
    """LSTM layers of the vertex decoder."""
    leaky_slope: float = 0.2
    """Negative slope of every leaky ReLU."""
    mel: MelConfig = field(default_factory=MelConfig)
    """The audio front end."""

    def __post_init__(self) -> None:
        problems = [
            f"{f.name} must be positive, got {getattr(self, f.name)}"
            for f in fields(self)
            if f.name in ("num_vertices", "heads", "classes", "audio_channels", "code_dim")
            and getattr(self, f.name) <= 0
        ]
        if self.audio_kernel < 1 or any(d < 1 for d in self.audio_dilations):
            problems.append(
                f"audio_kernel and audio_dilations must be >= 1, got {self.audio_kernel} and "
                f"{list(self.audio_dilations)}"
            )
        if self.expression_input not in EXPRESSION_INPUTS:
            problems.append(
                f"expression_input must be one of {', '.join(EXPRESSION_INPUTS)}, got "
                f"{self.expression_input!r}"
            )
        if self.mel_std is not None and self.mel_std <= 0:
            problems.append(f"mel_std must be positive, got {self.mel_std}")
        if not 0.0 <= self.audio_dropout < 1.0:
            problems.append(f"audio_dropout must be in [0, 1), got {self.audio_dropout}")
        if len(self.decoder_hidden) < 1 or any(w <= 0 for w in self.decoder_hidden):
            problems.append(f"decoder_hidden must be positive widths, got {self.decoder_hidden}")
        if problems:
            raise ValueError("; ".join(problems))

    @property
    def audio_receptive_field(self) -> int:
        """Mel frames that one output of the audio convolution stack sees."""
        return 1 + (self.audio_kernel - 1) * (1 + sum(self.audio_dilations))

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> LatentModelConfig:
        values = dict(values)
        # Configs written before `expression_input` existed belong to models that encode meshes.
        values.setdefault("expression_input", "mesh")
        if isinstance(values.get("mel"), dict):
            values["mel"] = MelConfig(**values["mel"])
        for key in ("audio_dilations", "decoder_hidden"):
            if key in values:
                values[key] = tuple(values[key])
        return cls(**values)


LATENT_PRESETS: dict[str, LatentModelConfig] = {
    "release": LatentModelConfig(),
    "paper": LatentModelConfig(heads=64),
    "tiny": LatentModelConfig(
        heads=4,
        classes=16,
        audio_channels=32,
        code_dim=32,
        expression_hidden=64,
        fusion_hidden=64,
        decoder_hidden=(128, 64, 32),
    ),
}
"""'release': the authors' public release (H=16, C=128); 'paper': H=64 heads as in the paper;
'tiny': for tests and CPU demos. Every preset sees 101 mel frames (1 s) through one output of its
audio convolutions, the release window: with a smaller receptive field the mean over the window's
outputs blurs the frame's own moment of speech and lips barely follow the audio."""


def latent_preset(name: str, **overrides) -> LatentModelConfig:
    """A preset with some fields replaced."""
    if name not in LATENT_PRESETS:
        raise ValueError(f"unknown preset '{name}' (choose from {', '.join(LATENT_PRESETS)})")
    return replace(LATENT_PRESETS[name], **overrides)
