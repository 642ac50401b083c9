"""Videos rendered and encoded while the frames are still being made: a stage in its own process.

`VideoStage` starts `render/worker.py` in a child process (no torch in it; its own interpreter
lock) and hands it the frames of every take as they come; it draws and encodes them beside the
sampler. The pipe between them holds about one chunk (`PIPE_BYTES`), so a slow video holds up the
frames' producer instead of piling up memory. `finish` names each take's npz (the AAC track is
read from its `audio`) and waits for the videos to be complete under their names.

Thread budgets (2 cores): torch samples with one thread in the parent (its OpenMP team spins at
barriers, so a second thread there loses whenever another thread takes its core), while here
llvmpipe draws with `DRAW_THREADS` rasteriser threads and x264 picks its own (both wait on
condition variables, not spinning, so threads beyond the cores cost little and fill whatever the
sampler leaves). Measured with 960 frames of release-size faces, load average 10-12 from other
jobs: 2 draw threads and x264's own 77-78 frames/s at 11.3 ms of CPU a frame, 1 and 1 31-33
frames/s at 11.9-12.3 ms.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import subprocess
import sys
import threading
from fractions import Fraction
from pathlib import Path

import numpy as np

from meshtalk.pipelines.errors import MeshtalkError
from meshtalk.pipelines.render.worker import HEADER

DRAW_THREADS = 2
"""llvmpipe's rasteriser threads in the video process (LP_NUM_THREADS)."""
ENCODER_THREADS = 0
"""x264's threads in the video process (0: its own choice, about 1.5 a core)."""
PIPE_BYTES = 1 << 20
"""The pipe to the video process (Linux lets an unprivileged process ask for up to 1 MiB)."""
F_SETPIPE_SZ = 1031


class VideoStage:
    """Renders and encodes one video per take in a child process, fed frame chunks.

    Args:
        videos: the video file of each take (written atomically by the child).
        faces: (F, 3) triangles; template: (V, 3), the camera is framed on it.
        fps: frames per second; audio_rate: the npz's audio rate (Hz).
        size: (width, height); orientation: the face's (3, 3) rotation, or None.
        audio: whether the videos get an AAC track (from each take's npz at `finish`).
        colours: (V, 3) per-vertex colours in [0, 1] (`render/colours.py`), or None: plain.
        frame_on: (N, 3) points the camera is framed on instead of the template (the face of a
            whole head), or None.
    """

    def __init__(
        self,
        videos: list[Path],
        faces: np.ndarray,
        template: np.ndarray,
        *,
        fps: Fraction,
        audio_rate: int,
        size: tuple[int, int],
        orientation: np.ndarray | None = None,
        audio: bool = True,
        samples: int = 0,
        colours: np.ndarray | None = None,
        frame_on: np.ndarray | None = None,
    ) -> None:
        self.videos = [Path(video) for video in videos]
        environment = dict(os.environ, LP_NUM_THREADS=str(DRAW_THREADS))
        self.process = subprocess.Popen(
            [sys.executable, "-m", "meshtalk.pipelines.render.worker"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=environment,
        )
        with contextlib.suppress(OSError):  # a smaller pipe works too, with more waits
            fcntl.fcntl(self.process.stdin.fileno(), F_SETPIPE_SZ, PIPE_BYTES)
        self.frames, self.lock = 0, threading.Lock()
        faces = np.ascontiguousarray(faces, dtype=np.int64)
        template = np.ascontiguousarray(template, dtype=np.float32)
        fps = Fraction(fps).limit_denominator(10_000)
        paint = b"" if colours is None else np.ascontiguousarray(colours, np.float32).tobytes()
        if frame_on is not None:
            frame_on = np.ascontiguousarray(frame_on, dtype=np.float32).reshape(-1, 3)
            paint += frame_on.tobytes()
        self._send(
            {
                "kind": "start",
                "videos": [str(video) for video in self.videos],
                "fps": [fps.numerator, fps.denominator],
                "size": [int(size[0]), int(size[1])],
                "audio_rate": int(audio_rate),
                "audio": bool(audio),
                "samples": int(samples),
                "orientation": None if orientation is None else np.asarray(orientation).tolist(),
                "faces": list(faces.shape),
                "template": list(template.shape),
                "colours": colours is not None,
                "frame_on": None if frame_on is None else list(frame_on.shape),
                "encoder_threads": ENCODER_THREADS,
            },
            faces.tobytes() + template.tobytes() + paint,
        )

    def write(self, takes: list[np.ndarray]) -> None:
        """(n, V, 3) new frames of every take (the same n), in order."""
        if not len(takes) or not len(takes[0]):
            return
        chunk = np.ascontiguousarray(np.stack(takes), dtype=np.float32)
        self._send({"kind": "frames", "shape": list(chunk.shape)}, chunk)
        self.frames += chunk.shape[1]

    def finish(self, npz_files: list[Path | None]) -> int:
        """Close the videos (their tracks read from each take's npz `audio`); the frames written."""
        self._send({"kind": "finish", "audio": [None if f is None else str(f) for f in npz_files]})
        self.process.stdin.close()
        answer = self.process.stdout.read()
        status = self.process.wait()
        self._raise(answer, status)
        return int(json.loads(answer)["frames"])

    def abort(self) -> None:
        """Stop the child; it removes its partial videos."""
        if self.process.poll() is None:
            with contextlib.suppress(OSError):
                self.process.stdin.close()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        with contextlib.suppress(OSError):
            self.process.stdout.close()

    def _send(self, header: dict, payload=b"") -> None:
        data = memoryview(payload).cast("B")
        text = json.dumps({**header, "bytes": data.nbytes}).encode()
        try:
            with self.lock:
                self.process.stdin.write(HEADER.pack(len(text)) + text)
                self.process.stdin.write(data)
                self.process.stdin.flush()
        except BrokenPipeError:  # the child stopped: say why
            answer = self.process.stdout.read()
            self._raise(answer, self.process.wait())
            raise

    def _raise(self, answer: bytes, status: int) -> None:
        if status == 0:
            return
        try:
            failure = json.loads(answer.decode().strip().splitlines()[-1])
            problem, path = failure["error"], failure["path"]
        except (ValueError, IndexError, KeyError, TypeError):
            raise RuntimeError(
                f"the video process failed with exit status {status} (its traceback is above)"
            ) from None
        raise MeshtalkError(path, problem)

    def __enter__(self) -> VideoStage:
        return self

    def __exit__(self, kind, error, trace) -> None:
        if kind is not None:
            self.abort()
