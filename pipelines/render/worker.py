"""The video stage's own process: frames in through stdin, H.264 + AAC files out.

`python -m meshtalk.pipelines.render.worker` is started by `VideoStage` (`render/stage.py`). It
imports no torch and has its own interpreter lock, so drawing (moderngl holds the lock while
llvmpipe draws) never stalls the sampler's Python between its torch calls. Inside, the main thread
reads and draws frames and a second thread converts and encodes them (PyAV releases the lock while
swscale and x264 work), handing images over through a bounded queue.

Messages on stdin, each a 4-byte little-endian header length, a JSON header and `bytes` bytes of
payload:

- `start`: videos (paths), fps [numerator, denominator], size, audio_rate, samples, orientation
  (3x3 or null), faces [F, 3] and template [V, 3] (their int64 and float32 bytes are the payload,
  followed by (V, 3) float32 per-vertex colours when `colours` is true), encoder_threads;
- `frames`: shape [takes, n, V, 3], float32 frames of every take (one video per take);
- `finish`: audio, one animation npz per take whose `audio` member becomes the AAC track (null:
  silent). The videos are closed (renamed onto their names) and one JSON line answers on stdout:
  {"frames": n} or {"error": problem, "path": path or null}.

The end of stdin before `finish` (the parent stopped or failed) removes the partial videos.
"""

from __future__ import annotations

import json
import queue
import struct
import sys
import threading
from fractions import Fraction
from pathlib import Path

import numpy as np

HEADER = struct.Struct("<I")
QUEUE_IMAGES = 8
"""Images drawn ahead of the encoder (640x480: 7 MB)."""
AUDIO_ROWS = 1 << 16
"""Samples of the npz's audio read at a time."""


class LazyAudio:
    """The AAC track's samples, read from an npz named only at `finish` (blocks of it)."""

    def __init__(self) -> None:
        self.path: Path | None = None

    def __iter__(self):
        from meshtalk.pipelines.export.npz import iter_rows

        return iter_rows(self.path, "audio", AUDIO_ROWS)


def read_message(stream) -> tuple[dict, bytes] | None:
    """The next (header, payload) from `stream`, or None at its end."""
    raw = stream.read(HEADER.size)
    if len(raw) < HEADER.size:
        return None
    (length,) = HEADER.unpack(raw)
    header = json.loads(stream.read(length))
    payload = stream.read(header.get("bytes", 0))
    if len(payload) != header.get("bytes", 0):
        return None
    return header, payload


def encode_images(images: queue.Queue, writers, failure: list) -> None:
    """Write (take, image) pairs from `images` into `writers` until None comes."""
    while True:
        item = images.get()
        if item is None:
            return
        if failure:
            continue  # drain, so that the drawing thread never waits on a full queue
        take, image = item
        try:
            writers[take].write(image)
        except BaseException as error:  # handed to the main thread
            failure.append(error)


def serve(stdin, stdout) -> int:
    """Run the protocol; returns the exit status."""
    from meshtalk.pipelines.errors import MeshtalkError
    from meshtalk.pipelines.io.video import VideoWriter
    from meshtalk.pipelines.render.renderer import MeshRenderer

    message = read_message(stdin)
    if message is None or message[0].get("kind") != "start":
        return 1
    start, payload = message
    faces_shape, template_shape = start["faces"], start["template"]
    split = int(np.prod(faces_shape)) * 8
    faces = np.frombuffer(payload[:split], np.int64).reshape(faces_shape)
    end = split + int(np.prod(template_shape)) * 4
    template = np.frombuffer(payload[split:end], np.float32).reshape(template_shape)
    colours = frame_on = None
    if start.get("colours"):
        colours_end = end + int(np.prod(template_shape)) * 4
        colours = np.frombuffer(payload[end:colours_end], np.float32).reshape(template_shape)
        end = colours_end
    if start.get("frame_on"):
        frame_on = np.frombuffer(payload[end:], np.float32).reshape(start["frame_on"])
    fps = Fraction(*start["fps"])
    size = tuple(start["size"])
    audio = [LazyAudio() for _ in start["videos"]]
    writers, images, failure, frames = [], queue.Queue(QUEUE_IMAGES), [], 0
    encoder = threading.Thread(target=encode_images, args=(images, writers, failure))
    try:
        orientation = start["orientation"]
        renderer = MeshRenderer(
            faces,
            template,
            size=size,
            samples=start["samples"],
            orientation=None if orientation is None else np.asarray(orientation),
            frame_on=frame_on,
        )
        with renderer:
            for path, track in zip(start["videos"], audio):
                writers.append(
                    VideoWriter(
                        path,
                        fps=fps,
                        size=size,
                        audio=track if start["audio"] else None,
                        audio_rate=start["audio_rate"],
                        threads=start["encoder_threads"],
                    )
                )
            encoder.start()
            while True:
                message = read_message(stdin)
                if message is None:
                    raise EOFError
                header, payload = message
                if header["kind"] == "finish":
                    break
                chunk = np.frombuffer(payload, np.float32).reshape(header["shape"])
                for step in range(chunk.shape[1]):
                    for take in range(chunk.shape[0]):
                        images.put((take, renderer.render(chunk[take, step], colours)))
                    if failure:
                        raise failure[0]
                frames += chunk.shape[1]
        images.put(None)
        encoder.join()
        if failure:
            raise failure[0]
        for writer, track, npz in zip(writers, audio, header["audio"]):
            track.path = None if npz is None else Path(npz)
            writer.close()
    except MeshtalkError as error:
        _abort(writers, images, encoder, error)
        path = None if error.path is None else str(error.path)
        stdout.write(json.dumps({"error": error.problem, "path": path}) + "\n")
        return 1
    except EOFError as error:
        _abort(writers, images, encoder, error)
        return 1
    except BaseException as error:
        _abort(writers, images, encoder, error)
        raise
    stdout.write(json.dumps({"frames": frames}) + "\n")
    return 0


def _abort(writers, images: queue.Queue, encoder: threading.Thread, error: BaseException) -> None:
    """Stop the encoding thread and remove every partial video."""
    if encoder.is_alive():
        images.put(None)
        encoder.join()
    for writer in writers:
        writer.__exit__(type(error), error, error.__traceback__)


def main() -> None:
    import signal

    # An interrupt at the terminal reaches this process too: the parent decides (it closes the
    # pipe, and the partial videos go), so no second traceback.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    status = serve(sys.stdin.buffer, sys.stdout)
    sys.stdout.flush()
    raise SystemExit(status)


if __name__ == "__main__":
    main()
