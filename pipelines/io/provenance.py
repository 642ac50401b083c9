"""What produced an output: package versions and the source's git commit."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path


def versions(packages: tuple[str, ...] = ("meshtalk", "numpy", "torch", "torchaudio")) -> dict:
    """Installed versions of Python and some packages."""
    from importlib.metadata import PackageNotFoundError, version

    found = {"python": sys.version.split()[0]}
    for package in packages:
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            found[package] = "not installed"
    return found


def git_commit() -> str | None:
    """Commit of the package's source tree ('+dirty' when it has uncommitted changes), if any."""
    source = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(
            ["git", "-C", str(source), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(source), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return commit + ("+dirty" if dirty else "")


def file_sha256(path: Path, block: int = 1 << 20) -> str:
    """SHA-256 of a file, read a block at a time (a two-hour recording is not held)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(block):
            digest.update(chunk)
    return digest.hexdigest()
