"""The basis of a whole-head animation straight from its rig: no pass over the frames to find it.

`animate` with the bundled model writes the ICT-FaceKit head posed by its rig (inference/head.py):
every frame is the neutral plus the expression shapes times the frame's weights (kept in the npz
as `expression_weights`), with the eyeballs turned rigidly. A rotation R about the eye's centre c
moves a vertex by (R - I)(x - c): linear in R's entries, so each eye is 8 fixed targets (the entry
R[1][0] is always 0) with R - I's entries as their coefficients. The clip therefore lies exactly
in the span of E + 16 known targets with known coefficients C (T x (E + 16)), and its SVD is that of
C R^T, with Q R the QR factorisation of the targets' transpose: (T x 73) work instead of three
passes over the frames with a random sketch (basis.py). K is then chosen and checked on every frame
as for any clip (`basis._choose`), so a file whose frames are not what its weights say (edited
after animate) fails the check and the caller falls back to `fit_basis`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from meshtalk.pipelines.export.basis import Basis, Chunks, _choose

EYE_ENTRIES = [(i, j) for i in range(3) for j in range(3) if (i, j) != (1, 0)]
"""The entries of an eye's rotation that vary (turn_y(yaw) @ turn_x(pitch) has R[1][0] = 0)."""


def bundled_rig_for(npz: Path, template: np.ndarray):  # noqa: ANN201
    """The bundled head rig when the archive holds its frames and their expression weights (the
    rig's names, its vertex count, its neutral as template); else None."""
    from meshtalk.pipelines.data.resources import default_model
    from meshtalk.pipelines.export.npz import load_npz
    from meshtalk.pipelines.inference.head import RIG_FILE, read_rig

    path = default_model.folder() / RIG_FILE
    if not path.is_file():
        return None
    with load_npz(npz) as archive:
        if "expression_weights" not in archive.files or "expression_names" not in archive.files:
            return None
        names = tuple(str(n) for n in archive["expression_names"])
        weights = np.asarray(archive["expression_weights"], np.float32)
    rig = read_rig(path)
    if names != rig.names or len(template) != len(rig.neutral) or "eyeballs" not in rig.parts:
        return None
    if not np.allclose(template, rig.neutral, atol=1e-4):
        return None
    return rig, weights


def rig_basis(
    chunks: Chunks, rig, weights: np.ndarray, metres: float, budget: float
) -> Basis | None:
    """The smallest basis within `budget` of a clip posed by `rig` with `weights` (T, E), in
    metres, checked on every frame of `chunks` (displacements from the neutral, metres); None
    when the frames are not the rig's pose of the weights (the check fails at full rank)."""
    import scipy.linalg

    count, names = len(rig.neutral), len(rig.expressions)
    turns = rig.eye_turns(weights)
    # float32 throughout: the targets are millimetres, the check below reads the file in float32
    targets = np.zeros((names + len(EYE_ENTRIES) * len(turns), count, 3), np.float32)
    targets[:names] = rig.expressions
    coefficients = [weights.astype(np.float64)]
    row = names
    for ids, centre, rotations in turns:
        targets[:names, ids] = 0.0  # the eyeballs turn rigidly; the shapes do not reach them
        rest = rig.neutral[ids].astype(np.float64) - centre
        for i, j in EYE_ENTRIES:
            targets[row, ids, i] = rest[:, j]
            coefficients.append(rotations[:, i, j, None] - (1.0 if i == j else 0.0))
            row += 1
    targets = targets.reshape(len(targets), -1)
    targets *= np.float32(metres)
    coeffs = np.concatenate(coefficients, axis=1)
    moving = np.abs(targets).max(axis=1) > 0
    if not moving.all():
        targets, coeffs = targets[moving], coeffs[:, moving]
    # targets.T is Fortran-ordered: LAPACK factorises it in place, no copy
    q, r = scipy.linalg.qr(targets.T, mode="economic", overwrite_a=True, check_finite=False)
    u, s, vt = np.linalg.svd(coeffs @ r.T.astype(np.float64), full_matrices=False)
    keep = s > s[0] * 1e-7 if len(s) and s[0] > 0 else np.zeros(len(s), bool)
    keep[:1] = True
    basis = np.ascontiguousarray((q @ vt[keep].T.astype(np.float32)).T)  # (L, 3V)
    scores = (u[:, keep] * s[keep]).astype(np.float32)
    energy = ((u * s) ** 2).sum(axis=1)  # each frame's squared norm (Q's columns orthonormal)

    def gather(frames: np.ndarray) -> np.ndarray:  # the rig's pose of the sample: no file pass
        return scores[frames] @ basis  # (the directions dropped hold < 1e-14 of the energy)

    return _choose(chunks, scores, basis, energy, len(basis), budget, gather)
