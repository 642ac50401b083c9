"""A clip's displacements from its template as a few morph targets, within an error budget.

GLB and USD carry an animation as blend shapes: positions = template + sum_k w_k(t) * target_k.
The targets are an SVD basis of the clip's displacements, K the smallest that keeps every vertex of
every frame within the budget (0.1 mm by default). The weights are kept in [0, 1] (Blender's glTF
importer clamps negative ones, KhronosGroup/glTF-Blender-IO#1364): coefficient c_k(t) in
[lo_k, hi_k] becomes w_k = (c_k - lo_k) / (hi_k - lo_k) with target (hi_k - lo_k) * b_k, and one
constant "offset" target, sum_k lo_k * b_k, is held at weight 1.

The targets are quantized to 16 bits (KHR_mesh_quantization: a GLB stores each as normalized
SHORTs, 8 bytes a vertex instead of 12, its scale moved into its weight): target_k = q_k * s_k /
32767 with s_k its largest |component|. The float32 targets of the Basis hold exactly those values,
so the error measured on every frame is what a client rebuilds (USD writes the same floats).

The frames are read in passes (a callable giving (n, V, 3) chunks), never all at once, so a clip of
any length fits in memory: a randomized range finder with one power iteration (Halko et al. 2011)
gives the subspace, the exact SVD of the clip projected onto it orders it, K is chosen on the frames
with the largest residual energy and then checked on every frame.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

Chunks = Callable[[], Iterator[np.ndarray]]
"""Called once per pass: (n, V, 3) float32 displacements from the template, in order."""

OFFSET_NAME = "offset"
"""The constant target held at weight 1."""
OVERSAMPLE = 10
"""Extra sketch columns beyond the largest K tried (the range finder's accuracy)."""
FIRST_SKETCH, PER_DECADE = 80, 86
"""The first sketch: 80 + 86 log10(T / 178) columns, from K at 0.1 mm on the bundled model's
speech (40 for 178 frames, 124 for a minute, 210 for ten) with room; it doubles when too small."""
CHECK_FRAMES = 384
"""Frames K is searched on (the largest residuals and evenly spaced ones) before the full check."""
SHORT_MAX = 32767
"""A normalized SHORT's largest value: q / 32767 in [-1, 1]."""


@dataclass
class Basis:
    """Morph targets and their weights for a clip.

    Attributes:
        targets: (K + 1, V, 3) float32 displacements: the offset target first, then the basis.
        weights: (T, K + 1) float32 in [0, 1]; column 0 (the offset) is 1.
        max_error: the largest distance of any vertex on any frame from the clip (output units).
        budget: the error budget it was fitted to (output units).
        exact: one one-hot target per frame (`exact_basis`) rather than an SVD basis.
        scales: (K + 1,) float32 s_k of each target quantized to 16 bits (its values are
            q * s_k / 32767 with integer |q| <= 32767), or None for float targets.
    """

    targets: np.ndarray
    weights: np.ndarray
    max_error: float
    budget: float
    exact: bool = False
    scales: np.ndarray | None = None

    def quantized(self) -> tuple[np.ndarray, np.ndarray]:
        """(K + 1, V, 3) int16 q of the targets and (T, K + 1) float32 weights times s_k: as a
        GLB stores them (a normalized SHORT reads as q / 32767)."""
        if self.scales is None:
            raise ValueError("the basis is not quantized")
        scales = self.scales.astype(np.float64)[:, None, None]
        q = np.rint(self.targets.astype(np.float64) / scales * SHORT_MAX).astype(np.int16)
        return q, (self.weights * self.scales[None]).astype(np.float32)

    @property
    def count(self) -> int:
        """K, targets of the basis (without the offset)."""
        return len(self.targets) - (0 if self.exact else 1)

    @property
    def names(self) -> list[str]:
        if self.exact:
            return [f"frame_{t:06d}" for t in range(len(self.targets))]
        return [OFFSET_NAME] + [f"basis_{k:03d}" for k in range(1, len(self.targets))]


def _stacked(chunk: np.ndarray) -> np.ndarray:
    return np.asarray(chunk, dtype=np.float32).reshape(len(chunk), -1)


def _frame_errors(rows: np.ndarray, coeffs: np.ndarray, basis: np.ndarray) -> np.ndarray:
    """(n,) the largest vertex distance of each row from its reconstruction."""
    residual = coeffs @ basis  # in place from here: this runs on every frame of the clip
    np.subtract(rows, residual, out=residual)
    np.square(residual, out=residual)
    per_axis = residual.reshape(len(rows), -1, 3)
    squared = per_axis[:, :, 0] + per_axis[:, :, 1]  # a sum over a length-3 axis is slow
    squared += per_axis[:, :, 2]
    return np.sqrt(squared.max(axis=1))


def fit_basis(
    chunks: Chunks, frames: int, num_vertices: int, budget: float, seed: int = 0
) -> Basis:
    """The smallest SVD basis whose reconstruction keeps every vertex within `budget`.

    Args:
        chunks: gives the clip's displacements from the template a chunk at a time, per pass.
        frames: T, frames the chunks hold in all.
        num_vertices: V.
        budget: the largest distance allowed, in the chunks' units (> 0).
        seed: of the random sketch (the result is deterministic for a seed).

    Passes over the frames: three for the subspace (sketch, power iteration, projection), one to
    gather the frames K is searched on, one per check of K on every frame (usually one); the
    sketch grows (and the subspace is found again) when it holds too few directions: by the
    factor its error over the budget says, as the largest error falls about as 1/K (a minute of
    the bundled model's face area: 0.33 mm at K=114, 0.17 at 238, 0.062 at 486), 2x to 8x.
    """
    width = 3 * num_vertices
    grown = PER_DECADE * math.log10(max(frames, 178) / 178)
    sketch = min(frames, width, FIRST_SKETCH + round(grown))
    while True:
        basis, coeffs, energy = _subspace(chunks, frames, width, sketch, seed)
        whole = sketch >= min(frames, width)
        usable = len(basis) if whole else max(1, len(basis) - OVERSAMPLE)
        short: list[float] = []
        found = _choose(chunks, coeffs, basis, energy, usable, budget, shortfall=short)
        if found is not None:
            return found
        if whole:  # the whole space: exact up to rounding
            return _bounded(chunks, coeffs, basis, budget)[0]
        factor = min(8.0, max(2.0, 1.25 * short[0] / budget)) if short else 2.0
        # at least double: directions below 1e-7 of the first are dropped, so `usable` can be
        # far below the sketch, and a sketch that did not grow would be found again forever
        sketch = min(frames, width, max(2 * sketch, round(factor * usable) + OVERSAMPLE))


def _orthonormal(columns: np.ndarray) -> np.ndarray:
    """Orthonormal columns spanning `columns` (tall and thin): Householder QR in float64. (A
    Cholesky-QR through the Gram matrix, cheaper, squares the power iteration's already squared
    spectrum and dropped the weak directions a 0.1 mm budget needs: 10 min of speech took K=292
    instead of 210.) scipy's economic QR on a Fortran-order copy: half numpy's time, which copies
    and forms Q through its generic path (80157 x 80: 1.0 s against 2.1 s)."""
    import scipy.linalg

    tall = np.asfortranarray(columns, dtype=np.float64)
    q = scipy.linalg.qr(tall, mode="economic", overwrite_a=True, check_finite=False)[0]
    return q.astype(np.float32)


def _subspace(
    chunks: Chunks, frames: int, width: int, sketch: int, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(L, 3V) orthonormal rows spanning the clip's leading displacements, ordered by their
    singular values, (T, L) the clip's coefficients on them and (T,) each frame's squared norm."""
    rng = np.random.default_rng(seed)
    omega = rng.standard_normal((frames, sketch)).astype(np.float32)
    range_ = np.zeros((width, sketch), np.float32)
    first = 0
    for chunk in chunks():
        rows = _stacked(chunk)
        range_ += rows.T @ omega[first : first + len(rows)]
        first += len(rows)
    q = _orthonormal(range_)
    power = np.zeros((width, q.shape[1]), np.float32)  # one power iteration: D^T (D Q)
    for chunk in chunks():
        rows = _stacked(chunk)
        power += rows.T @ (rows @ q)
    q = _orthonormal(power)
    projected, energy = [], []
    for chunk in chunks():
        rows = _stacked(chunk)
        projected.append(rows @ q)
        energy.append(np.einsum("ij,ij->i", rows, rows, dtype=np.float64))
    u, s, vt = np.linalg.svd(np.concatenate(projected).astype(np.float64), full_matrices=False)
    keep = s > s[0] * 1e-7 if len(s) and s[0] > 0 else np.zeros(len(s), bool)
    keep[0] = True
    basis = (q @ vt[keep].T.astype(np.float32)).T  # (L, 3V)
    coeffs = (u[:, keep] * s[keep]).astype(np.float32)
    return np.ascontiguousarray(basis), coeffs, np.concatenate(energy)


def _choose(
    chunks: Chunks,
    coeffs: np.ndarray,
    basis: np.ndarray,
    energy: np.ndarray,
    usable: int,
    budget: float,
    gather: Callable[[np.ndarray], np.ndarray] | None = None,
    shortfall: list[float] | None = None,
) -> Basis | None:
    """The bounded basis of the smallest K <= `usable` within the budget on every frame, or None.

    K is searched on a sample (the frames with the largest residual energy at K = 1, 2, 4, ...,
    `usable`, and evenly spaced ones), then checked on every frame from the arrays as written;
    the frames that fail that check join the sample and K is searched again above the one that
    failed. `gather`
    gives the sample's (n, 3V) rows when they are known without a pass over the frames (a rig's
    pose); the check on every frame still reads `chunks`, and after a failed check the sample is
    read from `chunks` too. When even K = `usable` misses the budget on the sample, its largest
    error there is appended to `shortfall` (the caller sizes the next sketch by it)."""
    cumulative = np.cumsum(coeffs.astype(np.float64) ** 2, axis=1)
    ranks = [k for k in 2 ** np.arange(int(math.log2(usable)) + 1) if k < usable] + [usable]
    each = max(1, CHECK_FRAMES // 2 // len(ranks))  # the largest residuals at K = 1, 2, 4 ...
    sample = np.union1d(
        np.concatenate([np.argsort(energy - cumulative[:, k - 1])[-each:] for k in ranks]),
        np.linspace(0, len(energy) - 1, CHECK_FRAMES // 2).astype(int),
    )
    lo = 1
    while True:
        rows = _gather(chunks, sample) if gather is None else gather(sample)
        at_usable = float(_frame_errors(rows, coeffs[sample, :usable], basis[:usable]).max())
        if at_usable > budget:
            if shortfall is not None:
                shortfall.append(at_usable)
            return None
        hi = usable
        while lo < hi:
            mid = (lo + hi) // 2
            if _frame_errors(rows, coeffs[sample, :mid], basis[:mid]).max() <= budget:
                hi = mid
            else:
                lo = mid + 1
        found, errors = _bounded(chunks, coeffs[:, :hi], basis[:hi], budget)
        if found.max_error <= budget:
            return found
        if hi >= usable:
            return None
        failing = np.flatnonzero(errors > budget)
        worst = failing[np.argsort(errors[failing])[-CHECK_FRAMES:]]
        sample, lo = np.union1d(sample, worst), hi + 1
        gather = None  # the frames disagree with what `gather` said: read them from here on


def _gather(chunks: Chunks, indices: np.ndarray) -> np.ndarray:
    picked, first = [], 0
    for chunk in chunks():
        rows = _stacked(chunk)
        inside = indices[(indices >= first) & (indices < first + len(rows))] - first
        picked.append(rows[inside])
        first += len(rows)
    return np.concatenate(picked)


def _worst(chunks: Chunks, coeffs: np.ndarray, basis: np.ndarray) -> np.ndarray:
    """(T,) each frame's largest vertex distance from its reconstruction."""
    errors, first = [], 0
    for chunk in chunks():
        rows = _stacked(chunk)
        errors.append(_frame_errors(rows, coeffs[first : first + len(rows)], basis))
        first += len(rows)
    return np.concatenate(errors)


def _bounded(
    chunks: Chunks, coeffs: np.ndarray, basis: np.ndarray, budget: float
) -> tuple[Basis, np.ndarray]:
    """The basis as targets with weights in [0, 1] and the offset target, and (T,) each frame's
    error, measured on every frame from the float32 arrays written."""
    low, high = coeffs.min(axis=0), coeffs.max(axis=0)
    span = np.where(high - low > 0, high - low, 1.0).astype(np.float32)
    weights = np.clip((coeffs - low) / span, 0.0, 1.0).astype(np.float32)
    targets = basis * span[:, None]
    offset = (low.astype(np.float64) @ basis.astype(np.float64)).astype(np.float32)
    all_targets, scales = quantize(np.concatenate([offset[None], targets]))
    all_weights = np.concatenate([np.ones((len(weights), 1), np.float32), weights], axis=1)
    errors = _worst(chunks, all_weights, all_targets)
    num_vertices = basis.shape[1] // 3
    found = Basis(
        targets=all_targets.reshape(-1, num_vertices, 3),
        weights=all_weights,
        max_error=float(errors.max()),
        budget=budget,
        scales=scales,
    )
    return found, errors


def quantize(targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(K, 3V) targets rounded to 16 bits of their own range, as float32, and (K,) their scales
    s_k (the largest |component|; 1 for an all-zero target)."""
    targets = targets.astype(np.float64)
    scales = np.abs(targets).max(axis=1)
    scales = np.where(scales > 0, scales, 1.0).astype(np.float32)
    step = scales.astype(np.float64)[:, None] / SHORT_MAX
    rounded = np.clip(np.rint(targets / step), -SHORT_MAX, SHORT_MAX) * step
    return rounded.astype(np.float32), scales


def exact_basis(chunks: Chunks, frames: int, num_vertices: int) -> Basis:
    """One target per frame, its displacement, and one-hot weights (exact at every frame;
    LINEAR interpolation is exact between frames too). For short clips: T targets of V vertices."""
    targets = np.concatenate([np.asarray(c, np.float32) for c in chunks()])
    weights = np.eye(frames, dtype=np.float32)
    return Basis(
        targets=targets.reshape(frames, num_vertices, 3),
        weights=weights,
        max_error=0.0,
        budget=0.0,
        exact=True,
    )
