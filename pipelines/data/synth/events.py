"""Events independent of the audio: blinks and brow raises, a slow expression drift, head poses."""

from __future__ import annotations

import numpy as np

from meshtalk.pipelines.data.layout import FPS
from meshtalk.pipelines.data.synth.speech import gaussian_kernel, gaussian_smooth


def event_curve(
    times: np.ndarray, onsets: np.ndarray, duration: float, attack: float, release: float
) -> np.ndarray:
    """Sum of raised-cosine events (0..1) starting at `onsets`, evaluated at `times` (s)."""
    curve = np.zeros_like(times)
    for onset in onsets:
        rise = (times >= onset) & (times < onset + attack)
        curve[rise] = np.maximum(
            curve[rise], 0.5 - 0.5 * np.cos(np.pi * (times[rise] - onset) / attack)
        )
        hold_end = onset + attack + duration
        curve[(times >= onset + attack) & (times < hold_end)] = 1.0
        fall = (times >= hold_end) & (times < hold_end + release)
        curve[fall] = np.maximum(
            curve[fall], 0.5 + 0.5 * np.cos(np.pi * (times[fall] - hold_end) / release)
        )
    return curve


def expression_drift(
    rng: np.random.Generator, n_frames: int, strength: float
) -> tuple[np.ndarray, np.ndarray]:
    """A slow upper-face expression over `n_frames`: brow level (signed) and squint (0..1).

    Each is white noise smoothed over about half a second, scaled to std `strength`; the squint is
    the positive half of its curve, so the eyes squint about half the time.
    """
    sigma = 0.4 * FPS
    std = float(np.sqrt((gaussian_kernel(sigma) ** 2).sum()))  # of smoothed unit white noise
    brow, squint = (
        strength / std * gaussian_smooth(rng.standard_normal(n_frames), sigma) for _ in range(2)
    )
    return brow, np.clip(squint, 0.0, 1.0)


def poisson_onsets(
    rng: np.random.Generator, rate_per_minute: float, duration: float, gap: float
) -> np.ndarray:
    """Event onsets of a Poisson process, at least `gap` seconds apart."""
    onsets, t = [], 0.0
    while rate_per_minute > 0:
        t += rng.exponential(60.0 / rate_per_minute)
        if t >= duration:
            break
        if not onsets or t - onsets[-1] >= gap:
            onsets.append(t)
    return np.asarray(onsets)


def head_poses(rng: np.random.Generator, times: np.ndarray, enabled: bool) -> np.ndarray:
    """Smooth head poses (T, 3, 4): rotations of a few degrees and translations of a few mm."""
    poses = np.zeros((len(times), 3, 4))
    poses[:, :, :3] = np.eye(3)
    if not enabled:
        return poses
    freq = rng.uniform(0.1, 0.5, size=(6, 2))
    phase = rng.uniform(0, 2 * np.pi, size=(6, 2))
    wave = (np.sin(2 * np.pi * freq[None, :, :] * times[:, None, None] + phase[None]).sum(-1)) / 2
    yaw, pitch, roll = (np.radians(3.0) * wave[:, k] for k in range(3))
    for i, (a, b, c) in enumerate(zip(yaw, pitch, roll)):
        rz = np.array([[np.cos(c), -np.sin(c), 0], [np.sin(c), np.cos(c), 0], [0, 0, 1]])
        ry = np.array([[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]])
        rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
        poses[i, :, :3] = rz @ ry @ rx
    poses[:, :, 3] = 4.0 * wave[:, 3:6] + np.array([0.0, 0.0, 1000.0])
    return poses
