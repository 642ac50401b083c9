"""Our GLB, USD and PC2 files opened by the real clients (#31): Blender (bpy 5.0.1), Khronos
glTF-Validator and three.js r187 (tests/clients; each test skips with the reason where its client
is not installed; .ci/run installs them).

Blender's evaluated positions must match the npz at every frame: the GLB within its recorded
error, the PC2 and the USDC within 0.01 mm; a GLB with signed weights and no offset target must not
(Blender clamps negative morph weights).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests import clients
from tests.test_export_formats import clip, gltf_arrays, grid  # noqa: F401 (fixtures)

PC2_USD_TOLERANCE_MM = 0.01


def npz_clip(folder: Path) -> tuple[np.ndarray, float]:
    with np.load(folder / "animation.npz") as npz:
        return npz["vertices"].astype(np.float64) * 1e-3, float(npz["fps"])  # metres


def recorded_error_mm(path: Path) -> float:
    gltf, _ = gltf_arrays(path)
    return gltf.asset.extras["meshtalk"]["maxErrorMm"]


def distance_mm(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.linalg.norm(a - b, axis=-1) * 1e3


def glb_order(path: Path, count: int) -> np.ndarray:
    """The template vertex of each GLB vertex: the template's own, in order, then the copies its
    UV seams add (`extras.meshtalk.seamVertices`; the bundled head has seams)."""
    seams = gltf_arrays(path)[0].asset.extras["meshtalk"].get("seamVertices", [])
    return np.concatenate([np.arange(count), np.asarray(seams, dtype=np.int64)])


def test_blender_reads_the_glb_within_its_recorded_error_on_every_frame(clip):  # noqa: F811
    clients.require("blender")
    vertices, fps = npz_clip(clip)
    positions = clients.blender_positions("glb", clip / "animation.glb", fps, len(vertices))
    vertices = vertices[:, glb_order(clip / "animation.glb", vertices.shape[1])]
    error = distance_mm(positions, vertices).max(axis=1)  # per frame
    assert positions.shape == vertices.shape  # vertex order and count kept
    assert error.max() <= recorded_error_mm(clip / "animation.glb") + 1e-4 <= 0.1 + 1e-4


def test_blender_bends_a_signed_weight_glb_without_the_offset(clip, tmp_path):  # noqa: F811
    """The negative control: the same basis with signed weights (no offset target) is clamped at
    0 by Blender's importer, and its positions leave the budget by millimetres."""
    from meshtalk.pipelines.export.basis import Basis
    from meshtalk.pipelines.export.glb import build_glb, write_glb
    from meshtalk.pipelines.io.mesh import Mesh

    clients.require("blender")
    vertices, fps = npz_clip(clip)
    with np.load(clip / "animation.npz") as npz:
        template, faces = npz["template"].astype(np.float64) * 1e-3, npz["faces"]
    gltf, _ = gltf_arrays(clip / "animation.glb")
    count = gltf.asset.extras["meshtalk"]["targets"]
    u, s, vt = np.linalg.svd((vertices - template).reshape(len(vertices), -1), False)
    signed = Basis(
        targets=vt[:count].reshape(count, -1, 3).astype(np.float32),
        weights=(u[:, :count] * s[:count]).astype(np.float32),
        max_error=0.0,
        budget=1e-4,
    )
    assert signed.weights.min() < 0
    mesh = Mesh(vertices=template.astype(np.float32), faces=faces.astype(np.int64))
    path = tmp_path / "signed.glb"
    write_glb(path, build_glb(mesh, signed, fps))
    rebuilt = template + np.einsum("tk,kvc->tvc", signed.weights, signed.targets)
    assert distance_mm(rebuilt, vertices).max() <= 0.1  # the file itself holds the clip
    positions = clients.blender_positions("glb", path, fps, len(vertices))
    assert distance_mm(positions, vertices).max() > 1.0  # measured: 7.4 mm


def test_blender_reads_the_pc2_on_its_template_within_a_hundredth_of_a_mm(clip, tmp_path):  # noqa: F811
    from meshtalk.pipelines.io.mesh import read_mesh, write_mesh

    clients.require("blender")
    vertices, fps = npz_clip(clip)  # animate wrote the PC2 with --units m
    # The PC2 goes on the template's points in order: the head's OBJ (parts, UVs) as a PLY, which
    # Blender's importer reads vertex for vertex.
    (template,) = [p for p in clip.glob("template.*") if p.suffix in (".ply", ".obj")]
    write_mesh(tmp_path / "template.ply", read_mesh(template))
    positions = clients.blender_positions(
        "pc2", clip / "animation.pc2", fps, len(vertices), tmp_path / "template.ply"
    )
    assert distance_mm(positions, vertices).max() <= PC2_USD_TOLERANCE_MM


def test_blender_reads_the_usd_files(clip):  # noqa: F811
    clients.require("blender")
    vertices, fps = npz_clip(clip)
    points = clients.blender_positions("usd", clip / "animation.usdc", fps, len(vertices))
    assert distance_mm(points, vertices).max() <= PC2_USD_TOLERANCE_MM
    shapes = clients.blender_positions("usd", clip / "animation.usdz", fps, len(vertices))
    assert distance_mm(shapes, vertices).max() <= recorded_error_mm(clip / "animation.glb") + 1e-4


def test_blender_reads_a_glb_with_uv_seams_in_the_templates_order(grid):  # noqa: F811
    clients.require("blender")
    with np.load(grid["npz"]) as npz:
        vertices, fps = npz["vertices"].astype(np.float64) * 1e-3, float(npz["fps"])
    path = grid["out"] / "animation.glb"
    positions = clients.blender_positions("glb", path, fps, len(vertices))
    seams = gltf_arrays(path)[0].asset.extras["meshtalk"]["seamVertices"]
    count = vertices.shape[1]
    assert positions.shape[1] == count + len(seams)
    limit = recorded_error_mm(path) + 1e-4
    assert distance_mm(positions[:, :count], vertices).max() <= limit
    assert distance_mm(positions[:, count:], vertices[:, seams]).max() <= limit


@pytest.mark.parametrize(
    "name", ["clip/animation.glb", "grid/animation.glb", "exact/animation.glb"]
)
def test_the_khronos_validator_finds_no_issue(name, clip, grid):  # noqa: F811
    clients.require("validator")
    folders = {"clip": clip, "grid": grid["out"], "exact": grid["exact"]}
    folder, file = name.split("/")
    report = clients.validate_glb(folders[folder] / file)
    # The one info allowed: the bundled head's UVs kept though its material has no texture (they
    # are the user's, for their own textures).
    messages = report["issues"]["messages"]
    kept_uvs = [
        m for m in messages if m["code"] == "UNUSED_OBJECT" and "TEXCOORD" in m.get("pointer", "")
    ]
    assert clients.glb_issues(report) == {
        "numErrors": 0,
        "numWarnings": 0,
        "numInfos": len(kept_uvs),
        "numHints": 0,
    }, messages
    assert len(kept_uvs) <= (folder == "clip")


def test_three_js_reproduces_the_positions_at_sampled_frames(clip, grid):  # noqa: F811
    clients.require("three")
    vertices, fps = npz_clip(clip)
    frames = [0, 1, 45, 100, len(vertices) - 1]
    positions = clients.three_positions(clip / "animation.glb", fps, frames)
    order = glb_order(clip / "animation.glb", vertices.shape[1])
    limit = recorded_error_mm(clip / "animation.glb") + 1e-3  # float32 sums in three.js
    assert distance_mm(positions, vertices[frames][:, order]).max() <= limit
    with np.load(grid["npz"]) as npz:
        exact, fps = npz["vertices"].astype(np.float64) * 1e-3, float(npz["fps"])
    positions = clients.three_positions(grid["exact"] / "animation.glb", fps, [0, 7, 39])
    assert distance_mm(positions, exact[[0, 7, 39]]).max() <= 1e-3
