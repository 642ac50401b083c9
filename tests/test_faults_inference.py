"""The inference commands under bad input and faults (animate, render, dub, retarget, eval, and
train's config check, prep's unreadable folders): nothing of the user's is lost or touched, no
false success, one line for every bad file, nothing half-written under a final name."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import soundfile
from typer.testing import CliRunner

from meshtalk.cli.main import app
from meshtalk.pipelines.data.prep import run as prep
from meshtalk.pipelines.io.audio import load_audio
from meshtalk.pipelines.io.mesh import Mesh, read_mesh, write_mesh

from .conftest import builtin_prep_config

ROOT = Path(__file__).resolve().parents[1]

# Runs `meshtalk ARGS...` with animate's TakeWriter.finish held: before it runs, the process
# writes FLAG.ready and waits until FLAG exists (so it holds OUT, inside its write).
HOLD_SCRIPT = """
import sys, time
from pathlib import Path
from meshtalk.cli.main import main
from meshtalk.pipelines.inference import animate

flag = Path(sys.argv[1])
original = animate.TakeWriter.finish

def held(self, *args, **kwargs):
    flag.with_suffix(".ready").write_text("ready")
    while not flag.exists():
        time.sleep(0.05)
    return original(self, *args, **kwargs)

animate.TakeWriter.finish = held
sys.argv = ["meshtalk", *sys.argv[2:]]
main()
"""

# Runs `meshtalk ARGS...` on a disk that fills up after LIMIT bytes of zip members.
FULL_DISK_SCRIPT = """
import errno, sys, zipfile
from meshtalk.cli.main import main

limit, written = int(sys.argv[1]), [0]
original = zipfile._ZipWriteFile.write

def write(self, data):
    written[0] += len(data)
    if written[0] > limit:
        raise OSError(errno.ENOSPC, "No space left on device")
    return original(self, data)

zipfile._ZipWriteFile.write = write
sys.argv = ["meshtalk", *sys.argv[2:]]
main()
"""


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def digests(*paths: Path) -> dict[Path, str]:
    return {path: digest(path) for path in paths}


def cli(*args) -> object:
    return CliRunner().invoke(app, [str(arg) for arg in args])


def one_error(result, *texts: str) -> str:
    """The command failed with exit 1 and exactly one `error:` line holding every text."""
    assert result.exit_code == 1, result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, result.stderr
    assert "Traceback" not in result.stderr and "Exception ignored" not in result.stderr
    for text in texts:
        assert text in errors[0], errors[0]
    return errors[0]


def no_partials(folder: Path) -> None:
    """Nothing half-written: no temporary or partial entries anywhere under `folder`."""
    if not folder.exists():
        return
    left = [p for p in folder.rglob("*") if ".partial" in p.name or p.name.endswith(".tmp")]
    assert not left, left


@pytest.fixture(scope="module")
def inputs(tiny_dataset, tiny_trained_run, tmp_path_factory) -> dict:
    """The tiny run, its template, 2 s of its speech, and one animation of it (an original)."""
    folder = tmp_path_factory.mktemp("faults")
    source = sorted(tiny_dataset.glob("*/audio/*.wav"))[0]
    samples, rate = soundfile.read(source, dtype="float32")
    speech = folder / "speech.wav"
    soundfile.write(speech, samples[: 2 * rate], rate)
    template = tiny_dataset / "topology" / "template.ply"
    animation = folder / "animation"
    result = cli(
        "animate", speech, template, "-o", animation, "--model", tiny_trained_run, "--no-progress"
    )
    assert result.exit_code == 0, result.output
    return {
        "run": tiny_trained_run,
        "template": template,
        "speech": speech,
        "animation": animation / "animation.npz",
        "folder": folder,
    }


def animate_args(inputs: dict, out: Path, *options, speech=None, template=None) -> list[str]:
    """`meshtalk animate`'s arguments for the tiny run (the speech and template unless given)."""
    args = ["animate", speech or inputs["speech"], template or inputs["template"], "-o", out,
            "--model", inputs["run"], "--no-progress", *options]  # fmt: skip
    return [str(arg) for arg in args]


def animate(inputs: dict, out: Path, *options, speech=None, template=None):
    return cli(*animate_args(inputs, out, *options, speech=speech, template=template))


def scripted(script: str, *args) -> list[str]:
    """A command line running `script` (which runs meshtalk) with `args`."""
    return [sys.executable, "-c", script, *map(str, args)]


# --- data lost, or success reported for a broken output -------------------------------------------


def test_a_refused_second_writer_leaves_the_first_ones_work_alone(inputs, tmp_path):
    out, flag = tmp_path / "out", tmp_path / "go"
    before = digests(inputs["speech"], inputs["template"])
    first = subprocess.Popen(
        scripted(HOLD_SCRIPT, flag, *animate_args(inputs, out)),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    try:
        deadline = time.monotonic() + 120
        while not flag.with_suffix(".ready").exists():
            assert first.poll() is None, first.communicate()
            assert time.monotonic() < deadline, "the first writer never reached its write"
            time.sleep(0.05)
        held = sorted(p.relative_to(out) for p in out.rglob("*"))
        second = animate(inputs, out, "--no-video")
        one_error(second, str(out), f"in use by pid {first.pid} (meshtalk animate)")
        # The refused process touched nothing of the holder's: every file is still there, and
        # the only new one is the holder's own video, which its video process goes on drawing.
        after = sorted(p.relative_to(out) for p in out.rglob("*"))
        assert set(held) <= set(after)
        assert all(p.name.startswith(".animation.mp4.") for p in set(after) - set(held)), after
        assert (out / ".animate.partial" / "animation.npz").is_file()
    finally:
        flag.write_text("go")
        stdout, stderr = first.communicate(timeout=300)
    assert first.returncode == 0, stderr
    names = {p.name for p in out.iterdir() if not p.name.startswith(".")}
    assert names == {"animate.json", "animation.npz", "animation.pc2", "template.ply",
                     "animation.mp4"}  # fmt: skip
    with np.load(out / "animation.npz") as archive:
        assert archive["vertices"].shape[0] == len(archive["codes"]) > 0
    no_partials(out)
    assert digests(inputs["speech"], inputs["template"]) == before


def test_force_never_replaces_a_users_file_named_as_the_marker(inputs, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    marker = out / "animate.json"
    marker.write_text('{"my": "settings"}\n')
    before = digest(marker)
    one_error(
        animate(inputs, out, "--no-video", "--force"),
        str(marker),
        "was not written by meshtalk animate",
    )
    assert digest(marker) == before
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == ["animate.json"]
    # The marker animate writes says who wrote it; a rerun with --force replaces its own files.
    marker.unlink()
    assert animate(inputs, out, "--no-video").exit_code == 0
    record = json.loads(marker.read_text())
    assert record["written_by"] == "meshtalk animate" and "animation.npz" in record["files"]
    assert animate(inputs, out, "--no-video", "--force").exit_code == 0


@pytest.mark.parametrize("command", ["dub", "retarget"])
def test_force_keeps_a_users_file_named_as_dub_or_retargets_marker(inputs, tmp_path, command):
    out = tmp_path / "out"
    out.mkdir()
    marker = out / f"{command}.json"
    marker.write_text("my notes\n")
    before = digest(marker)
    if command == "dub":
        args = ["dub", inputs["animation"], inputs["speech"]]
    else:
        args = ["retarget", inputs["animation"], inputs["template"]]
    result = cli(*args, "-o", out, "--model", inputs["run"], "--no-video", "--force",
                 "--no-progress")  # fmt: skip
    one_error(result, str(marker), f"was not written by meshtalk {command}")
    assert digest(marker) == before
    assert [p.name for p in out.iterdir() if not p.name.startswith(".")] == [marker.name]


def test_render_refuses_an_existing_file_and_force_replaces_only_its_own(inputs, tmp_path):
    video = tmp_path / "mine.mp4"
    video.write_bytes(b"a video of the user's own")
    before = digest(video)

    def render(*extra):
        return cli("render", inputs["animation"], "-o", video, "--no-progress", *extra)

    one_error(render(), str(video), "exists (--force replaces it if meshtalk wrote it)")
    one_error(render("--force"), str(video), "was not written by meshtalk; it is kept")
    assert digest(video) == before
    video.unlink()
    assert render().exit_code == 0
    first = digest(video)
    assert render("--force", "--size", "320x240").exit_code == 0  # its own video: replaced
    assert digest(video) != first
    no_partials(tmp_path)


def test_eval_json_never_replaces_a_users_file(inputs, tiny_store, tmp_path):
    notes = tmp_path / "notes.json"
    notes.write_text('{"mine": true}\n')
    manifest = tiny_store / "manifest.json"
    before = digests(notes, manifest)
    evaluate = lambda json_file, *extra: cli(  # noqa: E731
        "eval", inputs["run"], tiny_store, "--json", json_file, "--no-progress", "--device",
        "cpu", *extra,
    )  # fmt: skip
    one_error(evaluate(notes), str(notes), "exists (--force replaces it if meshtalk wrote it)")
    one_error(evaluate(notes, "--force"), str(notes), "was not written by meshtalk eval")
    one_error(evaluate(manifest, "--force"), str(manifest), "was not written by meshtalk eval")
    assert digests(notes, manifest) == before
    results = tmp_path / "results.json"
    assert evaluate(results).exit_code == 0
    assert json.loads(results.read_text())["written_by"] == "meshtalk eval"
    one_error(evaluate(results), str(results), "exists")
    assert evaluate(results, "--force", "--seed", "3").exit_code == 0
    assert json.loads(results.read_text())["seed"] == 3
    assert digests(notes, manifest) == before


def nan_animation(source: Path, folder: Path) -> Path:
    with np.load(source) as archive:
        members = {name: archive[name] for name in archive.files}
    members["vertices"] = members["vertices"].copy()
    members["vertices"][5, 7, 1] = np.nan
    path = folder / "nan.npz"
    np.savez(path, **members)
    return path


@pytest.mark.parametrize("command", ["retarget", "dub"])
def test_a_source_with_a_nan_vertex_is_refused(inputs, tmp_path, command):
    bad = nan_animation(inputs["animation"], tmp_path)
    before = digest(bad)
    out = tmp_path / "out"
    second = inputs["template"] if command == "retarget" else inputs["speech"]
    result = cli(command, bad, second, "-o", out, "--model", inputs["run"], "--no-progress")
    one_error(result, str(bad), "vertices of frame 5 hold NaN or infinite values")
    assert not out.exists() and digest(bad) == before


# --- tracebacks instead of one line -------------------------------------------------------------


def test_a_point_cloud_template_with_video_is_one_line(inputs, tmp_path):
    cloud = tmp_path / "cloud.obj"
    vertices = read_mesh(inputs["template"]).vertices
    cloud.write_text("".join(f"v {x} {y} {z}\n" for x, y, z in vertices))
    out = tmp_path / "out"
    one_error(animate(inputs, out, template=cloud), str(cloud), "has no faces")
    assert not out.exists()
    # Without the video, a point cloud animates: npz and PC2 need no triangles.
    assert animate(inputs, out, "--no-video", template=cloud).exit_code == 0


def test_an_obj_vertex_of_two_coordinates_is_one_line(inputs, tmp_path):
    bad = tmp_path / "flat.obj"
    bad.write_text("v 0 0 0\nv 1 0\nv 0 1 0\nf 1 2 3\n")
    out = tmp_path / "out"
    one_error(animate(inputs, out, template=bad), str(bad), "line 2: a vertex needs 3 coordinates")
    assert not out.exists()


def test_a_full_disk_while_writing_the_npz_is_one_line(inputs, tmp_path):
    out = tmp_path / "out"
    result = subprocess.run(
        scripted(FULL_DISK_SCRIPT, 100_000, *animate_args(inputs, out), "--no-video"),
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "animation.npz: no space left on device" in errors[0]
    assert "Traceback" not in result.stderr and "Exception ignored" not in result.stderr
    assert not out.exists()


def flip_a_byte(source: Path, folder: Path, member: str = "vertices.npy") -> Path:
    """A copy of an npz with one byte of `member`'s data flipped (its CRC then fails)."""
    path = folder / "flipped.npz"
    shutil.copy(source, path)
    with zipfile.ZipFile(path) as archive:
        info = archive.getinfo(member)
    data = bytearray(path.read_bytes())
    name_length, extra_length = np.frombuffer(
        bytes(data[info.header_offset + 26 : info.header_offset + 30]), "<u2"
    )
    start = info.header_offset + 30 + int(name_length) + int(extra_length)
    data[start + 200] ^= 0x01  # past the .npy header: a coordinate changes, the CRC fails
    path.write_bytes(bytes(data))
    return path


@pytest.mark.parametrize("command", ["render", "dub"])
def test_an_npz_whose_crc_fails_is_one_line(inputs, tmp_path, command):
    bad = flip_a_byte(inputs["animation"], tmp_path)
    before = digest(bad)
    out = tmp_path / ("out.mp4" if command == "render" else "out")
    if command == "render":
        result = cli("render", bad, "-o", out, "--no-progress")
    else:
        result = cli("dub", bad, inputs["speech"], "-o", out, "--model", inputs["run"],
                     "--no-progress")  # fmt: skip
    one_error(result, str(bad), "member vertices is damaged", "Bad CRC-32")
    assert not out.exists() and digest(bad) == before
    no_partials(tmp_path)


# --- surprises ----------------------------------------------------------------------------------


def test_a_template_whose_faces_all_have_zero_area_is_refused(inputs, tmp_path):
    mesh = read_mesh(inputs["template"])
    count = len(mesh.vertices)
    faces = np.stack([np.arange(count - 1), np.arange(count - 1), np.arange(1, count)], axis=1)
    bad = tmp_path / "degenerate.ply"
    write_mesh(bad, Mesh(vertices=mesh.vertices, faces=faces))
    out = tmp_path / "out"
    one_error(animate(inputs, out, template=bad), str(bad), "every face is degenerate")
    one_error(animate(inputs, out, "--no-video", template=bad), "every face is degenerate")
    assert not out.exists()
    # render refuses an animation of such triangles alike
    with np.load(inputs["animation"]) as archive:
        members = {name: archive[name] for name in archive.files}
    members["faces"] = faces.astype(np.int32)
    flat = tmp_path / "flat.npz"
    np.savez(flat, **members)
    one_error(cli("render", flat, "-o", tmp_path / "flat.mp4"), str(flat), "degenerate")


@pytest.mark.parametrize("command", ["animate", "dub"])
def test_cancelling_channels_are_refused_and_channel_picks_one(inputs, tmp_path, command):
    samples, rate = soundfile.read(inputs["speech"], dtype="float32")
    stereo = tmp_path / "antiphase.wav"
    soundfile.write(stereo, np.stack([samples, -samples], axis=1), rate, subtype="FLOAT")
    before = digest(stereo)
    out = tmp_path / "out"

    def run(*extra):
        if command == "animate":
            return animate(inputs, out, "--no-video", *extra, speech=stereo)
        return cli("dub", inputs["animation"], stereo, "-o", out, "--model", inputs["run"],
                   "--no-video", "--no-progress", *extra)  # fmt: skip

    one_error(run(), str(stereo), "channels cancel; use --channel")
    assert not out.exists()
    one_error(run("--channel", "2"), str(stereo), "has 2 channel(s): no channel 2")
    assert run("--channel", "1").exit_code == 0
    with np.load(out / "animation.npz") as archive:
        kept = archive["audio"]
    reference = load_audio(inputs["speech"])  # the speech at 16 kHz: channel 1 is its negative
    count = min(len(kept), len(reference))
    assert np.corrcoef(kept[:count], reference[:count])[0, 1] < -0.99
    assert digest(stereo) == before


def test_train_latent_refuses_a_prior_config_by_name(tiny_store, tmp_path):
    config = ROOT / "examples" / "configs" / "prior-tiny.yaml"
    out = tmp_path / "run"
    result = cli("train", "latent", "--data", tiny_store, "-o", out, "--config", config,
                 "--no-progress")  # fmt: skip
    one_error(result, str(config), "is a config for the prior stage", "train latent")
    assert not out.exists()
    latent = ROOT / "examples" / "configs" / "latent-tiny.yaml"
    result = cli("train", "prior", "--latent", out, "--data", tiny_store, "-o", out,
                 "--config", latent, "--no-progress")  # fmt: skip
    one_error(result, str(latent), "is a config for the latent stage")


def test_prep_names_an_identity_whose_meshes_are_a_symlink_loop(tiny_dataset, tmp_path):
    root = tmp_path / "multiface"
    shutil.copytree(tiny_dataset, root)
    identity = sorted(p for p in root.iterdir() if (p / "tracked_mesh").is_dir())[0]
    shutil.rmtree(identity / "tracked_mesh")
    os.symlink("tracked_mesh", identity / "tracked_mesh")  # points at itself
    out = prep(builtin_prep_config(root, tmp_path / "data"))
    problems = json.loads((out / "manifest.json").read_text())["problems"]
    found = [p for p in problems if p["path"] == str(identity)]
    assert found and "tracked_mesh/ cannot be read" in found[0]["message"], problems
    assert found[0]["action"] == "identity skipped"
