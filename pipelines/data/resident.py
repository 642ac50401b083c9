"""Training batches gathered from a prepared store held as torch tensors where training runs.

The memory-mapped path (`SegmentDataset` in a DataLoader) reads every item from disk in a worker
process. Here the arrays that training reads (vertices, log-mel, frame ids, mel indices, templates;
for stage 2 the cached codes) are concatenated once into tensors on the training device, or into
pinned host memory when they do not fit there, and each step's batch is gathered with torch index
operations on them.

The random draws are those of the memory-mapped path: each item's segment, window, partner and
Gumbel noise come from the same numpy generators seeded by (seed, epoch, index) (`draws` of
`PairedSegments` and `CodeWindows`), so for a seed both paths give the same batches in the same
order, tensor for tensor. The generators run in a thread pool a few steps ahead of training (numpy
releases the GIL while it fills the noise), and each step's noise reaches the device through a
ring of pinned buffers and a copy stream, so the device waits for neither.
"""

from __future__ import annotations

import logging
import os
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
import torch

from meshtalk.pipelines.data.store import PreparedStore, SegmentRef

log = logging.getLogger(__name__)

MODES = ("auto", "yes", "no")
"""--data-on-device: auto (resident on CUDA when it fits), yes (resident on any device), no."""

FREE_SHARE = 0.5
"""Share of the device's free memory the resident arrays may take (the rest is for training)."""


def placement(mode: str, device: torch.device, nbytes: int) -> str | None:
    """Where the resident arrays go: "device", "pinned" (host, CUDA copies) or None (mmap path).

    auto: on CUDA, the device when `nbytes` fits in `FREE_SHARE` of its free memory, else pinned
    host memory; elsewhere None (the memory-mapped path). yes: as auto on CUDA, the device itself
    elsewhere (on the CPU: tensors in memory). no: None.
    """
    if mode not in MODES:
        raise ValueError(f"data on device must be one of {', '.join(MODES)}, got {mode!r}")
    if mode == "no":
        return None
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return "device" if nbytes <= FREE_SHARE * free else "pinned"
    return "device" if mode == "yes" else None


class ResidentSegments:
    """Segments' frames as tensors: rows of all segments concatenated, one offset per segment.

    Args:
        store: the prepared store.
        segments: the segments whose arrays are held (index i: `segments[i]`).
        frames: frames per window (the mel span length follows from it).
        starts: per segment, the window starts a draw may give (for the span length check).
        device: where the tensors live; `pin`: keep them in pinned host memory instead (CUDA).
        vertices: hold the vertices and mel (stage 1); False: only frame rows (stage 2).
    """

    def __init__(
        self,
        store: PreparedStore,
        segments: list[SegmentRef],
        frames: int,
        starts: list[np.ndarray],
        device: torch.device,
        pin: bool = False,
        vertices: bool = True,
    ) -> None:
        self.store, self.segments, self.frames = store, segments, frames
        self.device = torch.device("cpu") if pin else device
        counts = [s.frames for s in segments]
        self.first_row = self._put(np.cumsum([0] + counts[:-1]).astype(np.int64), pin)
        self.identity = self._put(
            np.array([store.identities.index(s.identity) for s in segments], np.int64), pin
        )
        self.span = store.span_length(frames)
        self.window = torch.arange(frames, device=self.device)
        if not vertices:
            return
        frame_arrays = [store.frames(s) for s in segments]
        for segment, frame_array, first in zip(segments, frame_arrays, starts, strict=True):
            index = frame_array["mel_index"]
            reach = index[first + frames - 1] - index[first] + store.mel_frames
            if len(first) and reach.max() > self.span:
                raise ValueError(
                    f"{segment.identity}/{segment.name}: windows reach {int(reach.max())} mel "
                    f"frames, more than the span of {self.span} every batch shares"
                )
        mels = [np.asarray(store.mel(s)) for s in segments]
        self.mel_first_row = self._put(
            np.cumsum([0] + [len(m) for m in mels[:-1]]).astype(np.int64), pin
        )
        self.mel_last = self._put(np.array([len(m) - 1 for m in mels], np.int64), pin)
        self.mel = self._put(np.concatenate(mels), pin)
        self.vertices = self._put(np.concatenate([store.vertices(s) for s in segments]), pin)
        self.frame_ids = self._put(np.concatenate([f["frame_ids"] for f in frame_arrays]), pin)
        self.mel_index = self._put(np.concatenate([f["mel_index"] for f in frame_arrays]), pin)
        self.templates = self._put(np.stack([store.template(i) for i in store.identities]), pin)
        self.mel_span = torch.arange(self.span, device=self.device)

    def _put(self, array: np.ndarray, pin: bool) -> torch.Tensor:
        tensor = torch.from_numpy(np.ascontiguousarray(array))
        return tensor.pin_memory() if pin else tensor.to(self.device)

    def rows(self, choice: torch.Tensor, start: torch.Tensor) -> torch.Tensor:
        """(B, F) rows of the concatenated frames of each item's window."""
        return (self.first_row[choice] + start)[:, None] + self.window

    def items(self, choice: torch.Tensor, start: torch.Tensor) -> dict[str, torch.Tensor]:
        """What `SegmentDataset.item` gives, batched (audio as a span)."""
        rows = self.rows(choice, start)
        mel_index = self.mel_index[rows]
        first = mel_index[:, :1] + self.store.mel_first + self.mel_span
        # Past the utterance's end the span repeats its last mel frame (as `audio_span` does).
        mel_rows = self.mel_first_row[choice][:, None] + torch.minimum(
            first, self.mel_last[choice][:, None]
        )
        identity = self.identity[choice]
        return {
            "template": self.templates[identity],
            "vertices": self.vertices[rows],
            "identity": identity,
            "frame_ids": self.frame_ids[rows],
            "segment": choice,
            "mel": self.mel[mel_rows],
            "mel_starts": (mel_index - mel_index[:, :1]).to(torch.int64),
        }

    @staticmethod
    def nbytes(store: PreparedStore, segments: list[SegmentRef]) -> int:
        """Bytes `ResidentSegments` holds for these segments (read from the arrays' headers)."""
        total = sum(store.template(i).nbytes for i in store.identities)
        for segment in segments:
            total += store.vertices(segment).nbytes + store.mel(segment).nbytes
            total += segment.frames * 16
        return total


class ResidentBatches:
    """Each step's batch, gathered on the device: iterate it in place of the DataLoader.

    Args:
        indices: per step, the dataset indices of this process's batch (a `StepBatches`).
        draw: index -> (numbers, noise): the item's random draws as integers and its noise
            array (or None), computed by the numpy generators of the memory-mapped path.
        gather: (numbers (B, K) int64 tensor on the device, noise (B, ...) or None) -> batch.
        device: the training device.
        noise_shape: shape of one item's noise, or None.
        workers: threads drawing items; depth: steps drawn ahead.
        host_gather: the arrays are in (pinned) host memory: `gather` runs in the drawing
            thread and the gathered batch is copied to the device (CUDA) on a copy stream.
    """

    def __init__(
        self,
        indices,
        draw: Callable[[int], tuple[list[int], np.ndarray | None]],
        gather: Callable[[torch.Tensor, torch.Tensor | None], dict[str, torch.Tensor]],
        device: torch.device,
        noise_shape: tuple[int, ...] | None = None,
        workers: int | None = None,
        depth: int = 3,
        host_gather: bool = False,
    ) -> None:
        self.indices, self.draw, self.gather = indices, draw, gather
        self.host_gather = host_gather
        self.device, self.noise_shape, self.depth = device, noise_shape, depth
        self.workers = workers or max(1, min(8, (os.cpu_count() or 2) - 1))
        self.cuda = device.type == "cuda"

    def __len__(self) -> int:
        return len(self.indices)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        batch_size = self.indices.local
        slots = self.depth + 2  # the one drawn into, those waiting, the one being copied
        ring = None
        if self.cuda and self.noise_shape is not None:
            ring = torch.empty(slots, batch_size, *self.noise_shape, pin_memory=True)
        copied: list[torch.cuda.Event | None] = [None] * slots
        stream = torch.cuda.Stream(self.device) if self.cuda else None
        with (
            ThreadPoolExecutor(self.workers, thread_name_prefix="draw") as items,
            ThreadPoolExecutor(1, thread_name_prefix="batch") as steps,
        ):

            def draw_step(step_indices: list[int], slot: int):
                noise = None
                if self.noise_shape is not None:
                    noise = (
                        ring[slot]
                        if ring is not None
                        else torch.empty(batch_size, *self.noise_shape)
                    )

                def one(position: int, index: int) -> list[int]:
                    numbers, item_noise = self.draw(index)
                    if noise is not None:
                        noise[position].numpy()[...] = item_noise
                    return numbers

                jobs = [items.submit(one, p, i) for p, i in enumerate(step_indices)]
                numbers = torch.tensor([job.result() for job in jobs], dtype=torch.int64)
                if self.host_gather:  # arrays in pinned host memory: gather here, copy later
                    batch = self.gather(numbers, noise)
                    return {k: v.pin_memory() for k, v in batch.items()}
                return {"numbers": numbers, "noise": noise}

            pending: deque[tuple[Future, int]] = deque()
            order = iter(self.indices)
            step = 0

            def submit() -> None:
                nonlocal step
                step_indices = next(order, None)
                if step_indices is None:
                    return
                slot = step % slots
                if copied[slot] is not None:  # the slot's last copy must be done before reuse
                    copied[slot].synchronize()
                pending.append((steps.submit(draw_step, step_indices, slot), slot))
                step += 1

            for _ in range(self.depth):
                submit()
            while pending:
                future, slot = pending.popleft()
                submit()
                drawn = future.result()
                if stream is not None:
                    drawn = self._copy(drawn, stream, slot, copied)
                if self.host_gather:
                    yield drawn
                else:
                    yield self.gather(drawn["numbers"].to(self.device), drawn["noise"])

    def _copy(self, tensors: dict, stream, slot: int, copied: list) -> dict:
        """Host tensors to the device on the copy stream; the compute stream waits for them."""
        with torch.cuda.stream(stream):
            moved = {
                k: None if v is None else v.to(self.device, non_blocking=True)
                for k, v in tensors.items()
            }
            event = torch.cuda.Event()
            event.record(stream)
        copied[slot] = event
        current = torch.cuda.current_stream(self.device)
        current.wait_stream(stream)
        for tensor in moved.values():
            if tensor is not None:
                tensor.record_stream(current)
        return moved
