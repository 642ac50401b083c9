"""Stage 2's training data: the frozen stage-1 encoder's codes of every segment, computed once.

They are cached beside the run (`prior_targets.safetensors`, keyed by the stage-1 encoder's and the
data's hashes) and training reads windows of them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from meshtalk.models.latent import LatentAutoencoder
from meshtalk.pipelines import checkpoint as ckpt
from meshtalk.pipelines.data.resident import ResidentBatches, ResidentSegments
from meshtalk.pipelines.data.store import PreparedStore, SegmentDataset, SegmentRef
from meshtalk.pipelines.io.atomic import atomic_path
from meshtalk.pipelines.train.loop import store_digest

log = logging.getLogger(__name__)

TARGETS_FILE = "prior_targets.safetensors"


def segment_key(segment: SegmentRef) -> str:
    return f"{segment.identity}/{segment.name}"


@torch.no_grad()
def encode_targets(
    model: LatentAutoencoder,
    store: PreparedStore,
    splits: tuple[str, ...],
    device: torch.device,
    progress: bool = True,
) -> dict[str, torch.Tensor]:
    """Argmax codes (T, H) int64 and audio codes (T, D) float32 of every segment of `splits`.

    The model runs on `device` and goes back where it was. Keys: '<identity>/<segment>/codes'
    and '<identity>/<segment>/audio'.
    """
    from meshtalk.pipelines.io.progress import progress_bar

    home = next(model.parameters()).device
    model.to(device).eval()
    segments = [s for split in splits for s in store.split(split)]
    targets = {}
    with progress_bar(disable=not progress) as bar:
        task = bar.add_task("encode stage-1 targets", total=len(segments))
        for segment in segments:
            vertices = torch.from_numpy(np.array(store.vertices(segment))).to(device)
            mel_index = store.frames(segment)["mel_index"]
            mel, starts = store.audio_span(segment, mel_index)
            template = torch.from_numpy(np.array(store.template(segment.identity))).to(device)
            expression, audio = model.codes(
                vertices[None],
                template[None],
                torch.from_numpy(mel).to(device)[None],
                torch.from_numpy(starts).to(device)[None],
            )
            logprobs = model.encoder.fusion_model(expression, audio)
            key = segment_key(segment)
            targets[f"{key}/codes"] = logprobs.argmax(dim=-1)[0].cpu()
            targets[f"{key}/audio"] = audio[0].float().cpu()
            bar.advance(task)
    model.to(home)
    return targets


def cached_targets(
    output: Path,
    model: LatentAutoencoder,
    encoder_sha256: str,
    store: PreparedStore,
    device: torch.device,
    progress: bool,
    is_main: bool,
    barrier: Callable[[], None],
) -> dict[str, torch.Tensor]:
    """The targets of the train and val splits from the cache beside the run.

    The main process computes them with `model` (the stage-1 model whose encoder weights hash to
    `encoder_sha256`) when the cache is missing, damaged or of another encoder or data.
    """
    from safetensors import SafetensorError, safe_open

    path = Path(output) / TARGETS_FILE
    key = {"latent_encoder_sha256": encoder_sha256, "data_sha256": store_digest(store.root)}
    wanted = {
        f"{segment_key(s)}/{kind}"
        for s in store.split("train") + store.split("val")
        for kind in ("codes", "audio")
    }

    def fresh() -> bool:
        if not path.is_file():
            return False
        try:  # safetensors checks the header and that the data fills the file exactly
            with safe_open(str(path), "pt") as handle:
                metadata, keys = handle.metadata() or {}, set(handle.keys())
        except (SafetensorError, OSError, ValueError) as error:
            log.warning("%s: damaged (%s); computing the targets again", path, error)
            return False
        return all(metadata.get(k) == v for k, v in key.items()) and wanted <= keys

    if is_main and not fresh():
        targets = encode_targets(model, store, ("train", "val"), device, progress)
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path, suffix=".safetensors") as tmp:
            ckpt.save_tensors(targets, tmp, metadata=key)
        log.info("cached the stage-1 targets of %d segments in %s", len(targets) // 2, path)
    barrier()
    return ckpt.load_tensors(path)


class CodeWindows(Dataset):
    """Training windows of cached codes: item `index` is drawn from a generator seeded by it.

    Items: codes (F, H) int64 and audio (F, D) float32, F consecutive observed frames (never across
    a dropped frame).
    """

    def __init__(
        self,
        store: PreparedStore,
        split: str,
        frames: int,
        targets: dict,
        seed: int,
        length: int,
    ) -> None:
        self.windows = SegmentDataset(store, split, frames, length=1, seed=seed)
        self.targets, self.frames, self.seed, self.length = targets, frames, seed, length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        (choice, start), _ = self.draws(index)
        key = segment_key(self.windows.segments[choice])
        span = slice(start, start + self.frames)
        return {
            "codes": self.targets[f"{key}/codes"][span],
            "audio": self.targets[f"{key}/audio"][span],
        }

    def draws(self, index: int) -> tuple[list[int], None]:
        """Item `index`'s random draws: [segment, start] (no noise)."""
        return list(self.windows.draw(np.random.default_rng([self.seed, index, 2]))), None

    def resident(self, indices, device: torch.device, pin: bool = False) -> ResidentBatches:
        """This dataset's batches of `indices` (a `StepBatches`), gathered from the codes of its
        segments held on `device` (`pin`: in pinned host memory, gathered there and copied)."""
        windows = self.windows
        keys = [segment_key(s) for s in windows.segments]
        codes = torch.cat([self.targets[f"{k}/codes"] for k in keys])
        audio = torch.cat([self.targets[f"{k}/audio"] for k in keys])
        rows = ResidentSegments(
            windows.store, windows.segments, self.frames, windows.starts, device, pin, False
        )
        codes, audio = (t.pin_memory() if pin else t.to(device) for t in (codes, audio))

        def gather(numbers: torch.Tensor, noise: None) -> dict[str, torch.Tensor]:
            at = rows.rows(numbers[:, 0], numbers[:, 1])
            return {"codes": codes[at], "audio": audio[at]}

        return ResidentBatches(indices, self.draws, gather, device, host_gather=pin)

    def resident_bytes(self) -> int:
        """Bytes `resident` holds (the cached codes of the training segments)."""
        keys = [segment_key(s) for s in self.windows.segments]
        tensors = [self.targets[f"{k}/{kind}"] for k in keys for kind in ("codes", "audio")]
        return sum(t.numel() * t.element_size() for t in tensors)


def sequences(
    targets: dict[str, torch.Tensor], segments: list[SegmentRef]
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(codes, audio codes) of whole segments, as the validation figures take them."""
    return [
        (targets[f"{segment_key(s)}/codes"], targets[f"{segment_key(s)}/audio"]) for s in segments
    ]
