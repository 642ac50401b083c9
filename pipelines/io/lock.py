"""One writer at a time: an exclusive lock file inside the folder a command writes."""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from meshtalk.pipelines.errors import MeshtalkError

LOCK_FILE = ".meshtalk.lock"


@contextlib.contextmanager
def exclusive(folder: str | Path, what: str = "meshtalk") -> Iterator[Path]:
    """Hold `folder/.meshtalk.lock` for the block; a second writer gets a one-line error.

    The lock is an advisory `flock`, released by the kernel when the process ends however it ends
    (kill -9 included), so a stale lock file never blocks a rerun. The file holds the holder's pid
    and command for the error message.
    """
    folder = Path(folder)
    path = folder / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as error:
        raise MeshtalkError(path, f"cannot create the lock file ({error.strerror})") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
            raise MeshtalkError(
                folder, f"in use by {holder}; wait for it to finish (one writer at a time)"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} ({what})\n".encode(), 0)
        yield path
    finally:
        os.close(fd)
