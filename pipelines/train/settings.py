"""The training settings of both stages (a config file's `train:` section), as plain data.

They live below the stages and the presets that both use them, so that neither imports the other.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, kw_only=True)
class TrainingSettings:
    """Optimisation settings of both stages (each stage's `train:` section adds its own)."""

    steps: int
    """Optimiser steps in all."""
    batch_size: int = 8
    """Training items (segments, or windows of codes) per step, over all processes."""
    frames: int
    """Frames per training item."""
    lr: float = 1e-4
    """Adam learning rate."""
    lr_decay_step: int
    """The learning rate is multiplied by `lr_decay` every this many steps."""
    lr_decay: float = 0.1
    """Learning-rate factor at each decay step."""
    val_every: int = 1000
    """Validate every this many steps (and at step 0 and at the end)."""
    checkpoint_every: int = 1000
    """Write a checkpoint every this many steps (and at the end)."""
    log_every: int = 10
    """Write the mean training losses every this many steps."""
    seed: int = 0
    """Seed of every random draw."""
    bf16: bool = True
    """bf16 autocast on CUDA (ignored on other devices)."""

    def __post_init__(self) -> None:
        problems = self.problems()
        if problems:
            raise ValueError("; ".join(problems))

    def problems(self) -> list[str]:
        """What is wrong with these settings, one message each (a stage adds its own)."""
        keys = ("steps", "batch_size", "frames", "lr_decay_step", "val_every")
        keys += ("checkpoint_every", "log_every")
        problems = [f"{k} must be positive, got {getattr(self, k)}" for k in keys]
        problems = [p for k, p in zip(keys, problems, strict=True) if getattr(self, k) <= 0]
        if self.lr <= 0 or self.lr_decay <= 0:
            problems.append(f"lr and lr_decay must be positive, got {self.lr} and {self.lr_decay}")
        return problems

    def lr_at(self, step: int) -> float:
        return self.lr * self.lr_decay ** (step // self.lr_decay_step)

    @property
    def loader_workers(self) -> int:
        """DataLoader worker processes per training process."""
        return 0


FREEZABLE = {
    "decoder": "decoder.",
    "expression": "encoder.expression_encoder.",
    "audio": "encoder.audio_encoder.",
    "fusion": "encoder.fusion_model.",
}
"""Stage 1's parts `LatentTrainingConfig.freeze` names -> their parameters' name prefix."""


@dataclass(frozen=True, kw_only=True)
class LatentTrainingConfig(TrainingSettings):
    """Optimisation settings of stage 1 (the `train:` section of a config file)."""

    steps: int = 50_000
    """Optimiser steps in all."""
    frames: int = 32
    """Frames per training segment."""
    lr: float = 1e-4
    """Adam learning rate (the release's; the authors say the paper used 1e-3)."""
    lr_decay_step: int = 40_000
    """The learning rate is multiplied by `lr_decay` every this many steps."""
    decoder_weight_decay: float = 1e-3
    """Adam weight decay of the decoder's parameters (the encoder has none)."""
    cross_modality: bool = True
    """Add the cross-modality terms; off: plain reconstruction (for comparison)."""
    upper_face_weight: float = 1.0
    """Weight of the eyelid term and of the upper face decoded with this sample's expression (1:
    the equal weights of SPEC section 5). Raise it for data whose upper face moves far less than
    its mouth, where the expression path otherwise learns nothing."""
    code_usage_weight: float = 0.0
    """Weight of a term that keeps each head's classes in use (`models.latent.code_usage`: 1 -
    the head's perplexity over a batch as a share of its classes; wav2vec 2.0's diversity term).
    0: none (the method)."""
    gumbel_warmup: int = 0
    """Steps over which the Gumbel noise of stage 1's quantiser rises linearly from 0 (the argmax
    code, passed straight through) to its full scale (the method's Gumbel-softmax from then on).
    0: full noise from the first step, as the method. On small data trained for a few thousand
    steps, full noise from the start makes an untrained encoder's codes random: the decoder learns
    to ignore them and every frame gets the face's mean mouth (the ICT-FaceKit data: mouth error
    flat at 9 mm^2 for 1300 steps, audio swap 0.004 mm); with a warm-up of half the run it reads
    them from the first steps (ict-default recipe)."""
    val_segments: int = 32
    """Validation segments (fixed for the whole run)."""
    data_workers: int = 1
    """DataLoader worker processes per training process (0: load in the training process)."""
    freeze: tuple[str, ...] = ()
    """Parts whose weights stay as `train latent --init RUN` loaded them (FREEZABLE): e.g.
    decoder and expression to train another audio window's encoder into a run's latent space
    (the bundled low-latency model: its decoder is the default's, byte for byte)."""

    def problems(self) -> list[str]:
        problems = super().problems()
        unknown = sorted(set(self.freeze) - set(FREEZABLE))
        if unknown:
            problems.append(
                f"freeze: unknown part {', '.join(unknown)} (parts: {', '.join(FREEZABLE)})"
            )
        if self.val_segments <= 0:
            problems.append(f"val_segments must be positive, got {self.val_segments}")
        if self.data_workers < 0:
            problems.append(f"data_workers must be >= 0, got {self.data_workers}")
        if self.upper_face_weight < 0:
            problems.append(f"upper_face_weight must be >= 0, got {self.upper_face_weight}")
        if self.code_usage_weight < 0:
            problems.append(f"code_usage_weight must be >= 0, got {self.code_usage_weight}")
        if self.gumbel_warmup < 0:
            problems.append(f"gumbel_warmup must be >= 0, got {self.gumbel_warmup}")
        return problems

    @property
    def loader_workers(self) -> int:
        return self.data_workers


@dataclass(frozen=True, kw_only=True)
class PriorTrainingConfig(TrainingSettings):
    """Optimisation settings of stage 2 (the `train:` section of a config file)."""

    # The release's stage-2 schedule; frames: of a training window of codes.
    steps: int = 15_000
    frames: int = 64
    lr_decay_step: int = 10_000
