"""The real clients the export tests open our files with: Blender, Khronos glTF-Validator, three.js.

Installed by `.ci/run` (or by hand, the same commands) under `$MESHTALK_VENV_CACHE` (as `.ci/run`;
default `~/.cache/meshtalk-ci/`):

- `bpy-5.0.1/`: a virtualenv of Blender as a Python module (`pip install bpy==5.0.1 'numpy<2'`;
  bpy needs numpy < 2, the project 2.x, so it runs as a subprocess);
- `node-<hash of package-lock.json>/`: `npm ci` of this folder's package.json (gltf-validator,
  three r187), run with Node (20 here).

Use from a test:

    from tests import clients
    clients.require("blender")                       # skips with the reason if missing
    positions = clients.blender_positions("glb", path, fps, frames)   # (frames, V, 3)
    report = clients.validate_glb(path)             # the validator's JSON report
    clients.glb_issues(report)                      # {'numErrors': 0, ...}
    positions = clients.three_positions(path, fps, [0, 10, 99])

`blender(script, *args)` runs any bpy script of this folder (or a path) and returns its stdout.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
BPY_VERSION = "5.0.1"
NODE_SCRIPTS = ("validate.mjs", "three_positions.mjs")


def cache_root() -> Path:
    return Path(os.environ.get("MESHTALK_VENV_CACHE", Path.home() / ".cache" / "meshtalk-ci"))


def bpy_python() -> Path:
    """The Python of Blender's virtualenv (it may not exist)."""
    return cache_root() / f"bpy-{BPY_VERSION}" / "bin" / "python"


def node_folder() -> Path:
    """Where `npm ci` of this folder's lock file installed (keyed by the lock's hash)."""
    digest = hashlib.sha256((HERE / "package-lock.json").read_bytes()).hexdigest()[:16]
    return cache_root() / f"node-{digest}"


def missing(client: str) -> str | None:
    """Why `client` ('blender', 'validator', 'three') cannot run here, or None."""
    if client == "blender":
        python = bpy_python()
        if not python.is_file():
            return (
                f"Blender (bpy {BPY_VERSION}) is not installed in {python.parent.parent} (.ci/run)"
            )
        return None
    if shutil.which("node") is None:
        return "node is not on the PATH (the glTF validator and three.js run in Node)"
    package = {"validator": "gltf-validator", "three": "three"}[client]
    if not (node_folder() / "node_modules" / package / "package.json").is_file():
        return f"npm package {package} is not installed in {node_folder()} (.ci/run)"
    return None


def require(client: str) -> None:
    """Skip the calling test, with the reason, when `client` is missing."""
    import pytest

    reason = missing(client)
    if reason is not None:
        pytest.skip(reason)


def blender(script: str | Path, *args, timeout: float = 600) -> str:
    """Run a bpy script (a name in this folder, or a path) in Blender's Python; its stdout.
    A failure raises with the script's stderr."""
    path = Path(script) if Path(script).is_absolute() else HERE / script
    done = subprocess.run(
        [str(bpy_python()), str(path), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if done.returncode != 0:
        raise RuntimeError(f"{path.name} failed ({done.returncode}): {done.stderr[-3000:]}")
    return done.stdout


def blender_positions(
    kind: str, path: Path, fps: float, frames: int, mesh: Path | None = None
) -> np.ndarray:
    """(frames, V, 3) positions Blender evaluates after importing `path` (see
    blender_positions.py: glb/usd in world coordinates turned back to +Y up, pc2 as cached)."""
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "positions.npy"
        extra = [] if mesh is None else [mesh]
        blender("blender_positions.py", kind, path, fps, frames, out, *extra)
        return np.load(out, allow_pickle=False)


def _node(script: str, *args, timeout: float = 300) -> str:
    folder = node_folder()
    for name in NODE_SCRIPTS:  # bare imports resolve from the script's folder: run them there
        shutil.copyfile(HERE / name, folder / name)
    done = subprocess.run(
        ["node", str(folder / script), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if done.returncode != 0:
        raise RuntimeError(f"{script} failed ({done.returncode}): {done.stderr[-3000:]}")
    return done.stdout


def validate_glb(path: Path) -> dict:
    """Khronos glTF-Validator's report on a GLB (`issues` holds the counts and messages)."""
    return json.loads(_node("validate.mjs", path))


def glb_issues(report: dict) -> dict:
    """The counts of a validator report: numErrors, numWarnings, numInfos, numHints."""
    issues = report["issues"]
    return {key: issues[key] for key in ("numErrors", "numWarnings", "numInfos", "numHints")}


def three_positions(path: Path, fps: float, frames: list[int]) -> np.ndarray:
    """(len(frames), V, 3) positions three.js r187 gives at those frames (GLTFLoader.parse,
    AnimationMixer.setTime(frame / fps), morphed on the CPU as its shader does)."""
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "positions.f32"
        _node("three_positions.mjs", path, fps, out, *frames)
        return np.fromfile(out, dtype="<f4").reshape(len(frames), -1, 3)
