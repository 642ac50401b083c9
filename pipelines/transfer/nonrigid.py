"""The non-rigid fit of a placed template onto a target's surface (Amberg et al. 2007, optimal-step
non-rigid ICP), on bounded-memory closest points."""

from __future__ import annotations

import numpy as np

from meshtalk.pipelines.transfer.alignment import TargetSurface

NRICP_STEPS = ((0.02, 3.0, 0.5, 10), (0.007, 3.0, 0.5, 10), (0.002, 3.0, 0.0, 10))
"""The non-rigid fit's (smoothness, landmark weight, normal weight, iterations) per step, stiff to
loose, in units of the template's bounding-box diagonal."""


NRICP_EPS = 1e-4
"""A step of the non-rigid fit ends when its mean weighted distance improves less than this."""


UNMATCHED_WEIGHT = 1e-3
"""A vertex without a match is held where it is with this weight (keeps the system regular)."""


def non_rigid_fit(
    placed: np.ndarray,
    faces: np.ndarray,
    surface: TargetSurface,
    reach: float,
    landmarks: tuple[np.ndarray, np.ndarray] | None = None,
) -> np.ndarray:
    """The placed template's vertices fitted onto the target's surface (Amberg et al. 2007).

    Each vertex gets an affine transform; each step solves for all of them at once, trading
    closeness to the target's surface (closest points, weighted by how well the normals agree)
    against the transforms' differences across edges (stiffness), loosening as in
    `NRICP_STEPS`. Matches farther than `reach` or on the target's open edge are left out, and
    an unmatched vertex is held lightly where it is (so a part with no match, an eyeball, the
    back of a head on a face-only scan, keeps the shape of its neighbours).

    Args:
        placed: (Vs, 3) the template after the similarity, in target coordinates.
        faces: (Fs, 3) its triangles.
        surface: the target.
        reach: largest distance of a match (target units).
        landmarks: (template vertex indices, (L, 3) target positions) held with the landmark
            weight, or None.

    Returns:
        (Vs, 3) float64 fitted vertices.
    """
    import scipy.sparse as sparse
    import scipy.sparse.linalg
    import trimesh

    template = trimesh.Trimesh(placed, faces, process=False, validate=False)
    centre, unit = placed.mean(0), float(np.linalg.norm(np.ptp(placed, axis=0)))
    vertices = (placed - centre) / unit
    count = len(vertices)
    edges = template.edges_unique
    lengths = np.maximum(
        np.linalg.norm(vertices[edges[:, 0]] - vertices[edges[:, 1]], axis=1), 1e-9
    )
    rows = np.repeat(np.arange(len(edges)), 2)
    incidence = sparse.coo_matrix(
        (np.stack([1 / lengths, -1 / lengths], 1).ravel(), (rows, edges.ravel())),
        shape=(len(edges), count),
    )
    stiffness = sparse.kron(incidence, sparse.identity(4)).tocsr()
    data = _affine_rows(vertices)
    normals = _affine_rows(template.vertex_normals)
    unknowns = np.tile(np.vstack([np.eye(3), np.zeros((1, 3))]), (count, 1))
    pinned = None
    if landmarks is not None:
        pinned = (data[landmarks[0]], (landmarks[1] - centre) / unit)
    current = vertices
    for smoothness, landmark_weight, normal_weight, iterations in NRICP_STEPS:
        previous_error = np.inf
        for _ in range(iterations):
            closest, distance, on_edge, triangles = surface.match(current * unit + centre)
            weights = ((distance <= reach) & ~on_edge).astype(np.float64)
            if normal_weight > 0:
                turned = normals @ unknowns
                turned /= np.maximum(np.linalg.norm(turned, axis=1, keepdims=True), 1e-12)
                agreement = np.abs((turned * surface.normals[triangles]).sum(1))
                weights *= agreement**normal_weight
            goal = np.where(weights[:, None] > 0, (closest - centre) / unit, current)
            weights = np.maximum(weights, UNMATCHED_WEIGHT)
            blocks = [smoothness * stiffness, sparse.diags(weights) @ data]
            right = [np.zeros((stiffness.shape[0], 3)), weights[:, None] * goal]
            if pinned is not None:
                blocks.append(landmark_weight * pinned[0])
                right.append(landmark_weight * pinned[1])
            system = sparse.vstack(blocks).tocsr()
            unknowns = scipy.sparse.linalg.spsolve(
                (system.T @ system).tocsc(), system.T @ np.vstack(right)
            )
            current = data @ unknowns
            error = float((weights * np.linalg.norm(goal - current, axis=1)).mean())
            if previous_error - error < NRICP_EPS:
                break
            previous_error = error
    return current * unit + centre


def _affine_rows(points: np.ndarray):
    """(N, 4N) sparse rows [x y z 1] placing each point's homogeneous coordinates at its
    transform's 4 unknown rows."""
    import scipy.sparse as sparse

    count = len(points)
    values = np.concatenate([np.asarray(points, np.float64), np.ones((count, 1))], 1).ravel()
    return sparse.csr_matrix(
        (values, (np.repeat(np.arange(count), 4), np.arange(4 * count))), shape=(count, 4 * count)
    )
