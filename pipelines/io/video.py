"""H.264 video with an optional AAC speech track, written through PyAV (FFmpeg in the wheel).

No system ffmpeg is needed. The file appears under its final name only once it is complete: it is
written to a temporary name in the same folder and renamed at a successful close (removed when the
writing fails).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable, Iterator
from fractions import Fraction
from pathlib import Path
from types import TracebackType

import numpy as np

from meshtalk.pipelines.errors import MeshtalkError
from meshtalk.pipelines.io.atomic import atomic_path
from meshtalk.pipelines.io.owned import VIDEO_COMMENT

log = logging.getLogger(__name__)

AUDIO_FRAME_SAMPLES = 1024
"""Samples per AAC frame (what FFmpeg's AAC encoder takes at a time)."""

VIDEO_CODEC = "libx264"
VIDEO_OPTIONS = {"preset": "ultrafast", "crf": "20"}
"""x264 settings: `ultrafast` encodes a 640x480 face about twice as fast as `veryfast` (the
earlier setting) at a PSNR against the rendered frames as high or higher (a shaded face on a plain
background has little for the slower presets' tools to gain), in files about 2-5x larger (still
under 3 MB for a minute); CRF 20 leaves shading bands on a grey face invisible. Measured by
`benchmarks/animate.py` (the encoder rows)."""


def frame_rate(fps: float | Fraction) -> Fraction:
    """`fps` as an exact fraction (30 -> 30/1, 16000/533 = 30.0188 -> 16000/533)."""
    rate = Fraction(fps).limit_denominator(10_000)
    if rate <= 0:
        raise MeshtalkError(None, f"frame rate must be positive, got {fps}")
    return rate


class VideoWriter:
    """Writes RGB frames as H.264 (yuv420p) and, at close, the speech as an AAC track.

    Frame `i` is shown at `i / fps` s, so T frames make a video of exactly T / fps s. The audio
    track holds the given samples, so its duration is the speech's. The audio may come as blocks
    (an iterable of (n,) arrays, read as the track is encoded), so speech of any length costs no
    memory; a whole array is checked at once, blocks as they come.

    Args:
        path: the video file (.mp4, .mov or .mkv); its folder is made if missing.
        fps: frames per second (float or Fraction; e.g. 30 or 16000/533).
        size: (width, height) of every frame, both even (yuv420p halves the chroma).
        audio: (N,) mono float32 samples in [-1, 1], an iterable of (n,) blocks of them in
            order (e.g. `iter_rows(npz, "audio", 65536)`), or None for a silent video.
        audio_rate: sample rate of `audio` in Hz.
        threads: x264's threads (0: its own choice, about 1.5 per core).
        options: x264 settings (default `VIDEO_OPTIONS`).

    Use as a context manager; `write(frame)` for each frame. Leaving the block with an error
    removes the partial file.
    """

    def __init__(
        self,
        path: str | Path,
        fps: float | Fraction = 30,
        size: tuple[int, int] = (640, 480),
        audio: np.ndarray | Iterable[np.ndarray] | None = None,
        audio_rate: int = 16000,
        threads: int = 0,
        options: dict[str, str] | None = None,
    ) -> None:
        self.path = Path(path)
        self.threads = int(threads)
        self.options = dict(VIDEO_OPTIONS if options is None else options)
        self.fps = frame_rate(fps)
        self.size = (int(size[0]), int(size[1]))
        self.audio = audio
        if isinstance(audio, np.ndarray):
            self.audio = _check_audio(self.path, audio)
        self.audio_rate = int(audio_rate)
        self.frames_written = 0
        check_output(self.path, self.size)
        self._stack = contextlib.ExitStack()
        self._container = None
        self._video = None
        self._audio_stream = None
        self._open()

    def _open(self) -> None:
        import av

        tmp = self._stack.enter_context(atomic_path(self.path, suffix=self.path.suffix))
        try:
            options = (
                {"movflags": "+faststart"} if self.path.suffix.lower() in {".mp4", ".mov"} else {}
            )
            self._container = av.open(str(tmp), mode="w", options=options)
            self._container.metadata["comment"] = VIDEO_COMMENT  # what `--force` may replace
            video = self._container.add_stream(VIDEO_CODEC, rate=self.fps, options=self.options)
            video.codec_context.thread_count = self.threads
            video.width, video.height = self.size
            video.pix_fmt = "yuv420p"
            video.codec_context.time_base = 1 / self.fps
            self._video = video
            if self.audio is not None:
                stream = self._container.add_stream("aac", rate=self.audio_rate)
                stream.layout = "mono"
                stream.codec_context.time_base = Fraction(1, self.audio_rate)
                self._audio_stream = stream
        except BaseException as error:
            self._abort(error)
            if isinstance(error, av.FFmpegError):
                raise MeshtalkError(self.path, f"cannot write a video here ({error})") from None
            raise

    def write(self, frame: np.ndarray) -> None:
        """Append one (height, width, 3) uint8 RGB frame."""
        import av

        if frame.shape != (self.size[1], self.size[0], 3) or frame.dtype != np.uint8:
            raise ValueError(
                f"frame must be ({self.size[1]}, {self.size[0]}, 3) uint8, "
                f"got {frame.shape} {frame.dtype}"
            )
        picture = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
        picture.pts = self.frames_written
        picture.time_base = 1 / self.fps
        for packet in self._video.encode(picture):
            self._container.mux(packet)
        self.frames_written += 1

    def _write_audio(self) -> None:
        import av

        blocks = [self.audio] if isinstance(self.audio, np.ndarray) else self.audio
        start = 0
        for chunk in _audio_frames(self.path, blocks):
            frame = av.AudioFrame.from_ndarray(chunk[None, :], format="fltp", layout="mono")
            frame.sample_rate = self.audio_rate
            frame.pts = start
            frame.time_base = Fraction(1, self.audio_rate)
            for packet in self._audio_stream.encode(frame):
                self._container.mux(packet)
            start += len(chunk)
        for packet in self._audio_stream.encode(None):
            self._container.mux(packet)

    def close(self) -> None:
        """Finish both streams and move the file onto its final name."""
        if self._container is None:
            return
        try:
            if self.frames_written == 0:
                raise MeshtalkError(self.path, "no frames to write")
            for packet in self._video.encode(None):
                self._container.mux(packet)
            if self._audio_stream is not None:
                self._write_audio()
            self._container.close()
            self._container = None
        except BaseException as error:
            self._abort(error)
            raise
        self._stack.close()
        log.debug("wrote %s (%d frames)", self.path, self.frames_written)

    def _abort(self, error: BaseException) -> None:
        """Drop the partial file."""
        if self._container is not None:
            with contextlib.suppress(Exception):
                self._container.close()
            self._container = None
        self._stack.__exit__(type(error), error, error.__traceback__)

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if exc is None:
            self.close()
        elif self._container is not None:
            self._abort(exc)


def check_output(path: Path, size: tuple[int, int]) -> None:
    """A one-line error unless `path` can name a video of `size` (checked before any work)."""
    if path.is_dir():
        raise MeshtalkError(path, "is a folder; give the video file to write (e.g. out.mp4)")
    if path.suffix.lower() not in {".mp4", ".mov", ".mkv"}:
        raise MeshtalkError(path, "video must end in .mp4, .mov or .mkv")
    width, height = size
    if width < 16 or height < 16 or width % 2 or height % 2:
        raise MeshtalkError(
            path, f"video size must be even and at least 16x16, got {width}x{height}"
        )


def _audio_frames(path: Path, blocks: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
    """Blocks of audio regrouped into AAC frames of `AUDIO_FRAME_SAMPLES` (the last shorter),
    each block checked as it comes."""
    pending, total = np.zeros(0, dtype=np.float32), 0
    for block in blocks:
        block = np.asarray(block, dtype=np.float32)
        if block.ndim != 1:
            raise MeshtalkError(path, f"audio must be mono samples, got a block of {block.shape}")
        if not np.isfinite(block).all():
            raise MeshtalkError(path, "audio has NaN or infinite samples")
        total += block.size
        pending = np.concatenate([pending, block]) if pending.size else block
        whole = len(pending) - len(pending) % AUDIO_FRAME_SAMPLES
        for start in range(0, whole, AUDIO_FRAME_SAMPLES):
            yield np.ascontiguousarray(pending[start : start + AUDIO_FRAME_SAMPLES])
        pending = pending[whole:]
    if total == 0:
        raise MeshtalkError(path, "audio must be non-empty mono samples, got none")
    if pending.size:
        yield np.ascontiguousarray(pending)


def _check_audio(path: Path, audio: np.ndarray) -> np.ndarray:
    samples = np.asarray(audio, dtype=np.float32)
    if samples.ndim != 1 or samples.size == 0:
        raise MeshtalkError(
            path, f"audio must be non-empty mono samples, got shape {samples.shape}"
        )
    if not np.isfinite(samples).all():
        raise MeshtalkError(path, "audio has NaN or infinite samples")
    return np.ascontiguousarray(samples)
