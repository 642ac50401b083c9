"""Pictures of results a person would rather look at than read."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from meshtalk.pipelines.io.atomic import atomic_path


def save_vertex_maps(
    path: str | Path,
    vertices: np.ndarray,
    maps: dict[str, np.ndarray],
    shared_scale: bool = False,
) -> None:
    """A front view of a face per map, vertices coloured by their value (PNG, written atomically).

    Args:
        vertices: (V, 3) face, x right, y up, z towards the viewer.
        maps: title -> (V,) values.
        shared_scale: colour every map on one scale (from 0 to the largest value of all).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    order = np.argsort(vertices[:, 2])  # draw far vertices first
    top = max(float(np.max(values)) for values in maps.values()) if maps else 1.0
    figure, axes = plt.subplots(1, len(maps), figsize=(3.2 * len(maps), 4.0), squeeze=False)
    for axis, (title, values) in zip(axes[0], maps.items()):
        points = axis.scatter(
            vertices[order, 0],
            vertices[order, 1],
            c=values[order],
            s=2,
            cmap="viridis",
            vmin=0.0 if shared_scale else None,
            vmax=top if shared_scale else None,
        )
        axis.set_title(title)
        axis.set_aspect("equal")
        axis.axis("off")
        figure.colorbar(points, ax=axis, fraction=0.046, shrink=0.6)
    figure.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        figure.savefig(tmp, dpi=80)
    plt.close(figure)
