"""`meshtalk view OUT/`: an animation with its speech in the browser (three.js, served locally).

The npz of each take is converted once at start into what the page needs: the template
(`protocol.pack_mesh`; of a head of parts only the faces its video draws), the clip as morph
targets and weights, the GLB export's basis (within 0.1 mm on every vertex of every frame, the
bundled head's straight from its rig; the page sums them per frame: a minute of the 26,719-vertex
head is 8.9 MB where its raw offsets were 577 MB), the parts' colours when the npz has them
(`part_colours`, V x 3 float32: skin, a dark mouth, teeth, white eyes with a dark iris, as in the
mp4) and the speech as a 16-bit WAV. The frames are read a chunk at a time, never all at once.
`--compare OTHER/` shows the two side by side, coloured by their per-vertex distance (computed by
the page from the frames it draws; the colour bar's top, the 99th percentile, from the archives).
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
    frames: int
    template: np.ndarray  # (V, 3)
    faces: np.ndarray  # (F, 3)
    fps: float
    audio: np.ndarray  # (N,) float32
    audio_rate: int
    source: Path
    colours: np.ndarray | None = None  # (V, 3) float32 in [0, 1]: the parts' colours
    targets: np.ndarray | None = None  # (K, V, 3) float32 morph targets, the archive's units
    weights: np.ndarray | None = None  # (T, K) float32
    max_error: float = 0.0  # the basis's largest distance from the archive (its units)

    @property
    def vertex_count(self) -> int:
        return len(self.template)


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
    from meshtalk.pipelines.export.npz import first_nonfinite_row, member_shape

    try:
        with np.load(path, allow_pickle=False) as archive:
            missing = [k for k in ("vertices", "faces", "template", "fps") if k not in archive]
            if missing:
                raise MeshtalkError(path, f"lacks {', '.join(missing)}: not a meshtalk animation")
            shape, dtype = member_shape(path, "vertices")
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
        if len(shape) != 3 or shape[0] == 0 or shape[2] != 3 or dtype.kind != "f":
            raise MeshtalkError(path, f"vertices must be (T, V, 3) with T > 0, got {shape}")
        bad = first_nonfinite_row(path, "vertices")  # a pass that also checks the CRC
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
    if template.shape != shape[1:]:
        raise MeshtalkError(path, f"template {template.shape} does not match {shape}")
    if faces.ndim != 2 or faces.shape[1] != 3 or len(faces) == 0:
        raise MeshtalkError(path, f"faces must be (F, 3) with F > 0, got {faces.shape}")
    if faces.min() < 0 or faces.max() >= template.shape[0]:
        raise MeshtalkError(path, "faces index vertices that do not exist")
    if bad is not None or not np.isfinite(template).all():
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
    take = Take(name, shape[0], template, faces, fps, audio, rate, path, colours)
    return with_basis(take)


def with_basis(take: Take) -> Take:
    """The take with its morph targets and weights (the GLB export's basis, in the archive's
    units, within the GLB's budget, `formats.ERROR_MM`)."""
    from meshtalk.pipelines.export.formats import ERROR_MM, METRES, clip_basis, guess_units

    metres = METRES[guess_units(take.template)]
    basis, _ = clip_basis(take.source, take.template, 1.0, ERROR_MM * 1e-3 / metres)
    take.targets, take.weights, take.max_error = basis.targets, basis.weights, basis.max_error
    return take


def wav_bytes(audio: np.ndarray, rate: int) -> bytes:
    """16-bit PCM WAV of float samples (full scale 1), in memory."""
    import soundfile

    buffer = io.BytesIO()
    soundfile.write(buffer, np.clip(audio, -1, 1), rate, subtype="PCM_16", format="WAV")
    return buffer.getvalue()


def compare_distances(a: Take, b: Take) -> np.ndarray:
    """(T, V) per-vertex distance between two animations of one topology, over their common
    frames, read from the archives a chunk at a time."""
    from meshtalk.pipelines.export.formats import frames_of

    if a.vertex_count != b.vertex_count:
        raise MeshtalkError(
            b.source,
            f"has {b.vertex_count} vertices, {a.source} has {a.vertex_count}: "
            "--compare needs animations of one topology",
        )
    frames = min(a.frames, b.frames)
    distances = np.empty((frames, a.vertex_count), np.float32)
    first = 0
    for rows_a, rows_b in zip(frames_of(a.source), frames_of(b.source), strict=False):
        count = min(len(rows_a), len(rows_b), frames - first)
        if count <= 0:
            break
        moved = np.subtract(rows_a[:count], rows_b[:count], dtype=np.float32)
        np.square(moved, out=moved)
        distances[first : first + count] = np.sqrt(moved.sum(axis=-1))
        first += count
    return distances[:first]


def routes(takes: list[Take], distances: list[np.ndarray] | None) -> dict[str, tuple[str, bytes]]:
    """The page's data: /view.json and each take's mesh, morph targets, weights and speech."""
    data: dict[str, tuple[str, bytes]] = {}
    listing = []
    for index, take in enumerate(takes):
        base = f"/take/{index}"
        data[f"{base}/mesh.bin"] = (
            "application/octet-stream",
            pack_mesh(take.template, take.faces),
        )
        targets = np.ascontiguousarray(take.targets, "<f4")
        weights = np.ascontiguousarray(take.weights, "<f4")
        data[f"{base}/targets.bin"] = ("application/octet-stream", targets.tobytes())
        data[f"{base}/weights.bin"] = ("application/octet-stream", weights.tobytes())
        entry = {
            "name": take.name,
            "frames": take.frames,
            "vertices": take.vertex_count,
            "fps": take.fps,
            "mesh": f"{base}/mesh.bin",
            "targets": f"{base}/targets.bin",
            "weights": f"{base}/weights.bin",
            "target_count": len(targets),
            "max_error": take.max_error,
            "audio": None,
            "colours": None,
            "duration_s": take.frames / take.fps,
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
    if distances is not None:  # the colour bar: 0 to the largest pair's 99th percentile
        top = max((float(np.percentile(d, 99)) for d in distances if d.size), default=0.0)
        compare = {
            "pairs": [[2 * i, 2 * i + 1] for i in range(len(distances))],
            "max_mm": max(top, 1e-6),
            "mean_mm": [float(d.mean()) if d.size else 0.0 for d in distances],
            "unit": "mm",
        }
    body = json.dumps({"takes": listing, "compare": compare}).encode()
    data["/view.json"] = ("application/json", body)
    return data


def load(config: ViewConfig) -> tuple[list[Take], list[np.ndarray] | None]:
    """The takes to show and, with --compare, each pair's (T, V) distances: take i of the folder
    beside take i of OTHER, as many pairs as both have (at most MAX_TAKES / 2)."""
    paths = archives(config.folder)
    if config.compare is None:
        return [read_take(path, _name(path, config.folder)) for path in paths], None
    other_paths = archives(config.compare)
    pairs = min(len(paths), len(other_paths), MAX_TAKES // 2)
    takes, distances = [], []
    for path, other_path in zip(paths[:pairs], other_paths[:pairs], strict=True):
        take = read_take(path, _name(path, config.folder))
        other = read_take(other_path, f"compare: {_name(other_path, config.compare)}")
        distances.append(compare_distances(take, other))
        takes += [take, other]  # each pair side by side, both coloured by their distance
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
