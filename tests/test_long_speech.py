"""Speech of any length in flat memory: block-wise reading and resampling, streamed audio codes,
animate reading its speech in blocks (issue #28)."""

from __future__ import annotations

import re
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
import torchaudio.functional as F

from meshtalk.models.config import MelConfig
from meshtalk.models.sampler import PriorSampler
from meshtalk.pipelines.checkpoint import load_run
from meshtalk.pipelines.errors import MeshtalkError
from meshtalk.pipelines.export.npz import NpzWriter, Rows
from meshtalk.pipelines.frontend import AudioFrontEnd
from meshtalk.pipelines.frontend_stream import stream_audio_codes
from meshtalk.pipelines.inference.animate import AnimateConfig, animate
from meshtalk.pipelines.io import audio as audio_module
from meshtalk.pipelines.io.audio import SampleRange, SpeechReader, load_audio, read_audio
from meshtalk.pipelines.io.video import VideoWriter
from tests.test_animate import arrays, inputs  # noqa: F401 (the fixture)
from tests.test_frontend import speech, tiny_audio_encoder


def stereo_file(path: Path, rate: int, n: int, seed: int = 0, subtype: str = "FLOAT") -> Path:
    """(n, 2) noise under a slow envelope, the second channel half the first plus a tone."""
    rng = np.random.default_rng(seed)
    t = np.arange(n) / rate
    left = 0.2 * rng.normal(size=n) * (0.5 + 0.5 * np.sin(2 * np.pi * 3 * t))
    right = 0.5 * left + 0.05 * np.sin(2 * np.pi * 440 * t)
    soundfile.write(path, np.stack([left, right], axis=1).astype(np.float32), rate, subtype=subtype)
    return path


def blocks_of(signal: np.ndarray, size: int) -> list[np.ndarray]:
    return [signal[i : i + size] for i in range(0, signal.size, size)]


# --- block-wise reading and resampling ----------------------------------------------------------


@pytest.mark.parametrize("rate", [44100, 22050, 48000, 8000, 16000])
@pytest.mark.parametrize("n", [3, 4410, 30_013])
def test_block_wise_resampling_equals_torchaudio_on_the_whole_signal(tmp_path, rate, n):
    """Blocks of 0.05 s (not a divisor of the length), both channel modes."""
    path = stereo_file(tmp_path / "speech.wav", rate, n)
    whole, _ = soundfile.read(path, dtype="float32", always_2d=True)
    for channel, mono in ((None, whole.mean(axis=1, dtype=np.float32)), (1, whole[:, 1])):
        expected = F.resample(torch.from_numpy(np.ascontiguousarray(mono)), rate, 16000).numpy()
        reader = SpeechReader(path, 16000, channel, block_seconds=0.05)
        blocks = list(reader.blocks())
        assert len(blocks) == -(-expected.size // (reader.block * 16000 // rate))
        got = np.concatenate(blocks)
        assert got.shape == expected.shape and got.dtype == np.float32
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)  # samples up to ~0.8
        if rate == 16000:  # nothing to resample: the file's samples themselves
            np.testing.assert_array_equal(got, load_audio(path, 16000, channel))
        scan = reader.scan()
        assert scan.samples == expected.size and scan.nonzero
        assert scan.abs_sum == pytest.approx(np.abs(expected.astype(np.float64)).sum(), rel=1e-6)
        assert (scan.source_rate, scan.channels) == (rate, 2)


def test_the_reader_refuses_what_read_audio_refuses_with_the_same_message(tmp_path):
    rate = 22050
    nan = np.full((500, 1), 0.1, np.float32)
    nan[400] = np.nan
    soundfile.write(tmp_path / "nan.wav", nan, rate, subtype="FLOAT")
    t = np.arange(rate) / rate
    tone = (0.3 * np.sin(2 * np.pi * 200 * t)).astype(np.float32)
    soundfile.write(tmp_path / "cancel.wav", np.stack([tone, -tone], axis=1), rate)
    soundfile.write(tmp_path / "empty.wav", np.zeros((0, 1), np.float32), rate)
    (tmp_path / "text.wav").write_text("not audio")
    cases = [
        ("missing.wav", None, "audio file not found"),
        ("text.wav", None, "not a readable audio file"),
        ("empty.wav", None, "holds no samples"),
        ("nan.wav", None, "NaN or infinite"),
        ("cancel.wav", 2, "has 2 channel(s): no channel 2 (0 is the first)"),
        ("cancel.wav", None, "channels cancel; use --channel"),
    ]
    for name, channel, problem in cases:
        path = tmp_path / name
        with pytest.raises(MeshtalkError) as whole:
            read_audio(path, channel)
        with pytest.raises(MeshtalkError) as blocks:
            SpeechReader(path, 16000, channel, block_seconds=0.01).scan()
        assert problem in str(blocks.value) and str(blocks.value) == str(whole.value)
        assert blocks.value.path == path
    scan = SpeechReader(tmp_path / "cancel.wav", 16000, channel=1).scan()  # one channel is fine
    assert scan.samples == 16000 and scan.nonzero


def test_a_sample_range_serves_overlapping_ranges_moving_forward():
    signal = speech(1.0)
    read = SampleRange(blocks_of(signal, 777), signal.size)
    padded = np.pad(signal, 5000)
    for start, stop in [(-5000, 10), (-3, 4000), (100, 100), (2000, 9000), (8999, 16000),
                        (15000, 21000), (16000, 16010), (20000, 20005)]:  # fmt: skip
        np.testing.assert_array_equal(read(start, stop), padded[start + 5000 : stop + 5000])
    read = SampleRange(blocks_of(signal, 777), signal.size)
    read(5000, 6000)
    with pytest.raises(ValueError, match="starts before 5000"):
        read(4999, 6000)
    with pytest.raises(ValueError, match="blocks end at sample 777 of 2000"):
        SampleRange(blocks_of(signal[:777], 777), 2000)(0, 1000)


# --- streamed audio codes -------------------------------------------------------------------------


FRONT_ENDS = {
    "true": AudioFrontEnd(),
    "release": AudioFrontEnd(framing="release"),
    # A 20000-sample FFT reaches past the 0.5 s of silence padding: its margins are mirrored.
    "true, wide FFT": AudioFrontEnd(mel=MelConfig(n_fft=20000)),
}


@pytest.mark.parametrize("name", list(FRONT_ENDS))
@pytest.mark.parametrize("seconds", [0.2, 5.0])
def test_streamed_codes_equal_the_whole_clips(name, seconds):
    front_end, encoder = FRONT_ENDS[name], tiny_audio_encoder()
    samples = speech(seconds, seed=3)
    whole = front_end.audio_codes(encoder, samples)
    level = float(np.abs(samples.astype(np.float64)).sum()) / samples.size
    for chunk, block in ((7, 333), (64, 16000)):
        read = SampleRange(blocks_of(samples, block), samples.size)
        parts = list(stream_audio_codes(front_end, encoder, read, samples.size, level, chunk))
        assert all(part.shape[1] == chunk for part in parts[:-1])
        torch.testing.assert_close(torch.cat(parts, dim=1), whole, rtol=1e-5, atol=1e-6)


def test_the_check_from_a_pass_says_what_check_waveform_says():
    release = AudioFrontEnd(framing="release")
    for front_end, samples in [
        (AudioFrontEnd(), np.zeros(0, np.float32)),
        (AudioFrontEnd(), np.full(500, 0.1, np.float32)),
        (release, np.full(534, 0.1, np.float32)),
        (AudioFrontEnd(), np.zeros(16000, np.float32)),
    ]:
        with pytest.raises(MeshtalkError) as whole:
            front_end.check_waveform(samples)
        with pytest.raises(MeshtalkError) as figures:
            front_end.check_length(samples.size, bool(np.any(samples)))
        assert str(figures.value) == str(whole.value)
    assert release.check_length(16000, True) == release.check_waveform(speech(1.0)) == 30


def test_the_audio_path_holds_a_few_seconds_whatever_the_length(tmp_path):
    """tracemalloc's peak (numpy's buffers) while scanning and encoding 10 s and 100 s of speech
    at 22.05 kHz: flat, and far below the clip's own 16 kHz float32 samples (6.4 MB)."""
    encoder, front_end = tiny_audio_encoder(), AudioFrontEnd()
    peaks = {}
    for seconds in (10, 100):
        path = stereo_file(tmp_path / f"{seconds}.wav", 22050, seconds * 22050, subtype="PCM_16")
        tracemalloc.start()
        reader = SpeechReader(path, 16000, block_seconds=0.25)
        scan = reader.scan()
        frames = sum(
            part.shape[1]
            for part in stream_audio_codes(
                front_end,
                encoder,
                reader.sample_range(),
                scan.samples,
                scan.mean_abs,
                chunk_frames=32,
            )
        )
        peaks[seconds] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert frames == front_end.frame_count(seconds * 16000)
    assert peaks[100] < 1.3 * peaks[10]
    assert peaks[100] < 100 * 16000 * 4 / 4


# --- writers that take the speech in blocks -------------------------------------------------------


def test_npz_rows_and_video_audio_blocks_give_what_whole_arrays_give(tmp_path):
    import av

    samples = speech(1.3)
    with NpzWriter(tmp_path / "a.npz") as npz:
        npz.add_rows("audio", Rows((samples.size,), np.float32, blocks_of(samples, 1000)))
    np.testing.assert_array_equal(np.load(tmp_path / "a.npz")["audio"], samples)
    frame = np.full((32, 32, 3), 128, np.uint8)
    decoded = []
    for name, audio in (("whole.mp4", samples), ("blocks.mp4", iter(blocks_of(samples, 3001)))):
        with VideoWriter(tmp_path / name, fps=30, size=(32, 32), audio=audio) as writer:
            for _ in range(39):
                writer.write(frame)
        with av.open(str(tmp_path / name)) as container:
            decoded.append(np.concatenate([f.to_ndarray()[0] for f in container.decode(audio=0)]))
    assert decoded[0].size >= samples.size
    np.testing.assert_array_equal(decoded[0], decoded[1])
    bad = blocks_of(samples, 4000)
    bad[2] = bad[2].copy()
    bad[2][5] = np.inf
    message = re.escape("audio has NaN or infinite samples")
    with (
        pytest.raises(MeshtalkError, match=message),
        VideoWriter(tmp_path / "bad.mp4", fps=30, size=(32, 32), audio=iter(bad)) as writer,
    ):
        writer.write(frame)
    assert not (tmp_path / "bad.mp4").exists()


# --- animate --------------------------------------------------------------------------------------


def test_animate_reading_in_blocks_gives_the_whole_clips_animation(inputs, tmp_path, monkeypatch):  # noqa: F811
    """Blocks of 0.05 s and audio codes 7 frames at a time against today's computation of the
    whole clip (load_audio, audio_codes of every frame, the sampler over chunks of 5 frames)."""
    monkeypatch.setattr(audio_module, "READ_BLOCK_SECONDS", 0.05)
    monkeypatch.setattr("meshtalk.pipelines.frontend.CODE_CHUNK_FRAMES", 7)
    run = load_run(inputs["run"], torch.device("cpu"))
    for channel in (None, 1):
        config = AnimateConfig(
            speech=inputs["speech"],
            template=inputs["template"],
            model=inputs["run"],
            output=tmp_path / f"channel_{channel}",
            channel=channel,
            seed=5,
            chunk_frames=5,
            video=channel is None,
            device="cpu",
        )
        result = animate(config)
        got = arrays(result.output / "animation.npz")
        samples = load_audio(inputs["speech"], 16000, channel)
        with torch.inference_mode():
            audio_codes = run.front_end.audio_codes(run.latent.encoder.audio_encoder, samples)
            sampler = PriorSampler(run.prior, seed=5)
            expected = torch.cat(
                [sampler.push(audio_codes[:, i : i + 5]) for i in range(0, result.frames, 5)], 1
            )
        assert result.frames == audio_codes.shape[1] == len(got["codes"]) > 7
        np.testing.assert_array_equal(got["codes"], expected[0].numpy())
        assert got["audio"].dtype == np.float32 and got["audio"].shape == samples.shape
        np.testing.assert_allclose(got["audio"], samples, rtol=0, atol=1e-6)
        np.testing.assert_array_equal(got["frame_times"], run.front_end.frame_times(samples.size))
        assert result.seconds["audio_codes"] > 0
    with pytest.raises(MeshtalkError, match="--channel must be 0 or more"):
        AnimateConfig(speech=inputs["speech"], output=tmp_path / "x", channel=-1)


def test_the_heap_bound_is_set_where_glibc_runs():
    """animate fixes glibc's mmap threshold (the 120-minute run grew to 2.2 GB without it)."""
    import platform

    from meshtalk.pipelines.io.heap import bound_heap

    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        pytest.skip("the bound is glibc's")
    assert bound_heap() is True


def test_release_pages_hands_back_mapped_weights_and_keeps_their_values(tmp_path):
    """The float prior and the template encoder, read once, leave animate's resident memory."""
    import platform

    from safetensors.torch import load_file, save_file

    from meshtalk.pipelines.io.heap import release_pages

    if platform.system() != "Linux":
        pytest.skip("madvise(MADV_PAGEOUT) is Linux's")
    mounts = [line.split()[1:3] for line in Path("/proc/mounts").read_text().splitlines()]
    under = [(point, kind) for point, kind in mounts if tmp_path.is_relative_to(point)]
    if max(under, key=lambda m: len(m[0]))[1] in ("tmpfs", "ramfs"):
        pytest.skip("a file in memory (tmpfs) has no clean pages to hand back")
    path = tmp_path / "model.safetensors"
    save_file({"weight": torch.randn(4096, 4096)}, str(path))  # 64 MiB
    weight = load_file(str(path))["weight"]  # mapped from the file, as load_run maps weights
    expected = float(weight.double().sum())  # reads every page

    def resident() -> int:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) << 10
        raise AssertionError("no VmRSS")

    before = resident()
    advised = release_pages([weight, weight[1:]])  # one storage, advised once
    if advised == 0:
        pytest.skip("a kernel without MADV_PAGEOUT")
    assert 63 << 20 <= advised <= 64 << 20
    assert resident() < before - (48 << 20)
    assert float(weight.double().sum()) == expected  # read again from the file
    assert release_pages([torch.zeros(3)]) == 0  # under a page: nothing whole to hand back
