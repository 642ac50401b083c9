"""`meshtalk stream`: live animation from speech as it arrives, to the page and to any client.

Audio in (`--input`): `page` (the page's microphone: getUserMedia -> AudioContext at 16 kHz ->
AudioWorklet -> Int16 chunks over the WebSocket), a speech file played at real time (it starts
when the first client connects; the command ends after its last frame), `-` (raw s16le mono
16 kHz PCM on stdin; ends at EOF) or `mic` (the machine's microphone, sounddevice + PortAudio).
Frames out: `protocol` (one binary message per frame). The model runs in one worker thread
(`engine.LiveAnimator`); the event loop only moves bytes.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import queue
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from meshtalk.pipelines.errors import MeshtalkError
from meshtalk.pipelines.live import protocol
from meshtalk.pipelines.live.engine import SAMPLE_RATE, LiveAnimator, run_template
from meshtalk.pipelines.live.server import MAX_CLIENTS, LiveServer, serve_forever

log = logging.getLogger(__name__)

INPUTS = ("page", "-", "mic")
"""`--input` values besides a file."""
CLIENT_BACKLOG = 600
"""Frames waiting for one client (20 s): a client that falls further behind is closed."""


@dataclass
class StreamConfig:
    model: Path | None = None
    template: Path | None = None
    input: str = "page"
    host: str = "127.0.0.1"
    port: int = 0
    open_browser: bool = True
    argmax: bool = False
    seed: int = 0
    temperature: float = 1.0
    int8: bool = False
    max_clients: int = MAX_CLIENTS
    record: Path | None = None
    rig: Path | None = None

    def __post_init__(self) -> None:
        from meshtalk.pipelines.data.resources import default_model

        problems = []
        if self.model is None:  # the low-latency twin (100 ms look-ahead) where it is bundled
            self.model = default_model.live_run_path()
        self.model = Path(self.model)
        if self.input not in INPUTS and not Path(self.input).is_file():
            problems.append(f"--input must be page, -, mic or a speech file; {self.input} is none")
        if not 0 <= self.port <= 65535:
            problems.append(f"--port must be between 0 and 65535, got {self.port}")
        if not 1 <= self.max_clients <= 64:
            problems.append(f"--max-clients must be between 1 and 64, got {self.max_clients}")
        if not (self.temperature > 0 and math.isfinite(self.temperature)):
            problems.append(f"--temperature must be positive, got {self.temperature}")
        if not 0 <= self.seed < 2**63:
            problems.append(f"--seed must be between 0 and 2^63 - 1, got {self.seed}")
        if problems:
            raise MeshtalkError(None, "; ".join(problems))


class Session:
    """One stream: the animator in its thread, the clients, the figures."""

    def __init__(
        self, config: StreamConfig, animator: LiveAnimator, recorder=None, rig=None
    ) -> None:
        self.config, self.animator, self.recorder, self.rig = config, animator, recorder, rig
        self.audio: queue.Queue = queue.Queue()
        self.outboxes: dict = {}
        self.audio_client = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.done = asyncio.Event()
        self.started = threading.Event()  # the first client connected (a file starts then)
        self.server_ms: deque = deque(maxlen=1 << 20)
        self.drawn_ms: deque = deque(maxlen=1 << 20)
        self.frames_sent = 0
        self.arrivals: deque = deque()  # (stream sample index after the chunk, arrival time)
        self.real_samples: int | None = None  # known at the end of a finite input

    def setup(self) -> dict:
        return {
            "type": "setup",
            "version": protocol.VERSION,
            "fps": self.animator.fps,
            "sample_rate": SAMPLE_RATE,
            "vertices": len(self.animator.template),
            "payload": "offsets",
            "lookahead_s": round(self.animator.lookahead_s, 4),
            "mesh": "/mesh.bin",
            "input": "page" if self.config.input == "page" else "server",
            "arkit": None if self.rig is None else _arkit_names(),
        }

    # --- audio in (any thread) ----------------------------------------------------------------

    def put(self, samples: np.ndarray | None) -> None:
        self.audio.put((samples, time.monotonic()))

    # --- the worker thread ----------------------------------------------------------------------

    def work(self) -> None:
        received, ended = 0, False
        try:
            while not ended:
                items = [self.audio.get()]
                while not self.audio.empty():
                    items.append(self.audio.get_nowait())
                chunks = []
                for samples, arrived in items:
                    if samples is None:
                        ended = True
                        break
                    received += samples.size
                    self.arrivals.append((received, arrived))
                    chunks.append(samples)
                if chunks:
                    joined = np.concatenate(chunks)
                    if self.recorder is not None:
                        self.recorder.write(joined)
                    self._publish(self.animator.feed(joined))
            if ended:  # flush the last frames: silence after the end, frames of the speech only
                total = self.animator.front_end.frame_count(received) if received else 0
                tail = self.animator.needed_samples(max(total - 1, 0)) - received
                self.arrivals.append((received + max(tail, 0), time.monotonic()))
                frames = self.animator.feed(np.zeros(max(tail, 0), np.float32))
                self._publish([f for f in frames if f.index < total])
        except MeshtalkError as error:
            log.error("error: %s", error)
        finally:
            if self.loop is not None:
                self.loop.call_soon_threadsafe(self.done.set)

    def _publish(self, frames) -> None:
        for frame in frames:
            # The latency of a frame counts from the arrival of the sample at its own time: the
            # look-ahead its window waits for is part of it.
            sample = round(frame.time_s * SAMPLE_RATE)
            while len(self.arrivals) > 1 and self.arrivals[0][0] <= sample:
                self.arrivals.popleft()
            arrived = self.arrivals[0][1]
            weights = None if self.rig is None else self.rig.weights(frame.offsets)
            self.loop.call_soon_threadsafe(self._send, frame, arrived, weights)

    # --- frames out (the event loop) ------------------------------------------------------------

    def _send(self, frame, arrived: float, weights=None) -> None:
        sent = time.monotonic()
        self.server_ms.append(1000 * (sent - arrived))
        self.frames_sent += 1
        messages = [protocol.pack_frame(frame.index, frame.time_s, arrived, sent, frame.offsets)]
        if weights is not None:
            messages.append(protocol.pack_frame(frame.index, frame.time_s, arrived, sent,
                                                weights, protocol.KIND_ARKIT))  # fmt: skip
        for ws, outbox in list(self.outboxes.items()):
            try:
                for message in messages:
                    outbox.put_nowait(message)
            except asyncio.QueueFull:
                log.warning("a client fell %d frames behind: closed", CLIENT_BACKLOG)
                self.outboxes.pop(ws, None)
                asyncio.ensure_future(ws.close(message=b"too slow"))

    async def client(self, server: LiveServer, ws, request) -> None:
        from aiohttp import WSMsgType

        outbox: asyncio.Queue = asyncio.Queue(maxsize=CLIENT_BACKLOG)
        await ws.send_str(json.dumps(self.setup()))
        self.outboxes[ws] = outbox
        self.started.set()
        sender = asyncio.ensure_future(self._sender(ws, outbox))
        try:
            async for message in ws:
                if message.type == WSMsgType.BINARY:
                    self._audio_from(ws, message.data)
                elif message.type == WSMsgType.TEXT:
                    await self._text(ws, message.data)
        finally:
            sender.cancel()
            self.outboxes.pop(ws, None)
            if self.audio_client is ws:
                self.audio_client = None

    def _audio_from(self, ws, data: bytes) -> None:
        if self.config.input != "page":
            return
        if self.audio_client is None:
            self.audio_client = ws
        if self.audio_client is ws:
            self.put(protocol.pcm16(data))

    async def _text(self, ws, data: str) -> None:
        try:
            message = json.loads(data)
        except ValueError:
            return
        if not isinstance(message, dict):
            return
        if message.get("type") == "ping":
            reply = {"type": "pong", "t": message.get("t"), "server": time.monotonic()}
            await ws.send_str(json.dumps(reply))
        elif message.get("type") == "drawn":
            latency = message.get("latency_ms")
            if isinstance(latency, int | float) and math.isfinite(latency):
                self.drawn_ms.append(float(latency))

    async def _sender(self, ws, outbox: asyncio.Queue) -> None:
        while True:
            message = await outbox.get()
            if ws.closed:
                return
            await ws.send_bytes(message)

    def summary(self) -> str:
        stats = self.animator.stats
        parts = [f"{self.frames_sent} frames sent"]
        if self.server_ms:
            server = np.asarray(self.server_ms)
            parts.append(
                f"audio-to-frame latency p50 {np.percentile(server, 50):.0f} ms, "
                f"p95 {np.percentile(server, 95):.0f} ms (look-ahead "
                f"{1000 * self.animator.lookahead_s:.0f} ms)"
            )
        if self.drawn_ms:
            drawn = np.asarray(self.drawn_ms)
            parts.append(
                f"to drawn p50 {np.percentile(drawn, 50):.0f} ms, "
                f"p95 {np.percentile(drawn, 95):.0f} ms"
            )
        if stats.samples:
            speed = stats.samples / SAMPLE_RATE / max(stats.compute_s, 1e-9)
            parts.append(f"the model ran at {speed:.1f}x real time")
        return "; ".join(parts)


class Recorder:
    """The audio the server received, written as a 16-bit WAV (atomically, at the end)."""

    def __init__(self, path: Path) -> None:
        from meshtalk.pipelines.io.owned import check_new_file

        check_new_file(path, False, "meshtalk stream", lambda p: False)
        self.path = path
        self.file = None

    def __enter__(self):
        import contextlib

        import soundfile

        from meshtalk.pipelines.io.atomic import atomic_path

        self.stack = contextlib.ExitStack()
        tmp = self.stack.enter_context(atomic_path(self.path, ".wav"))
        self.file = self.stack.enter_context(
            soundfile.SoundFile(tmp, "w", SAMPLE_RATE, 1, "PCM_16", format="WAV")
        )
        return self

    def write(self, samples: np.ndarray) -> None:
        self.file.write(np.clip(samples, -1, 1))

    def __exit__(self, *exc) -> None:
        self.stack.__exit__(*exc)


def _arkit_names() -> list[str]:
    from meshtalk.pipelines.export.arkit import ARKIT_NAMES

    return list(ARKIT_NAMES)


def _source(config: StreamConfig):
    from meshtalk.pipelines.live import sources

    if config.input == "page":
        return None
    if config.input == "-":
        return sources.StdinSource()
    if config.input == "mic":
        return sources.MicrophoneSource()
    return sources.FileSource(Path(config.input))


def run(config: StreamConfig) -> None:
    import contextlib

    from meshtalk.pipelines.checkpoint import load_run

    source = _source(config)  # a bad file or a missing PortAudio: refused before anything
    recorder = Recorder(config.record) if config.record is not None else None
    import torch

    # One thread: a frame is a few small products, and with two cores busy (the browser, the
    # audio) OpenMP's spinning threads made a frame 15x slower (84 ms against 5.4 ms, measured).
    torch.set_num_threads(1)
    run_ = load_run(config.model)
    if run_.prior is None:
        raise MeshtalkError(config.model, "has no prior (stage 2): train one with train prior")
    vertices, faces = run_template(config.model, run_, config.template)
    animator = LiveAnimator(
        run_, vertices, argmax=config.argmax, seed=config.seed,
        temperature=config.temperature, int8=config.int8,
    )  # fmt: skip
    rig = None
    if config.rig is not None:
        from meshtalk.pipelines.live.rigged import RigWeights

        rig = RigWeights(config.rig, vertices, faces)
    animator.warm_up()
    with recorder if recorder is not None else contextlib.nullcontext():
        session = Session(config, animator, recorder, rig)
        mesh = ("application/octet-stream", protocol.pack_mesh(vertices, faces))
        server = LiveServer(
            "stream.html", {"/mesh.bin": mesh}, websocket=session.client,
            host=config.host, port=config.port, max_clients=config.max_clients,
        )  # fmt: skip

        async def main(server: LiveServer, stop: asyncio.Event) -> None:
            session.loop = asyncio.get_running_loop()
            session.done = asyncio.Event()
            worker = threading.Thread(target=session.work, name="live model", daemon=True)
            worker.start()
            if source is not None:
                await _start_source(source, session, stop)
            waiters = [
                asyncio.ensure_future(stop.wait()),
                asyncio.ensure_future(session.done.wait()),
            ]
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
            if session.done.is_set():  # a finite input ended: the clients take the last frames
                await _drain(session)
            else:
                if source is not None:
                    source.stop.set()
                session.put(None)
                await asyncio.get_running_loop().run_in_executor(None, worker.join, 10)
            if hasattr(source, "close"):
                source.close()
            for waiter in waiters:
                waiter.cancel()

        serve_forever(server, config.open_browser, "streaming", main)
        log.info("%s", session.summary())


async def _start_source(source, session: Session, stop: asyncio.Event) -> None:
    from meshtalk.pipelines.live.sources import FileSource

    if isinstance(source, FileSource):  # played for the first client, from its start
        while not session.started.is_set() and not stop.is_set():
            await asyncio.sleep(0.02)
        if stop.is_set():
            return
    source.start(session.put)


async def _drain(session: Session, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(box.qsize() for box in session.outboxes.values()):
        await asyncio.sleep(0.02)
    await asyncio.sleep(0.2)  # the last messages leave the socket
