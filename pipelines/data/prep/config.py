"""Settings, limits and the records prep passes between its steps."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from meshtalk.pipelines.data.layout import FPS, NEUTRAL_SEGMENT
from meshtalk.pipelines.data.topology import CROP_PRESETS
from meshtalk.pipelines.errors import MeshtalkError
from meshtalk.pipelines.frontend import WINDOWS, AudioFrontEnd
from meshtalk.pipelines.io.lock import LOCK_FILE

STORE_FORMAT = 1
MISSING_FRAMES_WARNING = 0.05
"""Fraction of a segment's listed frames without a mesh file above which prep warns."""
AUDIO_LENGTH_TOLERANCE_S = 1.0
"""Audio longer than its frames by more than this is trimmed, with a warning."""

MANIFEST = "manifest.json"
STORE_ENTRIES = ("identities", "masks", "topology", "mean.npy", "std.npy", "masks.png")
"""What prep puts in a store besides the manifest: all that `--force` replaces."""
PARTIAL = ".partial"
"""Inside the output: the store being built."""
OLD = ".old"
"""Inside the output: the replaced store's entries while the new ones move in."""
MARKER = ".meshtalk-store"
"""Inside the output: says the folder was made by prep, before it holds a manifest."""
OWN_NAMES = frozenset({PARTIAL, OLD, MARKER, LOCK_FILE})


@dataclass
class PrepConfig:
    """Settings of `meshtalk prep`."""

    root: Path
    """Multiface root: one folder per identity with tracked_mesh/, audio/ and frame_list.txt."""
    output: Path
    """Directory of the prepared store (created; built in OUTPUT/.partial/ first)."""
    crop: str | None = None
    """Vertex crop: 'meshtalk' (7306 -> 6172 vertices), 'none', or a file of indices to remove;
    None: 'meshtalk' for Multiface's 7306-vertex meshes, else 'none'."""
    num_vertices: int | None = None
    """Vertices per tracked mesh; default: from each identity's vert_mean.bin, else 7306."""
    landmarks: str | None = None
    """Landmark preset or YAML file the masks are built from; None (and no `masks`): the
    dataset's own `topology/` when it fits the cropped meshes, else the 'meshtalk' preset for the
    'meshtalk' crop."""
    masks: Path | None = None
    """Mask directory (the authors' file names) to take instead of building masks."""
    window: str = "release"
    """Audio window per frame: 'release' (1 s centred, what the release's audio encoder needs) or
    'paper' (-500/+100 ms)."""
    splits: str = "paper"
    """Split protocol: 'paper', 'multiface', or a YAML file."""
    neutral_segment: str = NEUTRAL_SEGMENT
    """Segment whose mean is each identity's neutral template."""
    workers: int = 1
    """Processes to use."""
    channel: int | None = None
    """Audio channel to use (0 = first); default: the average of all channels."""
    force: bool = False
    """Replace an existing store (never a folder prep did not make)."""
    progress: bool = True
    """Show a progress bar."""

    @property
    def front_end(self) -> AudioFrontEnd:
        """The audio front end the store's log-mel is computed with (true framing)."""
        return AudioFrontEnd(window=self.window, fps=FPS)

    def __post_init__(self) -> None:
        self.root, self.output = Path(self.root), Path(self.output)
        problems = []
        if self.window not in WINDOWS:
            problems.append(f"--window must be one of {', '.join(WINDOWS)}, got '{self.window}'")
        if self.workers < 1:
            problems.append(f"--workers must be at least 1, got {self.workers}")
        if self.channel is not None and self.channel < 0:
            problems.append(f"--channel must be at least 0, got {self.channel}")
        if name_problem(self.neutral_segment):
            problems.append(
                f"--neutral-segment '{self.neutral_segment}' {name_problem(self.neutral_segment)}"
            )
        if self.num_vertices is not None and self.num_vertices < 3:
            problems.append(f"--vertices must be at least 3, got {self.num_vertices}")
        if self.masks is not None and self.landmarks is not None:
            problems.append("give --masks or --landmarks, not both")
        if (
            self.crop is not None
            and self.crop not in CROP_PRESETS
            and not Path(self.crop).is_file()
        ):
            problems.append(f"--crop '{self.crop}' is neither 'meshtalk', 'none' nor a file")
        if problems:
            raise MeshtalkError(None, "; ".join(problems))


@dataclass
class Problem:
    """One bad input: the file, what is wrong, and what prep did about it."""

    path: str
    message: str
    action: str  # "frame skipped", "segment skipped", "identity skipped", "warning", "fatal"

    def line(self) -> str:
        return f"{self.path}: {self.message} ({self.action})"


@dataclass
class SegmentTask:
    """Work for one process: one segment of one identity."""

    identity: str
    segment: str
    frame_ids: list[int]
    kind: str  # "neutral" or "speech"
    split: str | None = None


@dataclass
class SegmentResult:
    identity: str
    segment: str
    kind: str
    frames: int = 0
    problems: list[Problem] = field(default_factory=list)
    template: np.ndarray | None = None
    stats: tuple[int, np.ndarray, np.ndarray] | None = None  # count, mean, M2 (float64)
    num_vertices: int | None = None


def name_problem(name: str) -> str | None:
    """Why `name` cannot be a file name inside its folder (None if it can).

    Names read from data files become paths; one that climbs out (`..`), is absolute or holds a
    separator would make prep read or write outside its folders.
    """
    if not name:
        return "is empty"
    if any(c in name for c in "/\\\0") or os.path.isabs(name):
        return "is a path, not a name (it holds a separator)"
    if name.startswith("."):
        return "is hidden or climbs out of its folder (starts with '.')"
    return None
