"""PC2 point caches: the vertex animation format of Blender's Mesh Cache modifier, Maya and 3ds Max.

Layout (little-endian): the 12 bytes 'POINTCACHE2\\0', int32 version (1), int32 number of points,
float32 start frame, float32 sample rate (frames between samples), int32 number of samples, then
every sample's points as float32 x, y, z.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from meshtalk.pipelines.errors import MeshtalkError

SIGNATURE = b"POINTCACHE2\0"
HEADER = struct.Struct("<12siiffi")
"""signature, version, points, start frame, sample rate, samples."""


@dataclass(frozen=True)
class PC2Header:
    points: int
    """Vertices per sample."""
    samples: int
    """Frames in the cache."""
    start_frame: float = 0.0
    """Frame of the first sample."""
    sample_rate: float = 1.0
    """Frames between samples (1: one sample per frame)."""


class PC2Writer:
    """Write a PC2 file frame by frame; the number of frames is given up front.

    Args:
        path: the file to write (the caller makes it atomic).
        header: points, samples and timing.
        scale: every coordinate is multiplied by it (e.g. 0.001: millimetres to metres).
    """

    def __init__(self, path: str | Path, header: PC2Header, scale: float = 1.0) -> None:
        self.path, self.header, self.scale = Path(path), header, scale
        self.handle = open(self.path, "wb")  # noqa: SIM115 (closed by `close`)
        self.handle.write(
            HEADER.pack(
                SIGNATURE,
                1,
                header.points,
                header.start_frame,
                header.sample_rate,
                header.samples,
            )
        )
        self.written = 0

    def write(self, frames: np.ndarray) -> None:
        """Append (n, points, 3) frames."""
        frames = np.asarray(frames)
        if frames.shape[1:] != (self.header.points, 3):
            raise ValueError(
                f"frames of shape {frames.shape}, expected (n, {self.header.points}, 3)"
            )
        if self.written + len(frames) > self.header.samples:
            raise ValueError(f"more than the {self.header.samples} frames announced")
        scaled = frames * self.scale if self.scale != 1.0 else frames
        self.handle.write(memoryview(np.ascontiguousarray(scaled, dtype="<f4")).cast("B"))
        self.written += len(frames)

    def copy_frames(self, source: str | Path, offset: int, count: int) -> None:
        """Append `count` frames stored as little-endian float32 at byte `offset` of `source` (an
        npz's stored member), copied by the kernel (`os.copy_file_range`) without passing through
        Python: only when the scale is 1."""
        import os

        if self.scale != 1.0:
            raise ValueError("copy_frames copies the bytes as they are: the scale must be 1")
        if self.written + count > self.header.samples:
            raise ValueError(f"more than the {self.header.samples} frames announced")
        left = count * self.header.points * 12
        self.handle.flush()
        with open(source, "rb") as src:
            where = offset
            try:
                while left > 0:
                    done = os.copy_file_range(src.fileno(), self.handle.fileno(), left, where)
                    if done == 0:
                        raise ValueError(f"{source} ended before its frames")
                    where, left = where + done, left - done
            except OSError:  # a file system without it: copy through a buffer
                src.seek(where)
                self.handle.seek(0, os.SEEK_END)
                while left > 0:
                    block = src.read(min(left, 1 << 22))
                    if not block:
                        raise ValueError(f"{source} ended before its frames") from None
                    self.handle.write(block)
                    left -= len(block)
        self.handle.seek(0, os.SEEK_END)
        self.written += count

    def close(self) -> None:
        self.handle.close()
        if self.written != self.header.samples:
            raise ValueError(
                f"{self.written} frames written of the {self.header.samples} announced"
            )

    def __enter__(self) -> PC2Writer:
        return self

    def __exit__(self, *exc) -> None:
        if exc[0] is None:
            self.close()
        else:
            self.handle.close()


def read_pc2_header(path: str | Path) -> PC2Header:
    """The header of a PC2 file, checked against its size."""
    path = Path(path)
    with open(path, "rb") as handle:
        raw = handle.read(HEADER.size)
    if len(raw) < HEADER.size:
        raise MeshtalkError(path, "not a PC2 file (shorter than its header)")
    signature, version, points, start, rate, samples = HEADER.unpack(raw)
    if signature != SIGNATURE or version != 1:
        raise MeshtalkError(path, "not a PC2 file (no POINTCACHE2 version-1 header)")
    expected = HEADER.size + 12 * points * samples
    if points < 0 or samples < 0 or path.stat().st_size != expected:
        raise MeshtalkError(
            path, f"is {path.stat().st_size} bytes; its header ({points} points x {samples} "
            f"samples) says {expected}"
        )  # fmt: skip
    return PC2Header(points=points, samples=samples, start_frame=start, sample_rate=rate)


def read_pc2(path: str | Path) -> tuple[PC2Header, np.ndarray]:
    """(header, (samples, points, 3) float32 frames) of a PC2 file."""
    header = read_pc2_header(path)
    frames = np.fromfile(path, dtype="<f4", offset=HEADER.size)
    return header, frames.reshape(header.samples, header.points, 3)
