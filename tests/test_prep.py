"""synth -> prep -> Dataset, alignment against synth's ground truth, the MeshTalk topology."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader
from typer.testing import CliRunner

from meshtalk.cli.main import app
from meshtalk.pipelines.data.masks import iou, read_mask_dir
from meshtalk.pipelines.data.prep import PrepConfig, build, segments
from meshtalk.pipelines.data.prep import run as prep
from meshtalk.pipelines.data.prep.discover import choose_topology
from meshtalk.pipelines.data.store import PreparedStore, SegmentDataset
from meshtalk.pipelines.data.synth import SynthConfig
from meshtalk.pipelines.data.synth import run as synth
from meshtalk.pipelines.data.synth.face import builtin_vertex_count
from meshtalk.pipelines.errors import MeshtalkError
from meshtalk.pipelines.frontend import AudioFrontEnd
from meshtalk.pipelines.io.audio import load_audio
from meshtalk.pipelines.io.mesh import Mesh, read_mesh, write_mesh

from .conftest import builtin_prep_config


def test_dataset_batch_shapes(tiny_store):
    store = PreparedStore(tiny_store)
    dataset = SegmentDataset(store, split="train", frames=8, length=6, seed=1)
    batch = next(iter(DataLoader(dataset, batch_size=3, num_workers=0)))
    v = store.num_vertices
    assert v == builtin_vertex_count(24)
    assert batch["template"].shape == (3, v, 3)
    assert batch["vertices"].shape == (3, 8, v, 3)
    assert batch["mel"].shape == (3, store.span_length(8), 80)
    assert batch["mel_starts"].shape == (3, 8)
    assert batch["vertices"].dtype == torch.float32 and torch.isfinite(batch["mel"]).all()
    # The span holds exactly the per-frame windows (release window: 1 s centred, both ends).
    windows = SegmentDataset(store, split="train", frames=8, length=6, seed=1, audio="windows")
    item, span = windows[4], dataset[4]
    assert item["audio"].shape == (8, 80, 101)
    for k, start in enumerate(span["mel_starts"].tolist()):
        assert torch.equal(span["mel"][start : start + 101].T, item["audio"][k])
    steps = batch["frame_ids"].diff(dim=1)
    assert (steps == 3).all()  # no window spans a dropped frame
    # Same seed, same items; another epoch, other items.
    again = SegmentDataset(store, split="train", frames=8, length=6, seed=1)
    assert torch.equal(again[2]["vertices"], dataset[2]["vertices"])
    again.set_epoch(1)
    assert not torch.equal(again[2]["frame_ids"], dataset[2]["frame_ids"])


def test_store_contents(tiny_store):
    store = PreparedStore(tiny_store)
    manifest = store.manifest
    assert set(manifest["splits"]) == {"train", "val", "test"}
    assert all(manifest["splits"][s] for s in ("train", "val", "test"))
    assert store.mean.shape == store.std.shape == (store.num_vertices, 3)
    assert (store.std > 0).all()
    assert set(store.masks) == {"mouth", "upper_face", "eyelids", "forehead", "neck"}
    assert manifest["versions"]["numpy"] == np.__version__
    assert manifest["train_frames"] == sum(s.frames for s in store.split("train"))
    # Statistics equal those computed directly from the training frames.
    train = np.concatenate(
        [np.asarray(store.vertices(s), np.float64) for s in store.split("train")]
    )
    np.testing.assert_allclose(store.mean, train.mean(0), rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(store.std, train.std(0, ddof=1), rtol=1e-4, atol=1e-4)


def _segment_with_drops(tiny_dataset, store):
    for segment in store.split("train"):
        truth = json.loads(
            (tiny_dataset / "ground_truth" / segment.identity / f"{segment.name}.json").read_text()
        )
        if truth["dropped_frame_ids"]:
            return segment, truth
    raise AssertionError("synth dropped no frame")


def test_alignment_with_dropped_frames_matches_ground_truth(tiny_dataset, tiny_store):
    store = PreparedStore(tiny_store)
    segment, truth = _segment_with_drops(tiny_dataset, store)
    frames = store.frames(segment)
    kept = [i for i in truth["frame_ids"] if i not in truth["dropped_frame_ids"]]
    assert frames["frame_ids"].tolist() == kept
    truth_time = dict(zip(truth["frame_ids"], truth["frame_times_s"]))
    np.testing.assert_allclose(frames["times_s"], [truth_time[i] for i in kept], atol=1e-6)

    # Meshes: the lower lip follows the ground-truth mouth opening frame by frame.
    mouth = store.masks["mouth"] > 0.5
    vertices = np.asarray(store.vertices(segment))
    drop = -(vertices[:, mouth, 1] - store.template(segment.identity)[mouth, 1]).min(axis=1)
    opening = dict(zip(truth["frame_ids"], truth["mouth_open"]))
    assert np.corrcoef(drop, [opening[i] for i in kept])[0, 1] > 0.95

    # Audio: a window after the dropped frame is the mel at that frame's ground-truth time.
    dataset = SegmentDataset(store, split="train", frames=4, length=1, audio="windows")
    choice = dataset.segments.index(segment)
    first_drop = truth["dropped_frame_ids"][0]
    start = next(int(s) for s in dataset.starts[choice] if frames["frame_ids"][s] > first_drop)
    item = dataset.item(choice, start)
    audio = load_audio(tiny_dataset / segment.identity / "audio" / f"{segment.name}.wav")
    mel = AudioFrontEnd().utterance_mel(audio, truth["frame_times_s"][-1])
    for k, frame_id in enumerate(item["frame_ids"].tolist()):
        centre = round((truth_time[frame_id] + 0.5) * 100)
        expected = mel[centre - 50 : centre + 51].T
        np.testing.assert_allclose(item["audio"][k].numpy(), expected, atol=1e-5)


def test_meshtalk_topology_round_trip_and_masks(reference_topology, tmp_path):
    root = tmp_path / "multiface"
    synth(
        SynthConfig(
            output=root,
            identities=1,
            sentences=1,
            template=reference_topology / "face_template.obj",
            masks=reference_topology,
            multiface_topology=True,
            min_words=2,
            max_words=2,
        )
    )
    first = next(p for p in root.glob("*/tracked_mesh/*/*.bin"))
    assert first.stat().st_size == 7306 * 12
    # The landmark preset builds masks close to the authors'.
    out = prep(
        PrepConfig(
            root=root,
            output=tmp_path / "data",
            crop="meshtalk",
            landmarks="meshtalk",
            progress=False,
        )
    )
    store = PreparedStore(out)
    template = read_mesh(reference_topology / "face_template.obj").vertices
    np.testing.assert_array_equal(store.template(store.identities[0]), template)
    reference = read_mask_dir(reference_topology, 6172)
    lips = iou(store.masks["mouth"] > 0.5, reference["mouth"] > 0.5)
    eyelids = iou(store.masks["eyelids"] > 0.5, reference["eyelids"] > 0.5)
    assert lips >= 0.7, lips
    assert eyelids >= 0.7, eyelids
    # With no options: the 'meshtalk' crop for the 7306-vertex meshes, the dataset's own masks.
    auto = PreparedStore(prep(PrepConfig(root=root, output=tmp_path / "auto", progress=False)))
    assert auto.manifest["settings"]["crop"] == "meshtalk"
    assert auto.manifest["settings"]["masks"] == str(root / "topology" / "masks")
    np.testing.assert_array_equal(auto.template(auto.identities[0]), template)
    for name, values in reference.items():
        np.testing.assert_allclose(auto.masks[name], values, atol=1e-6)


def test_resume_after_interruption_counts_each_frame_once(
    tiny_dataset, tiny_store, tmp_path, monkeypatch
):
    out = tmp_path / "data"
    original = build._complete_identity
    calls = []

    def interrupt_second(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(build, "_complete_identity", interrupt_second)
    with pytest.raises(KeyboardInterrupt):
        prep(builtin_prep_config(tiny_dataset, out))
    assert not (out / "manifest.json").exists()
    partial = out / ".partial"
    assert len(list(partial.glob("identities/*/identity.json"))) == 1

    monkeypatch.setattr(build, "_complete_identity", original)
    done = []
    monkeypatch.setattr(segments, "process_segment", _counting(segments.process_segment, done))
    prep(builtin_prep_config(tiny_dataset, out))
    assert not partial.exists()
    resumed, clean = PreparedStore(out), PreparedStore(tiny_store)
    redone = {identity for identity, _ in done}
    assert redone == set(clean.identities[1:])  # the finished first identity is kept
    expected = sum(1 + len(r["segments"]) for r in clean.manifest["identities"][1:])
    assert len(done) == len(set(done)) == expected
    assert resumed.manifest["train_frames"] == clean.manifest["train_frames"]
    np.testing.assert_array_equal(resumed.mean, clean.mean)
    np.testing.assert_array_equal(resumed.std, clean.std)


def _counting(function, log):
    def wrapper(task, *args, **kwargs):
        log.append((task.identity, task.segment))
        return function(task, *args, **kwargs)

    return wrapper


def test_two_workers_give_the_same_store(tiny_dataset, tiny_store, tmp_path):
    out = prep(builtin_prep_config(tiny_dataset, tmp_path / "data", workers=2))
    parallel, serial = PreparedStore(out), PreparedStore(tiny_store)
    np.testing.assert_array_equal(parallel.mean, serial.mean)
    segment = serial.split("train")[0]
    np.testing.assert_array_equal(parallel.vertices(segment), serial.vertices(segment))
    np.testing.assert_allclose(parallel.mel(segment), serial.mel(segment), atol=1e-5)  # FFT threads


def test_paper_window(tiny_dataset, tmp_path):
    out = prep(builtin_prep_config(tiny_dataset, tmp_path / "data", window="paper"))
    item = SegmentDataset(out, frames=4, length=1, audio="windows")[0]
    assert item["audio"].shape == (4, 80, 61)  # -500..+100 ms, both ends


def test_expression_drift_moves_only_the_upper_face(tmp_path):
    def truth(drift: float) -> tuple[list[dict], list[str]]:
        root = tmp_path / f"drift-{drift}"
        synth(SynthConfig(output=root, identities=1, sentences=4, grid=16, expression_drift=drift))
        paths = sorted((root / "ground_truth").glob("*/*.json"))
        frames = sorted(p.name for p in root.glob("m--*/tracked_mesh/SEN_*/*.bin"))
        return [json.loads(p.read_text()) for p in paths], frames

    still, still_frames = truth(0.0)
    lively, lively_frames = truth(0.5)
    assert lively_frames == still_frames
    # The speech, the mouth and the drops are those of the same seed without drift ...
    for a, b in zip(lively, still, strict=True):
        for name in ("mouth_open", "lip_rounding", "lip_spreading", "lip_closure", "phones"):
            assert a[name] == b[name]
        assert a["dropped_frame_ids"] == b["dropped_frame_ids"]

    def change(name: str) -> np.ndarray:
        return np.concatenate([np.subtract(a[name], b[name]) for a, b in zip(lively, still)])

    # ... the brows move all the time (signed, std about 0.5) and the eyes squint part of the time.
    brow = change("brow_raise")
    assert 0.25 < brow.std() < 1.0 and brow.min() < 0 < brow.max()
    squint = change("blink")
    assert (squint >= 0).all() and 0.2 < (squint > 0.05).mean() < 0.8


# --- the topology chosen when none is given ------------------------------------------------------


def test_synth_then_prep_with_no_options(tiny_dataset, tiny_store, tmp_path, caplog):
    """`meshtalk synth data/ && meshtalk prep data/ -o store/`: the dataset's own topology."""
    out = tmp_path / "store"
    with caplog.at_level(logging.INFO):
        result = CliRunner().invoke(app, ["prep", str(tiny_dataset), "-o", str(out)])
    assert result.exit_code == 0, result.stderr
    landmarks = str(tiny_dataset / "topology" / "landmarks.yaml")
    store, explicit = PreparedStore(out), PreparedStore(tiny_store)
    count = explicit.manifest["num_vertices"]  # 24 x 24 built-in face
    chosen = [r.getMessage() for r in caplog.records if r.getMessage().startswith("topology:")]
    assert chosen == [
        f"topology: crop 'none' (for {count}-vertex meshes), masks from {landmarks} "
        f"(the dataset's own, {count} vertices)"
    ]
    assert store.manifest["settings"]["crop"] == "none"
    assert store.manifest["settings"]["landmarks"] == landmarks
    assert store.manifest["settings"] == explicit.manifest["settings"]  # as if given
    for name in explicit.masks:
        np.testing.assert_array_equal(store.masks[name], explicit.masks[name])
    np.testing.assert_array_equal(store.mean, explicit.mean)


def _dataset_of(root: Path, num_vertices: int, topology_vertices: int | None = None) -> Path:
    """Identity folders whose vert_mean.bin gives `num_vertices`; a topology/ folder if asked."""
    for name in ("a", "b"):
        (root / name / "tracked_mesh").mkdir(parents=True)
        (root / name / "vert_mean.bin").write_bytes(np.zeros((num_vertices, 3), "<f4").tobytes())
    if topology_vertices is not None:
        vertices = np.random.default_rng(0).normal(size=(topology_vertices, 3)).astype(np.float32)
        write_mesh(root / "topology" / "template.ply", Mesh(vertices, np.zeros((0, 3), np.int64)))
        (root / "topology" / "masks").mkdir()
    return root


def _chosen(root: Path, **given) -> PrepConfig:
    return choose_topology(PrepConfig(root=root, output=root.parent / "out", **given))[0]


def test_multiface_crop_only_for_multiface_vertex_count(tmp_path):
    multiface = _dataset_of(tmp_path / "multiface", 7306)
    chosen = _chosen(multiface)
    assert (chosen.crop, chosen.landmarks, chosen.masks) == ("meshtalk", "meshtalk", None)
    other = _dataset_of(tmp_path / "other", 2304)
    with pytest.raises(MeshtalkError, match="masks need --landmarks FILE or --masks DIR"):
        _chosen(other)
    assert _chosen(other, landmarks="marks.yaml").crop == "none"
    # --vertices decides over vert_mean.bin.
    assert _chosen(multiface, num_vertices=2304, landmarks="marks.yaml").crop == "none"


def test_dataset_topology_is_used_when_it_fits_the_cropped_meshes(tmp_path):
    # As `synth --multiface-topology` writes it: 7306-vertex meshes, a 6172-vertex topology.
    root = _dataset_of(tmp_path / "multiface", 7306, topology_vertices=6172)
    chosen = _chosen(root)
    assert (chosen.crop, chosen.landmarks) == ("meshtalk", None)
    assert chosen.masks == root / "topology" / "masks"
    # A topology of another vertex count is not used: the preset for the 'meshtalk' crop.
    mismatched = _dataset_of(tmp_path / "mismatched", 7306, topology_vertices=500)
    config, line = choose_topology(PrepConfig(root=mismatched, output=tmp_path / "out"))
    assert (config.crop, config.landmarks, config.masks) == ("meshtalk", "meshtalk", None)
    assert "not used: 500 vertices, the meshes 6172" in line


def test_given_topology_options_win(tmp_path):
    root = _dataset_of(tmp_path / "multiface", 7306, topology_vertices=6172)
    chosen = _chosen(root, crop="none", landmarks="marks.yaml")
    assert (chosen.crop, chosen.landmarks, chosen.masks) == ("none", "marks.yaml", None)
    chosen = _chosen(root, masks=tmp_path / "masks")
    assert (chosen.crop, chosen.landmarks, chosen.masks) == ("meshtalk", None, tmp_path / "masks")
    # An explicit crop the dataset's topology does not fit: never silently the dataset's masks.
    with pytest.raises(MeshtalkError, match="masks need --landmarks"):
        _chosen(root, crop="none")
