"""Mesh and audio I/O: exact round trips and one-line errors."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile

from meshtalk.pipelines.errors import MeshtalkError
from meshtalk.pipelines.frontend import AudioFrontEnd
from meshtalk.pipelines.io.audio import load_audio
from meshtalk.pipelines.io.mesh import (
    Mesh,
    read_bin,
    read_mesh,
    read_transform,
    write_bin,
    write_mesh,
)


def _obj_vertices(path):
    return np.array(
        [[float(x) for x in line.split()[1:4]] for line in open(path) if line.startswith("v ")],
        dtype=np.float32,
    )


def test_obj_template_keeps_all_vertices_in_order(reference_topology, tmp_path):
    path = reference_topology / "face_template.obj"
    mesh = read_mesh(path)
    assert mesh.vertices.shape == (6172, 3)
    np.testing.assert_array_equal(mesh.vertices, _obj_vertices(path))
    assert mesh.faces.shape == (12294, 3)
    assert mesh.uvs is not None and mesh.face_uvs.shape == (12294, 3)
    for suffix in (".obj", ".ply"):
        write_mesh(tmp_path / f"copy{suffix}", mesh)
        again = read_mesh(tmp_path / f"copy{suffix}")
        np.testing.assert_allclose(
            again.vertices, mesh.vertices, atol=1e-6 if suffix == ".obj" else 0
        )
        np.testing.assert_array_equal(again.faces, mesh.faces)


def test_ply_round_trip_is_bit_exact(tmp_path):
    rng = np.random.default_rng(0)
    mesh = Mesh(rng.normal(size=(50, 3)).astype(np.float32), rng.integers(0, 50, (30, 3)))
    write_mesh(tmp_path / "m.ply", mesh)
    np.testing.assert_array_equal(read_mesh(tmp_path / "m.ply").vertices, mesh.vertices)


def test_obj_polygons_and_negative_indices(tmp_path):
    path = tmp_path / "quad.obj"
    path.write_text("v 0 0 0\nv 1 0 0\nv 1 1 0\nv 0 1 0\nf -4 -3 -2 -1\n")
    mesh = read_mesh(path)
    assert mesh.faces.tolist() == [[0, 1, 2], [0, 2, 3]]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "mesh file is empty"),
        (b"\0" * 13, "truncated mesh: 13 bytes"),
        (b"\0" * 24, "has 2 vertices, expected 3"),
        (np.array([[0, 0, 0], [np.nan, 0, 0], [0, 0, 0]], "<f4").tobytes(), "NaN"),
    ],
)
def test_bad_bin_files(tmp_path, content, message):
    path = tmp_path / "000001.bin"
    path.write_bytes(content)
    with pytest.raises(MeshtalkError, match=message) as error:
        read_bin(path, 3)
    assert error.value.path == path


def test_bin_and_transform_round_trip(tmp_path):
    vertices = np.arange(9, dtype=np.float32).reshape(3, 3)
    write_bin(tmp_path / "a.bin", vertices)
    np.testing.assert_array_equal(read_bin(tmp_path / "a.bin", 3), vertices)
    (tmp_path / "t.txt").write_text("1 0 0 5\n0 1 0 6\n0 0 1 7\n")
    assert read_transform(tmp_path / "t.txt")[:, 3].tolist() == [5, 6, 7]
    (tmp_path / "bad.txt").write_text("1 0 0\n")
    with pytest.raises(MeshtalkError, match="12 finite numbers"):
        read_transform(tmp_path / "bad.txt")


def test_audio_any_rate_depth_and_channels_becomes_16k_mono(tmp_path):
    rate = 44_100
    t = np.arange(rate) / rate
    tone = 0.5 * np.sin(2 * np.pi * 440 * t)
    stereo = np.stack([tone, tone], axis=1)
    soundfile.write(tmp_path / "a.wav", stereo, rate, subtype="PCM_24")
    audio = load_audio(tmp_path / "a.wav")
    assert audio.dtype == np.float32 and audio.ndim == 1
    assert audio.shape[0] == 16_000
    spectrum = np.abs(np.fft.rfft(audio))
    assert abs(np.argmax(spectrum) * 16_000 / len(audio) - 440) < 2


@pytest.mark.parametrize(
    ("content", "message"),
    [(b"", "not a readable audio file"), (b"RIFF garbage" * 10, "not a readable")],
)
def test_corrupt_audio(tmp_path, content, message):
    path = tmp_path / "bad.wav"
    path.write_bytes(content)
    with pytest.raises(MeshtalkError, match=message):
        load_audio(path)


def test_empty_wav(tmp_path):
    soundfile.write(tmp_path / "empty.wav", np.zeros(0), 16_000)
    with pytest.raises(MeshtalkError, match="holds no samples"):
        load_audio(tmp_path / "empty.wav")


def test_mel_shape_and_window_lengths():
    front_end = AudioFrontEnd()
    samples = np.random.default_rng(0).normal(size=16_000).astype(np.float32)
    mel = front_end.utterance_mel(samples, 1.0)
    assert mel.shape == (1 + (16_000 + 16_000) // 160, 80)  # 1 s + 0.5 s padding each side
    paper = AudioFrontEnd(window="paper")
    assert (paper.mel_first, paper.window_frames) == (-50, 61)
    assert (front_end.mel_first, front_end.window_frames) == (-50, 101)


CUBE_OBJ = """# a user's mesh: materials, texture coordinates, normals (hard edges) and colours
mtllib cube.mtl
v 0 0 0 1 0 0
v 1 0 0 0 1 0
v 1 1 0 0 0 1
v 0 1 0 1 1 0
v 0 0 1 1 0 1
v 1 0 1 0 1 1
vt 0 0
vt 1 0
vt 1 1
vt 0 1
vn 0 0 -1
vn 0 0 1
vn 0 -1 0
usemtl skin
f 1/1/1 3/3/1 2/2/1
f 1/1/1 4/4/1 3/3/1
usemtl lips
f 5/1/2 6/2/2 3/3/2
f 1/1/3 2/2/3 6/3/3 5/4/3
"""


def test_a_users_obj_comes_back_with_its_materials_uvs_normals_and_colours(tmp_path):
    from meshtalk.pipelines.export.frames import FrameMeshWriter
    from meshtalk.pipelines.io.mesh import copy_materials

    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "cube.mtl").write_text("newmtl skin\nmap_Kd skin.png\nnewmtl lips\nKd 1 0 0\n")
    (folder / "skin.png").write_bytes(b"\x89PNG not really")
    (folder / "cube.obj").write_text(CUBE_OBJ)
    mesh = read_mesh(folder / "cube.obj")
    assert mesh.material_libs == ("cube.mtl",) and mesh.materials == ("skin", "lips")
    assert mesh.face_materials.tolist() == [0, 0, 1, 1, 1]  # the quad is two triangles
    assert mesh.normals.shape == (3, 3) and mesh.face_normals[2].tolist() == [1, 1, 1]
    assert mesh.colours.shape == (6, 3) and mesh.uvs.shape == (4, 2)

    out = tmp_path / "out"
    out.mkdir()
    write_mesh(out / "template.obj", mesh)
    assert copy_materials(mesh, out) == ["cube.mtl", "skin.png"]
    again = read_mesh(out / "template.obj")
    for name in ("vertices", "faces", "uvs", "face_uvs", "normals", "face_normals", "colours"):
        np.testing.assert_allclose(getattr(again, name), getattr(mesh, name), atol=1e-4)
    assert again.materials == mesh.materials and again.material_libs == mesh.material_libs
    np.testing.assert_array_equal(again.face_materials, mesh.face_materials)

    # Frames keep it all; normals follow the frame's shape, hard edges stay hard.
    writer = FrameMeshWriter(out / "frames", mesh.faces, "obj", mesh=mesh)
    turned = mesh.vertices[:, [0, 2, 1]] * np.float32([1, -1, 1])  # a quarter turn about x
    writer.write(turned[None])
    frame = read_mesh(out / "frames" / "frame_000000.obj")
    np.testing.assert_allclose(frame.vertices, turned, atol=1e-5)
    assert frame.materials == mesh.materials and (out / "frames" / "skin.png").is_file()
    np.testing.assert_array_equal(frame.face_normals, mesh.face_normals)
    np.testing.assert_allclose(frame.normals[0], [0, 1, 0], atol=1e-5)  # was (0, 0, -1)
    np.testing.assert_allclose(frame.normals[2], [0, 0, -1], atol=1e-5)  # was (0, -1, 0)

    # PLY frames carry the colours and per-vertex normals.
    ply = FrameMeshWriter(out / "ply", mesh.faces, "ply", mesh=Mesh(
        vertices=mesh.vertices, faces=mesh.faces, colours=mesh.colours))  # fmt: skip
    ply.write(mesh.vertices[None])
    back = read_mesh(out / "ply" / "frame_000000.ply")
    np.testing.assert_allclose(back.colours, mesh.colours, atol=1 / 255)


def test_obj_material_files_outside_the_meshs_folder_are_not_copied(tmp_path):
    from meshtalk.pipelines.io.mesh import copy_materials

    (tmp_path / "secret.mtl").write_text("newmtl x\n")
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "m.obj").write_text("mtllib ../secret.mtl\nv 0 0 0\nv 1 0 0\nv 0 1 0\nf 1 2 3\n")
    out = tmp_path / "out"
    out.mkdir()
    assert copy_materials(read_mesh(folder / "m.obj"), out) == []
    assert list(out.iterdir()) == []
