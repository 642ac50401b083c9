"""GLB, USD and units (#31): the files as written, read back with pygltflib and usd-core.

The real clients (Blender, the Khronos validator, three.js) open the same files in
tests/test_export_clients.py. Shared fixtures: the bundled clip animated once with
`--formats glb,usdz,usdc --units m`, and a small OBJ grid with UV seams and a texture.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from meshtalk.cli.main import app
from meshtalk.pipelines.export.basis import fit_basis
from meshtalk.pipelines.export.formats import guess_units
from meshtalk.pipelines.export.npz import NpzWriter

runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="session")
def clip(tmp_path_factory) -> Path:
    """The bundled clip (178 frames, the whole ICT-FaceKit head) animated with every format, PC2
    in metres."""
    out = tmp_path_factory.mktemp("clip") / "out"
    result = invoke(
        "animate", "--example", "-o", out, "--no-video", "--no-progress",
        "--formats", "glb,usdz,usdc", "--units", "m",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    return out


def grid_mesh(folder: Path, size: int = 6) -> Path:
    """An OBJ grid (size x size vertices) whose UVs have a seam down the middle column, with a
    material (Kd and a PNG texture)."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    lines = ["mtllib grid.mtl"]
    for y in range(size):
        for x in range(size):
            lines.append(f"v {x * 20.0 - 50:.1f} {y * 20.0 - 50:.1f} {((x + y) % 3) * 4.0:.1f}")
    half = size // 2
    uv_index = {}
    for y in range(size):
        for x in range(size):
            for side in (0, 1) if x == half else (0,):
                uv_index[(x, y, side)] = len(uv_index) + 1
                lines.append(f"vt {x / (size - 1) + 0.01 * side:.4f} {y / (size - 1):.4f}")
    lines.append("usemtl skin")
    for y in range(size - 1):
        for x in range(size - 1):
            corners = [(x, y), (x + 1, y), (x + 1, y + 1), (x, y + 1)]
            side = 1 if x >= half else 0  # the right half uses the seam's second UV
            refs = [
                f"{cy * size + cx + 1}/{uv_index.get((cx, cy, side), uv_index[(cx, cy, 0)])}"
                for cx, cy in corners
            ]
            lines.append(f"f {refs[0]} {refs[1]} {refs[2]}")
            lines.append(f"f {refs[0]} {refs[2]} {refs[3]}")
    (folder / "grid.obj").write_text("\n".join(lines) + "\n")
    (folder / "grid.mtl").write_text("newmtl skin\nKd 0.8 0.6 0.5\nmap_Kd skin.png\n")
    Image.new("RGB", (8, 8), (200, 150, 120)).save(folder / "skin.png")
    return folder / "grid.obj"


def grid_animation(folder: Path, mesh_path: Path, frames: int = 40) -> Path:
    """An npz moving the grid (mm) with a smooth wave: vertices, template, faces, fps, audio."""
    from meshtalk.pipelines.io.mesh import read_mesh

    mesh = read_mesh(mesh_path)
    t = np.arange(frames)[:, None]
    wave = np.sin(0.2 * t + mesh.vertices[None, :, 0] / 30.0) * 3.0
    vertices = np.repeat(mesh.vertices[None], frames, axis=0).astype(np.float32)
    vertices[..., 2] += wave.astype(np.float32)
    path = folder / "grid.npz"
    with NpzWriter(path) as npz:
        npz.add("vertices", vertices)
        npz.add("template", mesh.vertices)
        npz.add("faces", mesh.faces.astype(np.int32))
        npz.add("fps", np.float64(25.0))
        npz.add("audio", np.zeros(16000 * frames // 25, np.float32))
        npz.add("audio_rate", np.int64(16000))
    return path


@pytest.fixture(scope="session")
def grid(tmp_path_factory) -> dict:
    """The grid's npz exported to GLB/USDZ/USDC with --mesh (its UVs and material)."""
    folder = tmp_path_factory.mktemp("grid")
    mesh = grid_mesh(folder / "mesh")
    npz = grid_animation(folder, mesh)
    out = folder / "out"
    result = invoke("export", npz, "--to", "glb,usdz,usdc,pc2", "--mesh", mesh, "-o", out,
                    "--no-progress")  # fmt: skip
    assert result.exit_code == 0, result.output
    exact = folder / "exact"
    result = invoke("export", npz, "--to", "glb", "--exact", "-o", exact, "--no-progress")
    assert result.exit_code == 0, result.output
    return {"npz": npz, "mesh": mesh, "out": out, "exact": exact}


def gltf_arrays(path: Path):
    """(document, accessor -> numpy array) of a GLB read back with pygltflib: float accessors as
    float32, quantized (normalized) ones dequantized as glTF reads them, indices as uint32."""
    import pygltflib

    from meshtalk.pipelines.export.rig import read_accessor

    gltf = pygltflib.GLTF2().load_binary(str(path))

    def array(index: int) -> np.ndarray:
        accessor = gltf.accessors[index]
        values = read_accessor(gltf, path, index)
        if accessor.componentType == 5126:
            return values.astype(np.float32)
        return values if accessor.normalized else values.astype(np.uint32)

    return gltf, array


def stored_bounds(gltf, index: int, data: np.ndarray) -> tuple[list, list]:
    """The per-component min and max of an accessor's data as its JSON must state them: in the
    stored integers for a normalized accessor (what the validator compares)."""
    accessor = gltf.accessors[index]
    if accessor.normalized:
        data = np.rint(data * 32767).astype(np.int64)
    return data.min(axis=0).tolist(), data.max(axis=0).tolist()


def test_the_basis_is_the_smallest_within_budget_on_every_frame():
    rng = np.random.default_rng(3)
    frames, count = 300, 500
    modes = rng.standard_normal((12, count * 3)).astype(np.float32) * 1e-3
    motion = rng.standard_normal((frames, 12)).astype(np.float32) * np.logspace(0, -3, 12)
    clip = (motion @ modes + rng.standard_normal((frames, count * 3)) * 1e-9).astype(np.float32)
    clip = clip.reshape(frames, count, 3)

    def chunks():
        for first in range(0, frames, 64):
            yield clip[first : first + 64]

    errors = {}
    for budget in (1e-4, 1e-6):
        basis = fit_basis(chunks, frames, count, budget)
        rebuilt = np.einsum("tk,kvc->tvc", basis.weights, basis.targets)
        error = np.linalg.norm(rebuilt - clip, axis=2).max()
        assert error <= budget and abs(error - basis.max_error) < 1e-9
        assert basis.weights.min() >= 0 and basis.weights.max() <= 1
        assert (basis.weights[:, 0] == 1).all() and basis.names[0] == "offset"
        errors[budget] = basis.count
        # K is the smallest: even the exact SVD truncated to K - 1 breaks the budget
        u, s, vt = np.linalg.svd(clip.reshape(frames, -1).astype(np.float64), full_matrices=False)
        k = basis.count - 1
        rebuilt = ((u[:, :k] * s[:k]) @ vt[:k]).reshape(clip.shape)
        assert np.linalg.norm(rebuilt - clip, axis=2).max() > budget
    assert errors[1e-6] > errors[1e-4]


def test_glb_of_animate_holds_the_clip_within_its_recorded_error(clip):
    gltf, array = gltf_arrays(clip / "animation.glb")
    with np.load(clip / "animation.npz") as npz:
        vertices, template, fps = npz["vertices"], npz["template"], float(npz["fps"])
    record = gltf.asset.extras["meshtalk"]
    assert record["units"] == "m" and record["upAxis"] == "Y" and record["budgetMm"] == 0.1
    # The bundled model's head moves through its rig's 57 expression shapes (and turned eyes):
    # a few dozen targets at most hold every frame within the budget.
    assert record["maxErrorMm"] <= 0.1 and 2 <= record["targets"] <= 64
    mesh = gltf.meshes[0]
    primitive = mesh.primitives[0]
    assert mesh.extras["targetNames"][0] == "offset"
    assert len(mesh.extras["targetNames"]) == len(primitive.targets) == record["targets"] + 1
    # The head's UV seams add corners after its own vertices, each a copy of the one named.
    seams = np.asarray(record.get("seamVertices", []), dtype=np.int64)
    order = np.concatenate([np.arange(len(template)), seams])
    base = array(primitive.attributes.POSITION)
    assert len(base) == len(order)
    assert np.allclose(base, template[order] * 1e-3, atol=1e-7)  # vertex order kept, metres
    for index in [primitive.attributes.POSITION] + [t["POSITION"] for t in primitive.targets]:
        accessor = gltf.accessors[index]
        assert [accessor.min, accessor.max] == list(stored_bounds(gltf, index, array(index)))
    # The targets are 16-bit (KHR_mesh_quantization), each target's scale in its weight.
    assert gltf.extensionsRequired == ["KHR_mesh_quantization"]
    for target in primitive.targets:
        accessor = gltf.accessors[target["POSITION"]]
        assert accessor.componentType == 5122 and accessor.normalized
        assert gltf.bufferViews[accessor.bufferView].byteStride == 8
    sampler = gltf.animations[0].samplers[0]
    assert sampler.interpolation == "LINEAR"
    times = array(sampler.input).ravel()
    assert gltf.accessors[sampler.input].max == [float(times[-1])]
    assert np.allclose(times, np.arange(len(vertices)) / fps)
    weights = array(sampler.output).reshape(len(vertices), -1)
    assert weights.min() >= 0 and weights.max() <= 1 and (weights[:, 0] == weights[0, 0]).all()
    deltas = np.stack([array(t["POSITION"]) for t in primitive.targets])
    rebuilt = base[None] + np.einsum("tk,kvc->tvc", weights, deltas)
    error_mm = np.linalg.norm(rebuilt - vertices[:, order] * 1e-3, axis=2).max() * 1e3
    assert error_mm <= record["maxErrorMm"] + 1e-4
    assert (clip / "animation.wav").is_file()
    size = (clip / "animation.glb").stat().st_size
    assert size < 0.3 * (clip / "animation.npz").stat().st_size  # 2.5 MB against 10.7 MB


def test_the_whole_head_basis_comes_from_its_rig_and_an_edited_clip_falls_back(clip, tmp_path):
    """animate's whole head is its rig posed by the npz's expression weights (eyeballs turned):
    the basis is found from them without a pass over the frames, then checked on every frame. A
    clip edited after animate (one frame's vertex moved 1 mm) fails that check and gets the
    SVD basis instead, within the budget either way."""
    gltf, _ = gltf_arrays(clip / "animation.glb")
    assert gltf.asset.extras["meshtalk"]["basisFrom"] == "rig"
    with np.load(clip / "animation.npz") as npz:
        members = {name: npz[name] for name in npz.files}
    members["vertices"] = members["vertices"].copy()
    members["vertices"][40, 100] += [1.0, 0.0, 0.0]
    edited = tmp_path / "edited.npz"
    with NpzWriter(edited) as npz:
        for name, value in members.items():
            npz.add(name, value)
    result = invoke("export", edited, "--to", "glb", "-o", tmp_path / "out", "--no-progress")
    assert result.exit_code == 0, result.output
    gltf, array = gltf_arrays(tmp_path / "out" / "animation.glb")
    record = gltf.asset.extras["meshtalk"]
    assert record["basisFrom"] == "svd" and record["maxErrorMm"] <= 0.1
    primitive = gltf.meshes[0].primitives[0]
    weights = array(gltf.animations[0].samplers[0].output).reshape(len(members["vertices"]), -1)
    deltas = np.stack([array(t["POSITION"]) for t in primitive.targets])
    rebuilt = array(primitive.attributes.POSITION)[None] + np.einsum("tk,kvc->tvc", weights, deltas)
    error_mm = np.linalg.norm(rebuilt - members["vertices"] * 1e-3, axis=2).max() * 1e3
    assert error_mm <= record["maxErrorMm"] + 1e-4


def test_units_scale_pc2_and_template_but_not_the_npz(clip):
    from meshtalk.pipelines.export import read_pc2
    from meshtalk.pipelines.io.mesh import read_mesh

    _, cache = read_pc2(clip / "animation.pc2")
    with np.load(clip / "animation.npz") as npz:
        assert np.allclose(cache, npz["vertices"] * 1e-3, atol=1e-8)
        (template,) = [p for p in clip.glob("template.*") if p.suffix in (".ply", ".obj")]
        # OBJ keeps 6 decimals: 1 micrometre in metres.
        assert np.allclose(read_mesh(template).vertices, npz["template"] * 1e-3, atol=1e-6)
        assert guess_units(npz["template"]) == "mm"
        assert guess_units(npz["template"] * 0.1) == "cm"
        assert guess_units(npz["template"] * 1e-3) == "m"


def test_usd_files_validate_and_carry_the_clip(clip):
    from pxr import Usd, UsdGeom, UsdMedia, UsdSkel

    from meshtalk.pipelines.export.usd import validate

    with np.load(clip / "animation.npz") as npz:
        vertices, fps = npz["vertices"], float(npz["fps"])
    for name in ("animation.usdz", "animation.usdc"):
        assert validate(clip / name) == []
        stage = Usd.Stage.Open(str(clip / name))
        assert stage.GetTimeCodesPerSecond() == stage.GetFramesPerSecond() == fps
        assert UsdGeom.GetStageMetersPerUnit(stage) == 1.0
        assert UsdGeom.GetStageUpAxis(stage) == UsdGeom.Tokens.y
    stage = Usd.Stage.Open(str(clip / "animation.usdc"))
    points = UsdGeom.Mesh(stage.GetPrimAtPath("/Face/Mesh")).GetPointsAttr()
    for frame in (0, 77, len(vertices) - 1):
        assert np.allclose(np.asarray(points.Get(frame)), vertices[frame] * 1e-3, atol=1e-8)
    stage = Usd.Stage.Open(str(clip / "animation.usdz"))
    audio = UsdMedia.SpatialAudio(stage.GetPrimAtPath("/Face/Speech"))
    assert audio.GetFilePathAttr().Get().path == "animation.wav"
    assert audio.GetStartTimeAttr().Get() == 0
    assert audio.GetEndTimeAttr().Get() >= len(vertices) - 1
    animation = UsdSkel.Animation(stage.GetPrimAtPath("/Face/Skel/Animation"))
    weights = np.asarray(animation.GetBlendShapeWeightsAttr().Get(10))
    assert weights[0] == 1 and weights.min() >= 0 and weights.max() <= 1


def test_uv_seams_become_extra_vertices_after_the_template(grid):
    from meshtalk.pipelines.io.mesh import read_mesh

    mesh = read_mesh(grid["mesh"])
    gltf, array = gltf_arrays(grid["out"] / "animation.glb")
    primitive = gltf.meshes[0].primitives[0]
    positions = array(primitive.attributes.POSITION)
    seams = gltf.asset.extras["meshtalk"]["seamVertices"]
    count = len(mesh.vertices)
    assert seams == [3, 9, 15, 21, 27, 33] and len(positions) == count + 6  # the seam column
    assert np.allclose(positions[:count], mesh.vertices * 1e-3)
    assert np.allclose(positions[count:], mesh.vertices[seams] * 1e-3)
    uvs = array(primitive.attributes.TEXCOORD_0)
    faces = array(primitive.indices).reshape(-1, 3)
    corner_uv = mesh.uvs[mesh.face_uvs] * [1, -1] + [0, 1]
    assert np.allclose(uvs[faces], corner_uv, atol=1e-6)  # every corner keeps its UV
    material = gltf.materials[primitive.material]
    assert material.name == "skin" and gltf.images[0].mimeType == "image/png"
    assert np.allclose(material.pbrMetallicRoughness.baseColorFactor, [0.8, 0.6, 0.5, 1.0])
    assert (grid["out"] / "template.obj").is_file() and (grid["out"] / "skin.png").is_file()


def test_exact_glb_is_one_target_per_frame(grid):
    gltf, array = gltf_arrays(grid["exact"] / "animation.glb")
    with np.load(grid["npz"]) as npz:
        vertices = npz["vertices"]
    primitive = gltf.meshes[0].primitives[0]
    assert len(primitive.targets) == len(vertices)
    weights = array(gltf.animations[0].samplers[0].output).reshape(len(vertices), -1)
    assert np.array_equal(weights, np.eye(len(vertices)))
    deltas = np.stack([array(t["POSITION"]) for t in primitive.targets])
    rebuilt = array(primitive.attributes.POSITION)[None] + deltas
    assert np.abs(rebuilt - vertices * 1e-3).max() < 1e-7
    assert gltf.asset.extras["meshtalk"]["maxErrorMm"] == 0.0


def test_bad_inputs_are_one_line_each(tmp_path, grid):
    empty = tmp_path / "empty.npz"
    with NpzWriter(empty) as npz:
        npz.add("template", np.zeros((3, 3), np.float32))
    cases = {
        "has no member 'vertices'": ("export", empty, "-o", tmp_path / "a"),
        "animation archive not found": ("export", tmp_path / "none.npz", "-o", tmp_path / "b"),
        "not a readable .npz": ("export", grid["mesh"], "-o", tmp_path / "c"),
        "the animation has 36": (
            "export",
            grid["npz"],
            "--mesh",
            Path(__file__).parents[1] / "pipelines/data/resources/default_model/template.ply",
            "-o",
            tmp_path / "d",
        ),  # fmt: skip
        "--to takes": ("export", grid["npz"], "--to", "fbx", "-o", tmp_path / "e"),
        "--error-mm must be": ("export", grid["npz"], "--error-mm", "0", "-o", tmp_path / "f"),
        "--units must be": ("export", grid["npz"], "--units", "ft", "-o", tmp_path / "g"),
        "already holds the outputs": ("export", grid["npz"], "-o", grid["out"]),
    }
    for expected, args in cases.items():
        result = invoke(*args)
        assert result.exit_code == 1, (expected, result.output)
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], lines
    for name in "abcdefg":
        assert not (tmp_path / name).exists()
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "animation.glb").write_text("the user's own")
    result = invoke("export", grid["npz"], "--to", "glb", "-o", mine, "--force", "--no-progress")
    assert result.exit_code == 1 and "was not written by meshtalk export" in result.output
    assert (mine / "animation.glb").read_text() == "the user's own"
    record = json.loads((grid["out"] / "export.json").read_text())
    assert record["written_by"] == "meshtalk export"


def test_dub_writes_the_formats_too(clip, tmp_path):
    from meshtalk.pipelines.data.resources import default_model

    out = tmp_path / "dub"
    result = invoke("dub", clip / "animation.npz", default_model.example_path(), "-o", out,
                    "--no-video", "--no-progress", "--formats", "glb", "--units", "cm")  # fmt: skip
    assert result.exit_code == 0, result.output
    gltf, array = gltf_arrays(out / "animation.glb")
    with np.load(out / "animation.npz") as npz:
        template = npz["template"]
    positions = array(gltf.meshes[0].primitives[0].attributes.POSITION)
    assert np.allclose(positions[: len(template)], template * 1e-3)
    assert gltf.asset.extras["meshtalk"]["maxErrorMm"] <= 0.1
    from meshtalk.pipelines.export import read_pc2

    _, cache = read_pc2(out / "animation.pc2")
    with np.load(out / "animation.npz") as npz:
        assert np.allclose(cache, npz["vertices"] * 0.1, atol=1e-5)  # mm -> cm
