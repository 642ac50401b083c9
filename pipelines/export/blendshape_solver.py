"""Blendshape weights in [0, 1] that best reproduce a mesh's motion: bounded least squares.

Each frame's displacement d (the face's M vertices, 3M values) is fitted by the rig's K targets
B (3M x K): minimise |B w - d|^2 over 0 <= w <= 1. Everything after one product b = B^T d per
frame happens on the reduced K x K system A = B^T B, whatever the vertex count:

* the columns of B are scaled to unit length (the box stays a box, and A's condition number
  falls, by 10-100x on ICT-FaceKit's targets);
* one Cholesky factor of A gives every frame's unconstrained solution at once; a frame whose
  solution lies in the box is done (exact);
* the others run FISTA (accelerated projected gradient, step 1/L, L = A's largest eigenvalue)
  with adaptive restart (O'Donoghue & Candes 2015), batched over the frames, each frame stopping
  when its projected-gradient step is below `tolerance` (in weight units).

`scipy.optimize.lsq_linear` solves the same problem a frame at a time (tests compare the two).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

TOLERANCE = 1e-9
"""A frame is also taken as solved when one projected-gradient step moves no weight by more than
this (a frame is usually solved exactly before: see `BlendshapeSolver._polish`)."""
MAX_ITERATIONS = 5000
"""FISTA iterations at most (frames of ICT-FaceKit's rig need 100-600)."""
CHECK_EVERY = 10
"""Iterations between convergence checks (converged frames then leave the batch)."""
INSIDE_MARGIN = 1e-6
"""An unconstrained solution this far (in weight units) beyond a bound counts as inside the box
and is clipped: the round-off of Cholesky where a weight is exactly 0 or 1."""
RIDGE = 1e-9
"""Added to A's diagonal (of unit-length columns) so that Cholesky works on dependent targets."""


@dataclass
class SolveStats:
    """How hard the last solve was: frames solved exactly by Cholesky, iterations of FISTA."""

    frames: int = 0
    inside: int = 0
    iterations: int = 0
    unconverged: int = 0


class BlendshapeSolver:
    """Bounded least-squares weights of a fixed set of targets, for any number of frames.

    Args:
        basis: (K, M, 3) the targets' offsets on the M vertices fitted.
        tolerance: see `TOLERANCE`.
        max_iterations: see `MAX_ITERATIONS`.
        ridge: added to the diagonal of the unit-column system (see `RIDGE`); a larger one shares
            the weight between targets that move the fitted vertices alike.
    """

    def __init__(
        self,
        basis: np.ndarray,
        tolerance: float = TOLERANCE,
        max_iterations: int = MAX_ITERATIONS,
        ridge: float = RIDGE,
    ) -> None:
        import scipy.linalg

        basis = np.asarray(basis, dtype=np.float64)
        self.count = len(basis)
        self.columns = basis.reshape(self.count, -1).T  # (3M, K)
        norms = np.linalg.norm(self.columns, axis=0)
        self.used = norms > 0  # a target that moves nothing keeps weight 0
        self.norms = np.where(self.used, norms, 1.0)
        self.unit = self.columns / self.norms  # (3M, K) unit-length columns
        gram = self.unit.T @ self.unit
        gram[~self.used] = 0.0
        gram[:, ~self.used] = 0.0
        gram[np.diag_indices(self.count)] += np.where(self.used, ridge, 1.0)
        self.gram = gram
        self.factor = scipy.linalg.cho_factor(gram)
        self.lipschitz = float(np.linalg.eigvalsh(gram)[-1])
        self.upper = np.where(self.used, self.norms, 0.0)  # the box in scaled units
        self.tolerance, self.max_iterations = tolerance, max_iterations
        self.stats = SolveStats()

    def project(self, displacements: np.ndarray) -> np.ndarray:
        """(T, M, 3) displacements -> (T, K) right-hand sides B_unit^T d."""
        flat = np.asarray(displacements, dtype=np.float64).reshape(len(displacements), -1)
        return flat @ self.unit

    def solve(self, displacements: np.ndarray) -> np.ndarray:
        """(T, M, 3) displacements -> (T, K) float64 weights in [0, 1]."""
        return self.solve_projected(self.project(displacements))

    def solve_projected(self, rhs: np.ndarray) -> np.ndarray:
        """(T, K) right-hand sides (`project`) -> (T, K) weights in [0, 1]."""
        import scipy.linalg

        rhs = np.where(self.used, rhs, 0.0)
        free = scipy.linalg.cho_solve(self.factor, rhs.T).T
        margin = INSIDE_MARGIN * self.norms  # round-off at a bound (a weight of exactly 0)
        inside = np.all((free >= -margin) & (free <= self.upper + margin), axis=1)
        scaled = np.clip(free, 0.0, self.upper)
        self.stats = SolveStats(frames=len(rhs), inside=int(inside.sum()))
        outside = np.flatnonzero(~inside)
        if outside.size:
            scaled[outside] = self._fista(rhs[outside], scaled[outside])
        return scaled / self.norms

    def _fista(self, rhs: np.ndarray, start: np.ndarray) -> np.ndarray:
        """FISTA with adaptive restart on 1/2 u^T A u - rhs^T u over the box, frames batched."""
        step = 1.0 / self.lipschitz
        result = start.copy()
        active = np.arange(len(rhs))
        x, y = start.copy(), start.copy()
        momentum = np.ones((len(rhs), 1))
        tried = np.zeros(start.shape, dtype=bool)  # the bounds of each frame's last failed polish
        previous = np.zeros(start.shape, dtype=bool)
        iteration = 0
        while active.size and iteration < self.max_iterations:
            b = rhs[active]
            for _ in range(CHECK_EVERY):  # in place where it can be: numpy's overhead counts
                moved = y @ self.gram
                moved -= b
                moved *= -step
                moved += y
                np.maximum(moved, 0.0, out=moved)
                np.minimum(moved, self.upper, out=moved)
                change = moved - x
                restart = np.einsum("ij,ij->i", y - moved, change)[:, None] > 0
                following = (1.0 + np.sqrt(1.0 + 4.0 * momentum * momentum)) / 2.0
                change *= np.where(restart, 0.0, (momentum - 1.0) / following)
                change += moved
                y, x = change, moved
                momentum = np.where(restart, 1.0, following)
            iteration += CHECK_EVERY
            bounds = (x <= 0.0) | (x >= self.upper)
            # Polish a frame once its bounds have settled (the same over the last check) and
            # are not those its last polish failed with: a solve costs K^3/3 per frame.
            ready = np.all(bounds == previous, axis=1) & np.any(bounds != tried, axis=1)
            exact = np.zeros(len(active), dtype=bool)
            if ready.any():
                polished, exact[ready] = self._polish(x[ready], b[ready])
                result[active[ready & exact]] = polished[exact[ready]]
                tried[ready & ~exact] = bounds[ready & ~exact]
            previous = bounds
            gradient_step = np.clip(x - step * (x @ self.gram - b), 0.0, self.upper) - x
            done = exact | (np.abs(gradient_step / self.norms).max(axis=1) < self.tolerance)
            result[active[done & ~exact]] = x[done & ~exact]
            keep = ~done
            active, x, y, momentum = active[keep], x[keep], y[keep], momentum[keep]
            tried, previous = tried[keep], previous[keep]
        result[active] = x
        self.stats.iterations = iteration
        self.stats.unconverged = int(active.size)
        return result

    def _polish(self, x: np.ndarray, rhs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The exact minimiser on the bounds `x` sits on, and whether it is the box's minimiser.

        The weights at a bound stay there; the others solve their equations exactly (one small
        batched solve). The result is the solution when it stays inside the box and the gradient
        pushes every bound weight outwards (the KKT conditions).
        """
        at_lower, at_upper = x <= 0.0, x >= self.upper
        free = ~(at_lower | at_upper)
        fixed = np.where(free, 0.0, x)
        both = free[:, :, None] & free[:, None, :]
        system = np.where(both, self.gram, np.eye(self.count))
        right = np.where(free, rhs - fixed @ self.gram, fixed)
        candidate = np.linalg.solve(system, right[..., None])[..., 0]
        gradient = candidate @ self.gram - rhs
        slack = 1e-9 * (1.0 + np.abs(rhs).max(axis=1, keepdims=True))
        inside = (candidate >= -1e-12) & (candidate <= self.upper + 1e-12)
        pushes = np.where(at_lower, gradient >= -slack, np.where(at_upper, gradient <= slack, True))
        exact = np.all(inside & pushes, axis=1)
        return np.clip(candidate, 0.0, self.upper), exact

    def reconstruct(self, weights: np.ndarray) -> np.ndarray:
        """(T, K) weights -> (T, M, 3) offsets of the fitted vertices."""
        flat = np.asarray(weights, dtype=np.float64) @ self.columns.T
        return flat.reshape(len(weights), -1, 3)


@dataclass
class FitReport:
    """The fit's residual on the face, in millimetres, gathered frame chunk by chunk.

    Attributes:
        scale_mm: millimetres per unit of the rig's coordinates.
    """

    scale_mm: float
    frames: int = 0
    vertices: int = 0
    residual_max: float = 0.0
    residual_sum: float = 0.0
    motion_max: float = 0.0
    motion_sum: float = 0.0
    residual_squares: float = 0.0
    motion_squares: float = 0.0
    worst_frame: int = 0

    def add(self, displacements: np.ndarray, fitted: np.ndarray) -> None:
        """One chunk: (T, M, 3) displacements to fit and the (T, M, 3) offsets the weights give."""
        residual = np.linalg.norm(fitted - displacements, axis=-1) * self.scale_mm
        motion = np.linalg.norm(displacements, axis=-1) * self.scale_mm
        per_frame = residual.max(axis=1)
        if per_frame.size and per_frame.max() > self.residual_max:
            self.residual_max = float(per_frame.max())
            self.worst_frame = self.frames + int(per_frame.argmax())
        self.motion_max = max(self.motion_max, float(motion.max(initial=0.0)))
        self.residual_sum += float(residual.sum())
        self.motion_sum += float(motion.sum())
        self.residual_squares += float((residual**2).sum())
        self.motion_squares += float((motion**2).sum())
        self.frames += len(displacements)
        self.vertices = displacements.shape[1]

    def figures(self) -> dict:
        """Max and mean residual and motion (mm) over every frame and face vertex; the share of
        the motion's energy the weights reproduce."""
        count = max(self.frames * self.vertices, 1)
        explained = (
            1.0 - self.residual_squares / self.motion_squares if self.motion_squares else 1.0
        )
        return {
            "residual_max_mm": self.residual_max,
            "residual_mean_mm": self.residual_sum / count,
            "worst_frame": self.worst_frame,
            "motion_max_mm": self.motion_max,
            "motion_mean_mm": self.motion_sum / count,
            "explained_fraction": explained,
            "frames": self.frames,
            "face_vertices": self.vertices,
        }
