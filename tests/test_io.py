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
