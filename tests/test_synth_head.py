"""The built-in head, its motion, the eSpeak NG voice, and the bundled default model."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from typer.testing import CliRunner

from meshtalk.cli.main import app
from meshtalk.pipelines.data.masks import build_masks
from meshtalk.pipelines.data.synth import SynthConfig
from meshtalk.pipelines.data.synth import run as synth
from meshtalk.pipelines.data.synth.espeak import available, speak, to_phones
from meshtalk.pipelines.data.synth.face import (
    MOTION_PARAMS,
    builtin_head,
    motion_basis,
)
from meshtalk.pipelines.errors import MeshtalkError
from meshtalk.pipelines.io.audio import read_audio

needs_espeak = pytest.mark.skipif(not available(), reason="eSpeak NG (espeakng-loader) missing")


def posed(head, **values: float) -> np.ndarray:
    """The head with some motion parameters set (others 0)."""
    vertices = head.mesh.vertices
    masks = build_masks(vertices, {k: np.asarray(v) for k, v in head.landmarks.items()})
    params = np.zeros((1, len(MOTION_PARAMS)))
    for name, value in values.items():
        params[0, MOTION_PARAMS.index(name)] = value
    return motion_basis(vertices, masks, head.rig).apply(vertices, params)[0]


def lip_gap(head, vertices: np.ndarray) -> float:
    return float((vertices[head.mouth_upper, 1] - vertices[head.mouth_lower, 1]).max())


def eye_openings(head, vertices: np.ndarray) -> list[float]:
    """Largest gap between the upper and lower lid margins of each eye (mm)."""
    gaps = []
    for key in ("left_eyelid", "right_eyelid"):
        ids = np.asarray(head.landmarks[key])
        upper, lower = ids[: len(ids) // 2], ids[len(ids) // 2 :]
        gaps.append(float((vertices[upper, 1] - vertices[lower, 1]).max()))
    return gaps


def test_default_head_has_3_to_6k_vertices_and_a_small_one_for_tests():
    head = builtin_head(48)
    assert 3000 <= len(head.mesh.vertices) <= 6000
    faces = head.mesh.faces
    assert faces.min() >= 0 and faces.max() < len(head.mesh.vertices)
    areas = np.linalg.norm(
        np.cross(
            *(head.mesh.vertices[faces[:, k]] - head.mesh.vertices[faces[:, 0]] for k in (1, 2))
        ),
        axis=1,
    )
    assert (areas > 1e-6).mean() > 0.99  # no collapsed strips
    small = builtin_head(16)
    assert len(small.mesh.vertices) < 700 and len(small.landmarks["left_eyelid"]) >= 4
    # The face points at the viewer: nose tip in front, chin below the mouth below the eyes.
    v = head.mesh.vertices
    nose = v[np.argmax(v[:, 2])]
    assert abs(nose[0]) < 3 and v[head.mouth_upper, 1].mean() < nose[1] < v[head.eyeballs, 1].mean()


def test_lips_are_closed_at_rest_and_part_with_the_jaw():
    head = builtin_head(32)
    rest = head.mesh.vertices
    assert len(head.mouth_upper) >= 3
    assert lip_gap(head, rest) == pytest.approx(0.0, abs=1e-5)  # the margins touch
    open_mouth = posed(head, jaw=1.0)
    assert lip_gap(head, open_mouth) > 8.0  # mm
    assert lip_gap(head, posed(head, jaw=0.3)) < lip_gap(head, open_mouth)
    # The corners stay joined: the opening is widest in the middle.
    gaps = open_mouth[head.mouth_upper, 1] - open_mouth[head.mouth_lower, 1]
    assert gaps[len(gaps) // 2] > 2 * max(gaps[0], gaps[-1])
    # The upper face does not move with the jaw.
    eyes = np.asarray(head.landmarks["left_eyelid"] + head.landmarks["right_eyelid"])
    assert np.abs(open_mouth[eyes] - rest[eyes]).max() < 0.05


def test_eyelids_close_over_the_eyes():
    head = builtin_head(32)
    rest = head.mesh.vertices
    assert min(eye_openings(head, rest)) > 6.0
    closed = posed(head, blink=1.0)
    assert max(eye_openings(head, closed)) < 0.5
    # Eyeballs stay put, behind the lids.
    assert np.array_equal(closed[head.eyeballs], rest[head.eyeballs])
    lids = np.asarray(head.landmarks["left_eyelid"] + head.landmarks["right_eyelid"])
    assert closed[lids, 2].min() > rest[head.eyeballs, 2].max() - 6.0
    # Brows go up with a brow raise, the mouth does not.
    brows = np.asarray(head.landmarks["brows"])
    raised = posed(head, brow=1.0)
    assert (raised[brows, 1] - rest[brows, 1]).min() > 2.0
    assert np.abs(raised[head.mouth_upper] - rest[head.mouth_upper]).max() < 0.05


@needs_espeak
def test_espeak_phoneme_timings_follow_the_audio():
    spoken = speak("mama papa. Bee, bee.", "en-us", rate_wpm=150)
    duration = len(spoken.samples) / spoken.rate
    assert spoken.rate > 8000 and 0.5 < duration < 5
    starts = [p.start for p in spoken.phonemes]
    assert starts == sorted(starts) and starts[-1] < duration
    phones = to_phones(spoken)
    assert [symbol for symbol, _, _ in phones if symbol in "mpb"][:2] == ["m", "m"]
    # Speech energy sits where espeak says the vowels are, not in its final pause.
    vowels = [(start, length) for symbol, start, length in phones if symbol in "aeiou"]
    assert len(vowels) >= 4

    def rms(start: float, length: float) -> float:
        a, b = int(start * spoken.rate), int((start + length) * spoken.rate)
        return float(np.sqrt(np.mean(spoken.samples[a:b] ** 2)))

    pauses = [(start, length) for symbol, start, length in phones if symbol == " "]
    pauses = [(start, length) for start, length in pauses if length > 0.05]
    assert pauses
    vowel_energy = np.mean([rms(*vowel) for vowel in vowels])
    assert vowel_energy > 5 * max(rms(*pause) for pause in pauses)
    with pytest.raises(MeshtalkError, match="no voice"):
        speak("hello", "no-such-voice")


@needs_espeak
def test_a_breathy_espeak_voice_says_the_same_text_the_same_way_every_time():
    """The f2 variant adds breath noise from espeak's random numbers, which espeak seeds with the
    clock: before they were seeded from the text, two runs of synth gave an identity other audio."""
    import time

    first = speak("tell your world about the fire", "en-us+f2").samples
    time.sleep(1.1)  # another second on the clock
    again = speak("tell your world about the fire", "en-us+f2").samples
    np.testing.assert_array_equal(first, again)
    other = speak("tell your world about the fires", "en-us+f2").samples
    assert other.shape != first.shape or not np.array_equal(other, first)


@needs_espeak
def test_espeak_dataset_mouth_follows_its_audio(tmp_path):
    root = tmp_path / "data"
    synth(SynthConfig(output=root, identities=1, sentences=2, grid=16, seed=2, voice="espeak"))
    record_path = next((root / "ground_truth").rglob("*.json"))
    record = json.loads(record_path.read_text())
    assert all(w.isalpha() for w in record["words"])  # English words
    identity = record_path.parent.name
    samples, rate = read_audio(root / identity / "audio" / f"{record['segment']}.wav")
    hop = rate // 30
    energy = np.array(
        [np.mean(samples[i * hop : (i + 1) * hop] ** 2) for i in range(len(record["mouth_open"]))]
    )
    mouth = np.asarray(record["mouth_open"])
    loud = energy > np.percentile(energy, 60)
    quiet = energy < np.percentile(energy, 10) * 3
    assert mouth[loud].mean() > 3 * mouth[quiet].mean()
    symbols = {p["phone"] for p in record["phones"]}
    assert symbols <= set("aeioupbmtksf") and symbols & set("aeiou") and symbols & set("pbmtksf")
    with pytest.raises(MeshtalkError, match="--voice"):
        SynthConfig(output=tmp_path / "x", voice="robot")


def test_formant_voice_still_makes_pseudo_words(tmp_path):
    root = tmp_path / "data"
    synth(SynthConfig(output=root, identities=1, sentences=1, grid=16, voice="formant"))
    record = json.loads(next((root / "ground_truth").rglob("*.json")).read_text())
    assert set("".join(record["words"])) <= set("aeioupbmtksf")


def test_bundled_model_animates_the_example_without_model_or_template(tmp_path):
    from meshtalk.pipelines.data.resources import default_model

    if not (default_model.run_path() / "prior").is_dir():
        pytest.fail(
            "the bundled default model is missing: run examples/recipes/ict-default-model.sh"
        )
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["animate", "--example", "-o", str(out), "--no-video"])
    assert result.exit_code == 0, result.output
    with np.load(out / "animation.npz", allow_pickle=False) as npz:
        vertices, weights = npz["vertices"], npz["expression_weights"]
        names = list(npz["expression_names"])
    # The whole ICT-FaceKit head (its rig bundled): teeth, tongue, eyes follow the face.
    assert vertices.shape[1] == 26719
    pairs = default_model.lip_pairs(vertices.shape[1])
    gaps = vertices[:, pairs[0], 1] - vertices[:, pairs[1], 1]
    assert gaps.max() > 3.0  # the mouth opens while it speaks
    # Each frame's expression weights (ARKit's names) come with it, and the mouth's follow the gap.
    assert weights.shape == (len(vertices), len(names)) and "jawOpen" in names
    assert np.corrcoef(weights[:, names.index("jawOpen")], gaps.max(1))[0, 1] > 0.8
    # The same run through SPEECH, and --model without its template is one error line.
    again = CliRunner().invoke(
        app, ["animate", str(default_model.example_path()), "-o", str(tmp_path / "b"), "--no-video"]
    )
    assert again.exit_code == 0, again.output
    # A bundled run by --model (the default or its low-latency twin) takes the bundled head; a
    # run of the user's needs its template.
    twin = CliRunner().invoke(
        app,
        ["animate", str(default_model.example_path()), "-o", str(tmp_path / "t"), "--no-video",
         "--model", str(default_model.live_run_path())],
    )  # fmt: skip
    assert twin.exit_code == 0, twin.output
    with np.load(tmp_path / "t" / "animation.npz", allow_pickle=False) as npz:
        assert npz["vertices"].shape == vertices.shape
    copy = shutil.copytree(default_model.run_path(), tmp_path / "mine")
    bad = CliRunner().invoke(
        app, ["animate", str(default_model.example_path()), "-o", str(tmp_path / "c"),
              "--model", str(copy)],
    )  # fmt: skip
    assert bad.exit_code == 1 and "TEMPLATE" in bad.output
    neither = CliRunner().invoke(app, ["animate", "-o", str(tmp_path / "d")])
    assert neither.exit_code == 1 and "SPEECH" in neither.output
