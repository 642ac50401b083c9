"""Atomic writes: outputs appear under their final name only once complete.

Files and folders made here follow the process's umask, as `open` and `mkdir` do (tempfile's
private 0600/0700 modes would keep a dataset or run shared on a cluster from its group).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path


def current_umask() -> int:
    """The process's umask (read from /proc where it can be, without changing it)."""
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def follow_umask(path: str | Path, directory: bool = False) -> None:
    """Give a file (0666) or folder (0777) made by tempfile the modes the umask allows."""
    os.chmod(path, (0o777 if directory else 0o666) & ~current_umask())


def temporary_dir(final: str | Path) -> Path:
    """A new empty folder beside `final` (hidden, named after it), with the umask's modes."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    follow_umask(tmp, directory=True)
    return tmp


@contextlib.contextmanager
def atomic_path(final: str | Path, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside `final`; rename it onto `final` if the block succeeds.

    The temporary name keeps `suffix` (e.g. ".npy") so that libraries choosing a format from the
    extension still work. On failure the temporary file is removed and `final` is untouched.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(
        prefix=f".{final.name}.", suffix=f".tmp{suffix}", dir=final.parent
    )
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        follow_umask(tmp)
        yield tmp
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write `text` to `path` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_bytes_atomic(path: str | Path, data: bytes) -> None:
    """Write `data` to `path` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def old_name(final_dir: Path) -> Path:
    """Where `replace_dir` keeps the folder it replaces until the new one is in place."""
    return final_dir.with_name(f".{final_dir.name}.old")


def replace_dir(tmp_dir: Path, final_dir: Path) -> None:
    """Move a finished temporary directory onto `final_dir`, replacing an older one if present.

    At every instant a complete folder exists at `final_dir` or at `old_name(final_dir)`;
    `recover_dir` puts it back after an interruption between the two renames.
    """
    final_dir = Path(final_dir)
    old = old_name(final_dir)
    if final_dir.exists():
        if old.exists():
            shutil.rmtree(old)
        os.replace(final_dir, old)
        os.replace(tmp_dir, final_dir)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp_dir, final_dir)
        if old.exists():
            shutil.rmtree(old, ignore_errors=True)


def recover_dir(final_dir: Path) -> bool:
    """Finish or undo a `replace_dir` that was interrupted; True if anything was recovered.

    If `final_dir` is missing but the folder it replaced is still at its old name, that one is put
    back (the new one never got into place); if both exist, the old one is a leftover.
    """
    final_dir = Path(final_dir)
    old = old_name(final_dir)
    if not old.exists():
        return False
    if final_dir.exists():
        shutil.rmtree(old, ignore_errors=True)
        return False
    os.replace(old, final_dir)
    return True
