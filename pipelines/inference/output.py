"""The output folder of an inference command: checked, locked, filled atomically, or left as it was.

Everything is written into a hidden `.NAME.partial` folder inside OUT; at the end the command's
earlier outputs (those its marker file lists) move aside, the new ones move in, the marker last.
On any error the partial folder goes, and OUT too if this run created it, so a failed command
leaves nothing behind. A folder holding other files is refused unless `force` (then only the
command's own files are replaced, the others stay).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from meshtalk.pipelines.errors import MeshtalkError
from meshtalk.pipelines.io import lock
from meshtalk.pipelines.io.atomic import follow_umask, write_text_atomic


def export_problems(
    size: tuple[int, int],
    chunk_frames: int,
    frames: str | None = None,
    scale: float = 1.0,
    options=None,
) -> list[str]:
    """What is wrong with the export settings animate, dub and retarget share (one entry each);
    `options`: their `ExportOptions` (--formats, --units, --mesh-units)."""
    from meshtalk.pipelines.export import FRAME_FORMATS

    problems = [] if options is None else options.export_option_problems()
    if frames is not None and frames not in FRAME_FORMATS:
        problems.append(f"--frames must be one of {', '.join(FRAME_FORMATS)}, got {frames}")
    if not (math.isfinite(scale) and scale > 0):
        problems.append(f"--scale must be a positive number, got {scale}")
    if chunk_frames < 1:
        problems.append(f"chunk_frames must be at least 1, got {chunk_frames}")
    width, height = size
    if width < 2 or height < 2 or width % 2 or height % 2:
        problems.append(f"the video size must be even and positive, got {width}x{height}")
    return problems


MAX_MARKER_BYTES = 1 << 20
"""A command's record of its files is a short JSON list; a larger file is not one."""


class OutputFolder:
    """OUT of one command run (`command`: 'animate', ...).

    Args:
        path: OUT.
        command: the command writing it; its marker is `OUT/<command>.json`.
        force: write into a folder that holds other files or the command's earlier outputs.
    """

    def __init__(self, path: str | Path, command: str, force: bool = False) -> None:
        self.path, self.command, self.force = Path(path), command, force
        self.marker = self.path / f"{command}.json"
        self.partial = self.path / f".{command}.partial"
        self.old = self.path / f".{command}.old"

    def check(self) -> None:
        """Refuse an OUT that is a file, or that holds files without `force` (before any work)."""
        out = self.path
        if os.path.lexists(out) and not out.is_dir():
            raise MeshtalkError(out, "exists and is not a folder (choose another -o)")
        if not out.is_dir():
            return
        own = {lock.LOCK_FILE, self.partial.name, self.old.name}
        others = sorted(entry.name for entry in out.iterdir() if entry.name not in own)
        if os.path.lexists(self.marker) and self._record() is None:
            raise MeshtalkError(
                self.marker,
                f"exists and was not written by meshtalk {self.command} (it is the name of its "
                "record of what it wrote); it is kept: choose another -o",
            )
        if not others or self.force:
            return
        if self.marker.is_file():
            raise MeshtalkError(
                out,
                f"already holds the outputs of an earlier {self.command} (--force replaces them)",
            )
        raise MeshtalkError(
            out,
            f"is a folder of other files ({', '.join(others[:3])}); {self.command} writes into a "
            f"new or empty folder (--force writes its files beside them, replacing only its own)",
        )

    @contextlib.contextmanager
    def writing(self) -> Iterator[Path]:
        """Lock OUT and yield the partial folder to fill; on success its entries replace OUT's.

        Every top-level entry of the partial folder becomes an output; the marker lists them.
        """
        self.check()
        created = not self.path.exists()
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise MeshtalkError(
                self.path, f"cannot create the output folder ({error.strerror or error})"
            ) from None
        if created:
            follow_umask(self.path, directory=True)
        # Refused (another process holds OUT): nothing is touched, not even a folder this run
        # created, since the holder writes into it. Cleaning up is the holder's right alone.
        with lock.exclusive(self.path, f"meshtalk {self.command}"):
            try:
                self._recover()
                self.partial.mkdir()
                yield self.partial
                self._swap_in()
            except BaseException:
                shutil.rmtree(self.partial, ignore_errors=True)
                if created:
                    shutil.rmtree(self.path, ignore_errors=True)
                raise

    def _record(self) -> dict | None:
        """The marker's record if this command wrote it, else None (a user's file of that name).

        A record is `{"written_by": "meshtalk COMMAND", "files": [...]}`; one of only `files`
        is what earlier versions wrote.
        """
        try:
            if not self.marker.is_file() or self.marker.stat().st_size > MAX_MARKER_BYTES:
                return None
            record = json.loads(self.marker.read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(record, dict) or not isinstance(record.get("files"), list):
            return None
        written_by = record.get("written_by", f"meshtalk {self.command}")
        if written_by != f"meshtalk {self.command}" or set(record) - {"files", "written_by"}:
            return None
        return record

    def _earlier(self) -> list[str]:
        """The entries an earlier run of the command wrote (its marker's list)."""
        record = self._record()
        if record is None:
            return []
        return [
            name
            for name in record["files"]
            if isinstance(name, str) and "/" not in name and name not in {"", ".", ".."}
        ]

    def _recover(self) -> None:
        """Undo what an interrupted run left: its partial folder; put back what it moved aside."""
        shutil.rmtree(self.partial, ignore_errors=True)
        if self.old.is_dir():
            if not self.marker.exists():  # the swap stopped midway: the earlier outputs go back
                for entry in self.old.iterdir():
                    target = self.path / entry.name
                    if not os.path.lexists(target):
                        os.replace(entry, target)
            shutil.rmtree(self.old, ignore_errors=True)

    def _swap_in(self) -> None:
        new = sorted(entry.name for entry in self.partial.iterdir())
        if os.path.lexists(self.marker) and self._record() is None:  # appeared meanwhile
            raise MeshtalkError(
                self.marker, f"exists and was not written by meshtalk {self.command}; it is kept"
            )
        earlier = set(self._earlier())
        theirs = [n for n in new if os.path.lexists(self.path / n) and n not in earlier]
        if theirs:  # --force replaces only this command's files, never a user's (an input, say)
            raise MeshtalkError(
                self.path / theirs[0],
                f"exists and was not written by meshtalk {self.command}; it is kept (choose "
                "another -o)",
            )
        self.old.mkdir()
        for name in [
            self.marker.name,
            *self._earlier(),
            *new,
        ]:  # marker first: incomplete meanwhile
            target = self.path / name
            if os.path.lexists(target) and not os.path.lexists(self.old / name):
                os.replace(target, self.old / name)
        for name in new:
            os.replace(self.partial / name, self.path / name)
        record = {"written_by": f"meshtalk {self.command}", "files": new}
        write_text_atomic(self.marker, json.dumps(record, indent=2) + "\n")
        shutil.rmtree(self.old, ignore_errors=True)
        self.partial.rmdir()
