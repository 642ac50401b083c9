"""`meshtalk animate` end to end on a tiny trained run, its writers, smoothing and bad input."""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

from meshtalk.cli.main import app
from meshtalk.pipelines.data.synth.face import builtin_vertex_count
from meshtalk.pipelines.errors import MeshtalkError
from meshtalk.pipelines.export import (
    FrameMeshWriter,
    NpzWriter,
    iter_rows,
    read_pc2,
    read_pc2_header,
)
from meshtalk.pipelines.export.npz import chunks_of, mapped_member
from meshtalk.pipelines.inference import animate as animate_module
from meshtalk.pipelines.inference.animate import AnimateConfig, animate
from meshtalk.pipelines.inference.smoothing import (
    RegionSmoother,
    TemporalSmoother,
    smooth_sequence,
)
from meshtalk.pipelines.io.mesh import Mesh, read_mesh, write_mesh

NPZ_KEYS = {
    "vertices",
    "faces",
    "template",
    "fps",
    "frame_times",
    "codes",
    "audio",
    "audio_rate",
    "provenance",
}


@pytest.fixture(scope="module")
def inputs(tiny_dataset, tiny_trained_run, tmp_path_factory) -> dict[str, Path]:
    """The tiny run, its template mesh, and 1.5 s of its synthetic speech as 44.1 kHz stereo."""
    folder = tmp_path_factory.mktemp("speech")
    source = sorted(tiny_dataset.glob("*/audio/*.wav"))[0]
    samples, rate = soundfile.read(source, dtype="float32")
    cut = samples[: int(1.5 * rate)]
    stereo = np.stack([cut, 0.5 * cut], axis=1)
    speech = folder / "speech.flac"
    soundfile.write(speech, stereo, rate)
    return {
        "run": tiny_trained_run,
        "template": tiny_dataset / "topology" / "template.ply",
        "speech": speech,
        "folder": folder,
    }


def invoke(inputs: dict[str, Path], out: Path, *options: str):
    args = [
        "animate",
        str(inputs["speech"]),
        str(inputs["template"]),
        "-o",
        str(out),
        "--model",
        str(inputs["run"]),
        "--no-progress",
        *options,
    ]
    return CliRunner().invoke(app, args)


def arrays(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as archive:
        return {name: archive[name] for name in archive.files}


def test_animate_writes_npz_pc2_template_and_a_video_with_the_speech(inputs, tmp_path):
    import av

    out = tmp_path / "out"
    result = invoke(inputs, out, "--seed", "3")
    assert result.exit_code == 0, result.stderr
    npz = arrays(out / "animation.npz")
    assert set(npz) == NPZ_KEYS
    speech_16k = 24000  # 1.5 s at 16 kHz
    t, v = npz["vertices"].shape[:2]
    assert t == 45 and v == builtin_vertex_count(24) and npz["vertices"].shape == (t, v, 3)
    assert npz["vertices"].dtype == np.float32 and np.isfinite(npz["vertices"]).all()
    assert npz["codes"].shape == (t, 4) and npz["codes"].dtype == np.int64
    assert npz["codes"].min() >= 0 and npz["codes"].max() < 16
    assert npz["faces"].dtype == np.int32 and npz["faces"].shape[1] == 3
    template = read_mesh(inputs["template"])
    assert np.array_equal(npz["faces"], template.faces)
    assert np.array_equal(npz["template"], template.vertices)
    assert npz["fps"] == 30.0 and npz["frame_times"].shape == (t,)
    assert np.allclose(npz["frame_times"], np.arange(t) / 30)
    assert npz["audio"].dtype == np.float32 and npz["audio"].shape == (speech_16k,)
    assert int(npz["audio_rate"]) == 16000
    # The speech's mean of both channels, at 16 kHz.
    assert abs(np.abs(npz["audio"]).mean() / np.abs(npz["audio"]).max()) > 0.01
    provenance = json.loads(str(npz["provenance"]))
    assert provenance["seed"] == 3 and provenance["audio_file"] == "speech.flac"
    assert provenance["model"] == str(inputs["run"].resolve())
    assert len(provenance["audio_sha256"]) == 64 and provenance["smooth"] is True
    # The animation moves (the codes decode to different meshes).
    assert np.abs(npz["vertices"] - npz["vertices"][:1]).max() > 0
    # PC2: its header and every frame, equal to the npz's vertices.
    raw = (out / "animation.pc2").read_bytes()
    assert raw[:12] == b"POINTCACHE2\0"
    assert struct.unpack("<iiffi", raw[12:32]) == (1, v, 0.0, 1.0, t)
    header, frames = read_pc2(out / "animation.pc2")
    assert header.samples == t and np.array_equal(frames, npz["vertices"])
    assert np.array_equal(read_mesh(out / "template.ply").vertices, template.vertices)
    # The video: T frames at 30 fps and the speech as AAC of the same duration.
    with av.open(str(out / "animation.mp4")) as container:
        assert len(container.streams.video) == 1 and len(container.streams.audio) == 1
        video, audio = container.streams.video[0], container.streams.audio[0]
        assert video.average_rate == 30 and video.codec_context.name == "h264"
        assert (video.width, video.height) == (640, 480)
        pictures = [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]
        assert len(pictures) == t
    with av.open(str(out / "animation.mp4")) as container:
        audio = container.streams.audio[0]
        samples = sum(frame.samples for frame in container.decode(audio=0))
        duration = (
            float(audio.duration * audio.time_base) if audio.duration else samples / audio.rate
        )
        assert audio.codec_context.name == "aac"
    assert abs(duration - 1.5) < 1 / 30
    # The first frame shows a shaded face: many distinct grey levels, not one background colour.
    first = pictures[0].astype(np.int32)
    background = first[0, 0]
    covered = np.any(np.abs(first - background) > 8, axis=-1).mean()
    assert 0.05 < covered < 0.95 and len(np.unique(first[..., 0])) > 20
    record = json.loads((out / "animate.json").read_text())
    assert set(record["files"]) == {
        "animation.npz",
        "animation.pc2",
        "animation.mp4",
        "template.ply",
    }


def test_argmax_is_byte_identical_and_a_seed_reproduces_its_sample(inputs, tmp_path):
    runs = {}
    for name, options in {
        "argmax_a": ("--argmax",),
        "argmax_b": ("--argmax", "--seed", "9"),
        "seed_a": ("--seed", "5"),
        "seed_b": ("--seed", "5"),
        "other": ("--seed", "6"),
    }.items():
        result = invoke(inputs, tmp_path / name, "--no-video", *options)
        assert result.exit_code == 0, result.stderr
        runs[name] = arrays(tmp_path / name / "animation.npz")
    for key in ("vertices", "codes", "faces", "template", "audio", "frame_times"):
        assert runs["argmax_a"][key].tobytes() == runs["argmax_b"][key].tobytes()
        assert runs["seed_a"][key].tobytes() == runs["seed_b"][key].tobytes()
    assert not np.array_equal(runs["seed_a"]["codes"], runs["other"]["codes"])
    assert not np.array_equal(runs["seed_a"]["vertices"], runs["other"]["vertices"])
    pc2 = [(tmp_path / n / "animation.pc2").read_bytes() for n in ("argmax_a", "argmax_b")]
    assert pc2[0] == pc2[1]


def test_takes_write_one_folder_each_with_different_samples(inputs, tmp_path):
    out = tmp_path / "out"
    result = invoke(inputs, out, "--no-video", "--takes", "3", "--seed", "1")
    assert result.exit_code == 0, result.stderr
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == [
        "animate.json",
        "take_0",
        "take_1",
        "take_2",
    ]
    takes = [arrays(out / f"take_{i}" / "animation.npz") for i in range(3)]
    for i, take in enumerate(takes):
        assert take["vertices"].shape == takes[0]["vertices"].shape
        assert json.loads(str(take["provenance"]))["take"] == i
        assert read_pc2_header(out / f"take_{i}" / "animation.pc2").samples == len(take["codes"])
        assert (out / f"take_{i}" / "template.ply").is_file()
    for a, b in ((0, 1), (0, 2), (1, 2)):
        assert not np.array_equal(takes[a]["codes"], takes[b]["codes"])
        assert not np.array_equal(takes[a]["vertices"], takes[b]["vertices"])
    assert np.array_equal(takes[0]["audio"], takes[2]["audio"])


def test_scale_applies_to_the_exports_and_frames_are_written(inputs, tmp_path):
    out = tmp_path / "out"
    result = invoke(inputs, out, "--no-video", "--argmax", "--scale", "0.001", "--frames", "ply")
    assert result.exit_code == 0, result.stderr
    vertices = arrays(out / "animation.npz")["vertices"]
    _, pc2 = read_pc2(out / "animation.pc2")
    np.testing.assert_allclose(pc2, vertices * np.float32(0.001), rtol=1e-6)
    template = read_mesh(inputs["template"])
    exported = read_mesh(out / "template.ply")
    np.testing.assert_allclose(exported.vertices, template.vertices * 0.001, rtol=1e-6)
    frames = sorted((out / "frames").iterdir())
    assert len(frames) == len(vertices) and frames[0].name == "frame_000000.ply"
    last = read_mesh(frames[-1])
    np.testing.assert_allclose(last.vertices, vertices[-1] * 0.001, rtol=1e-6)
    assert np.array_equal(last.faces, template.faces)


def test_chunks_give_the_animation_of_one_pass(inputs, tmp_path):
    """The decoder's LSTM state and the smoothing carry over from chunk to chunk."""
    settings = dict(
        speech=inputs["speech"],
        template=inputs["template"],
        model=inputs["run"],
        argmax=True,
        video=False,
        device="cpu",
    )
    whole = animate(AnimateConfig(output=tmp_path / "whole", chunk_frames=1000, **settings))
    chunked = animate(AnimateConfig(output=tmp_path / "chunked", chunk_frames=7, **settings))
    assert whole.frames == chunked.frames == 45
    a = arrays(tmp_path / "whole" / "animation.npz")
    b = arrays(tmp_path / "chunked" / "animation.npz")
    assert np.array_equal(a["codes"], b["codes"])
    np.testing.assert_allclose(a["vertices"], b["vertices"], atol=1e-4)
    # Smoothing off changes the forehead and neck only.
    raw = animate(AnimateConfig(output=tmp_path / "raw", smooth=False, **settings))
    plain = arrays(raw.output / "animation.npz")["vertices"]
    from meshtalk.pipelines.checkpoint import load_run

    masks = load_run(inputs["run"]).masks
    untouched = (masks["forehead"] == 0) & (masks["neck"] == 0)
    assert np.array_equal(plain[:, untouched], a["vertices"][:, untouched])
    assert not np.allclose(plain[:, ~untouched], a["vertices"][:, ~untouched])
    # The release's smoothing of the unsmoothed frames, whole.
    expected = smooth_sequence(smooth_sequence(plain, masks["forehead"]), masks["neck"])
    np.testing.assert_allclose(
        a["vertices"], expected, rtol=1e-6, atol=1e-5
    )  # float32 rounding at ~100 mm


def release_smooth(geom: torch.Tensor, mask: torch.Tensor, size=9, sigma=2.0) -> torch.Tensor:
    """SPEC section 6 written out: Gaussian over time, ends repeated, blended by the mask."""
    offsets = torch.arange(size, dtype=torch.float64) - size // 2
    taps = torch.exp(-0.5 * offsets**2 / sigma**2)
    taps = (taps / taps.sum()).float().view(1, 1, -1)
    t, v = geom.shape[:2]
    signal = F.pad(geom.permute(1, 2, 0).reshape(v * 3, 1, t), (size // 2, size // 2), "replicate")
    smoothed = F.conv1d(signal, taps).view(v, 3, t).permute(2, 0, 1)
    return smoothed * mask[None, :, None] + geom * (1 - mask[None, :, None])


def test_a_large_mesh_is_animated_a_few_frames_at_a_time(inputs, tmp_path, monkeypatch):
    """Chunks hold about CHUNK_BYTES of the output mesh's vertices (a million-vertex head: a few
    frames, not 64 frames of 1.2 GB queued between the stages)."""
    seen = []
    real = animate_module.generate

    def spy(config, *args, **kwargs):
        seen.append(config.chunk_frames)
        return real(config, *args, **kwargs)

    monkeypatch.setattr(animate_module, "generate", spy)
    settings = dict(speech=inputs["speech"], template=inputs["template"], model=inputs["run"],
                    argmax=True, video=False, device="cpu")  # fmt: skip
    vertices = len(read_mesh(inputs["template"]).vertices)
    animate(AnimateConfig(output=tmp_path / "small", **settings))
    monkeypatch.setattr(animate_module, "CHUNK_BYTES", 12 * vertices * 5)
    animate(AnimateConfig(output=tmp_path / "large", **settings))
    assert seen == [animate_module.CHUNK_FRAMES, 5]
    a = arrays(tmp_path / "small" / "animation.npz")["vertices"]
    b = arrays(tmp_path / "large" / "animation.npz")["vertices"]
    np.testing.assert_allclose(a, b, atol=1e-4)


@pytest.mark.parametrize("length", [1, 3, 9, 40])
def test_streamed_smoothing_equals_the_release_on_the_whole_sequence(length):
    rng = np.random.default_rng(length)
    frames = rng.normal(size=(length, 30, 3)).astype(np.float32)
    forehead = np.clip(rng.uniform(-0.5, 1, 30), 0, 1).astype(np.float32)
    neck = np.clip(rng.uniform(-0.5, 1, 30), 0, 1).astype(np.float32)
    expected = release_smooth(
        release_smooth(torch.from_numpy(frames), torch.from_numpy(forehead)),
        torch.from_numpy(neck),
    ).numpy()
    np.testing.assert_allclose(
        smooth_sequence(smooth_sequence(frames, forehead), neck), expected, atol=1e-5
    )
    smoother = RegionSmoother([forehead, neck])
    pieces, start = [], 0
    for size in rng.integers(1, 6, size=100):
        if start >= length:
            break
        pieces.append(smoother.push(frames[start : start + size]))
        start += size
    pieces.append(smoother.finish())
    streamed = np.concatenate([p for p in pieces if len(p)])
    assert streamed.shape == frames.shape
    np.testing.assert_allclose(streamed, expected, atol=1e-5)
    single = TemporalSmoother(np.zeros(30, dtype=np.float32))
    passed = np.concatenate([single.push(frames), single.finish()])
    assert np.array_equal(passed, frames)  # a zero mask leaves every vertex as it was


def test_npz_members_stream_in_and_out(tmp_path):
    path = tmp_path / "a.npz"
    rows = np.arange(5 * 4 * 3, dtype=np.float32).reshape(5, 4, 3)
    with NpzWriter(path) as npz:
        stream = npz.stream("vertices", rows.shape, np.float32)
        stream.write(rows[:2])
        with pytest.raises(ValueError, match="still being written"):
            npz.add("other", np.zeros(2))
        stream.write(rows[2:])
        stream.close()
        npz.add("name", np.array("text"))
    with np.load(path, allow_pickle=False) as archive:
        assert np.array_equal(archive["vertices"], rows) and str(archive["name"]) == "text"
    assert np.array_equal(np.concatenate(list(iter_rows(path, "vertices", rows=2))), rows)
    mapped = mapped_member(path, "vertices")  # the stored member mapped in place, no copy
    assert np.array_equal(mapped, rows) and not mapped.flags.writeable
    assert np.array_equal(np.concatenate(list(chunks_of(mapped, 2))), rows)
    np.savez_compressed(tmp_path / "c.npz", vertices=rows)
    assert mapped_member(tmp_path / "c.npz", "vertices") is None  # deflated: read it instead
    cut = tmp_path / "cut.npz"
    cut.write_bytes(path.read_bytes()[:-200])
    with pytest.raises(MeshtalkError):  # the zip's directory is gone with the tail
        mapped_member(cut, "vertices")
    with NpzWriter(tmp_path / "b.npz") as npz:
        stream = npz.stream("vertices", rows.shape, np.float32)
        stream.write(rows[:4])
        with pytest.raises(ValueError, match="4 rows written of the 5"):
            stream.close()
        with pytest.raises(ValueError, match="more than the 5"):
            stream.write(rows)


def test_frame_meshes_keep_vertex_order_and_texture_coordinates(tmp_path):
    rng = np.random.default_rng(0)
    faces = np.array([[0, 1, 2], [0, 2, 3]])
    uvs = rng.uniform(size=(5, 2)).astype(np.float32)
    face_uvs = np.array([[0, 1, 2], [4, 2, 3]])
    frames = rng.normal(size=(3, 4, 3)).astype(np.float32)
    for fmt in ("ply", "obj"):
        writer = FrameMeshWriter(tmp_path / fmt, faces, fmt, 2.0, uvs, face_uvs)
        writer.write(frames[:1])
        writer.write(frames[1:])
        read = [read_mesh(tmp_path / fmt / f"frame_{i:06d}.{fmt}") for i in range(3)]
        for mesh, vertices in zip(read, frames):
            np.testing.assert_allclose(mesh.vertices, 2 * vertices, atol=1e-5)
            assert np.array_equal(mesh.faces, faces)
    assert np.array_equal(read[0].face_uvs, face_uvs)
    np.testing.assert_allclose(read[0].uvs, uvs, atol=1e-6)


# --- bad input: one line, non-zero exit, nothing left in OUT ----------------------------------


def write_audio(folder: Path, name: str, samples: np.ndarray, subtype: str = "FLOAT") -> Path:
    path = folder / name
    soundfile.write(path, samples, 16000, subtype=subtype)
    return path


def bad_inputs(inputs: dict[str, Path], folder: Path) -> dict[str, tuple[dict, str]]:
    """case -> (arguments replaced, text the error line must hold)."""
    tone = np.sin(np.arange(16000) / 5).astype(np.float32)
    small = Mesh(vertices=np.zeros((3, 3), np.float32), faces=np.array([[0, 1, 2]]))
    write_mesh(folder / "small.obj", small)
    (folder / "empty.wav").write_bytes(b"")
    (folder / "corrupt.wav").write_bytes(b"RIFF" + bytes(range(256)) * 4)
    nan = tone.copy()
    nan[100] = np.nan
    latent_only = folder / "latent_only"
    if not latent_only.exists():
        shutil.copytree(inputs["run"] / "latent", latent_only)
    unreadable = folder / "unreadable_run"
    (unreadable / "latent" / "encoder").mkdir(parents=True, exist_ok=True)
    (unreadable / "latent" / "encoder" / "config.json").write_text("{not json")
    (folder / "a_file").write_text("keep me")
    return {
        "wrong topology": ({"template": folder / "small.obj"}, "has 3 vertices"),
        "empty": ({"speech": folder / "empty.wav"}, "empty.wav"),
        "corrupt": ({"speech": folder / "corrupt.wav"}, "not a readable audio file"),
        "silent": (
            {"speech": write_audio(folder, "silent.wav", np.zeros(16000, np.float32))},
            "silent",
        ),
        "short": (
            {"speech": write_audio(folder, "short.wav", tone[:300])},
            "shorter than one frame",
        ),
        "nan": ({"speech": write_audio(folder, "nan.wav", nan)}, "NaN"),
        "no prior": ({"run": latent_only}, "has no prior"),
        "unreadable model": ({"run": unreadable}, "not valid JSON"),
        "output is a file": ({"out": folder / "a_file"}, "not a folder"),
    }


CASES = [
    "wrong topology",
    "empty",
    "corrupt",
    "silent",
    "short",
    "nan",
    "no prior",
    "unreadable model",
    "output is a file",
]


@pytest.mark.parametrize("case", CASES)
def test_bad_input_is_one_line_and_leaves_nothing(inputs, tmp_path, case):
    replaced, message = bad_inputs(inputs, tmp_path)[case]
    given = {**inputs, **replaced}
    out = replaced.get("out", tmp_path / "out")
    result = invoke(given, out)
    assert result.exit_code == 1, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and message in errors[0], result.stderr
    assert "Traceback" not in result.stderr
    named = {
        "wrong topology": "small.obj",
        "no prior": "latent_only",
        "unreadable model": "config.json",
        "output is a file": "a_file",
    }.get(case, Path(given["speech"]).name)
    assert named in errors[0]
    if case == "wrong topology":
        assert f"{builtin_vertex_count(24)}" in errors[0]  # both counts
    if case == "output is a file":
        assert out.read_text() == "keep me"
    else:
        assert not out.exists()


def decoded(path: Path) -> list[np.ndarray]:
    import av

    with av.open(str(path)) as container:
        return [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]


def psnr(first: list[np.ndarray], second: list[np.ndarray]) -> float:
    error = np.mean([(a.astype(np.float64) - b) ** 2 for a, b in zip(first, second)])
    return float(10 * np.log10(255**2 / max(error, 1e-12)))


def test_the_video_drawn_beside_the_sampler_shows_the_frames_of_the_earlier_path(
    inputs, tmp_path, monkeypatch
):
    """The mp4 that the video process draws and encodes while the sampler runs (x264 ultrafast)
    against the earlier path: the written npz rendered after the fact in this process with the
    earlier encoder setting (veryfast). Same frames, within a PSNR bound that a shifted frame
    misses."""
    from meshtalk.pipelines.io import video as video_module
    from meshtalk.pipelines.render import render_video

    out = tmp_path / "out"
    result = invoke(inputs, out, "--seed", "5")
    assert result.exit_code == 0, result.stderr
    npz = arrays(out / "animation.npz")
    monkeypatch.setattr(video_module, "VIDEO_OPTIONS", {"preset": "veryfast", "crf": "20"})
    earlier = tmp_path / "earlier.mp4"
    render_video(
        npz["vertices"],
        npz["faces"],
        earlier,
        fps=float(npz["fps"]),
        audio=npz["audio"],
        template=npz["template"],
    )
    new, old = decoded(out / "animation.mp4"), decoded(earlier)
    assert len(new) == len(old) == len(npz["vertices"])
    assert psnr(new, old) > 40
    # The bound is one that a face drawn 2% larger misses.
    centre = npz["template"].mean(axis=0)
    larger = centre + 1.02 * (npz["vertices"][:3] - centre)
    render_video(larger, npz["faces"], tmp_path / "larger.mp4", fps=30, template=npz["template"])
    assert psnr(new[:3], decoded(tmp_path / "larger.mp4")) < 40


def test_a_failure_while_writing_leaves_nothing(inputs, tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise OSError(28, "No space left on device")

    # The video stage fails while the frames still come: the child process stops and its
    # partial video goes with the rest.
    monkeypatch.setattr(animate_module.VideoStage, "write", broken)
    out = tmp_path / "out"
    result = invoke(inputs, out)
    assert result.exit_code == 1 and "no space left on device" in result.stderr
    assert not out.exists()
    # In a folder that was there before, the folder stays and nothing is added to it.
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    result = invoke(inputs, out, "--force")
    assert result.exit_code == 1
    assert sorted(p.name for p in out.iterdir() if p.name != ".meshtalk.lock") == ["notes.txt"]


def test_an_occupied_folder_needs_force_and_keeps_other_files(inputs, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    result = invoke(inputs, out, "--no-video")
    assert result.exit_code == 1 and "folder of other files" in result.stderr
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    assert invoke(inputs, out, "--no-video", "--force", "--takes", "2").exit_code == 0
    assert (out / "take_1" / "animation.npz").is_file()
    result = invoke(inputs, out, "--no-video")
    assert result.exit_code == 1 and "--force replaces them" in result.stderr
    # Replacing with one take removes the earlier takes, and only them.
    assert invoke(inputs, out, "--no-video", "--force").exit_code == 0
    names = sorted(p.name for p in out.iterdir() if not p.name.startswith("."))
    assert names == ["animate.json", "animation.npz", "animation.pc2", "notes.txt", "template.ply"]
    assert (out / "notes.txt").read_text() == "mine"


def test_force_never_replaces_a_users_file_of_the_same_name(inputs, tmp_path):
    out = tmp_path / "topology"
    out.mkdir()
    template = out / "template.ply"  # the user's input, in the output folder
    shutil.copy(inputs["template"], template)
    before = template.read_bytes()
    result = invoke({**inputs, "template": template}, out, "--no-video", "--force", "--scale", "2")
    assert result.exit_code == 1 and "was not written by meshtalk animate" in result.stderr
    assert template.read_bytes() == before
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == ["template.ply"]


def test_a_run_without_masks_is_not_smoothed(inputs, tmp_path, caplog):
    bare = tmp_path / "bare"
    shutil.copytree(inputs["run"], bare, ignore=shutil.ignore_patterns("topology"))
    settings = dict(speech=inputs["speech"], template=inputs["template"], video=False)
    with caplog.at_level("INFO"):
        animate(AnimateConfig(output=tmp_path / "out", model=bare, argmax=True, **settings))
    assert any("not smoothed" in record.getMessage() for record in caplog.records)
    provenance = json.loads(str(arrays(tmp_path / "out" / "animation.npz")["provenance"]))
    assert provenance["smooth"] is False


def test_int8_sampling_and_settings_are_checked(inputs, tmp_path):
    with pytest.raises(MeshtalkError, match="--takes must be between 1"):
        AnimateConfig(
            speech=Path("a"), template=Path("b"), output=Path("c"), model=Path("d"), takes=0
        )
    with pytest.raises(MeshtalkError, match="--temperature must be positive"):
        AnimateConfig(
            speech=Path("a"), template=Path("b"), output=Path("c"), model=Path("d"), temperature=0
        )
    result = invoke(inputs, tmp_path / "out", "--no-video", "--int8", "--device", "cpu")
    assert result.exit_code == 0, result.stderr
    assert json.loads(str(arrays(tmp_path / "out" / "animation.npz")["provenance"]))["int8"]
    # On the CPU int8 is the default; --float samples with the model's own weights.
    for options, int8 in (((), True), (("--float",), False)):
        out = tmp_path / f"out_{int8}"
        result = invoke(inputs, out, "--no-video", "--argmax", "--device", "cpu", *options)
        assert result.exit_code == 0, result.stderr
        npz = arrays(out / "animation.npz")
        assert json.loads(str(npz["provenance"]))["int8"] is int8


def test_a_damaged_run_topology_is_one_line(inputs, tmp_path):
    from meshtalk.pipelines.checkpoint import load_run

    damaged = tmp_path / "run"
    shutil.copytree(inputs["run"], damaged)
    mask = damaged / "topology" / "masks" / "forehead.npy"
    np.save(mask, np.zeros(7, np.float32))
    with pytest.raises(MeshtalkError, match="forehead.npy: holds float32 \\(7,\\)"):
        load_run(damaged)
    mask.write_bytes(b"junk")
    with pytest.raises(MeshtalkError, match="not a readable .npy file"):
        load_run(damaged)


def test_relay_keeps_order_and_flushes():
    from meshtalk.pipelines.inference.relay import Relay

    seen = []
    held = []

    def first(item):
        if item is None:  # the flush: hand on what was held back
            return sum(held)
        held.append(item)
        return item * 10 if item % 2 else None  # even items go no further

    with Relay([first, seen.append], flush=True) as relay:
        for item in range(7):
            relay.put(item)
    assert seen == [10, 30, 50, sum(range(7))]


def test_relay_raises_a_stage_error_in_the_caller_and_stops():
    from meshtalk.pipelines.inference.relay import Relay

    def broken(item):
        if item == 3:
            raise ValueError("stage broke")
        return item

    written = []
    threads = torch.get_num_threads()
    with pytest.raises(ValueError, match="stage broke"), Relay([broken, written.append]) as relay:
        for item in range(50):
            relay.put(item)
    assert written == [0, 1, 2][: len(written)]  # in order; nothing after the failure went on
    assert torch.get_num_threads() == threads  # the caller's setting is back
