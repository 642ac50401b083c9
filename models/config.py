"""Typed sizes of the stage-1 model (encoders, fusion, decoder) and its presets."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace

# Sizes a config may ask for: far above any real face model, far below what exhausts a machine, so
# a damaged or mistyped config is refused before anything is allocated.
SIZE_LIMITS = {
    "num_vertices": 1_000_000,
    "heads": 1024,
    "classes": 4096,
    "audio_channels": 4096,
    "audio_kernel": 64,
    "audio_window_frames": 100_000,
    "code_dim": 4096,
    "expression_hidden": 8192,
    "fusion_hidden": 8192,
    "temporal_layers": 16,
}
MAX_PARAMETERS = 500_000_000
"""At most this many parameters (2 GB of float32 weights, about 8 GB with Adam's state)."""


def size_problems(config, limits: dict[str, int]) -> list[str]:
    """One message per size field that is not a whole number from 1 to its limit."""
    problems = []
    for name, limit in limits.items():
        value = getattr(config, name)
        if not isinstance(value, int) or isinstance(value, bool):
            problems.append(f"{name} must be a whole number, got {value!r}")
        elif value < 1:
            problems.append(f"{name} must be positive, got {value}")
        elif value > limit:
            problems.append(f"{name} must be at most {limit}, got {value}")
    return problems


def widths_problems(name: str, values, limit: int, most: int = 64) -> list[str]:
    """Problems of a tuple of sizes (dilations, layer widths): whole numbers in 1..limit."""
    if not isinstance(values, tuple | list) or not 1 <= len(values) <= most:
        return [f"{name} must be 1 to {most} whole numbers, got {values!r}"]
    if any(not isinstance(v, int) or isinstance(v, bool) or not 1 <= v <= limit for v in values):
        return [f"{name} must be whole numbers in 1..{limit}, got {list(values)}"]
    return []


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

    def __post_init__(self) -> None:
        limits = {
            "sample_rate": 384_000,
            "n_mels": 512,
            "n_fft": 65_536,
            "win_length": 65_536,
            "hop_length": 65_536,
        }
        problems = [f"mel.{p}" for p in size_problems(self, limits)]
        if problems:
            raise ValueError("; ".join(problems))

    @property
    def frames_per_second(self) -> float:
        return self.sample_rate / self.hop_length


EXPRESSION_INPUTS = ("offset", "mesh")
FUSION_INPUTS = ("both", "expression")
"""What the fusion model reads: both codes (the method), or the expression code alone (the
paper's expression-only ablation: the audio code is replaced by zeros, its weights unused)."""
DECODER_FUSIONS = ("template_first", "codes_first")
"""Orders of the decoder's fusion input: the release's [template code, one-hot codes], or the
other way round (models trained here before the release's order was known)."""


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
    audio_window_frames: int = 101
    """W, mel frames of each frame's audio window (the audio front end's `window_frames`: 101
    for the release's 1 s window, 61 for the paper's 600 ms), at least the audio receptive
    field. Set from the prepared data when training."""
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
    expression_norm: bool = False
    """A LayerNorm between the expression encoder's MLP and its LSTM. Without it (the authors'
    release has none) the MLP's outputs grew to a deviation of 140-260 in every stage 1 trained
    here (0.16-0.27 at the initial weights), which saturates the LSTM's gates (97-99% of their
    pre-activations beyond +-5): the expression path then learns slowly or not at all, depending
    on the seed and the machine. With it, under 0.5% were beyond +-5."""
    fusion_input: str = "both"
    """What the fusion model reads: 'both', the expression and audio codes (the method);
    'expression', the expression code alone, the audio code zeroed (the paper's Table 1 ablation
    in which the encoder sees only the meshes; for comparison)."""
    expression_hidden: int = 256
    """Width of the expression encoder's first layer."""
    fusion_hidden: int = 256
    """Width of the fusion MLP's hidden layers."""
    decoder_hidden: tuple[int, ...] = (512, 256, 128)
    """Widths of the vertex decoder's template encoder; mirrored on the way up."""
    temporal_layers: int = 2
    """LSTM layers of the vertex decoder."""
    decoder_fusion: str = "template_first"
    """What the decoder's fusion layer reads: 'template_first', the concatenation [template code,
    one-hot codes] as the authors' release (SPEC section 4); 'codes_first', [one-hot codes,
    template code], what models trained here before this field existed read (configs without it
    load with it). The shapes are the same either way: only this field tells them apart."""
    leaky_slope: float = 0.2
    """Negative slope of every leaky ReLU."""
    mel: MelConfig = field(default_factory=MelConfig)
    """The audio front end."""

    def __post_init__(self) -> None:
        problems = size_problems(self, SIZE_LIMITS)
        problems += widths_problems("audio_dilations", self.audio_dilations, 1024)
        problems += widths_problems("decoder_hidden", self.decoder_hidden, 8192)
        if not problems and self.parameter_estimate > MAX_PARAMETERS:
            problems.append(
                f"these sizes make a model of about {self.parameter_estimate / 1e6:.0f}M "
                f"parameters, more than {MAX_PARAMETERS / 1e6:.0f}M (fewer vertices or narrower "
                "layers)"
            )
        if self.expression_input not in EXPRESSION_INPUTS:
            problems.append(
                f"expression_input must be one of {', '.join(EXPRESSION_INPUTS)}, got "
                f"{self.expression_input!r}"
            )
        if not isinstance(self.expression_norm, bool):
            problems.append(f"expression_norm must be true or false, got {self.expression_norm!r}")
        if self.fusion_input not in FUSION_INPUTS:
            problems.append(
                f"fusion_input must be one of {', '.join(FUSION_INPUTS)}, got {self.fusion_input!r}"
            )
        if self.decoder_fusion not in DECODER_FUSIONS:
            problems.append(
                f"decoder_fusion must be one of {', '.join(DECODER_FUSIONS)}, got "
                f"{self.decoder_fusion!r}"
            )
        if not problems and self.audio_window_frames < self.audio_receptive_field:
            problems.append(
                f"audio_window_frames {self.audio_window_frames} is shorter than the audio "
                f"encoder's receptive field of {self.audio_receptive_field} mel frames"
            )
        if self.mel_std is not None and self.mel_std <= 0:
            problems.append(f"mel_std must be positive, got {self.mel_std}")
        if not 0.0 <= self.audio_dropout < 1.0:
            problems.append(f"audio_dropout must be in [0, 1), got {self.audio_dropout}")
        if problems:
            raise ValueError("; ".join(problems))

    @property
    def parameter_estimate(self) -> int:
        """About how many parameters the model has (weights of its linear and recurrent layers)."""
        v3, ch, cd = self.num_vertices * 3, self.audio_channels, self.code_dim
        codes = self.heads * self.classes
        audio = self.mel.n_mels * ch * self.audio_kernel
        audio += ch * ch * self.audio_kernel * len(self.audio_dilations) + ch * cd
        expression = v3 * self.expression_hidden + self.expression_hidden * cd + 9 * cd * cd
        fusion = 2 * cd * self.fusion_hidden + self.fusion_hidden**2 + self.fusion_hidden * codes
        widths = (v3, *self.decoder_hidden)
        bottleneck = widths[-1]
        decoder = 2 * sum(a * b for a, b in zip(widths, widths[1:])) + v3
        decoder += (codes + bottleneck) * bottleneck + 8 * bottleneck**2 * self.temporal_layers
        return audio + expression + fusion + decoder

    @property
    def audio_receptive_field(self) -> int:
        """Mel frames that one output of the audio convolution stack sees."""
        return 1 + (self.audio_kernel - 1) * (1 + sum(self.audio_dilations))

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict, audio_window_frames: int | None = None) -> LatentModelConfig:
        """From a saved config.json's `model` mapping; unknown keys are a ValueError.

        Args:
            values: the mapping.
            audio_window_frames: the window length for a mapping written before the field existed
                (the component's `audio_window.mel_frames`); without either, the default 101.
        """
        values = dict(values)
        if audio_window_frames is not None:
            values.setdefault("audio_window_frames", audio_window_frames)
        unknown = sorted(set(values) - {f.name for f in fields(cls)})
        if unknown:
            raise ValueError(f"unknown key {', '.join(map(repr, unknown))}")
        # Configs written before `expression_input` existed belong to models that encode meshes;
        # those written before `decoder_fusion` existed, to decoders reading [codes, template].
        values.setdefault("expression_input", "mesh")
        values.setdefault("decoder_fusion", "codes_first")
        if isinstance(values.get("mel"), dict):
            mel = values["mel"]
            unknown = sorted(set(mel) - {f.name for f in fields(MelConfig)})
            if unknown:
                raise ValueError(f"mel: unknown key {', '.join(map(repr, unknown))}")
            values["mel"] = MelConfig(**mel)
        for key in ("audio_dilations", "decoder_hidden"):
            if isinstance(values.get(key), list):
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
