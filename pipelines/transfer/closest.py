"""Closest points on a triangle mesh in bounded memory: open3d's BVH (`RaycastingScene`).

trimesh's `proximity.closest_point` gathers, for every query point, every triangle in a box as
large as its distance to the nearest vertex; far from the surface (a template not yet aligned, a
scan of 100k faces) that is hundreds of millions of (point, triangle) pairs and the process is
killed. open3d's Embree-backed scene answers the same query from a bounding-volume hierarchy in
O(V + F) memory, a few bytes per query point.

open3d works in float32: the mesh and the queries are taken relative to the mesh's centre (so a
head placed far from the origin keeps its precision), and the point found is then recomputed in
float64 from the triangle and the barycentric coordinates open3d gives.
"""

from __future__ import annotations

import numpy as np

QUERY_BATCH = 1 << 18
"""Query points handed to open3d at a time (its result tensors are ~40 bytes per point)."""


class SurfaceQuery:
    """Closest points on one triangle mesh, for any number of queries.

    Args:
        vertices: (V, 3) the mesh's vertices.
        faces: (F, 3) its triangles (zero-area ones are found too; their barycentric coordinates
            are those open3d gives).
    """

    def __init__(self, vertices: np.ndarray, faces: np.ndarray) -> None:
        import open3d as o3d

        self.vertices = np.asarray(vertices, dtype=np.float64)
        self.faces = np.asarray(faces, dtype=np.int64)
        if self.faces.ndim != 2 or self.faces.shape[1] != 3 or not len(self.faces):
            raise ValueError(f"a surface needs (F, 3) triangles, got {self.faces.shape}")
        self.centre = self.vertices.mean(axis=0)
        scene = o3d.t.geometry.RaycastingScene()
        scene.add_triangles(
            o3d.core.Tensor((self.vertices - self.centre).astype(np.float32)),
            o3d.core.Tensor(self.faces.astype(np.uint32)),
        )
        self._scene = scene

    def closest(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(closest points (N, 3) float64, distances (N,), triangle indices (N,) int64)."""
        points, triangles, barycentric = self.locate(points)
        corners = self.vertices[self.faces[triangles]]
        closest = np.einsum("nk,nkc->nc", barycentric, corners)
        return closest, np.linalg.norm(points - closest, axis=1), triangles

    def locate(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(the points as float64 (N, 3), triangle indices (N,), barycentric weights (N, 3))."""
        import open3d as o3d

        points = np.asarray(points, dtype=np.float64).reshape(-1, 3)
        triangles = np.empty(len(points), dtype=np.int64)
        barycentric = np.empty((len(points), 3), dtype=np.float64)
        for first in range(0, len(points), QUERY_BATCH):
            block = slice(first, first + QUERY_BATCH)
            query = o3d.core.Tensor((points[block] - self.centre).astype(np.float32))
            answer = self._scene.compute_closest_points(query)
            triangles[block] = answer["primitive_ids"].numpy().astype(np.int64)
            uv = answer["primitive_uvs"].numpy().astype(np.float64)
            barycentric[block] = np.stack([1.0 - uv[:, 0] - uv[:, 1], uv[:, 0], uv[:, 1]], 1)
        return points, triangles, np.clip(barycentric, 0.0, 1.0)
