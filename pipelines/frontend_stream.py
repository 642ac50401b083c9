"""Audio codes of an utterance too long to hold: read a range of samples at a time.

`stream_audio_codes` gives the codes of `AudioFrontEnd.audio_codes` chunk by chunk, each chunk
computed from only the samples its frames' windows span (a `SampleRange` of a `SpeechReader`), so
memory stays flat however long the speech. Loudness normalisation is a statistic of the whole
clip, given by the reader's first pass.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np

from meshtalk.pipelines.frontend import (
    CODE_CHUNK_FRAMES,
    MEL_CHUNK_FRAMES,
    PAD_SECONDS,
    WINDOW_BATCH,
    AudioFrontEnd,
)


def stream_audio_codes(
    front_end: AudioFrontEnd,
    audio_encoder,
    read: Callable[[int, int], np.ndarray],
    num_samples: int,
    level: float,
    chunk_frames: int | None = None,
) -> Iterator:
    """The audio codes of an utterance read a range at a time, `chunk_frames` frames at a time.

    Memory stays flat whatever the utterance's length: each chunk reads only the samples its
    frames' windows span. The chunks put together equal `AudioFrontEnd.audio_codes` of the
    whole utterance to float rounding.

    Args:
        audio_encoder: as for `AudioFrontEnd.audio_codes`.
        read: read(start, stop) gives the (stop - start,) float32 samples [start, stop) of
            the utterance at `sample_rate`, zeros outside [0, N) (e.g. a `SampleRange`);
            starts never decrease from call to call.
        num_samples: N, samples of the whole utterance.
        level: mean absolute amplitude of the whole utterance (loudness normalisation is a
            statistic of the whole clip; `SpeechScan.mean_abs`).
        chunk_frames: frames per chunk (None: `CODE_CHUNK_FRAMES`; a multiple of
            `WINDOW_BATCH` keeps the release framing's batches those of `audio_codes`).

    Yields:
        (1, n, code_dim) tensors on the encoder's device, for frames 0.. T-1 in order.
    """
    total = front_end.frame_count(num_samples)
    chunk_frames = CODE_CHUNK_FRAMES if chunk_frames is None else chunk_frames
    for first in range(0, total, chunk_frames):
        last = min(total, first + chunk_frames)
        yield audio_codes_between(front_end, audio_encoder, read, num_samples, level, first, last)


def audio_codes_between(
    front_end: AudioFrontEnd,
    audio_encoder,
    read: Callable[[int, int], np.ndarray],
    num_samples: int,
    level: float,
    first: int,
    last: int,
):
    """Audio codes of frames [first, last) of an utterance, from the samples they span.

    Equal to `audio_codes(audio_encoder, samples)[:, first:last]` to float rounding. See
    `stream_audio_codes` for the arguments.

    Returns:
        (1, last - first, code_dim) tensor on the encoder's device.
    """
    import torch

    front_end._check_encoder(audio_encoder)
    if not 0 <= first < last <= front_end.frame_count(num_samples):
        raise ValueError(
            f"frames [{first}, {last}) are not within the "
            f"{front_end.frame_count(num_samples)} frames of {num_samples} samples"
        )
    device = next(audio_encoder.parameters()).device
    with torch.no_grad():
        if front_end.framing == "release":
            step, width, pad = (
                front_end.step_samples,
                front_end.window_samples,
                front_end.release_pad,
            )
            segment = read(step * first - pad, step * (last - 1) + width - pad)
            windows = np.lib.stride_tricks.sliding_window_view(
                front_end.normalise(segment, level), width
            )[::step]
            batches = (
                front_end.log_mel(windows[i : i + WINDOW_BATCH]).transpose(0, 2, 1)
                for i in range(0, len(windows), WINDOW_BATCH)
            )
            codes = [audio_encoder(torch.from_numpy(b).to(device)[None]) for b in batches]
            return torch.cat(codes, dim=1)
        starts = front_end.mel_index(front_end._frame_times(first, last)) + front_end.mel_first
        mel_first, mel_last = int(starts[0]), int(starts[-1]) + front_end.window_frames
        mel = _utterance_mel_between(front_end, read, num_samples, level, mel_first, mel_last)
        return audio_encoder.encode_span(
            torch.from_numpy(mel).to(device)[None],
            torch.from_numpy(starts - mel_first).to(device)[None],
        )


def _utterance_mel_between(
    front_end: AudioFrontEnd, read, num_samples: int, level: float, first: int, last: int
) -> np.ndarray:
    """Mel frames [first, last) of `utterance_mel` of N samples, from the samples they span.

    Mel frame j covers [j * hop - n_fft / 2, j * hop + n_fft / 2) of the padded utterance
    (`PAD_SECONDS` of silence on both sides), reflected at its ends as `log_mel` does.
    """
    half, hop, n_fft = front_end.mel.n_fft // 2, front_end.mel.hop_length, front_end.mel.n_fft
    pad = round(PAD_SECONDS * front_end.sample_rate)
    length = num_samples + 2 * pad  # of the padded utterance
    low, high = first * hop - half, (last - 1) * hop - half + n_fft
    if low >= 0 and high <= length:
        segment = front_end.normalise(read(low - pad, high - pad), level)
    else:  # mirror what falls outside the padded utterance
        index = np.arange(low, high)
        index = np.where(index < 0, -index, index)
        index = np.where(index >= length, 2 * (length - 1) - index, index)
        start = int(index.min())
        segment = front_end.normalise(read(start - pad, int(index.max()) + 1 - pad), level)
        segment = segment[index - start]
    return front_end._framed_log_mel(segment[None], last - first, MEL_CHUNK_FRAMES)[0]
