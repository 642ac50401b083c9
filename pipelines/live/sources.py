"""Where `meshtalk stream` hears speech: a file at real time, raw PCM on stdin, the microphone.

(The page's microphone arrives over the WebSocket: `stream.py`.) Each source runs in its own
thread and calls `put(samples)` with float32 mono 16 kHz chunks as they become available, then
`put(None)` at the end.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from meshtalk.pipelines.errors import MeshtalkError
from meshtalk.pipelines.live.engine import SAMPLE_RATE
from meshtalk.pipelines.live.protocol import pcm16

CHUNK_SECONDS = 0.02
"""A file is released 20 ms at a time, each when its last sample's time has come."""

Put = Callable[[np.ndarray | None], None]


class FileSource:
    """A speech file (any format and rate soundfile reads) played at real time."""

    def __init__(self, path: Path, channel: int | None = None) -> None:
        from meshtalk.pipelines.io.audio import SpeechReader

        self.reader = SpeechReader(path, SAMPLE_RATE, channel)
        self.reader.scan()  # refuse a bad file before serving anything
        self.stop = threading.Event()

    def start(self, put: Put) -> threading.Thread:
        thread = threading.Thread(target=self._play, args=(put,), name="file source", daemon=True)
        thread.start()
        return thread

    def _play(self, put: Put) -> None:
        step = int(CHUNK_SECONDS * SAMPLE_RATE)
        started, sent = time.monotonic(), 0
        for block in self.reader.blocks():
            for first in range(0, block.size, step):
                chunk = block[first : first + step]
                due = started + (sent + chunk.size) / SAMPLE_RATE
                delay = due - time.monotonic()
                if self.stop.wait(max(0.0, delay)):
                    put(None)
                    return
                put(chunk)
                sent += chunk.size
        put(None)


class StdinSource:
    """Raw PCM on stdin: signed 16-bit little-endian mono at 16 kHz, as fast as it comes."""

    def __init__(self, stream=None) -> None:
        self.stream = stream if stream is not None else sys.stdin.buffer
        self.stop = threading.Event()

    def start(self, put: Put) -> threading.Thread:
        thread = threading.Thread(target=self._read, args=(put,), name="stdin source", daemon=True)
        thread.start()
        return thread

    def _read(self, put: Put) -> None:
        carry = b""
        while not self.stop.is_set():
            data = self.stream.read1(2 * int(CHUNK_SECONDS * SAMPLE_RATE))
            if not data:
                break
            data, carry = carry + data, b""
            if len(data) % 2:
                data, carry = data[:-1], data[-1:]
            put(pcm16(data))
        put(None)


class MicrophoneSource:
    """The machine's default microphone through sounddevice (PortAudio)."""

    def __init__(self) -> None:
        try:
            import sounddevice
        except (ImportError, OSError) as error:  # OSError: the PortAudio library is missing
            raise MeshtalkError(
                None,
                "--input mic needs sounddevice and PortAudio (pip install sounddevice; on "
                f"Debian/Ubuntu apt-get install libportaudio2): {error}",
            ) from None
        self.sounddevice = sounddevice
        self.stream = None
        self.stop = threading.Event()

    def start(self, put: Put) -> None:
        def callback(indata, frames, when, status) -> None:
            put(pcm16(bytes(indata)))

        try:
            self.stream = self.sounddevice.RawInputStream(
                samplerate=SAMPLE_RATE, channels=1, dtype="int16", blocksize=320, callback=callback
            )
            self.stream.start()
        except Exception as error:  # PortAudioError: no input device, busy, refused rate
            raise MeshtalkError(None, f"--input mic: cannot open the microphone: {error}") from None

    def close(self) -> None:
        if self.stream is not None:
            self.stream.stop()
            self.stream.close()
