"""`meshtalk retarget` and `animate` onto a mesh of another topology (issue 18)."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import soundfile
import torch
from typer.testing import CliRunner

from meshtalk.cli.main import app
from meshtalk.pipelines.data.masks import build_masks, load_landmarks
from meshtalk.pipelines.data.synth.face import motion_basis
from meshtalk.pipelines.errors import MeshtalkError
from meshtalk.pipelines.inference.animate import AnimateConfig, animate
from meshtalk.pipelines.inference.retarget import RetargetConfig, retarget
from meshtalk.pipelines.io.mesh import Mesh, read_mesh, write_mesh

FRAMES = 30


def arrays(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as archive:
        return {name: archive[name] for name in archive.files}


def decimated(mesh: Mesh) -> Mesh:
    import fast_simplification

    vertices, faces = fast_simplification.simplify(
        mesh.vertices, mesh.faces.astype(np.int32), target_reduction=0.4
    )
    return Mesh(vertices=vertices.astype(np.float32), faces=faces.astype(np.int64))


@pytest.fixture(scope="module")
def inputs(tiny_dataset, tiny_trained_run, tmp_path_factory) -> dict:
    """A source npz on the built-in head (with its speech), a second identity's neutral face, a
    re-meshed head, and a copy of the tiny run that stores its triangles."""
    folder = tmp_path_factory.mktemp("retarget")
    head = read_mesh(tiny_dataset / "topology" / "template.ply")
    landmarks = load_landmarks(
        str(tiny_dataset / "topology" / "landmarks.yaml"), len(head.vertices)
    )
    basis = motion_basis(head.vertices, build_masks(head.vertices, landmarks))
    params = np.zeros((FRAMES, len(basis.names)), np.float32)
    params[:, 0] = np.clip(np.sin(np.linspace(0, 3 * np.pi, FRAMES)), 0, None)
    frames = basis.apply(head.vertices, params)
    speech_file = sorted(tiny_dataset.glob("*/audio/*.wav"))[0]
    audio, rate = soundfile.read(speech_file, dtype="float32")
    source = folder / "source.npz"
    np.savez(
        source,
        vertices=frames,
        template=head.vertices,
        faces=head.faces,
        fps=np.float64(30.0),
        audio=audio[: int(rate * FRAMES / 30) + rate // 2],
        audio_rate=np.int64(rate),
    )
    neutral = head.vertices * np.float32([1.1, 0.95, 1.0]) + np.float32([0, 2, 0])
    write_mesh(folder / "neutral.ply", Mesh(vertices=neutral, faces=head.faces))
    write_mesh(folder / "remeshed.ply", decimated(head))
    run = folder / "run"
    shutil.copytree(tiny_trained_run, run)
    np.save(run / "topology" / "faces.npy", head.faces)
    # A run saved before runs stored their triangles.
    bare_run = folder / "bare_run"
    shutil.copytree(tiny_trained_run, bare_run)
    (bare_run / "topology" / "faces.npy").unlink()
    return {
        "head": head,
        "frames": frames,
        "source": source,
        "neutral": folder / "neutral.ply",
        "remeshed": folder / "remeshed.ply",
        "run": run,
        "bare_run": bare_run,
        "speech": speech_file,
        "folder": folder,
    }


def cli(*args: str):
    return CliRunner().invoke(app, [*map(str, args), "--no-progress"])


def one_error(result) -> str:
    assert result.exit_code == 1, result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in result.stderr, result.stderr
    return errors[0]


def passthrough(run):
    """The run with a decoder that draws the template it is given, whatever the codes."""
    decoder = run.latent.decoder
    with torch.no_grad():
        for layer in decoder.decoder:
            layer.weight.zero_()
            layer.bias.zero_()
        decoder.vertex_bias.zero_()
    return run


def test_same_topology_decodes_onto_the_target_identitys_template(inputs, tmp_path, monkeypatch):
    import meshtalk.pipelines.checkpoint as checkpoint

    loader = checkpoint.load_run
    monkeypatch.setattr(checkpoint, "load_run", lambda *a, **k: passthrough(loader(*a, **k)))
    out = tmp_path / "out"
    result = retarget(
        RetargetConfig(
            source=inputs["source"],
            target=inputs["neutral"],
            output=out,
            model=inputs["run"],
            video=False,
        )
    )
    assert result.mode == "reencode"
    written = arrays(out / "animation.npz")
    neutral = read_mesh(inputs["neutral"]).vertices
    assert written["vertices"].shape == (FRAMES, *neutral.shape)
    assert np.abs(written["vertices"] - neutral).max() <= 0.1  # mm: the target's neutral face
    assert np.abs(written["vertices"] - inputs["head"].vertices).max() > 1.0
    assert written["codes"].shape[0] == FRAMES
    assert not (out / "transfer.npz").exists()


def test_same_topology_draws_the_reencoded_codes_on_the_target(inputs, tmp_path):
    import torch.nn.functional as F

    from meshtalk.pipelines.checkpoint import load_run

    out = tmp_path / "out"
    result = cli(
        "retarget", inputs["source"], inputs["neutral"], "-o", out, "--model", inputs["run"]
    )
    assert result.exit_code == 0, result.output
    written = arrays(out / "animation.npz")
    run = load_run(inputs["run"], prior=False)
    neutral = torch.from_numpy(read_mesh(inputs["neutral"]).vertices)[None]
    one_hot = F.one_hot(torch.from_numpy(written["codes"])[None], run.latent.config.classes)
    with torch.no_grad():
        expected = run.latent.decoder(neutral, one_hot.float())[0].numpy()
    np.testing.assert_allclose(written["vertices"], expected, atol=1e-3)
    assert (out / "animation.mp4").stat().st_size > 0


def test_another_topology_is_transferred_and_the_registration_reused(inputs, tmp_path, caplog):
    out = tmp_path / "out"
    result = cli("retarget", inputs["source"], inputs["remeshed"], "-o", out, "--no-video")
    assert result.exit_code == 0, result.output
    written = arrays(out / "animation.npz")
    target = read_mesh(inputs["remeshed"])
    assert written["vertices"].shape == (FRAMES, len(target.vertices), 3)
    np.testing.assert_array_equal(written["faces"], target.faces)
    np.testing.assert_array_equal(written["template"], target.vertices)
    motion = np.linalg.norm(written["vertices"] - target.vertices, axis=-1).max(1)
    source_motion = np.linalg.norm(inputs["frames"] - inputs["head"].vertices, axis=-1).max(1)
    assert np.corrcoef(motion, source_motion)[0, 1] > 0.9
    assert (out / "transfer.npz").is_file()
    # What was fitted, for a person: the figures and a picture of front and side.
    figures = json.loads((out / "transfer.json").read_text())
    assert figures["target_vertices"] == len(target.vertices) and figures["scale"] > 0
    assert figures["vertices_following_fully"] > 0.5 * len(target.vertices)
    with PIL.Image.open(out / "transfer.png") as picture:
        pixels = np.asarray(picture.convert("RGB"))
    assert pixels.shape[2] == 3 and pixels.std() > 10  # not blank
    record = json.loads((out / "retarget.json").read_text())
    assert {"transfer.npz", "transfer.json", "transfer.png"} <= set(record["files"])

    again = tmp_path / "again"
    result = cli(
        "retarget", inputs["source"], inputs["remeshed"], "-o", again, "--no-video",
        "--transfer", out / "transfer.npz",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    np.testing.assert_array_equal(arrays(again / "animation.npz")["vertices"], written["vertices"])
    assert not (again / "transfer.npz").exists() and (again / "transfer.png").is_file()

    refused = cli(
        "retarget", inputs["source"], inputs["neutral"], "-o", tmp_path / "x", "--transfer",
        out / "transfer.npz",
    )  # fmt: skip
    assert "--transfer" in one_error(refused)
    other = tmp_path / "other.ply"
    write_mesh(other, decimated(read_mesh(inputs["neutral"])))
    refused = cli(
        "retarget", inputs["source"], other, "-o", tmp_path / "y", "--transfer",
        out / "transfer.npz",
    )  # fmt: skip
    assert "another target mesh" in one_error(refused)


def test_animate_onto_a_mesh_of_another_topology(inputs, tmp_path, caplog):
    out = tmp_path / "out"
    config = dict(
        speech=inputs["speech"], template=inputs["remeshed"], model=inputs["run"], video=False
    )
    with caplog.at_level(logging.INFO):
        result = animate(AnimateConfig(output=out, argmax=True, **config))
    assert "transferring the motion onto it" in caplog.text
    target = read_mesh(inputs["remeshed"])
    written = arrays(out / "animation.npz")
    assert written["vertices"].shape == (result.frames, len(target.vertices), 3)
    np.testing.assert_array_equal(written["faces"], target.faces)
    np.testing.assert_array_equal(read_mesh(out / "template.ply").faces, target.faces)
    assert (out / "transfer.npz").is_file() and (out / "animation.pc2").is_file()
    assert (out / "transfer.json").is_file() and (out / "transfer.png").is_file()

    # the same take through the saved registration, and the model's own animation under it
    again = tmp_path / "again"
    animate(AnimateConfig(output=again, argmax=True, transfer=out / "transfer.npz", **config))
    np.testing.assert_array_equal(arrays(again / "animation.npz")["vertices"], written["vertices"])

    refused = cli(
        "animate", inputs["speech"], inputs["remeshed"], "-o", tmp_path / "x", "--model",
        inputs["run"], "--no-transfer",
    )  # fmt: skip
    error = one_error(refused)
    assert "remeshed.ply" in error and f"{len(target.vertices)} vertices" in error
    no_faces = cli(
        "animate", inputs["speech"], inputs["remeshed"], "-o", tmp_path / "y", "--model",
        inputs["bare_run"],
    )  # fmt: skip
    assert "faces.npy" in one_error(no_faces)


def test_bad_sources_are_one_line(inputs, tmp_path):
    folder = tmp_path
    full = arrays(inputs["source"])
    cases = {}
    missing = {k: v for k, v in full.items() if k not in ("template", "fps")}
    np.savez(folder / "missing.npz", **missing)
    cases["missing.npz"] = ("missing template, fps", inputs["neutral"], [])
    np.savez(folder / "silent_source.npz", **{k: v for k, v in full.items() if "audio" not in k})
    cases["silent_source.npz"] = ("holds no audio", inputs["neutral"], [])
    no_faces = {k: v for k, v in full.items() if k != "faces"}
    np.savez(folder / "no_faces.npz", **no_faces)
    cases["no_faces.npz"] = ("has no faces", inputs["remeshed"], [])
    (folder / "garbage.npz").write_bytes(b"not a zip")
    cases["garbage.npz"] = ("not a readable", inputs["neutral"], [])
    short = folder / "short.wav"
    soundfile.write(short, full["audio"][: len(full["audio"]) // 4], int(full["audio_rate"]))
    cases["short.wav"] = ("too short", inputs["neutral"], ["--speech", short])
    cloud = folder / "cloud.obj"
    cloud.write_text("".join(f"v {x} {y} {z}\n" for x, y, z in inputs["head"].vertices[:40]))
    cases["cloud.obj"] = ("no faces", cloud, [])
    landmarks = folder / "wrong.yaml"
    landmarks.write_text("source: [0, 1, 2]\ntarget: [0, 1, 999999]\n")
    cases["wrong.yaml"] = ("target indices", inputs["remeshed"], ["--landmarks", landmarks])
    for name, (message, target, extra) in cases.items():
        source = folder / name if name.endswith(".npz") else inputs["source"]
        out = folder / f"out_{name}"
        result = cli("retarget", source, target, "-o", out, "--model", inputs["run"], *extra)
        error = one_error(result)
        assert message in error and name in error, error
        assert not out.exists()
    with pytest.raises(MeshtalkError, match="without --transfer"):
        RetargetConfig(
            source=inputs["source"],
            target=inputs["remeshed"],
            output=folder / "z",
            transfer=folder / "t.npz",
            landmarks=landmarks,
        )
