"""The live WebSocket protocol (`meshtalk stream`), version 1: what any client reads and sends.

The server listens at ws://HOST:PORT/ws. On connecting, a client receives one text message, the
setup (JSON):

    {"type": "setup", "version": 1, "fps": 30.0, "sample_rate": 16000, "vertices": V,
     "payload": "offsets", "lookahead_s": 0.125, "mesh": "/mesh.bin", "input": "page" | ...}

`GET /mesh.bin` gives the template: `MESH_HEADER` (magic b"MTMS", uint32 V, uint32 F) then V x 3
float32 positions and F x 3 uint32 vertex indices, little-endian.

Then one binary message per frame, little-endian, `FRAME_HEADER` (40 bytes) then the payload:

    offset  type     field
    0       4 bytes  magic b"MTFR"
    4       uint32   frame index (0, 1, 2, ... from the start of the stream)
    8       uint32   kind: 0 = vertex offsets from the template; 1 = ARKit weights (`--rig`)
    12      uint32   count: float32 values that follow (V x 3 offsets; 52 weights)
    16      float64  the frame's audio time in s, from the stream's first sample
    24      float64  server clock (s) when the last sample the frame needs arrived
    32      float64  server clock (s) when the frame was sent
    40      float32 x count

With `--rig RIG.glb` each frame is two messages of one index: its offsets (kind 0), then the
rig's 52 ARKit weights in [0, 1] in ARKit's order (kind 1; the setup's "arkit" lists the names).

The server clock is `time.monotonic()` of the server: `sent - arrived` is the server's latency
for that frame; a client that wants the latency to its own display estimates the clock offset
with pings: it sends {"type": "ping", "t": T} and gets {"type": "pong", "t": T, "server": S}.

A client that streams audio (the page, with `--input page`) sends binary messages of Int16
little-endian mono PCM at 16 kHz, at most `MAX_MESSAGE` bytes each. It may also send
{"type": "drawn", "frame": k, "latency_ms": L} (what it measured), which the server aggregates
and prints at the end. Any other message is ignored; a message over `MAX_MESSAGE` closes that
client only (close code 1009).
"""

from __future__ import annotations

import struct

import numpy as np

VERSION = 1
FRAME_MAGIC = b"MTFR"
MESH_MAGIC = b"MTMS"
FRAME_HEADER = struct.Struct("<4sIIIddd")
MESH_HEADER = struct.Struct("<4sII")
KIND_OFFSETS = 0
KIND_ARKIT = 1
MAX_MESSAGE = 64 * 1024
"""Largest message a client may send (2 s of 16 kHz Int16 audio)."""


def pack_frame(
    index: int, time_s: float, arrived: float, sent: float, values, kind: int = KIND_OFFSETS
) -> bytes:
    values = np.ascontiguousarray(values, dtype="<f4").reshape(-1)
    header = FRAME_HEADER.pack(FRAME_MAGIC, index, kind, values.size, time_s, arrived, sent)
    return header + values.tobytes()


def unpack_frame(message: bytes) -> dict:
    """A frame message as a dict (index, kind, time_s, arrived, sent, values (count,) float32)."""
    if len(message) < FRAME_HEADER.size:
        raise ValueError(f"a frame message has at least {FRAME_HEADER.size} bytes")
    magic, index, kind, count, time_s, arrived, sent = FRAME_HEADER.unpack_from(message)
    if magic != FRAME_MAGIC or len(message) != FRAME_HEADER.size + 4 * count:
        raise ValueError("not a frame message of protocol version 1")
    values = np.frombuffer(message, dtype="<f4", offset=FRAME_HEADER.size, count=count)
    return {
        "index": index,
        "kind": kind,
        "time_s": time_s,
        "arrived": arrived,
        "sent": sent,
        "values": values,
    }


def pack_mesh(vertices: np.ndarray, faces: np.ndarray) -> bytes:
    vertices = np.ascontiguousarray(vertices, dtype="<f4")
    faces = np.ascontiguousarray(faces, dtype="<u4")
    return (
        MESH_HEADER.pack(MESH_MAGIC, len(vertices), len(faces))
        + vertices.tobytes()
        + faces.tobytes()
    )


def pcm16(samples: bytes) -> np.ndarray:
    """Int16 little-endian PCM -> float32 samples of full scale 1 (an odd last byte dropped)."""
    usable = len(samples) - len(samples) % 2
    return np.frombuffer(samples[:usable], dtype="<i2").astype(np.float32) / 32768.0
