"""A damaged or hand-edited prepared store fails up front with one line naming the file."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from meshtalk.cli.main import app
from meshtalk.pipelines.data.store import READABLE_FORMAT, PreparedStore, SegmentDataset
from meshtalk.pipelines.errors import MeshtalkError


@pytest.fixture
def store(tiny_store, tmp_path) -> Path:
    """A copy of the shared tiny store that a test may damage."""
    return Path(shutil.copytree(tiny_store, tmp_path / "data"))


def first_train_segment(store: Path) -> Path:
    manifest = json.loads((store / "manifest.json").read_text())
    for record in manifest["identities"]:
        for segment in record["segments"]:
            if segment["split"] == "train":
                return store / "identities" / record["name"] / segment["name"]
    raise AssertionError("the tiny store has no train segment")


def edit_manifest(store: Path, edit) -> None:
    manifest = json.loads((store / "manifest.json").read_text())
    edit(manifest)
    (store / "manifest.json").write_text(json.dumps(manifest))


def open_for_training(store: Path) -> None:
    """What `train latent` reads before its first step."""
    prepared = PreparedStore(store)
    SegmentDataset(prepared, "train", frames=8)
    prepared.mean, prepared.std, prepared.masks  # noqa: B018 (loaded for their checks)


def save_sliced(path: Path, index) -> None:
    np.save(path, np.load(path)[index])


SEGMENT_DAMAGE = {
    "vertices missing": ("vertices.npy", lambda p: p.unlink(), "missing from the store"),
    "vertices truncated": (
        "vertices.npy",
        lambda p: p.write_bytes(p.read_bytes()[:5000]),
        "mmap length is greater than file size",
    ),
    "vertices fewer frames": (
        "vertices.npy",
        lambda p: save_sliced(p, slice(0, 5)),
        "shape (5, ",
    ),
    "vertices other vertex count": (
        "vertices.npy",
        lambda p: save_sliced(p, (slice(None), slice(0, 100))),
        ", 100, 3) where manifest.json says",
    ),
    "vertices not an array": ("vertices.npy", lambda p: p.write_bytes(b"\x00" * 300), "damaged"),
    "mel missing": ("mel.npy", lambda p: p.unlink(), "missing from the store"),
    "mel truncated": ("mel.npy", lambda p: p.write_bytes(p.read_bytes()[:3000]), "mmap length"),
    "mel other band count": (
        "mel.npy",
        lambda p: save_sliced(p, (slice(None), slice(0, 40))),
        "40)",
    ),
    "frames missing": ("frames.npz", lambda p: p.unlink(), "missing from the store"),
    "frames truncated": (
        "frames.npz",
        lambda p: p.write_bytes(p.read_bytes()[:300]),
        "damaged (File is not a zip file)",
    ),
    "frames without mel_index": (
        "frames.npz",
        lambda p: np.savez(p, **{k: v for k, v in np.load(p).items() if k != "mel_index"}),
        "has no 'mel_index' array",
    ),
}


@pytest.mark.parametrize("case", SEGMENT_DAMAGE)
def test_a_damaged_segment_array_is_named(store, case):
    filename, damage, message = SEGMENT_DAMAGE[case]
    path = first_train_segment(store) / filename
    damage(path)
    with pytest.raises(MeshtalkError) as caught:
        open_for_training(store)
    assert caught.value.path == path
    assert message in caught.value.problem and "rerun meshtalk prep" in caught.value.problem


@pytest.mark.parametrize(
    ("relative", "damage", "message"),
    [
        ("mean.npy", lambda p: p.write_bytes(p.read_bytes()[:100]), "damaged (EOF"),
        ("std.npy", lambda p: np.save(p, np.zeros((3, 3), np.float32)), "shape (3, 3)"),
        ("masks/mouth.npy", lambda p: p.unlink(), "missing from the store"),
    ],
)
def test_a_damaged_store_array_is_named(store, relative, damage, message):
    damage(store / relative)
    with pytest.raises(MeshtalkError) as caught:
        open_for_training(store)
    assert caught.value.path == store / relative and message in caught.value.problem


def test_a_damaged_template_is_named(store):
    template = first_train_segment(store).parent / "template.npy"
    template.unlink()
    with pytest.raises(MeshtalkError, match="missing from the store") as caught:
        open_for_training(store)
    assert caught.value.path == template


@pytest.mark.parametrize(
    ("write", "message"),
    [
        (lambda m: "{not json", "not valid JSON at line 1 column 2"),
        (lambda m: json.dumps(m)[:300], "not valid JSON"),
        (lambda m: b"\xff\xfe\x00garbage", "not valid JSON"),
        (lambda m: "[1, 2]", "holds a JSON list, not an object"),
        (lambda m: json.dumps({**m, "format": 99}), "format is 99"),
        (lambda m: json.dumps({k: v for k, v in m.items() if k != "identities"}), "identities is"),
        (lambda m: json.dumps({**m, "num_vertices": "many"}), "num_vertices is 'many'"),
        (lambda m: json.dumps({**m, "mel": {"n_mels": 80}}), "mel.sample_rate is missing"),
        (lambda m: json.dumps({**m, "identities": [7]}), "identities[0] is not an object"),
    ],
)
def test_a_corrupt_manifest_is_one_error_naming_it(store, write, message):
    manifest = json.loads((store / "manifest.json").read_text())
    text = write(manifest)
    target = store / "manifest.json"
    target.write_bytes(text) if isinstance(text, bytes) else target.write_text(text)
    with pytest.raises(MeshtalkError) as caught:
        PreparedStore(store)
    assert caught.value.path == target and message in caught.value.problem


def test_a_segment_frame_count_of_the_wrong_type_is_refused(store):
    edit_manifest(store, lambda m: m["identities"][0]["segments"][0].update(frames="x"))
    with pytest.raises(MeshtalkError, match=r"segments\[0\]\.frames is 'x', expected int >= 1"):
        PreparedStore(store)


@pytest.mark.parametrize("name", ["../../x", "..", "/etc", "a/b", "a\\b", ""])
@pytest.mark.parametrize("where", ["identity", "segment", "mask"])
def test_names_that_would_read_outside_the_store_are_refused(store, name, where):
    def edit(manifest):
        if where == "identity":
            manifest["identities"][0]["name"] = name
        elif where == "segment":
            manifest["identities"][0]["segments"][0]["name"] = name
        else:
            manifest["masks"][0] = name

    edit_manifest(store, edit)
    with pytest.raises(MeshtalkError, match="is not a plain name") as caught:
        PreparedStore(store)
    assert caught.value.path == store / "manifest.json"


def test_an_identity_listed_twice_is_refused(store):
    edit_manifest(store, lambda m: m["identities"].append(m["identities"][0]))
    with pytest.raises(MeshtalkError, match="appears twice"):
        PreparedStore(store)


def test_an_intact_store_passes_every_check(tiny_store):
    prepared = PreparedStore(tiny_store)
    for segment in prepared.segments:
        prepared.check_segment(segment)
    assert prepared.mean.shape == (prepared.num_vertices, 3)


def test_the_reader_reads_the_format_prep_writes():
    from meshtalk.pipelines.data.prep import STORE_FORMAT

    assert READABLE_FORMAT == STORE_FORMAT


@pytest.mark.parametrize(
    ("damage", "named"),
    [
        (lambda store: (store / "manifest.json").write_text("{not json"), "manifest.json"),
        (lambda store: (first_train_segment(store) / "vertices.npy").unlink(), "vertices.npy"),
        (
            lambda store: edit_manifest(store, lambda m: m["identities"][0].update(name="../../x")),
            "manifest.json",
        ),
    ],
)
def test_train_latent_on_a_damaged_store_prints_one_line(store, tmp_path, damage, named):
    damage(store)
    result = CliRunner().invoke(
        app, ["train", "latent", "--data", str(store), "-o", str(tmp_path / "run"), "--steps", "2"]
    )
    assert result.exit_code == 1, result.output
    first = result.stderr.splitlines()[0]
    assert first.startswith(f"error: {store}") and named in first, result.stderr
    assert "Traceback" not in result.stderr
