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
BAND_FRAMES = 16
"""Frames smoothed by one matrix product. Its cost per frame is n + taps - 1 multiply-adds per
value against the filter's taps: 16 frames cost 24 (1.7x the taps' 9) where 64 cost 72; 16 took
0.16 s for a minute of release-size frames (both masks, one thread) against 0.35 s for 64."""
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
        # Soft masks often reach every vertex: then no gather and scatter of the chosen ones.
        self.vertices = None if len(chosen) == len(mask) else torch.from_numpy(chosen)
        self.blend = torch.from_numpy(np.repeat(mask[chosen], 3))[None]  # (1, 3m), x y z
        self.bands: dict[int, torch.Tensor] = {}
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
        # The filter over time as banded (n, n + 2r) matrix products, n at most BAND_FRAMES: a
        # few large calls, which release the interpreter lock while they run (the sampler beside
        # this thread is many small calls that need it), instead of a small call per tap and
        # block; bounded, so that a long push costs no quadratic memory.
        source = torch.from_numpy(buffer)
        if self.vertices is not None:
            source = source.index_select(1, self.vertices)
        source = source.reshape(len(buffer), -1)
        smoothed = torch.empty(count, source.shape[1])
        for first in range(0, count, BAND_FRAMES):
            n = min(BAND_FRAMES, count - first)
            torch.matmul(
                self._band(n), source[first : first + n + 2 * r], out=smoothed[first : first + n]
            )
        original = source[r : r + count]
        smoothed.sub_(original).mul_(self.blend).add_(original)  # blend between the two
        if self.vertices is None:
            out = smoothed.numpy().reshape(count, -1, 3)
        else:
            out = buffer[r : r + count].copy()
            torch.from_numpy(out).index_copy_(1, self.vertices, smoothed.reshape(count, -1, 3))
        self.buffer = buffer[count:]
        return out

    def _band(self, count: int) -> torch.Tensor:
        band = self.bands.get(count)
        if band is None:
            taps = len(self.weights)
            rows = torch.arange(count)[:, None]
            columns = rows + torch.arange(taps)[None]
            band = torch.zeros(count, count + taps - 1)
            band[rows, columns] = torch.from_numpy(self.weights)[None].expand(count, -1)
            if len(self.bands) > 4:  # a few sizes recur (the chunk, the last one): keep those
                self.bands.clear()
            self.bands[count] = band
        return band


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
