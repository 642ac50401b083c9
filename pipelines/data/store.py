"""Reading a prepared store lazily: memory-mapped arrays and torch Datasets over them."""

from __future__ import annotations

import json
import zipfile
import zlib
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from meshtalk.pipelines.data.layout import STORE_FACES_FILE as FACES_FILE
from meshtalk.pipelines.errors import MeshtalkError
from meshtalk.pipelines.frontend import AudioFrontEnd


@dataclass(frozen=True)
class SegmentRef:
    """One prepared speech segment."""

    identity: str
    name: str
    frames: int
    split: str | None


class PreparedStore:
    """A store written by `meshtalk prep`; arrays are opened memory-mapped on first use."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        manifest_file = self.root / "manifest.json"
        if not manifest_file.is_file():
            raise MeshtalkError(
                self.root, "not a prepared store (no manifest.json; run meshtalk prep)"
            )
        self.manifest = _read_manifest(manifest_file)
        self.identities = [record["name"] for record in self.manifest["identities"]]
        self.segments = [
            SegmentRef(record["name"], s["name"], s["frames"], s.get("split"))
            for record in self.manifest["identities"]
            for s in record["segments"]
        ]
        try:  # the front end its log-mel was computed with (without mel statistics)
            self.front_end = AudioFrontEnd.from_manifest(self.manifest)
        except (TypeError, ValueError) as error:
            raise MeshtalkError(manifest_file, f"front end: {error}; {_REPREP}") from None
        self.mel_first, self.mel_frames = self.front_end.mel_first, self.front_end.window_frames
        self.fps = float(self.manifest["fps"])
        self.mel_fps = self.front_end.mel.frames_per_second
        self._open: dict[tuple[str, str, str], np.ndarray] = {}

    @property
    def num_vertices(self) -> int:
        return int(self.manifest["num_vertices"])

    @cached_property
    def mean(self) -> np.ndarray:
        """(V, 3) per-vertex mean over the training frames."""
        return _load(self.root / "mean.npy", (self.num_vertices, 3))

    @cached_property
    def std(self) -> np.ndarray:
        """(V, 3) per-vertex standard deviation over the training frames."""
        return _load(self.root / "std.npy", (self.num_vertices, 3))

    @cached_property
    def masks(self) -> dict[str, np.ndarray]:
        """Region masks, name -> (V,) float32."""
        return {
            name: _load(self.root / "masks" / f"{name}.npy", (self.num_vertices,))
            for name in self.manifest["masks"]
        }

    @cached_property
    def faces(self) -> np.ndarray | None:
        """(F, 3) triangles of the topology (from the dataset's own `topology/template.*`), or
        None for a store made without them (Multiface's meshes carry no triangles)."""
        path = self.root / FACES_FILE
        if not path.is_file():
            return None
        faces = np.load(path, allow_pickle=False)
        if (
            faces.ndim != 2
            or faces.shape[1] != 3
            or not np.issubdtype(faces.dtype, np.integer)
            or (faces.size and (faces.min() < 0 or faces.max() >= self.num_vertices))
        ):
            raise MeshtalkError(
                path, f"holds {faces.dtype} {faces.shape}, expected (F, 3) vertex indices"
            )
        return faces.astype(np.int64, copy=False)

    def mel_statistics(self, split: str) -> tuple[float, float]:
        """Mean and standard deviation of every log-mel value of a split's segments."""
        total, squares, count = 0.0, 0.0, 0
        for segment in self.split(split):
            mel = np.asarray(self.mel(segment), dtype=np.float64)
            total, squares, count = (
                total + mel.sum(),
                squares + np.square(mel).sum(),
                count + mel.size,
            )
        if count == 0:
            raise MeshtalkError(self.root, f"has no '{split}' segments")
        mean = total / count
        return round(mean, 4), round(float(np.sqrt(max(squares / count - mean**2, 1e-12))), 4)

    def template(self, identity: str) -> np.ndarray:
        """(V, 3) neutral face of an identity."""
        return self._array(identity, "", "template.npy", (self.num_vertices, 3))

    def vertices(self, segment: SegmentRef) -> np.ndarray:
        """(T, V, 3) observed frames, memory-mapped."""
        shape = (segment.frames, self.num_vertices, 3)
        return self._array(segment.identity, segment.name, "vertices.npy", shape)

    def mel(self, segment: SegmentRef) -> np.ndarray:
        """(M, n_mels) log-mel of the padded utterance, memory-mapped."""
        shape = (None, self.manifest["mel"]["n_mels"])
        return self._array(segment.identity, segment.name, "mel.npy", shape)

    def frames(self, segment: SegmentRef) -> dict[str, np.ndarray]:
        """frame_ids, times_s, mel_index (T,) and poses (T, 3, 4) of a segment."""
        path = self.root / "identities" / segment.identity / segment.name / "frames.npz"
        try:
            with np.load(path) as data:
                frames = {key: data[key] for key in data.files}
        except FileNotFoundError:
            raise MeshtalkError(path, f"missing from the store; {_REPREP}") from None
        except (ValueError, EOFError, KeyError, zipfile.BadZipFile, zlib.error) as error:
            raise MeshtalkError(path, f"damaged ({_reason(error)}); {_REPREP}") from None
        t = segment.frames
        expected = {"frame_ids": (t,), "times_s": (t,), "mel_index": (t,), "poses": (t, 3, 4)}
        for key, shape in expected.items():
            if key not in frames:
                raise MeshtalkError(path, f"has no '{key}' array; {_REPREP}")
            if frames[key].shape != shape or frames[key].dtype.kind not in "iuf":
                raise MeshtalkError(
                    path,
                    f"'{key}' has shape {frames[key].shape} ({frames[key].dtype}) where "
                    f"manifest.json says {shape}; {_REPREP}",
                )
        for key in ("frame_ids", "mel_index"):
            if frames[key].dtype.kind not in "iu":
                raise MeshtalkError(path, f"'{key}' holds {frames[key].dtype}, not integers")
        return frames

    def check_segment(self, segment: SegmentRef) -> None:
        """Open a segment's arrays and check them against the manifest and each other.

        Raises MeshtalkError naming the first damaged file. Called for every segment before
        training starts, so that a damaged store fails in the main process with one line rather
        than in a DataLoader worker halfway through a run.
        """
        self.template(segment.identity)
        self.vertices(segment)
        mel_index = self.frames(segment)["mel_index"]
        mel = self.mel(segment)
        starts = mel_index + self.mel_first
        if len(starts) and (
            starts.min() < 0 or starts.max() >= len(mel) or (np.diff(mel_index) < 0).any()
        ):
            path = self.root / "identities" / segment.identity / segment.name
            raise MeshtalkError(
                path / "frames.npz",
                f"mel_index does not fit mel.npy's {len(mel)} frames; {_REPREP}",
            )

    def audio_windows(self, segment: SegmentRef, mel_index: np.ndarray) -> np.ndarray:
        """(T, n_mels, W) mel window of each frame (W = the store's window length)."""
        offsets = np.arange(self.mel_frames) + self.mel_first
        return np.ascontiguousarray(
            self.mel(segment)[mel_index[:, None] + offsets].transpose(0, 2, 1)
        )

    def span_length(self, frames: int) -> int:
        """Mel frames that hold the windows of any `frames` consecutive gap-free mesh frames."""
        return int(np.ceil((frames - 1) * self.mel_fps / self.fps)) + 1 + self.mel_frames

    def audio_span(
        self, segment: SegmentRef, mel_index: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """The mel that holds the windows of some consecutive frames, and where each window starts.

        Returns:
            mel (L, n_mels) with L = `span_length(len(mel_index))` for gap-free frames (longer
            if the frames skip dropped ones), edge-padded past the utterance's end, and starts
            (T,) int64: window k is mel[starts[k] : starts[k] + W].
        """
        mel = self.mel(segment)
        first = int(mel_index[0]) + self.mel_first
        reach = int(mel_index[-1] - mel_index[0]) + self.mel_frames
        length = max(self.span_length(len(mel_index)), reach)
        span = np.array(mel[first : first + length])
        if len(span) < length:
            span = np.concatenate([span, np.repeat(span[-1:], length - len(span), axis=0)])
        return np.ascontiguousarray(span), (mel_index - mel_index[0]).astype(np.int64)

    def split(self, name: str) -> list[SegmentRef]:
        return [s for s in self.segments if s.split == name]

    def _array(
        self, identity: str, segment: str, filename: str, shape: tuple[int | None, ...]
    ) -> np.ndarray:
        key = (identity, segment, filename)
        if key not in self._open:
            path = self.root / "identities" / identity / segment / filename
            self._open[key] = _load(path, shape, mmap_mode="r")
        return self._open[key]

    def __getstate__(self) -> dict:  # memory maps are reopened in each DataLoader worker
        state = self.__dict__.copy()
        state["_open"] = {}
        return state


class SegmentDataset(Dataset):
    """Random training segments: T consecutive observed frames at 30 fps with their audio.

    Windows never span a dropped frame. Each index draws a segment (in proportion to its usable
    windows) and a start, from a generator seeded by (seed, epoch, index), so a run is reproducible.

    Items:
        template (V, 3), vertices (T, V, 3) float32;
        with `audio="span"` (the default): mel (L, n_mels) float32, the utterance's mel holding
        every frame's window, and mel_starts (T,) int64, where each window starts in it (see
        `PreparedStore.audio_span`); with `audio="windows"`: audio (T, n_mels, W) float32;
        identity () int64 (index into store.identities); frame_ids (T,) int64;
        segment () int64 (index into `self.segments`); index () int64, the item's index.
    """

    def __init__(
        self,
        store: PreparedStore | str | Path,
        split: str = "train",
        frames: int = 32,
        length: int = 1000,
        seed: int = 0,
        audio: str = "span",
    ) -> None:
        if audio not in ("span", "windows"):
            raise ValueError(f"audio must be 'span' or 'windows', got '{audio}'")
        self.store = store if isinstance(store, PreparedStore) else PreparedStore(store)
        self.frames, self.length, self.seed, self.epoch = frames, length, seed, 0
        self.audio = audio
        self.segments, self.starts = [], []
        for segment in self.store.split(split):
            self.store.check_segment(segment)
            ids = self.store.frames(segment)["frame_ids"]
            starts = _gap_free_starts(ids, frames)
            if len(starts):
                self.segments.append(segment)
                self.starts.append(starts)
        if not self.segments:
            raise MeshtalkError(
                self.store.root,
                f"no '{split}' segment has {frames} consecutive frames without a gap",
            )
        counts = np.array([len(s) for s in self.starts], dtype=np.float64)
        self.weights = counts / counts.sum()

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        choice, start = self.draw(np.random.default_rng([self.seed, self.epoch, index]))
        item = self.item(choice, start)
        item["index"] = torch.tensor(index)
        return item

    def draw(self, rng: np.random.Generator) -> tuple[int, int]:
        """A random (segment choice, start), segments in proportion to their usable windows."""
        choice = int(rng.choice(len(self.segments), p=self.weights))
        return choice, int(rng.choice(self.starts[choice]))

    def item(self, choice: int, start: int) -> dict[str, torch.Tensor]:
        """The window of `self.frames` frames starting at observed frame `start` of a segment."""
        segment = self.segments[choice]
        span = slice(start, start + self.frames)
        frames = self.store.frames(segment)
        item = {
            "template": torch.from_numpy(np.array(self.store.template(segment.identity))),
            "vertices": torch.from_numpy(np.array(self.store.vertices(segment)[span])),
            "identity": torch.tensor(self.store.identities.index(segment.identity)),
            "frame_ids": torch.from_numpy(frames["frame_ids"][span]),
            "segment": torch.tensor(choice),
        }
        mel_index = frames["mel_index"][span]
        if self.audio == "windows":
            item["audio"] = torch.from_numpy(self.store.audio_windows(segment, mel_index))
        else:
            mel, starts = self.store.audio_span(segment, mel_index)
            item["mel"], item["mel_starts"] = torch.from_numpy(mel), torch.from_numpy(starts)
        return item


def _gap_free_starts(frame_ids: np.ndarray, frames: int) -> np.ndarray:
    """Starts of windows of `frames` observed frames whose ids step evenly (no dropped frame)."""
    if len(frame_ids) < frames:
        return np.zeros(0, dtype=np.int64)
    steps = np.diff(frame_ids)
    step = np.gcd.reduce(steps) if len(steps) else 1
    gap = np.concatenate([[0], np.cumsum(steps != step)])  # number of gaps before each frame
    starts = np.arange(len(frame_ids) - frames + 1)
    return starts[gap[starts + frames - 1] == gap[starts]]


# --- validation: a damaged or hand-edited store fails with one line naming the file ---------------

READABLE_FORMAT = 1
"""The store format this reader understands (the one `prep.STORE_FORMAT` writes)."""

_REPREP = "rerun meshtalk prep to rebuild the store"


def _reason(error: BaseException) -> str:
    text = str(error).splitlines()[0] if str(error) else type(error).__name__
    return text.split(". ")[0][:100]


def _load(path: Path, shape: tuple[int | None, ...], mmap_mode: str | None = None) -> np.ndarray:
    """A float array of the store, checked against the shape the manifest implies (None: any)."""
    try:
        array = np.load(path, mmap_mode=mmap_mode, allow_pickle=False)
    except FileNotFoundError:
        raise MeshtalkError(path, f"missing from the store; {_REPREP}") from None
    except (ValueError, EOFError, zipfile.BadZipFile) as error:  # e.g. "mmap length is greater"
        raise MeshtalkError(path, f"damaged ({_reason(error)}); {_REPREP}") from None
    except OSError as error:
        if error.errno is not None:  # no permission, I/O error: the CLI names the file
            raise
        raise MeshtalkError(path, f"damaged ({_reason(error)}); {_REPREP}") from None
    if not isinstance(array, np.ndarray):
        raise MeshtalkError(path, f"is an archive, not one array; {_REPREP}")
    fits = len(array.shape) == len(shape) and all(
        want is None or have == want for have, want in zip(array.shape, shape, strict=True)
    )
    if not fits or array.dtype.kind != "f":
        expected = "(" + ", ".join("any" if s is None else str(s) for s in shape) + ")"
        raise MeshtalkError(
            path,
            f"holds a {array.dtype} array of shape {array.shape} where manifest.json says "
            f"float {expected}; {_REPREP}",
        )
    return array


def _read_manifest(file: Path) -> dict:
    """The manifest, its structure checked (types, names that stay inside the store)."""
    try:
        manifest = json.loads(file.read_bytes())
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        where = f" at line {error.lineno} column {error.colno}" if hasattr(error, "lineno") else ""
        raise MeshtalkError(file, f"not valid JSON{where}; {_REPREP}") from None
    problems = _manifest_problems(manifest)
    if problems:
        more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        raise MeshtalkError(file, f"{'; '.join(problems[:3])}{more}; {_REPREP}")
    return manifest


def _manifest_problems(manifest) -> list[str]:
    if not isinstance(manifest, dict):
        return [f"holds a JSON {type(manifest).__name__}, not an object"]
    problems: list[str] = []

    def need(record: dict, key: str, kind, where: str, minimum: float | None = None) -> bool:
        value = record.get(key)
        ok = isinstance(value, kind) and not isinstance(value, bool)
        if ok and minimum is not None and value < minimum:
            ok = False
        if not ok:
            have = "missing" if key not in record else repr(value)[:40]
            wanted = getattr(kind, "__name__", None) or " or ".join(k.__name__ for k in kind)
            if minimum is not None:
                wanted += f" >= {minimum}"
            problems.append(f"{where}{key} is {have}, expected {wanted}")
        return ok

    if manifest.get("format") != READABLE_FORMAT:
        have = repr(manifest["format"])[:20] if "format" in manifest else "missing"
        return [f"format is {have}; this version reads store format {READABLE_FORMAT}"]
    need(manifest, "fps", (int, float), "", 1e-6)
    need(manifest, "num_vertices", int, "", 1)
    if need(manifest, "mel", dict, ""):
        for key in ("sample_rate", "hop_length", "n_mels"):
            need(manifest["mel"], key, int, "mel.", 1)
    if need(manifest, "audio_window", dict, ""):
        need(manifest["audio_window"], "mel_first", int, "audio_window.")
        need(manifest["audio_window"], "mel_frames", int, "audio_window.", 1)
    if need(manifest, "masks", list, ""):
        for index, name in enumerate(manifest["masks"]):
            problems += _name_problems(name, f"masks[{index}]")
    if need(manifest, "identities", list, ""):
        seen: set[str] = set()
        for i, record in enumerate(manifest["identities"]):
            where = f"identities[{i}]."
            if not isinstance(record, dict):
                problems.append(f"identities[{i}] is not an object")
                continue
            if need(record, "name", str, where):
                problems += _name_problems(record["name"], f"{where}name", seen)
            if "num_vertices" in record and record["num_vertices"] != manifest.get("num_vertices"):
                problems.append(f"{where}num_vertices differs from the store's num_vertices")
            if not need(record, "segments", list, where):
                continue
            names: set[str] = set()
            for j, segment in enumerate(record["segments"]):
                inner = f"{where}segments[{j}]."
                if not isinstance(segment, dict):
                    problems.append(f"{where}segments[{j}] is not an object")
                    continue
                if need(segment, "name", str, inner):
                    problems += _name_problems(segment["name"], f"{inner}name", names)
                need(segment, "frames", int, inner, 1)
                if segment.get("split") is not None:
                    need(segment, "split", str, inner)
    return problems


def _name_problems(name, where: str, seen: set[str] | None = None) -> list[str]:
    """A name the store joins to a path: a plain file name, so nothing is read outside the store."""
    if not isinstance(name, str):
        return [f"{where} is {repr(name)[:40]}, expected a name"]
    if name in ("", ".", "..") or any(c in name for c in "/\\\0") or Path(name).is_absolute():
        return [f"{where} {name!r} is not a plain name (it would read outside the store)"]
    if seen is not None:
        if name in seen:
            return [f"{where} {name!r} appears twice"]
        seen.add(name)
    return []
