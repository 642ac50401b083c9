"""Headless rendering and video writing: frames that show the face, videos that play in step.

Everything runs on the CPU (Mesa's llvmpipe through EGL); the tests skip, saying why, only where
no EGL library can be opened.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from typer.testing import CliRunner

from meshtalk.cli.main import app
from meshtalk.pipelines.errors import MeshtalkError
from meshtalk.pipelines.io.audio import write_wav
from meshtalk.pipelines.io.video import VideoWriter
from meshtalk.pipelines.render import MeshRenderer, open_context, render_video
from meshtalk.pipelines.render.renderer import BACKGROUND, vertex_normals

runner = CliRunner()
FPS = 30
RATE = 16000
BACKGROUND_RGB = np.array([round(c * 255) for c in BACKGROUND])


@pytest.fixture(scope="module", autouse=True)
def egl():
    try:
        context = open_context()
    except MeshtalkError as error:
        pytest.skip(f"no OpenGL through EGL here: {error}")
    context.release()


def grid_face(n: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """A dome-shaped n x n grid facing +z (x right, y up), 100 units across, and its triangles."""
    u, v = np.meshgrid(np.linspace(-50, 50, n), np.linspace(-60, 60, n))
    z = 30 * np.exp(-(u**2 + v**2) / 2000)
    vertices = np.stack([u, v, z], axis=-1).reshape(-1, 3).astype(np.float32)
    index = np.arange(n * n).reshape(n, n)
    a, b, c, d = index[:-1, :-1], index[:-1, 1:], index[1:, :-1], index[1:, 1:]
    faces = np.concatenate([np.stack([a, b, d], -1), np.stack([a, d, c], -1)]).reshape(-1, 3)
    return vertices, faces


def talking(template: np.ndarray, frames: int, amplitude: float = 6.0) -> np.ndarray:
    """(T, V, 3): the lower third opens and closes (already open in the first frame)."""
    lower = (template[:, 1] < -20).astype(np.float32)
    phase = np.sin(np.arange(frames) / 2.0 + 1.0)[:, None]
    moved = np.repeat(template[None], frames, axis=0)
    moved[:, :, 1] -= amplitude * phase * lower
    return moved


def speech(seconds: float, rate: int = RATE) -> np.ndarray:
    t = np.arange(int(round(seconds * rate))) / rate
    return (0.2 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)


def write_animation(
    path: Path, frames: int = 12, amplitude: float = 6.0, compressed: bool = False, **replace
) -> Path:
    template, faces = grid_face()
    members = dict(
        vertices=talking(template, frames, amplitude),
        faces=faces.astype(np.int32),
        template=template,
        fps=np.float64(FPS),
        frame_times=np.arange(frames) / FPS,
        audio=speech(frames / FPS),
        audio_rate=np.int64(RATE),
    )
    members.update(replace)
    save = np.savez_compressed if compressed else np.savez
    save(path, **{key: value for key, value in members.items() if value is not None})
    return path


def read_video(path: Path) -> dict:
    """What a player sees: streams, frame count and rate, audio length, the first frame."""
    with av.open(str(path)) as container:
        video, audio = container.streams.video, container.streams.audio
        info = dict(
            video_streams=len(video),
            audio_streams=len(audio),
            rate=video[0].average_rate,
            size=(video[0].width, video[0].height),
            codec=video[0].codec_context.name,
            audio_codec=audio[0].codec_context.name if audio else None,
            audio_seconds=float(audio[0].duration * audio[0].time_base) if audio else None,
        )
        frames = list(container.decode(video=0))
        info["frames"] = len(frames)
        info["first"] = frames[0].to_ndarray(format="rgb24")
        info["video_seconds"] = float(frames[-1].pts * frames[-1].time_base) + 1 / info["rate"]
    return info


def foreground(image: np.ndarray) -> np.ndarray:
    """(H, W) True where a pixel is clearly not the background."""
    return np.abs(image.astype(int) - BACKGROUND_RGB).max(axis=-1) > 12


def test_first_frame_shows_the_face():
    template, faces = grid_face()
    with MeshRenderer(faces, template, size=(160, 120)) as renderer:
        image = renderer.render(template)
    assert image.shape == (120, 160, 3) and image.dtype == np.uint8
    covered = foreground(image)
    assert covered[50:70, 70:90].all()  # the face's centre
    assert 0.15 < covered.mean() < 0.9  # framed: neither a speck nor cropped to the edges
    assert not covered[:, :4].any() and not covered[:, -4:].any()  # margins left and right
    assert image[covered].std() > 3  # shaded, not a flat silhouette


def test_front_side_and_both_differ():
    template, faces = grid_face()
    images = {}
    for view in ("front", "side", "both"):
        with MeshRenderer(faces, template, size=(160, 120), view=view) as renderer:
            images[view] = renderer.render(template)
    front, side, both = (foreground(images[view]) for view in ("front", "side", "both"))
    assert side.mean() < 0.5 * front.mean()  # a dome seen edge-on is a thin sliver
    assert side.any()
    assert foreground(images["both"][:, :80]).any() and foreground(images["both"][:, 80:]).any()
    assert not np.array_equal(both, front)


def test_frames_follow_the_vertices_and_render_the_same_twice():
    template, faces = grid_face()
    moved = talking(template, 4, amplitude=15.0)[1]
    with MeshRenderer(faces, template, size=(160, 120)) as renderer:
        still, again, open_mouth = (renderer.render(v) for v in (template, template, moved))
    assert np.array_equal(still, again)
    assert np.abs(still.astype(int) - open_mouth.astype(int)).max() > 30


def test_vertex_normals_match_a_loop_over_triangles():
    rng = np.random.default_rng(0)
    vertices, faces = grid_face(6)
    vertices = vertices + rng.normal(0, 3, vertices.shape).astype(np.float32)
    expected = np.zeros_like(vertices, dtype=np.float64)
    for a, b, c in faces:
        expected[[a, b, c]] += np.cross(vertices[b] - vertices[a], vertices[c] - vertices[a])
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)
    np.testing.assert_allclose(vertex_normals(vertices, faces), expected, atol=1e-5)
    flat, flat_faces = grid_face(4)
    flat[:, 2] = 0
    assert np.allclose(np.abs(vertex_normals(flat, flat_faces)[:, 2]), 1.0)


def test_missing_egl_is_one_line_naming_the_package(monkeypatch):
    import moderngl

    def no_egl(*args, **kwargs):
        raise Exception("libEGL.so: cannot open shared object file")

    monkeypatch.setattr(moderngl, "create_standalone_context", no_egl)
    with pytest.raises(MeshtalkError) as error:
        open_context()
    message = str(error.value)
    assert "\n" not in message
    assert "libegl1" in message and "libgl1-mesa-dri" in message and "--no-video" in message


@pytest.mark.parametrize("fps", [30, Fraction(16000, 533)])
def test_video_writer_frames_and_speech_in_step(tmp_path, fps):
    frames, size = 23, (64, 48)
    samples = speech(0.7)
    path = tmp_path / "clip.mp4"
    with VideoWriter(path, fps=fps, size=size, audio=samples, audio_rate=RATE) as writer:
        for i in range(frames):
            writer.write(np.full((48, 64, 3), 10 * i, dtype=np.uint8))
    info = read_video(path)
    assert info["video_streams"] == 1 and info["audio_streams"] == 1
    assert (info["codec"], info["audio_codec"]) == ("h264", "aac")
    assert info["frames"] == frames
    assert info["rate"] == Fraction(fps)
    assert info["video_seconds"] == pytest.approx(frames / float(fps), abs=1e-3)
    assert abs(info["audio_seconds"] - len(samples) / RATE) < 1 / float(fps)
    assert [p.name for p in tmp_path.iterdir()] == ["clip.mp4"]


def test_video_writer_leaves_nothing_when_interrupted(tmp_path):
    path = tmp_path / "clip.mp4"
    with pytest.raises(RuntimeError), VideoWriter(path, size=(32, 32)) as writer:
        writer.write(np.zeros((32, 32, 3), dtype=np.uint8))
        raise RuntimeError("stopped")
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(MeshtalkError, match="no frames"), VideoWriter(path, size=(32, 32)):
        pass
    assert list(tmp_path.iterdir()) == []


def test_render_video_streams_chunks_and_single_frames(tmp_path):
    template, faces = grid_face()
    motion = talking(template, 10)
    chunks = iter([motion[:4], motion[4], motion[5:]])  # a generator, as animate passes
    path = tmp_path / "a.mp4"
    count = render_video(
        chunks, faces, path, fps=FPS, audio=speech(10 / FPS), size=(96, 64), template=template
    )
    info = read_video(path)
    assert count == info["frames"] == 10
    assert info["size"] == (96, 64)
    assert foreground(info["first"]).mean() > 0.1


def test_render_cli_writes_the_video_with_the_archives_speech(tmp_path):
    animation = write_animation(tmp_path / "animation.npz", frames=14)
    out = tmp_path / "video.mp4"
    result = runner.invoke(
        app, ["render", str(animation), "-o", str(out), "--size", "160x120", "--no-progress"]
    )
    assert result.exit_code == 0, result.output
    info = read_video(out)
    assert info["frames"] == 14 and info["rate"] == FPS and info["size"] == (160, 120)
    assert abs(info["audio_seconds"] - 14 / FPS) < 1 / FPS
    covered = foreground(info["first"])
    assert covered[50:70, 70:90].mean() > 0.9 and 0.15 < covered.mean() < 0.9


def test_render_cli_audio_option_replaces_the_archives_speech(tmp_path):
    animation = write_animation(
        tmp_path / "animation.npz", frames=9, compressed=True, audio=None, audio_rate=None
    )
    wav = tmp_path / "other.wav"
    write_wav(wav, np.stack([speech(1.25, 44100)] * 2, axis=1), 44100)  # stereo, another rate
    out = tmp_path / "video.mp4"
    args = ["render", str(animation), "-o", str(out), "--audio", str(wav), "--size", "64x48"]
    result = runner.invoke(app, [*args, "--no-progress"])
    assert result.exit_code == 0, result.output
    info = read_video(out)
    assert info["frames"] == 9
    assert abs(info["audio_seconds"] - 1.25) < 1 / FPS


def test_render_cli_compare_both_views(tmp_path):
    first = write_animation(tmp_path / "ours.npz", frames=8)
    second = write_animation(tmp_path / "theirs.npz", frames=8, amplitude=-4.0)
    out = tmp_path / "compare.mp4"
    args = ["render", str(first), "-o", str(out), "--compare", str(second), "--view", "both"]
    result = runner.invoke(app, [*args, "--size", "448x320", "--no-progress"])
    assert result.exit_code == 0, result.output
    info = read_video(out)
    assert info["frames"] == 8 and info["size"] == (448, 320)
    image = info["first"].astype(int)
    panels = [image[:, 128 * i : 128 * (i + 1)] for i in range(3)]  # 448 - 64 (bar) = 3 x 128
    for panel in panels:
        assert foreground(panel[:160]).mean() > 0.05 and foreground(panel[160:]).mean() > 0.02
    colourfulness = lambda pixels: pixels.max(axis=-1) - pixels.min(axis=-1)  # noqa: E731
    assert colourfulness(panels[0]).max() < 40  # grey face
    assert colourfulness(panels[2]).max() > 100  # heat map
    assert colourfulness(image[60:260, 384 + 6 : 384 + 18]).mean() > 60  # the colour bar


def _one_line_error(result, name: str) -> None:
    assert result.exit_code == 1, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), result.output
    assert name in lines[0], result.output


@pytest.mark.parametrize(
    "case",
    [
        "missing_file",
        "not_npz",
        "missing_keys",
        "template_shape",
        "faces_out_of_range",
        "nan_vertices",
        "compare_frames",
        "compare_vertices",
        "bad_size",
        "odd_size",
        "output_folder",
        "bad_view",
    ],
)
def test_render_bad_input_is_one_line(tmp_path, case):
    animation = tmp_path / "animation.npz"
    outputs = tmp_path / "out"
    outputs.mkdir()
    out = outputs / "video.mp4"
    extra: list[str] = []
    name = "animation.npz"
    template, _ = grid_face()
    if case == "missing_file":
        pass
    elif case == "not_npz":
        animation.write_bytes(b"not a zip archive")
    elif case == "missing_keys":
        write_animation(animation, faces=None)
    elif case == "template_shape":
        write_animation(animation, template=template[:-3])
    elif case == "faces_out_of_range":
        write_animation(animation, faces=np.array([[0, 1, 999]], dtype=np.int32))
    elif case == "nan_vertices":
        vertices = talking(template, 12)
        vertices[7, 3] = np.nan
        write_animation(animation, vertices=vertices)
        name = "frame 7"
    elif case in ("compare_frames", "compare_vertices"):
        write_animation(animation)
        other = tmp_path / "other.npz"
        if case == "compare_frames":
            write_animation(other, frames=11)
        else:
            small, small_faces = grid_face(8)
            write_animation(other, vertices=talking(small, 12), template=small, faces=small_faces)
        extra, name = ["--compare", str(other)], "other.npz"
    elif case in ("bad_size", "odd_size"):
        write_animation(animation)
        extra, name = ["--size", "640by480" if case == "bad_size" else "641x480"], "--size"
    elif case == "output_folder":
        write_animation(animation)
        out = outputs / "folder.mp4"
        out.mkdir()
        name = "folder.mp4"
    elif case == "bad_view":
        write_animation(animation)
        extra, name = ["--view", "top"], "--view"
    result = runner.invoke(app, ["render", str(animation), "-o", str(out), *extra, "--no-progress"])
    _one_line_error(result, name)
    assert [p.name for p in outputs.iterdir() if p.name != "folder.mp4"] == []
