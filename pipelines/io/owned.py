"""Single output files (`--json FILE`, `render -o VIDEO`): never replace a user's file.

An existing file is refused unless `--force`, and `--force` replaces it only if meshtalk wrote it:
a JSON document whose `written_by` names the command, or a video whose container says meshtalk
wrote it (`VIDEO_COMMENT`). Anything else (a user's notes, a store's manifest, a video of their
own) is kept and the command stops before any work.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

from meshtalk.pipelines.errors import MeshtalkError

VIDEO_COMMENT = "written by meshtalk"
"""The `comment` tag meshtalk sets in every video container it writes."""
MAX_JSON_BYTES = 256 << 20
"""A results file of meshtalk's is far smaller; a larger one is not read to find out."""


def check_new_file(
    path: str | Path, force: bool, command: str, ours: Callable[[Path], bool]
) -> None:
    """A one-line error unless `path` may be written by `command` (before any work).

    Args:
        path: the output file.
        force: the user's `--force`.
        command: e.g. 'meshtalk eval', for the messages.
        ours: tells whether an existing file is one meshtalk wrote.
    """
    path = Path(path)
    if not os.path.lexists(path):
        return
    if path.is_dir():
        raise MeshtalkError(path, "is a folder; give a file name")
    if path.is_symlink() or not path.is_file():
        raise MeshtalkError(path, "exists and is not a regular file; it is kept")
    if not force:
        raise MeshtalkError(path, "exists (--force replaces it if meshtalk wrote it)")
    if not ours(path):
        raise MeshtalkError(path, f"exists and was not written by {command}; it is kept")


def json_written_by(command: str) -> Callable[[Path], bool]:
    """A test for `check_new_file`: a JSON object whose `written_by` is `command`."""

    def ours(path: Path) -> bool:
        try:
            if path.stat().st_size > MAX_JSON_BYTES:
                return False
            document = json.loads(path.read_text())
        except (OSError, ValueError):
            return False
        return isinstance(document, dict) and document.get("written_by") == command

    return ours


def video_written_by_meshtalk(path: Path) -> bool:
    """A test for `check_new_file`: a video whose container's comment is `VIDEO_COMMENT`."""
    import av

    try:
        with av.open(str(path)) as container:
            return container.metadata.get("comment") == VIDEO_COMMENT
    except (av.FFmpegError, OSError, ValueError):
        return False
