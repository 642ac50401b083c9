"""`meshtalk view OUT/`: an animation with its speech in the browser (three.js, served locally).

The npz of each take is converted once at start into what the page needs: the template
(`protocol.pack_mesh`; of a head of parts only the faces its video draws), float32 vertex offsets
per frame (T x V x 3, little-endian), the parts' colours when the npz has them (`part_colours`,
V x 3 float32: skin, a dark mouth, teeth, white eyes with a dark iris, as in the mp4) and the speech
as a 16-bit WAV. `--compare OTHER/` adds the per-vertex distance between the two animations
(T x V float32, in the animations' units: millimetres for Multiface and the bundled model).
"""

from __future__ import annotations

import io
import json
import logging
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from meshtalk.pipelines.errors import MeshtalkError
from meshtalk.pipelines.live.protocol import pack_mesh
from meshtalk.pipelines.live.server import MAX_CLIENTS, LiveServer, serve_forever

log = logging.getLogger(__name__)

ARCHIVE = "animation.npz"
MAX_TAKES = 8


@dataclass
class ViewConfig:
    folder: Path
    compare: Path | None = None
    host: str = "127.0.0.1"
    port: int = 0
    open_browser: bool = True

    def __post_init__(self) -> None:
        self.folder = Path(self.folder)
        self.compare = None if self.compare is None else Path(self.compare)
        if not 0 <= self.port <= 65535:
            raise MeshtalkError(None, f"--port must be between 0 and 65535, got {self.port}")


@dataclass
class Take:
    name: str
    vertices: np.ndarray  # (T, V, 3) float32
    template: np.ndarray  # (V, 3)
    faces: np.ndarray  # (F, 3)
    fps: float
    audio: np.ndarray  # (N,) float32
    audio_rate: int
    source: Path
    colours: np.ndarray | None = None  # (V, 3) float32 in [0, 1]: the parts' colours


def archives(folder: Path) -> list[Path]:
    """The take archives of an output folder (or the npz itself)."""
    if folder.is_file():
        return [folder]
    if not folder.is_dir():
        raise MeshtalkError(folder, "not found")
    found = [folder / ARCHIVE] if (folder / ARCHIVE).is_file() else []
    found += sorted(folder.glob(f"take_*/{ARCHIVE}"), key=lambda p: _take_number(p.parent.name))
    if not found:
        raise MeshtalkError(folder, f"holds no {ARCHIVE} (nor take_*/{ARCHIVE}): not an animation")
    if len(found) > MAX_TAKES:
        log.info("%s: showing the first %d of %d takes", folder, MAX_TAKES, len(found))
    return found[:MAX_TAKES]


def _take_number(name: str) -> int:
    suffix = name.removeprefix("take_")
    return int(suffix) if suffix.isdigit() else 1 << 30


def read_take(path: Path, name: str) -> Take:
    """An animate/dub/retarget archive, checked (every problem names the file)."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            missing = [k for k in ("vertices", "faces", "template", "fps") if k not in archive]
            if missing:
                raise MeshtalkError(path, f"lacks {', '.join(missing)}: not a meshtalk animation")
            vertices = np.asarray(archive["vertices"], dtype=np.float32)
            template = np.asarray(archive["template"], dtype=np.float32)
            faces = np.asarray(archive["faces"])
            fps = float(archive["fps"])
            audio = (
                np.asarray(archive["audio"], dtype=np.float32).reshape(-1)
                if "audio" in archive
                else np.zeros(0, np.float32)
            )
            rate = int(archive["audio_rate"]) if "audio_rate" in archive else 16_000
            colours = (
                np.asarray(archive["part_colours"], dtype=np.float32)
                if "part_colours" in archive
                else None
            )
            drawn = np.asarray(archive["drawn_faces"]) if "drawn_faces" in archive else None
    except MeshtalkError:
        raise
    except (
        OSError,
        ValueError,
        KeyError,
        EOFError,
        zipfile.BadZipFile,
    ) as error:  # bad zip, CRC, object arrays
        raise MeshtalkError(path, f"unreadable ({error})") from None
    if vertices.ndim != 3 or vertices.shape[0] == 0 or vertices.shape[2] != 3:
        raise MeshtalkError(path, f"vertices must be (T, V, 3) with T > 0, got {vertices.shape}")
    if template.shape != vertices.shape[1:]:
        raise MeshtalkError(path, f"template {template.shape} does not match {vertices.shape}")
    if faces.ndim != 2 or faces.shape[1] != 3 or len(faces) == 0:
        raise MeshtalkError(path, f"faces must be (F, 3) with F > 0, got {faces.shape}")
    if faces.min() < 0 or faces.max() >= template.shape[0]:
        raise MeshtalkError(path, "faces index vertices that do not exist")
    if not (np.isfinite(vertices).all() and np.isfinite(template).all()):
        raise MeshtalkError(path, "vertices hold NaN or infinite values")
    if not (np.isfinite(fps) and 0 < fps <= 1000):
        raise MeshtalkError(path, f"fps must be in (0, 1000], got {fps}")
    if not 1000 <= rate <= 384_000 or not np.isfinite(audio).all():
        raise MeshtalkError(path, "its audio is not usable (rate or samples)")
    if colours is not None and (colours.shape != template.shape or not np.isfinite(colours).all()):
        raise MeshtalkError(path, f"part_colours {colours.shape} do not match {template.shape}")
    if drawn is not None:
        if drawn.shape != (len(faces),) or drawn.dtype != bool or not drawn.any():
            raise MeshtalkError(path, f"drawn_faces must be (F,) bool, got {drawn.shape}")
        faces = faces[drawn]
    return Take(name, vertices, template, faces, fps, audio, rate, path, colours)


def wav_bytes(audio: np.ndarray, rate: int) -> bytes:
    """16-bit PCM WAV of float samples (full scale 1), in memory."""
    import soundfile

    buffer = io.BytesIO()
    soundfile.write(buffer, np.clip(audio, -1, 1), rate, subtype="PCM_16", format="WAV")
    return buffer.getvalue()


def compare_distances(a: Take, b: Take) -> np.ndarray:
    """(T, V) per-vertex distance between two animations of one topology, over their common
    frames."""
    if a.vertices.shape[1] != b.vertices.shape[1]:
        raise MeshtalkError(
            b.source,
            f"has {b.vertices.shape[1]} vertices, {a.source} has {a.vertices.shape[1]}: "
            "--compare needs animations of one topology",
        )
    frames = min(len(a.vertices), len(b.vertices))
    return np.linalg.norm(a.vertices[:frames] - b.vertices[:frames], axis=-1).astype(np.float32)


def routes(takes: list[Take], distances: np.ndarray | None) -> dict[str, tuple[str, bytes]]:
    """The page's data: /view.json and each take's mesh, offsets and speech."""
    data: dict[str, tuple[str, bytes]] = {}
    listing = []
    for index, take in enumerate(takes):
        base = f"/take/{index}"
        offsets = (take.vertices - take.template[None]).astype("<f4")
        data[f"{base}/mesh.bin"] = (
            "application/octet-stream",
            pack_mesh(take.template, take.faces),
        )
        data[f"{base}/offsets.bin"] = ("application/octet-stream", offsets.tobytes())
        entry = {
            "name": take.name,
            "frames": len(take.vertices),
            "vertices": take.vertices.shape[1],
            "fps": take.fps,
            "mesh": f"{base}/mesh.bin",
            "offsets": f"{base}/offsets.bin",
            "audio": None,
            "colours": None,
            "duration_s": len(take.vertices) / take.fps,
        }
        if take.colours is not None:
            colours = np.clip(take.colours, 0.0, 1.0).astype("<f4")
            data[f"{base}/colours.bin"] = ("application/octet-stream", colours.tobytes())
            entry["colours"] = f"{base}/colours.bin"
        if take.audio.size:
            data[f"{base}/speech.wav"] = ("audio/wav", wav_bytes(take.audio, take.audio_rate))
            entry["audio"] = f"{base}/speech.wav"
        listing.append(entry)
    compare = None
    if distances is not None:
        data["/compare.bin"] = ("application/octet-stream", distances.astype("<f4").tobytes())
        top = float(np.percentile(distances, 99)) if distances.size else 0.0
        compare = {
            "distances": "/compare.bin",
            "frames": len(distances),
            "max_mm": max(top, 1e-6),
            "mean_mm": float(distances.mean()),
            "unit": "mm",
        }
    body = json.dumps({"takes": listing, "compare": compare}).encode()
    data["/view.json"] = ("application/json", body)
    return data


def load(config: ViewConfig) -> tuple[list[Take], np.ndarray | None]:
    paths = archives(config.folder)
    takes = [read_take(path, _name(path, config.folder)) for path in paths]
    distances = None
    if config.compare is not None:
        other_paths = archives(config.compare)
        other = read_take(other_paths[0], f"compare: {_name(other_paths[0], config.compare)}")
        distances = compare_distances(takes[0], other)
        takes = [takes[0], other]  # the pair side by side, both coloured by their distance
    return takes, distances


def _name(path: Path, folder: Path) -> str:
    if path == folder:
        return path.name
    return path.parent.name if path.parent != folder else folder.name


def run(config: ViewConfig) -> None:
    takes, distances = load(config)
    server = LiveServer(
        "view.html", routes(takes, distances), host=config.host, port=config.port,
        max_clients=MAX_CLIENTS,
    )  # fmt: skip
    serve_forever(server, config.open_browser, f"viewing {config.folder}")
