"""The release's temporal smoothing of forehead and neck after decoding (SPEC section 6).

A Gaussian over time (9 taps, sigma 2, the sequence's ends repeated), blended per vertex by a soft
mask: out = mask * smoothed + (1 - mask) * frames. The release smooths the forehead, then the
neck of the result. `TemporalSmoother` does the same on frames as they come, `radius` frames
behind its input, in flat memory; `smooth_sequence` is the same on a whole sequence at once.
"""

from __future__ import annotations

import numpy as np
import torch

TAPS, SIGMA = 9, 2.0
"""The release's filter."""
BLOCK_VERTICES = 128
"""Vertices smoothed at a time (a block of 256 frames of them fits in a core's L2 cache)."""
SMOOTHED_REGIONS = ("forehead", "neck")
"""The masks smoothed, in the release's order."""


def gaussian_taps(taps: int = TAPS, sigma: float = SIGMA) -> np.ndarray:
    """(taps,) float32 normalised Gaussian weights."""
    if taps < 1 or taps % 2 == 0:
        raise ValueError(f"the filter needs an odd number of taps, got {taps}")
    offsets = np.arange(taps) - taps // 2
    weights = np.exp(-0.5 * offsets.astype(np.float64) ** 2 / sigma**2)
    return (weights / weights.sum()).astype(np.float32)


class TemporalSmoother:
    """Smooth the masked vertices of frames over time, frames pushed in chunks.

    `push` returns the frames that are final (those with `radius` frames after them known);
    `finish` the rest, the last frame repeated past the end as the release pads.

    Args:
        mask: (V,) blend weights in [0, 1] (vertices at 0 are passed through untouched).
        taps, sigma: the Gaussian filter.
    """

    def __init__(self, mask: np.ndarray, taps: int = TAPS, sigma: float = SIGMA) -> None:
        mask = np.asarray(mask, dtype=np.float32)
        self.weights = gaussian_taps(taps, sigma)
        self.radius = taps // 2
        chosen = np.flatnonzero(mask)
        # Soft masks often reach every vertex: then a slice, which indexes without copying.
        self.vertices = slice(None) if len(chosen) == len(mask) else chosen
        self.blend = torch.from_numpy(np.ascontiguousarray(mask[chosen]))[None, :, None]
        self.buffer: np.ndarray | None = None  # raw frames from `radius` before the next output

    def push(self, frames: np.ndarray) -> np.ndarray:
        """(n, V, 3) new frames -> (m, V, 3) smoothed frames that are now final (m may be 0)."""
        frames = np.asarray(frames, dtype=np.float32)
        if self.buffer is None:
            if len(frames) == 0:
                return frames
            pad = np.repeat(frames[:1], self.radius, axis=0)
            self.buffer = np.concatenate([pad, frames])
        else:
            self.buffer = np.concatenate([self.buffer, frames])
        return self._emit(len(self.buffer) - 2 * self.radius)

    def finish(self) -> np.ndarray:
        """The remaining frames, smoothed with the last frame repeated past the end."""
        if self.buffer is None:
            return np.zeros((0, 0, 3), dtype=np.float32)
        pad = np.repeat(self.buffer[-1:], self.radius, axis=0)
        self.buffer = np.concatenate([self.buffer, pad])
        out = self._emit(len(self.buffer) - 2 * self.radius)
        self.buffer = None
        return out

    def _emit(self, count: int) -> np.ndarray:
        buffer, r = self.buffer, self.radius
        if count <= 0:
            return buffer[:0]
        vertices = self.vertices
        every = isinstance(vertices, slice)
        # Every vertex is written below when the mask reaches all; else start from the input.
        out = np.empty_like(buffer[r : r + count]) if every else buffer[r : r + count].copy()
        source = torch.from_numpy(buffer)
        target = torch.from_numpy(out)
        if every:  # every vertex: blocks of the frames' own memory
            chosen = range(0, source.shape[1], BLOCK_VERTICES)
            blocks = ((slice(first, first + BLOCK_VERTICES), first) for first in chosen)
        else:
            chosen = range(0, len(vertices), BLOCK_VERTICES)
            blocks = ((torch.from_numpy(vertices[i : i + BLOCK_VERTICES]), i) for i in chosen)
        weights = [float(w) for w in self.weights]
        # Vertex blocks small enough to stay in the cache while all taps are summed over them.
        for index, first in blocks:
            region = source[:, index]  # (count + 2r, m, 3)
            smoothed = region[:count] * weights[0]
            for tap in range(1, len(weights)):
                smoothed.add_(region[tap : tap + count], alpha=weights[tap])
            # out + blend * (smoothed - out), in place.
            original = region[r : r + count]
            blend = self.blend[:, first : first + smoothed.shape[1]]
            smoothed.sub_(original).mul_(blend).add_(original)
            target[:, index] = smoothed
        self.buffer = buffer[count:]
        return out


class RegionSmoother:
    """Several `TemporalSmoother`s in a row (the release: forehead, then neck)."""

    def __init__(self, masks: list[np.ndarray], taps: int = TAPS, sigma: float = SIGMA) -> None:
        self.stages = [TemporalSmoother(mask, taps, sigma) for mask in masks]

    @property
    def delay(self) -> int:
        """Frames between a frame going in and its smoothed self coming out."""
        return sum(stage.radius for stage in self.stages)

    def push(self, frames: np.ndarray) -> np.ndarray:
        for stage in self.stages:
            frames = stage.push(frames)
        return frames

    def finish(self) -> np.ndarray:
        out = None
        for stage in self.stages:
            frames = stage.finish() if out is None else _join(stage.push(out), stage.finish())
            out = frames
        return out if out is not None else np.zeros((0, 0, 3), dtype=np.float32)


def _join(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    if len(first) == 0:
        return second
    if len(second) == 0:
        return first
    return np.concatenate([first, second])


def smooth_sequence(
    frames: np.ndarray, mask: np.ndarray, taps: int = TAPS, sigma: float = SIGMA
) -> np.ndarray:
    """(T, V, 3) frames smoothed over time where `mask` says, the whole sequence at once."""
    frames = np.asarray(frames, dtype=np.float32)
    r = taps // 2
    padded = np.concatenate([np.repeat(frames[:1], r, 0), frames, np.repeat(frames[-1:], r, 0)])
    smoothed = np.zeros_like(frames)
    for tap, weight in enumerate(gaussian_taps(taps, sigma)):
        smoothed += weight * padded[tap : tap + len(frames)]
    blend = np.asarray(mask, dtype=np.float32)[None, :, None]
    return blend * smoothed + (1 - blend) * frames
