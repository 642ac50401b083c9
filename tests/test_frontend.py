"""The audio front end: both framings against straightforward implementations of the spec."""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import torchaudio

from meshtalk.models.config import LatentModelConfig, MelConfig, latent_preset
from meshtalk.models.encoders import LatentEncoder
from meshtalk.pipelines.errors import MeshtalkError
from meshtalk.pipelines.frontend import AudioFrontEnd

OLD_RUN = Path(__file__).parent / "fixtures" / "run_v0"
RELEASE = AudioFrontEnd(framing="release")


def speech(seconds: float, seed: int = 0) -> np.ndarray:
    """Noise under a slow envelope, 16 kHz."""
    rng = np.random.default_rng(seed)
    n = round(seconds * 16000)
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 3 * np.arange(n) / 16000)
    return (0.2 * rng.normal(size=n) * envelope).astype(np.float32)


def centred_log_mel(signal: np.ndarray) -> np.ndarray:
    """(..., N) -> (..., M, 80): torchaudio's own centred, reflect-padded mel in one pass."""
    transform = torchaudio.transforms.MelSpectrogram(
        sample_rate=16000, n_fft=2048, win_length=800, hop_length=160, n_mels=80, power=2.0
    )
    power = transform(torch.from_numpy(np.ascontiguousarray(signal, dtype=np.float32)))
    return torch.log(power.clamp_min(1e-10)).transpose(-1, -2).numpy()


def release_windows_by_the_spec(samples: np.ndarray) -> np.ndarray:
    """SPEC 7b, literally: pad by 7733, 16000 samples from 533 * k, each window's own mel."""
    normalised = 0.01 * samples / np.abs(samples).mean()
    padded = np.pad(normalised, 7733)
    frames = len(range(8000, len(samples) + 15466 - 8000, 533))
    windows = np.stack([padded[533 * k : 533 * k + 16000] for k in range(frames)])
    return centred_log_mel(windows).transpose(0, 2, 1)  # (T, 80, 101)


def todays_utterance_mel(samples: np.ndarray, duration_s: float) -> np.ndarray:
    """The padded-utterance mel every store was prepared with before the front end existed."""
    pad, half = 8000, 1024
    total = max(samples.size, round(duration_s * 16000)) + 2 * pad
    padded = np.zeros(total + 2 * half, dtype=np.float32)
    padded[half + pad : half + pad + samples.size] = (
        0.01 * samples / float(np.abs(samples).mean())
    ).astype(np.float32)
    transform = torchaudio.transforms.MelSpectrogram(
        sample_rate=16000,
        n_fft=2048,
        win_length=800,
        hop_length=160,
        n_mels=80,
        power=2.0,
        center=False,
    )
    frames = 1 + total // 160
    mel = np.empty((frames, 80), dtype=np.float32)
    for first in range(0, frames, 3000):
        last = min(frames, first + 3000)
        power = transform(torch.from_numpy(padded[first * 160 : (last - 1) * 160 + 2048]))
        mel[first:last] = torch.log(power.clamp_min(1e-10)).T.numpy()
    return mel


def tiny_audio_encoder(seed: int = 0):
    torch.manual_seed(seed)
    config = latent_preset("tiny", num_vertices=8, audio_dropout=0.0, mel_mean=-9.0, mel_std=4.0)
    return LatentEncoder(config).audio_encoder.eval()


# --- the release's framing (SPEC 7b) ------------------------------------------------------------


@pytest.mark.parametrize("n", [535, 1000, 16000, 16533, 16534, 48017, 100_000])
def test_release_frame_count_and_times_are_the_spec_formula(n):
    frames = len(range(8000, n + 15466 - 8000, 533))
    assert RELEASE.frame_count(n) == frames >= 1
    np.testing.assert_array_equal(RELEASE.frame_times(n), 533 * np.arange(frames) / 16000)
    assert (RELEASE.release_pad, RELEASE.step_samples, RELEASE.window_samples) == (
        7733,
        533,
        16000,
    )


def test_release_windows_equal_the_spec_window_by_window():
    samples = speech(2.3)
    expected = release_windows_by_the_spec(samples)
    windows = RELEASE.windows(samples)
    assert windows.shape == expected.shape == (len(range(8000, samples.size + 7466, 533)), 80, 101)
    np.testing.assert_allclose(windows, expected, atol=1e-4)


@pytest.mark.parametrize("k", [0, 7, 40])
def test_release_window_k_is_centred_at_sample_267_plus_533k(k):
    """A click at original sample 267 + 533k is the middle mel frame of window k only."""
    samples = np.full(16000 * 2, 1e-6, np.float32)
    samples[267 + 533 * k] = 1.0
    loudness = RELEASE.windows(samples).max(axis=1)  # (T, 101) loudest band per mel frame
    assert loudness[k].argmax() == 50
    assert loudness[k + 1].argmax() == round((8000 - 533) / 160)  # 533 samples earlier
    assert RELEASE.frame_times(samples.size)[k] == pytest.approx(533 * k / 16000)


def test_release_codes_encode_each_window_and_batch_long_audio():
    """9 s: more frames than one batch of windows (256), every window encoded on its own."""
    encoder = tiny_audio_encoder()
    samples = speech(9.0, seed=1)
    codes = RELEASE.audio_codes(encoder, samples)
    assert codes.shape == (1, RELEASE.frame_count(samples.size), 32)
    assert codes.shape[1] > 256
    with torch.no_grad():
        expected = encoder(torch.from_numpy(release_windows_by_the_spec(samples))[None])
    torch.testing.assert_close(codes, expected, rtol=1e-4, atol=1e-4)


def test_release_framing_refuses_audio_without_a_frame():
    encoder = tiny_audio_encoder()
    too_short = np.full(534, 0.1, np.float32)
    message = "audio lasts 33.4 ms, shorter than one frame (535 samples with the release's"
    with pytest.raises(MeshtalkError, match=re.escape(message)):
        RELEASE.audio_codes(encoder, too_short)
    assert RELEASE.audio_codes(encoder, np.full(535, 0.1, np.float32)).shape[1] == 1


# --- true framing: what stores hold and training reads -------------------------------------------


def test_true_framing_reproduces_todays_stored_mel_and_windows_exactly():
    front_end = AudioFrontEnd()
    samples = speech(1.7)
    for duration in (1.7, 2.0):  # prep pads to the last frame's time when the audio is shorter
        np.testing.assert_array_equal(
            front_end.utterance_mel(samples, duration), todays_utterance_mel(samples, duration)
        )
    mel, starts = front_end.span(samples)
    expected_mel = todays_utterance_mel(samples, samples.size / 16000)
    np.testing.assert_array_equal(mel, expected_mel)
    frames = int(samples.size / 16000 * 30)
    expected_starts = np.rint((np.arange(frames) / 30 + 0.5) * 100).astype(np.int64) - 50
    np.testing.assert_array_equal(starts, expected_starts)
    expected = np.stack([expected_mel[s : s + 101].T for s in expected_starts])
    np.testing.assert_array_equal(front_end.windows(samples), expected)


def test_true_framing_codes_are_the_codes_of_its_windows():
    encoder = tiny_audio_encoder()
    samples = speech(1.3)
    front_end = AudioFrontEnd()
    codes = front_end.audio_codes(encoder, samples)
    with torch.no_grad():
        expected = encoder(torch.from_numpy(front_end.windows(samples))[None])
    torch.testing.assert_close(codes, expected, rtol=1e-4, atol=1e-5)


def test_the_paper_window_is_61_frames_from_500_ms_before():
    paper = AudioFrontEnd(window="paper")
    samples = speech(1.0)
    mel, starts = paper.span(samples)
    windows = paper.windows(samples)
    assert windows.shape == (30, 80, 61)
    np.testing.assert_array_equal(windows[4], mel[starts[4] : starts[4] + 61].T)
    assert starts[0] == 0 and paper.audio_window()["end_s"] == 0.1


def test_long_audio_in_chunks_equals_one_pass():
    front_end = AudioFrontEnd()
    samples = speech(6.0, seed=2)
    one_pass = todays_utterance_mel(samples, 6.0)  # itself one pass: 3000 frames > 700 here
    assert one_pass.shape[0] < 3000
    for chunk in (7, 250):
        np.testing.assert_allclose(
            front_end.utterance_mel(samples, chunk_frames=chunk), one_pass, atol=1e-4
        )
    windows = np.stack([samples[i * 3000 : i * 3000 + 16000] for i in range(5)])
    rows = np.stack([front_end.log_mel(row) for row in windows])
    np.testing.assert_allclose(front_end.log_mel(windows, chunk_frames=150), rows, atol=1e-4)
    np.testing.assert_allclose(rows, centred_log_mel(windows), atol=1e-4)


# --- saved forms ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "front_end",
    [
        AudioFrontEnd(),
        AudioFrontEnd(framing="release", mel_mean=-11.3, mel_std=8.5),
        AudioFrontEnd(window="paper", fps=25.0, loudness=0.02, mel=MelConfig(n_mels=40)),
    ],
)
def test_to_dict_from_dict_round_trip_through_json(front_end):
    values = json.loads(json.dumps(front_end.to_dict()))
    assert AudioFrontEnd.from_dict(values) == front_end
    assert AudioFrontEnd.from_component_config({"front_end": values}) == front_end


def test_a_config_written_before_the_front_end_gives_the_same_front_end():
    old = json.loads((OLD_RUN / "latent" / "encoder" / "config.json").read_text())
    assert "front_end" not in old
    front_end = AudioFrontEnd.from_component_config(old)
    assert front_end == AudioFrontEnd(mel_mean=-11.3336, mel_std=8.4766)
    new = {**old, "front_end": front_end.to_dict(), "audio_window": front_end.audio_window()}
    assert new["audio_window"] == old["audio_window"]
    assert AudioFrontEnd.from_component_config(new) == front_end
    model = LatentModelConfig.from_dict(old["model"], old["audio_window"]["mel_frames"])
    assert model.audio_window_frames == front_end.window_frames == 101


def test_a_manifest_written_before_the_front_end_gives_the_same_front_end():
    front_end = AudioFrontEnd(window="paper")
    old = {"fps": 30, "mel": MelConfig().__dict__, "audio_window": front_end.audio_window()}
    assert AudioFrontEnd.from_manifest(old) == front_end
    assert AudioFrontEnd.from_manifest({**old, "front_end": front_end.to_dict()}) == front_end


def test_a_store_and_its_stage1_config_carry_the_front_end(tiny_store):
    from meshtalk.pipelines.data.store import PreparedStore
    from meshtalk.pipelines.train.latent import component_config, fit_to_data

    store = PreparedStore(tiny_store)
    assert store.front_end == AudioFrontEnd()
    assert store.manifest["front_end"] == AudioFrontEnd().to_dict()
    model = fit_to_data(latent_preset("tiny"), store, tiny_store)
    assert model.audio_window_frames == store.front_end.window_frames
    config = json.loads(json.dumps(component_config(model, store, "encoder")))
    front_end = AudioFrontEnd.from_component_config(config)
    assert front_end == replace(store.front_end, mel_mean=model.mel_mean, mel_std=model.mel_std)
    assert config["audio_window"] == store.manifest["audio_window"]


# --- bad values ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"window": "wide"}, "window must be one of release, paper, got 'wide'"),
        ({"framing": "authors"}, "framing must be one of true, release, got 'authors'"),
        ({"loudness": 0}, "loudness must be a positive number, got 0"),
        ({"fps": -30}, "fps must be a number in (0, 1000], got -30"),
        ({"mel_mean": -11.0, "mel_std": 0.0}, "mel_std must be positive, got 0.0"),
        ({"mel_mean": 1.0}, "mel_mean and mel_std are set together, got 1.0 and None"),
        ({"mel_mean": float("nan"), "mel_std": 1.0}, "mel_mean must be a finite number or None"),
        ({"framing": "release", "window": "paper"}, "window 'paper' needs framing 'true'"),
        ({"mel": {"n_mels": 0}}, "mel.n_mels must be positive, got 0"),
        ({"mel": {"bands": 80}}, "mel: unknown key 'bands'"),
        ({"colour": "red"}, "front_end: unknown key 'colour'"),
    ],
)
def test_bad_values_are_one_error_quoting_them(values, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        AudioFrontEnd.from_dict(values)


def test_several_bad_values_are_named_in_one_error():
    with pytest.raises(ValueError, match="window must be .*; framing must be .*; fps must be"):
        AudioFrontEnd(window="wide", framing="authors", fps=0)


def test_an_audio_window_that_contradicts_the_front_end_is_refused():
    config = {"front_end": AudioFrontEnd().to_dict(), "audio_window": {"mel_frames": 61}}
    with pytest.raises(ValueError, match="audio_window.mel_frames is 61 where the front end"):
        AudioFrontEnd.from_component_config(config)
    with pytest.raises(ValueError, match="a store holds one mel per utterance"):
        AudioFrontEnd.from_manifest({"fps": 30, "front_end": RELEASE.to_dict()})


def test_an_encoder_of_another_window_is_refused():
    encoder = tiny_audio_encoder()
    with pytest.raises(ValueError, match="windows of 101 mel frames, the front end gives 61"):
        AudioFrontEnd(window="paper").audio_codes(encoder, speech(1.0))
    with pytest.raises(ValueError, match="needs framing 'true'"):
        RELEASE.span(speech(1.0))
