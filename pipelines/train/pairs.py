"""Stage 1's training items: segments with a cross-modality partner and their Gumbel noise."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from meshtalk.models.latent import PARTNER_KEYS
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
        item = self.segments[index]
        rng = np.random.default_rng([self.segments.seed, self.segments.epoch, index, 1])
        choice, start = self.segments.draw(rng)
        if len(self.segments.segments) > 1:
            while choice == int(item["segment"]):
                choice, start = self.segments.draw(rng)
        partner = self.segments.item(choice, start)
        for key in PARTNER_KEYS:
            item[f"partner_{key}"] = partner[key]
        item["gumbel"] = torch.from_numpy(rng.gumbel(size=self.noise_shape).astype(np.float32))
        return item


def validation_batches(
    store: PreparedStore,
    frames: int,
    count: int,
    batch_size: int,
    seed: int,
    heads: int,
    classes: int,
) -> list[dict[str, torch.Tensor]]:
    """`count` fixed validation segments with partners, batched (the 'val' split, else 'train')."""
    segments = SegmentDataset(store, validation_split(store), frames, length=1, seed=seed)
    paired = PairedSegments(segments, heads, classes)
    items = [paired[i] for i in range(count)]
    return [
        {k: torch.stack([item[k] for item in items[i : i + batch_size]]) for k in items[0]}
        for i in range(0, len(items), batch_size)
    ]
