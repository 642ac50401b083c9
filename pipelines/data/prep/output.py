"""The output folder: checked, locked, built in `.partial`, recovered, replaced in place."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from dataclasses import asdict
from pathlib import Path

from meshtalk.pipelines.data.prep.config import (
    MANIFEST,
    MARKER,
    OLD,
    OWN_NAMES,
    PARTIAL,
    STORE_ENTRIES,
    STORE_FORMAT,
    PrepConfig,
)
from meshtalk.pipelines.errors import MeshtalkError
from meshtalk.pipelines.io.atomic import write_text_atomic

log = logging.getLogger(__name__)


def _settings_digest(config: PrepConfig) -> str:
    settings = {
        k: str(v)
        for k, v in asdict(config).items()
        if k not in ("workers", "force", "progress", "output")
    }
    for key in ("crop", "landmarks", "splits"):
        path = Path(str(getattr(config, key)))
        if path.is_file():
            settings[key + "_content"] = hashlib.sha256(path.read_bytes()).hexdigest()
    settings["format"] = STORE_FORMAT
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def open_partial(config: PrepConfig) -> Path:
    partial = config.output / PARTIAL
    digest = _settings_digest(config)
    settings_file = partial / "settings.digest"
    if partial.exists() and (not settings_file.is_file() or settings_file.read_text() != digest):
        log.info("settings changed since the interrupted run: starting %s afresh", partial)
        shutil.rmtree(partial)
    (partial / "identities").mkdir(parents=True, exist_ok=True)
    write_text_atomic(settings_file, digest)
    return partial


def is_store(folder: Path) -> bool:
    """True if `folder` holds a complete store: a manifest with prep's format key."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(manifest, dict) and "format" in manifest


def check_output(config: PrepConfig) -> None:
    """Refuse an output that overlaps the dataset or holds files prep did not make."""
    out, root = config.output.resolve(), config.root.resolve()
    if out == root or root in out.parents or out in root.parents:
        raise MeshtalkError(
            config.output,
            f"the output must not be, contain or lie inside the dataset ({config.root})",
        )
    if not out.exists():
        return
    if not out.is_dir():
        raise MeshtalkError(config.output, "exists and is not a folder")
    ours = (out / MARKER).is_file() or is_store(out)
    if not ours and any(entry.name not in OWN_NAMES for entry in out.iterdir()):
        raise MeshtalkError(
            config.output,
            "is a folder of other files, not a meshtalk store; prep writes only into a new or "
            "empty folder or a store it made (--force replaces only a store)",
        )


def make_output(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise MeshtalkError(
            out, f"cannot create the output folder ({error.strerror or error})"
        ) from None
    if not os.access(out, os.W_OK | os.X_OK):
        raise MeshtalkError(out, "cannot write into the output folder (no permission or read-only)")


def move(source: Path, target: Path) -> None:
    """One rename of the store's replacement (a single place, so tests can stop between them)."""
    os.replace(source, target)


def discard(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif os.path.lexists(path):
        path.unlink()


def swap_in(out: Path) -> None:
    """Move the finished store from `.partial` into `out`, the old one aside, the manifest last.

    Safe to repeat after an interruption at any point: an entry still in `.partial` is new, so the
    one of that name in `out` is old (old entries all leave before new ones arrive), and a manifest
    in `out` while `.partial` still has one is the old one.
    """
    partial, old = out / PARTIAL, out / OLD
    old.mkdir(exist_ok=True)
    if (out / MANIFEST).exists():
        discard(old / MANIFEST)
        move(out / MANIFEST, old / MANIFEST)  # first: the folder never looks complete meanwhile
    for name in STORE_ENTRIES:
        if os.path.lexists(partial / name) and os.path.lexists(out / name):
            discard(old / name)
            move(out / name, old / name)
    for name in STORE_ENTRIES:
        if os.path.lexists(partial / name):
            move(partial / name, out / name)
    move(partial / MANIFEST, out / MANIFEST)
    shutil.rmtree(old)
    shutil.rmtree(partial)


def recover(out: Path) -> None:
    """Finish a replacement that an earlier run began, or undo what it cannot finish."""
    partial, old = out / PARTIAL, out / OLD
    if not old.exists():
        # A build finished but not yet moved in: its last step is redone, to the same bytes.
        (partial / MANIFEST).unlink(missing_ok=True)
        return
    if (partial / MANIFEST).is_file():
        log.info("finishing the replacement of %s that an earlier run began", out)
        swap_in(out)
    elif (out / MANIFEST).is_file():
        shutil.rmtree(old)  # the replacement was complete
        shutil.rmtree(partial, ignore_errors=True)
    else:
        for name in STORE_ENTRIES + (MANIFEST,):  # manifest last: complete again only at the end
            if os.path.lexists(old / name):
                discard(out / name)
                move(old / name, out / name)
        shutil.rmtree(old)
