"""Stage 1's training items: segments with a cross-modality partner and their Gumbel noise."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from meshtalk.models.latent import PARTNER_KEYS
from meshtalk.pipelines.data.resident import ResidentBatches, ResidentSegments
from meshtalk.pipelines.data.store import PreparedStore, SegmentDataset
from meshtalk.pipelines.train.validation import validation_split


class PairedSegments(Dataset):
    """Training segments, each with a cross-modality partner and the Gumbel noise of its step.

    The partner is another segment of the same length (a different one when there is one) drawn
    from the same generator as the item, so batch size 1 works and nothing depends on the batch.
    """

    def __init__(self, segments: SegmentDataset, heads: int, classes: int) -> None:
        self.segments, self.noise_shape = segments, (3, segments.frames, heads, classes)

    def __len__(self) -> int:
        return len(self.segments)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        (_, choice, start, partner_choice, partner_start), gumbel = self.draws(index)
        item = self.segments.item(choice, start)
        item["index"] = torch.tensor(index)
        partner = self.segments.item(partner_choice, partner_start)
        for key in PARTNER_KEYS:
            item[f"partner_{key}"] = partner[key]
        item["gumbel"] = torch.from_numpy(gumbel)
        return item

    def draws(self, index: int) -> tuple[list[int], np.ndarray]:
        """Item `index`'s random draws: [index, segment, start, partner segment, partner start]
        and its Gumbel noise (3, F, H, C) float32 (what `__getitem__` and the resident path use)."""
        segments = self.segments
        choice, start = segments.draw(np.random.default_rng([segments.seed, segments.epoch, index]))
        rng = np.random.default_rng([segments.seed, segments.epoch, index, 1])
        partner = segments.draw(rng)
        if len(segments.segments) > 1:
            while partner[0] == choice:
                partner = segments.draw(rng)
        gumbel = rng.gumbel(size=self.noise_shape).astype(np.float32)
        return [index, choice, start, *partner], gumbel

    def resident(self, indices, device: torch.device, pin: bool = False) -> ResidentBatches:
        """This dataset's batches of `indices` (a `StepBatches`) gathered from its segments held
        on `device` (`pin`: in pinned host memory, gathered there and copied)."""
        segments = self.segments
        arrays = ResidentSegments(
            segments.store, segments.segments, segments.frames, segments.starts, device, pin
        )

        def gather(numbers: torch.Tensor, noise: torch.Tensor | None) -> dict[str, torch.Tensor]:
            batch = arrays.items(numbers[:, 1], numbers[:, 2])
            batch["index"] = numbers[:, 0]
            partner = arrays.items(numbers[:, 3], numbers[:, 4])
            for key in PARTNER_KEYS:
                batch[f"partner_{key}"] = partner[key]
            batch["gumbel"] = noise
            return batch

        return ResidentBatches(
            indices, self.draws, gather, device, self.noise_shape, host_gather=pin
        )

    def resident_bytes(self) -> int:
        """Bytes `resident` holds (vertices, mel and templates of the training segments)."""
        return ResidentSegments.nbytes(self.segments.store, self.segments.segments)


def validation_batches(
    store: PreparedStore,
    frames: int,
    count: int,
    batch_size: int,
    seed: int,
    heads: int,
    classes: int,
    split: str | None = None,
) -> list[dict[str, torch.Tensor]]:
    """`count` fixed segments with partners, batched: of `split`, by default the 'val' split
    (else 'train')."""
    split = split or validation_split(store)
    segments = SegmentDataset(store, split, frames, length=1, seed=seed)
    paired = PairedSegments(segments, heads, classes)
    items = [paired[i] for i in range(count)]
    return [
        {k: torch.stack([item[k] for item in items[i : i + batch_size]]) for k in items[0]}
        for i in range(0, len(items), batch_size)
    ]
