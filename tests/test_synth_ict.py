"""`meshtalk synth --face ict`: the ICT-FaceKit head speaking, blinking, moving its eyes; its
topology; the whole head from face-area frames; per-part colours."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from meshtalk.cli.main import app
from meshtalk.pipelines.data.synth import SynthConfig
from meshtalk.pipelines.data.synth import run as synth
from meshtalk.pipelines.data.synth.espeak import available
from meshtalk.pipelines.data.synth.visemes import VISEMES, VisemePhone, mouth_weights
from meshtalk.pipelines.errors import MeshtalkError
from meshtalk.pipelines.io.mesh import read_bin, read_mesh
from tests.conftest import REFERENCE

ICT = REFERENCE / "ict_facekit"
needs_ict = pytest.mark.skipif(
    not (ICT / "shapes.npz").is_file() or not available(),
    reason="the ICT-FaceKit model (../shared/reference/ict_facekit) or eSpeak NG is missing",
)


@pytest.fixture(scope="module")
def ict_dataset(tmp_path_factory):
    """One identity, one short sentence, many blinks."""
    out = tmp_path_factory.mktemp("ict") / "data"
    config = SynthConfig(
        out,
        identities=1,
        sentences=1,
        seed=5,
        face="ict",
        face_model=ICT,
        min_words=4,
        max_words=5,
        blinks_per_minute=120,
        expression_drift=0.1,
    )
    synth(config)
    return out


def _frames(root):
    identity = next(p for p in root.iterdir() if p.name.startswith("m--"))
    record = json.loads(next((root / "ground_truth" / identity.name).glob("*.json")).read_text())
    folder = identity / "tracked_mesh" / record["segment"]
    frames = {
        i: read_bin(folder / f"{frame_id:06d}.bin", 6706)
        for i, frame_id in enumerate(record["frame_ids"])
        if frame_id not in record["dropped_frame_ids"]
    }
    return record, frames


@needs_ict
def test_topology_holds_face_area_head_rig_and_license(ict_dataset):
    topology = ict_dataset / "topology"
    template = read_mesh(topology / "template.ply")
    head = read_mesh(topology / "head.obj")
    assert len(template.vertices) == 6706
    assert len(head.vertices) == 26719 and head.uvs is not None and len(head.uvs) == 28911
    assert "M_Teeth" in head.materials and "M_IrisLeft" in head.materials
    assert (topology / "ICTFaceModelMaterial.mtl").is_file()  # the head's materials travel
    assert "MIT License" in (topology / "ICT-FaceKit-LICENSE.txt").read_text()
    landmarks = yaml.safe_load((topology / "landmarks.yaml").read_text())
    assert landmarks["num_vertices"] == 6706 and len(landmarks["lip_outer"]) == 12
    with np.load(topology / "ict_rig.npz", allow_pickle=False) as rig:
        assert rig["expressions"].shape == (57, 26719, 3) and int(rig["face_area"]) == 6706
    masks = sorted(p.name for p in (topology / "masks").iterdir())
    assert "weighted_mouth_mask.txt" in masks


@needs_ict
def test_mouth_follows_visemes_and_eyes_blink(ict_dataset):
    record, frames = _frames(ict_dataset)
    landmarks = np.asarray(
        np.load(ict_dataset / "topology" / "ict_rig.npz", allow_pickle=False)["landmarks_68"]
    )
    weights = record["expression_weights"]
    assert len(weights) == 57 and all(len(w) == len(record["frame_ids"]) for w in weights.values())
    gap = {i: f[landmarks[62], 1] - f[landmarks[66], 1] for i, f in frames.items()}
    jaw = np.asarray(weights["jawOpen"])
    vowel = max(gap, key=lambda i: jaw[i])
    assert gap[vowel] > 5.0  # mm: the lips part on the most open vowel
    silent = [i for i in gap if record["frame_times_s"][i] < record["phones"][0]["start_s"] - 0.15]
    assert silent and max(gap[i] for i in silent) < 2.0  # closed before speech
    # Blinks close the eyes (the face's left eye: landmarks 43/47), independently of speech.
    blink = np.asarray(weights["eyeBlink_L"])
    assert blink.max() > 0.95 and record["blink_onsets_s"]
    closed = [i for i in frames if blink[i] > 0.95]
    opened = [i for i in frames if blink[i] < 0.05 and weights["eyeSquint_L"][i] < 0.05]
    eye = {i: frames[i][landmarks[43], 1] - frames[i][landmarks[47], 1] for i in frames}
    assert closed and opened
    assert max(eye[i] for i in closed) < 0.2 * min(eye[i] for i in opened)
    # Saccades: the gaze jumps between fixations.
    assert np.abs(np.diff(np.asarray(record["gaze"]), axis=0)).max() > 0.05


@needs_ict
def test_same_seed_same_bytes(ict_dataset, tmp_path):
    config = SynthConfig(
        tmp_path / "again",
        identities=1,
        sentences=1,
        seed=5,
        face="ict",
        face_model=ICT,
        min_words=4,
        max_words=5,
        blinks_per_minute=120,
        expression_drift=0.1,
    )
    synth(config)
    first = sorted(p for p in ict_dataset.rglob("*.bin"))
    second = sorted(p for p in (tmp_path / "again").rglob("*.bin"))
    assert len(first) == len(second) > 10
    assert all(a.read_bytes() == b.read_bytes() for a, b in zip(first, second))


def test_coarticulation_closes_lips_and_anticipates():
    names = tuple(sorted({n for v in VISEMES.values() for n in v}))
    phones = [
        VisemePhone("A:", "aa", 0.20, 0.15),
        VisemePhone("m", "PP", 0.35, 0.06),
        VisemePhone("A:", "aa", 0.41, 0.15),
    ]
    times = np.arange(0, 0.8, 0.005)
    weights = mouth_weights(phones, times, names)
    press = weights[:, names.index("mouthPress_L")]
    jaw = weights[:, names.index("jawOpen")]
    inside = (times >= 0.36) & (times <= 0.40)
    assert press[inside].min() > 0.8 * VISEMES["PP"]["mouthPress_L"]
    assert jaw[inside].max() < 0.3 * VISEMES["aa"]["jawOpen"]
    assert jaw[(times > 0.25) & (times < 0.3)].min() > 0.55 * VISEMES["aa"]["jawOpen"]
    # The jaw starts opening before the first vowel (anticipation) and is shut long before it.
    assert jaw[np.searchsorted(times, 0.17)] > 0.05 and jaw[np.searchsorted(times, 0.02)] < 0.02


@needs_ict
def test_whole_head_from_face_area_frames(ict_dataset):
    from meshtalk.pipelines.inference.head import HeadMapping, read_rig

    topology = ict_dataset / "topology"
    rig = read_rig(topology / "ict_rig.npz")
    head = read_mesh(topology / "head.obj")
    source = read_mesh(topology / "template.ply")
    record, frames = _frames(ict_dataset)
    order = sorted(frames)
    truth = np.stack([record["expression_weights"][n] for n in rig.names], 1)[order]
    mapping = HeadMapping(rig, head, source)
    heads = mapping(np.stack([frames[i] for i in order]))
    assert heads.shape == (len(order), 26719, 3)
    solved = mapping.weights[0]
    for name in ("jawOpen", "eyeBlink_L", "mouthPress_L", "mouthPucker"):
        k = rig.names.index(name)
        assert np.abs(solved[:, k] - truth[:, k]).max() < 0.03, name
    # The teeth follow the jaw: the lower teeth drop with jawOpen.
    teeth = slice(*rig.parts["teeth"])
    drop = (rig.neutral[teeth, 1] - heads[:, teeth, 1]).max(1)
    k = rig.names.index("jawOpen")
    assert np.corrcoef(drop, solved[:, k])[0, 1] > 0.95


@needs_ict
def test_part_colours_of_the_head(ict_dataset):
    from meshtalk.pipelines.inference.head import read_rig
    from meshtalk.pipelines.render.colours import COLOURS, part_colours

    topology = ict_dataset / "topology"
    head = read_mesh(topology / "head.obj")
    colours, visible = part_colours(head, read_rig(topology / "ict_rig.npz").parts)
    assert colours.shape == (26719, 3)
    np.testing.assert_allclose(colours[17500], COLOURS["teeth"])
    np.testing.assert_allclose(colours[12000], COLOURS["mouth"])  # the mouth socket
    np.testing.assert_allclose(colours[100], COLOURS["skin"])
    # The clear outer shell of each eye is left out; the inner ball is white with an iris and a
    # pupil facing forward.
    eyes = colours[22221:23020]  # the left eye's inner ball (M_IrisLeft)
    forward = head.vertices[22221:23020, 2] > np.percentile(head.vertices[22221:23020, 2], 97)
    assert np.isclose(eyes[forward], COLOURS["pupil"]).all(1).any()
    assert np.isclose(eyes, COLOURS["sclera"]).all(1).mean() > 0.5
    assert np.isclose(eyes, COLOURS["iris"]).all(1).sum() > 20
    hidden = np.unique(head.faces[~visible])
    outer = np.arange(21451, 22221)  # the left eye's outer shell (M_ScleraLeft)
    assert np.isin(outer, hidden).all() and not np.isin(np.arange(22221, 23020), hidden).any()
    assert np.isin(np.arange(24591, 25351), hidden).all()  # tear film, blend, occlusion shells
    assert not np.isin(np.arange(0, 21451), hidden).any()
    assert part_colours(read_mesh(topology / "template.ply")) is None  # no materials: plain


@needs_ict
def test_prep_takes_the_ict_topology(ict_dataset, tmp_path):
    from meshtalk.pipelines.data.prep import PrepConfig
    from meshtalk.pipelines.data.prep import run as prep

    store = prep(PrepConfig(root=ict_dataset, output=tmp_path / "store"))
    manifest = json.loads((store / "manifest.json").read_text())
    assert manifest["num_vertices"] == 6706


def test_bad_ict_input_is_one_line(tmp_path):
    runner = CliRunner()
    result = runner.invoke(app, ["synth", str(tmp_path / "a"), "--face", "ict"])
    assert result.exit_code != 0 and "--face-model" in result.output
    assert "Traceback" not in result.output
    (tmp_path / "model").mkdir()
    result = runner.invoke(
        app,
        ["synth", str(tmp_path / "b"), "--face", "ict", "--face-model", str(tmp_path / "model")],
    )
    assert result.exit_code != 0 and "generic_neutral_mesh.obj: missing" in result.output
    assert not (tmp_path / "b").exists()
    with pytest.raises(MeshtalkError, match="--face must be one of"):
        SynthConfig(tmp_path / "c", face="egg")


@needs_ict
def test_a_damaged_ict_model_is_one_line(tmp_path):
    import shutil

    folder = tmp_path / "model"
    folder.mkdir()
    for name in ("generic_neutral_mesh.obj", "ICTFaceModelMaterial.mtl", "vertex_indices.json"):
        shutil.copyfile(ICT / name, folder / name)
    shutil.copyfile(ICT / "LICENSE", folder / "LICENSE")
    (folder / "shapes.npz").write_bytes((ICT / "shapes.npz").read_bytes()[:5000])  # truncated
    args = ["synth", str(tmp_path / "out"), "--face", "ict", "--face-model", str(folder)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 1 and "cannot read the ICT-FaceKit model" in result.output
    assert "Traceback" not in result.output and not (tmp_path / "out").exists()
