"""`meshtalk dub` on a small run trained on synthetic data, where the truth of every frame is known.

Identity A's sentence 1 (its tracked meshes) is dubbed with A's sentence 2 speech and measured
against sentence 2's tracked meshes (the lips) and sentence 1's (eyes and brows). Lips: the
vertices of the mouth mask > 0.5; upper face: the upper_face mask > 0.5; blinks: the eyelid gap
between the landmarks' upper and lower lid vertices falls below half its neutral value.
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
import torch.nn.functional as F
import yaml
from typer.testing import CliRunner

from meshtalk.cli.main import app
from meshtalk.models.config import latent_preset
from meshtalk.models.prior import ContextModel, prior_preset
from meshtalk.models.sampler import PriorSampler
from meshtalk.pipelines.data.store import PreparedStore
from meshtalk.pipelines.data.synth import SynthConfig
from meshtalk.pipelines.data.synth import run as synth
from meshtalk.pipelines.errors import MeshtalkError
from meshtalk.pipelines.eval.metrics import lip_vertex_errors
from meshtalk.pipelines.inference.animate import AnimateConfig, animate
from meshtalk.pipelines.inference.dub import DubConfig, dub, read_original
from meshtalk.pipelines.io.mesh import Mesh, read_mesh, write_mesh
from tests.conftest import builtin_prep_config

HEADS, UPPER_FACE_WEIGHT, LR, BATCH, DRIFT = 8, 10.0, 1e-3, 8, 0.0
SYNTH_SEED = 15
LATENT_STEPS, PRIOR_STEPS = 3000, 400
LATENT_SIZES = {"decoder_hidden": (256, 128, 64), "fusion_hidden": 128}
"""Stage-1 settings of the test run (under 3 minutes of training on one thread): the tiny preset
with 8 heads, a wider decoder (a 64-wide bottleneck and LSTM instead of 32) and fusion, the upper-
face terms weighted 10x, Adam at the paper's lr 1e-3 for 3000 steps: a run that learns both paths,
the lips from the audio, blinks and brows from the expression. The world is the same in every run
(eSpeak's breath noise is seeded from the text since stop 26; before, the breathy voices took it
from the clock, so runs differed). Measured before the warm-up (lip error of the dub / of animate
/ of the template in mm, blinks kept, upper-face correlation), three runs under pytest, identical:
synth seed 15: 0.597
/ 0.886 / 3.624, 2 of 2, 0.985. Fragile: with the same settings seed 11 learns nothing (3.93 /
3.92 / 4.47, 0 of 2, 0.08: swapping either input moves nothing), seed 14 has one blink only (0.59 /
0.86 / 3.98, 1 of 1, 0.97). Narrower or shorter runs keep one path at most (seed 11, clock-seeded
audio): 32 wide at lr 6e-4 for 1500 steps: 1.87 / 1.73 / 4.47, 0 of 2, -0.04 (the expression path
unused); the same with weight 20: 4.06 / 4.04 / 4.47, 2 of 2, 0.49 (the lips lost); 32 wide with
weight 10 (1500 to 4000 steps): the eyelids follow (correlation 0.95-0.97) but the brows do not
(0.18-0.25), not even in the run's own reconstruction."""
GUMBEL_WARMUP = LATENT_STEPS // 2
"""The Gumbel noise warmed up over the first half of stage 1 (as the default model's recipe does).
Without it the run depended on the machine's arithmetic in the last bits: on the machines of
stops 26-45 it learnt both paths, and on an AMD EPYC with AVX2 only (stop 47) it learnt next to
nothing with seed 0 (dub lip error 3.43 mm against the template's 3.62, 0 of 2 blinks kept,
upper-face correlation 0.08; on training segments lip error 3.52 mm, swapping the audio moved the
mouth 0.22 mm, the expression nothing) nor with seed 1 (3.55 mm, neither swap moved anything;
seed 2 was not run to the end): the decoder learned to ignore the untrained encoder's noisy
codes. With the warm-up, on that machine: lip error 0.55 mm on training segments, swapping the
audio moves the mouth 2.6 mm, the expression the upper face 0.035 mm; every test of this file
passes (correlation 0.987)."""
LATENT_SEEDS = (0, 1)
"""Training seeds of stage 1, the next tried only if a draw learnt nothing (see `learnt_both`)."""
CLOSED, REOPENED = 0.5, 0.25
"""A blink starts when the eyelid closure (1 - gap / neutral gap) reaches CLOSED, and may start
again once it is back under REOPENED."""


def learnt_both(run: Path, store_path: Path) -> bool:
    """Whether both paths of the run's stage 1 move the face, on 8 training segments with partners
    (the held-out sentence alone has none): swapping the audio moves the mouth at least 0.5 mm,
    the expression the upper face at least 0.01 mm (a run that learnt nothing: 0 and 0; one that
    learnt both: 2.6 and 0.035 mm)."""
    from meshtalk.pipelines.checkpoint import load_run
    from meshtalk.pipelines.train.pairs import validation_batches
    from meshtalk.pipelines.train.validation import latent_figures

    model = load_run(run, prior=False).latent
    store = PreparedStore(store_path)
    batches = validation_batches(
        store, 16, 8, BATCH, seed=1, heads=HEADS, classes=model.config.classes, split="train"
    )
    masks = {key: torch.from_numpy(value) for key, value in store.masks.items()}
    figures = latent_figures(model, batches, masks, torch.device("cpu"))
    return figures["audio_swap_mouth_mm"] >= 0.5 and figures["expression_swap_upper_mm"] >= 0.01


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict:
    with one_thread():  # a run that is the same every time (see one_thread)
        return build_world(tmp_path_factory.mktemp("dub"))


@contextmanager
def one_thread():
    """Torch on one CPU thread for the block (data, prep and training): the run is then the same
    bit for bit every time (two builds: the same synthetic files, and the same SHA-256 for the
    weights and optimizer states of both stages; with two threads, summation orders may differ
    from run to run)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def build_world(folder: Path) -> dict:
    """A synthetic dataset (4 identities x 3 sentences, frequent blinks), its store and a run of
    both stages trained on all of it but one identity's third sentence."""
    from meshtalk.pipelines.train.latent import LatentTrainingConfig, TrainLatentConfig
    from meshtalk.pipelines.train.latent import run as train_latent
    from meshtalk.pipelines.train.prior import PriorTrainingConfig, TrainPriorConfig
    from meshtalk.pipelines.train.prior import run as train_prior

    root = folder / "multiface"
    synth(
        SynthConfig(
            output=root,
            identities=4,
            sentences=3,
            grid=16,
            seed=SYNTH_SEED,
            drop_rate=0.0,
            head_motion=False,
            blinks_per_minute=40.0,
            min_words=7,
            max_words=9,
            expression_drift=DRIFT,
        )
    )
    identities = sorted(p.name for p in (root / "ground_truth").iterdir())
    splits = folder / "splits.yaml"
    held_out = f"{identities[-1]}/SEN_03*"
    train = [f"{name}/SEN_0[12]*" for name in identities]
    train += [f"{name}/SEN_03*" for name in identities[:-1]]
    splits.write_text(yaml.safe_dump({"train": train, "val": [held_out]}))
    store_path = folder / "store"
    from meshtalk.pipelines.data.prep import run as prep

    prep(builtin_prep_config(root, store_path, splits=str(splits)))
    decay = max(1, LATENT_STEPS * 5 // 6)
    latent = LatentTrainingConfig(
        steps=LATENT_STEPS, batch_size=BATCH, frames=16, lr=LR, lr_decay_step=decay,
        upper_face_weight=UPPER_FACE_WEIGHT, decoder_weight_decay=1e-4, val_every=LATENT_STEPS,
        gumbel_warmup=GUMBEL_WARMUP,
        val_segments=1, checkpoint_every=LATENT_STEPS, log_every=LATENT_STEPS, data_workers=0,
    )  # fmt: skip
    for seed in LATENT_SEEDS:  # the next draw only if this one learnt nothing
        run_path = folder / f"run-seed{seed}"
        train_latent(
            TrainLatentConfig(
                data=store_path,
                output=run_path,
                model=latent_preset("tiny", heads=HEADS, audio_dropout=0.1, **LATENT_SIZES),
                training=replace(latent, seed=seed),
                device="cpu",
                progress=False,
            )
        )
        if learnt_both(run_path, store_path):
            break
    prior = PriorTrainingConfig(
        steps=PRIOR_STEPS, batch_size=4, frames=16, lr=1e-3,
        lr_decay_step=max(1, PRIOR_STEPS * 3 // 4), val_every=PRIOR_STEPS,
        checkpoint_every=PRIOR_STEPS, log_every=PRIOR_STEPS,
    )  # fmt: skip
    train_prior(
        TrainPriorConfig(
            latent=run_path,
            data=store_path,
            output=run_path,
            model=prior_preset("tiny", heads=HEADS),
            training=prior,
            device="cpu",
            progress=False,
        )
    )
    store = PreparedStore(store_path)
    speaker = identities[0]
    segments = {s.name[:6]: s for s in store.segments if s.identity == speaker}
    faces = read_mesh(root / "topology" / "template.ply").faces
    template = np.asarray(store.template(speaker), dtype=np.float32)
    original = folder / "original.npz"
    first, second = segments["SEN_01"], segments["SEN_02"]
    truth_1 = np.asarray(store.vertices(first), dtype=np.float32)
    np.savez(original, vertices=truth_1, template=template, fps=np.float64(30), faces=faces)
    speaker_template = folder / "speaker.ply"
    write_mesh(speaker_template, Mesh(vertices=template, faces=faces))
    landmarks = yaml.safe_load((root / "topology" / "landmarks.yaml").read_text())
    eyes = []
    for key in ("left_eyelid", "right_eyelid"):
        ids = landmarks[key]
        eyes.append((ids[: len(ids) // 2], ids[len(ids) // 2 :]))
    return {
        "folder": folder,
        "run": run_path,
        "original": original,
        "template": template,
        "faces": faces,
        "speaker_template": speaker_template,
        "speech_1": root / speaker / "audio" / f"{first.name}.wav",
        "speech_2": root / speaker / "audio" / f"{second.name}.wav",
        "truth_1": truth_1,
        "truth_2": np.asarray(store.vertices(second), dtype=np.float32),
        "lips": store.masks["mouth"] > 0.5,
        "upper": store.masks["upper_face"] > 0.5,
        "eyes": eyes,
    }


def vertices_of(folder: Path) -> np.ndarray:
    with np.load(folder / "animation.npz", allow_pickle=False) as archive:
        return archive["vertices"]


@pytest.fixture(scope="module")
def dubbed(world) -> dict:
    return make_dub(world)


def make_dub(world: dict) -> dict:
    """Sentence 1 dubbed with sentence 2's speech, and sentence 2 animated (3 takes)."""
    out = world["folder"] / "dubbed"
    result = dub(
        DubConfig(
            original=world["original"],
            speech=world["speech_2"],
            output=out,
            model=world["run"],
            device="cpu",
            video=False,
        )
    )
    animated = world["folder"] / "animated"
    animate(
        AnimateConfig(
            speech=world["speech_2"],
            template=world["speaker_template"],
            model=world["run"],
            output=animated,
            takes=3,
            device="cpu",
            video=False,
        )
    )
    takes = [vertices_of(animated / f"take_{i}") for i in range(3)]
    return {"out": out, "result": result, "vertices": vertices_of(out), "animated": takes}


def lve(prediction: np.ndarray, truth: np.ndarray, lips: np.ndarray) -> float:
    frames = min(len(prediction), len(truth))
    return lip_vertex_errors(
        torch.as_tensor(np.array(prediction[:frames])),  # copies: the arrays may be read-only
        torch.as_tensor(np.array(truth[:frames])),
        torch.as_tensor(np.array(lips)),
    )[0]


def closure(vertices: np.ndarray, template: np.ndarray, eyes) -> np.ndarray:
    """(T, V, 3) -> (T,) 1 - eyelid gap / neutral gap, averaged over both eyes (1: closed)."""
    values = []
    for upper, lower in eyes:
        gap = np.linalg.norm(vertices[:, upper].mean(1) - vertices[:, lower].mean(1), axis=-1)
        neutral = np.linalg.norm(template[upper].mean(0) - template[lower].mean(0))
        values.append(1 - gap / neutral)
    return np.mean(values, axis=0)


def blink_onsets(curve: np.ndarray) -> list[int]:
    onsets, closed = [], False
    for frame, value in enumerate(curve):
        if not closed and value >= CLOSED:
            onsets.append(frame)
            closed = True
        elif closed and value < REOPENED:
            closed = False
    return onsets


def upper_motion(vertices: np.ndarray, upper: np.ndarray) -> np.ndarray:
    """Upper-face positions about their mean over the frames, flattened."""
    part = vertices[:, upper].astype(np.float64)
    return (part - part.mean(axis=0)).ravel()


def test_the_dubbed_lips_follow_the_new_speech(world, dubbed):
    truth_2, lips = world["truth_2"], world["lips"]
    dubbed_error = lve(dubbed["vertices"], truth_2, lips)
    animate_error = float(np.mean([lve(take, truth_2, lips) for take in dubbed["animated"]]))
    static_error = lve(np.broadcast_to(world["template"], truth_2.shape), truth_2, lips)
    print(
        f"lips vs sentence 2: dub {dubbed_error:.3f}, animate {animate_error:.3f}, "
        f"template {static_error:.3f} (ratio dub/animate {dubbed_error / animate_error:.3f})"
    )
    assert dubbed_error <= 1.5 * animate_error
    # Lips that kept the original's motion (sentence 1) would not be this close to sentence 2.
    assert dubbed_error < 0.8 * static_error
    assert dubbed_error < lve(world["truth_1"], truth_2, lips)


def test_the_dub_keeps_the_originals_blinks(world, dubbed):
    template, eyes = world["template"], world["eyes"]
    original = blink_onsets(closure(world["truth_1"], template, eyes))
    frames = min(len(world["truth_1"]), len(dubbed["vertices"]))
    original = [onset for onset in original if onset < frames - 2]
    kept_onsets = blink_onsets(closure(dubbed["vertices"], template, eyes))
    kept = [onset for onset in original if any(abs(onset - k) <= 2 for k in kept_onsets)]
    print(f"blink onsets: original {original}, dub {kept_onsets}, kept {len(kept)}")
    assert len(original) >= 2  # the data blink often enough to measure
    assert len(kept) >= 0.8 * len(original)


def test_the_dub_keeps_the_originals_upper_face(world, dubbed):
    frames = min(len(world["truth_1"]), len(dubbed["vertices"]))
    original = upper_motion(world["truth_1"][:frames], world["upper"])
    dubbed_motion = upper_motion(dubbed["vertices"][:frames], world["upper"])
    other = upper_motion(world["truth_2"][:frames], world["upper"])
    correlation = float(np.corrcoef(original, dubbed_motion)[0, 1])
    print(f"upper face correlation with the original: {correlation:.3f}")
    assert correlation >= 0.8
    # The upper face of another sentence (its own blinks and brows) does not correlate so.
    assert float(np.corrcoef(original, other)[0, 1]) < 0.5


# --- the sampler's continuation, resampling, outputs and bad input --------------------------------


@pytest.mark.parametrize("known", [1, 5, 8, 37, 70])
def test_prime_continues_known_codes_as_if_they_had_been_drawn(known):
    """After `prime`, every logit `push` uses is the teacher-forced model's on the known codes
    followed by the drawn ones (receptive field 20 of the tiny prior: 70 primes from a window)."""
    torch.manual_seed(0)
    model = ContextModel(prior_preset("tiny")).eval()
    audio, codes = torch.randn(2, 90, 32), torch.randint(0, 16, (2, 90, 4))
    sampler = PriorSampler(model, batch=2, seed=1, record_logits=True)
    sampler.prime(codes[:, :known], audio[:, :known])
    drawn = sampler.push(audio[:, known:])
    full = torch.cat([codes[:, :known], drawn], dim=1)
    expected = model(F.one_hot(full, 16).float(), audio)[:, known:]
    torch.testing.assert_close(torch.stack(sampler.recorded, 1), expected, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="reset"):
        sampler.prime(codes[:, :1], audio[:, :1])


@pytest.mark.parametrize(("rate_in", "chunk"), [(60.0, 7), (24.0, 5), (25.0, 64)])
def test_resampling_in_chunks_interpolates_in_time(rate_in, chunk):
    from meshtalk.pipelines.inference.dub import _resampled

    frames = np.random.default_rng(0).normal(size=(53, 4, 3)).astype(np.float32)
    rows = (frames[i : i + 9] for i in range(0, len(frames), 9))
    got = np.concatenate(list(_resampled(rows, len(frames), rate_in, 30.0, chunk)))
    times = np.arange(len(got)) / 30.0
    assert times[-1] <= (len(frames) - 1) / rate_in < times[-1] + 1 / 30
    source = np.arange(len(frames)) / rate_in
    expected = np.stack(
        [np.interp(times, source, frames[:, v, c]) for v in range(4) for c in range(3)], -1
    ).reshape(len(got), 4, 3)
    np.testing.assert_allclose(got, expected, atol=1e-5)


def run_cli(world: dict, original: Path, speech: Path, out: Path, *options: str):
    args = ["dub", str(original), str(speech), "-o", str(out), "--model", str(world["run"])]
    return CliRunner().invoke(app, [*args, "--no-progress", "--device", "cpu", *options])


def test_dub_through_the_cli_continues_past_the_original_and_renders_the_comparison(world):
    import av

    folder = world["folder"]
    first, rate = soundfile.read(world["speech_1"], dtype="float32")
    second, _ = soundfile.read(world["speech_2"], dtype="float32")
    longer = folder / "longer.wav"
    soundfile.write(longer, np.concatenate([first, second[: rate // 2]]), rate)
    out = folder / "cli"
    result = run_cli(world, world["original"], longer, out, "--compare", "--size", "320x240")
    assert result.exit_code == 0, result.stderr
    with np.load(out / "animation.npz", allow_pickle=False) as archive:
        npz = {name: archive[name] for name in archive.files}
    assert {"vertices", "faces", "template", "fps", "codes", "audio", "provenance"} <= set(npz)
    provenance = json.loads(str(npz["provenance"]))
    total, original = len(npz["vertices"]), len(world["truth_1"])
    assert provenance["encoded_frames"] == original and provenance["argmax"] is True
    assert provenance["continued_frames"] == total - original >= 14
    assert npz["codes"].shape == (total, HEADS)
    np.testing.assert_array_equal(npz["template"], world["template"])
    assert np.isfinite(npz["vertices"]).all()
    # The continuation moves: the prior draws new codes after the original's end.
    assert len(np.unique(npz["codes"][original:], axis=0)) > 1
    assert (out / "animation.pc2").is_file() and (out / "template.ply").is_file()
    for video, width in (("animation.mp4", 320), ("compare.mp4", 320)):
        with av.open(str(out / video)) as container:
            stream = container.streams.video[0]
            assert stream.width == width and len(container.streams.audio) == 1
            assert sum(1 for _ in container.decode(video=0)) == total
    # The same again with a temperature: drawn codes, same length; a second time refused.
    again = run_cli(world, world["original"], longer, out, "--no-video")
    assert again.exit_code == 1 and "--force" in again.stderr
    drawn = run_cli(world, world["original"], longer, out, "--force", "--no-video",
                    "--temperature", "0.7", "--seed", "4")  # fmt: skip
    assert drawn.exit_code == 0, drawn.stderr
    with np.load(out / "animation.npz", allow_pickle=False) as archive:
        assert archive["codes"].shape == (total, HEADS)
        assert json.loads(str(archive["provenance"]))["temperature"] == 0.7
    assert not (out / "compare.mp4").exists()  # only this dub's files remain


def test_a_shorter_speech_ends_the_dub_and_another_frame_rate_is_resampled(world):
    folder = world["folder"]
    second, rate = soundfile.read(world["speech_2"], dtype="float32")
    short = folder / "short.wav"
    soundfile.write(short, second[:rate], rate)
    base = dub(DubConfig(original=world["original"], speech=short, output=folder / "short",
                         model=world["run"], device="cpu", video=False))  # fmt: skip
    assert base.frames == base.encoded_frames == 30 < base.original_frames
    # The same performance at 60 fps (midpoints between the frames): the same dub.
    truth = world["truth_1"]
    doubled = np.empty((2 * len(truth) - 1, *truth.shape[1:]), np.float32)
    doubled[0::2], doubled[1::2] = truth, (truth[:-1] + truth[1:]) / 2
    fast = folder / "original_60.npz"
    np.savez(fast, vertices=doubled, template=world["template"], fps=60, faces=world["faces"])
    resampled = dub(DubConfig(original=fast, speech=short, output=folder / "short_60",
                              model=world["run"], device="cpu", video=False))  # fmt: skip
    assert resampled.original_frames == len(truth)
    np.testing.assert_allclose(
        vertices_of(folder / "short_60"), vertices_of(folder / "short"), atol=1e-5
    )


def test_bad_inputs_are_one_line_errors_naming_the_file(world):
    folder = world["folder"] / "bad"
    folder.mkdir()
    truth, template, faces = world["truth_1"][:20], world["template"], world["faces"]
    cases = {
        "no_template.npz": dict(vertices=truth, fps=30),
        "no_fps.npz": dict(vertices=truth, template=template),
        "wrong_count.npz": dict(vertices=truth[:, :-1], template=template[:-1], fps=30),
        "bad_fps.npz": dict(vertices=truth, template=template, fps=-1.0),
        "flat.npz": dict(vertices=truth[:, :, :2], template=template, fps=30),
        "no_faces.npz": dict(vertices=truth, template=template, fps=30),
        "bad_faces.npz": dict(vertices=truth, template=template, fps=30, faces=faces + 10_000),
    }
    expected = {
        "no_template.npz": "has no template",
        "no_fps.npz": "has no fps",
        "wrong_count.npz": "the model's topology has",
        "bad_fps.npz": "fps must be one positive number",
        "flat.npz": "vertices must be (T, V, 3)",
        "no_faces.npz": "no faces",
        "bad_faces.npz": "faces index vertices outside",
    }
    for name, members in cases.items():
        np.savez(folder / name, **members)
    (folder / "not.npz").write_text("not an archive")
    expected["not.npz"] = "not a readable .npz archive"
    speech = world["speech_2"]
    for name, message in expected.items():
        result = run_cli(world, folder / name, speech, folder / f"out_{name}")
        assert result.exit_code == 1, name
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and str(folder / name) in lines[0], (name, result.stderr)
        assert message in lines[0], (name, lines[0])
        assert not (folder / f"out_{name}").exists()
    samples, rate = soundfile.read(speech, dtype="float32")
    audio_cases = {"blip.wav": samples[: rate // 100], "silent.wav": np.zeros(rate, np.float32)}
    messages = {"blip.wav": "shorter than one frame", "silent.wav": "silent"}
    for name, audio in audio_cases.items():
        soundfile.write(folder / name, audio, rate)
        result = run_cli(world, world["original"], folder / name, folder / f"out_{name}")
        assert result.exit_code == 1
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and str(folder / name) in lines[0] and messages[name] in lines[0]
    missing = run_cli(world, folder / "absent.npz", speech, folder / "out_absent")
    assert missing.exit_code == 1 and "original animation not found" in missing.stderr
    with pytest.raises(MeshtalkError, match="--temperature"):
        DubConfig(original=world["original"], speech=speech, output=folder, model=folder,
                  temperature=0.0)  # fmt: skip
    with pytest.raises(MeshtalkError, match="--compare"):
        DubConfig(original=world["original"], speech=speech, output=folder, model=folder,
                  compare=True, video=False)  # fmt: skip
    assert read_original(world["original"], len(template)).frames == len(world["truth_1"])
