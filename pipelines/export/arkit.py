"""ARKit's 52 blendshape names, matching a rig's target names to them, and the weights' files.

Names: Apple's `ARFaceAnchor.BlendShapeLocation` (camelCase, `eyeBlinkLeft` ... `tongueOut`), in
the order Unreal's `EARFaceBlendShape` and Live Link use. A rig's target matches a name
case-insensitively, also as `eyeBlink_L` / `eyeBlink_R` (ICT-FaceKit, many character tools) or with
a `blendShape.` / `ARKit_` prefix; any other target (`viseme_aa`, a corrective) is not ARKit's.

Files (each written atomically):

* Live Link Face CSV, as Epic's app writes it: `Timecode,BlendShapeCount`, the 52 names in
  PascalCase in Apple's order but with `JawRight,JawLeft` and `MouthRight,MouthLeft` in that order,
  then the nine head and eye rotations (0 here: meshtalk animates no head pose or gaze); 63
  columns, `BlendShapeCount` 61; timecodes `HH:MM:SS:FF.mmm` (FF: frame within the second at the
  animation's rate rounded to an integer, mmm: thousandths of a frame).
* Audio2Face-style JSON: `exportFps`, `numPoses`, `numFrames`, `facsNames` (the 52 names),
  `weightMat` [numFrames][numPoses].
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np

from meshtalk.pipelines.io.atomic import atomic_path

ARKIT_NAMES = (
    "eyeBlinkLeft",
    "eyeLookDownLeft",
    "eyeLookInLeft",
    "eyeLookOutLeft",
    "eyeLookUpLeft",
    "eyeSquintLeft",
    "eyeWideLeft",
    "eyeBlinkRight",
    "eyeLookDownRight",
    "eyeLookInRight",
    "eyeLookOutRight",
    "eyeLookUpRight",
    "eyeSquintRight",
    "eyeWideRight",
    "jawForward",
    "jawLeft",
    "jawRight",
    "jawOpen",
    "mouthClose",
    "mouthFunnel",
    "mouthPucker",
    "mouthLeft",
    "mouthRight",
    "mouthSmileLeft",
    "mouthSmileRight",
    "mouthFrownLeft",
    "mouthFrownRight",
    "mouthDimpleLeft",
    "mouthDimpleRight",
    "mouthStretchLeft",
    "mouthStretchRight",
    "mouthRollLower",
    "mouthRollUpper",
    "mouthShrugLower",
    "mouthShrugUpper",
    "mouthPressLeft",
    "mouthPressRight",
    "mouthLowerDownLeft",
    "mouthLowerDownRight",
    "mouthUpperUpLeft",
    "mouthUpperUpRight",
    "browDownLeft",
    "browDownRight",
    "browInnerUp",
    "browOuterUpLeft",
    "browOuterUpRight",
    "cheekPuff",
    "cheekSquintLeft",
    "cheekSquintRight",
    "noseSneerLeft",
    "noseSneerRight",
    "tongueOut",
)
"""ARKit's 52 blendshapes in Apple's (and Unreal's `EARFaceBlendShape`) order."""

LIVE_LINK_SWAPS = {"jawLeft": "jawRight", "jawRight": "jawLeft",
                   "mouthLeft": "mouthRight", "mouthRight": "mouthLeft"}  # fmt: skip
"""Live Link Face's CSV lists these pairs the other way round from Apple's order."""
HEAD_AND_EYES = ("HeadYaw", "HeadPitch", "HeadRoll", "LeftEyeYaw", "LeftEyePitch",
                 "LeftEyeRoll", "RightEyeYaw", "RightEyePitch", "RightEyeRoll")  # fmt: skip
"""The rotations after the blendshapes in a Live Link Face CSV."""
LIVE_LINK_ORDER = tuple(LIVE_LINK_SWAPS.get(name, name) for name in ARKIT_NAMES)
"""The 52 names in the order of Live Link Face's CSV columns."""
LIVE_LINK_COLUMNS = (
    "Timecode",
    "BlendShapeCount",
    *(name[0].upper() + name[1:] for name in LIVE_LINK_ORDER),
    *HEAD_AND_EYES,
)
"""The 63 columns of a Live Link Face CSV."""

_PREFIX = re.compile(r"^(blendshapes?[._]|arkit[._])", re.IGNORECASE)
_SIDE = re.compile(r"_(l|r)$", re.IGNORECASE)
_BY_KEY = {name.lower(): name for name in ARKIT_NAMES}


def arkit_name(target: str) -> str | None:
    """The ARKit name a rig's target stands for (`eyeBlink_L` -> `eyeBlinkLeft`), or None.

    Case is ignored; `_L`/`_R` suffixes read as Left/Right; a `blendShape.`, `blendShapes_` or
    `ARKit_` prefix is dropped.
    """
    key = _PREFIX.sub("", target.strip())
    key = _SIDE.sub(lambda side: "Left" if side.group(1).lower() == "l" else "Right", key)
    return _BY_KEY.get(key.lower())


def match_targets(names: list[str]) -> dict[str, int]:
    """ARKit name -> index of the rig's target carrying it (the first, where two spell one name).

    Targets that are not ARKit's are left out.
    """
    found: dict[str, int] = {}
    for index, name in enumerate(names):
        arkit = arkit_name(name)
        if arkit is not None and arkit not in found:
            found[arkit] = index
    return found


def timecode(frame: int, fps: float) -> str:
    """`HH:MM:SS:FF.mmm` of a frame at `fps` (FF at the rate rounded to an integer)."""
    seconds = frame / fps
    whole = math.floor(seconds + 1e-9)
    rate = max(1, round(fps))
    frames = (seconds - whole) * rate
    frame_index = min(math.floor(frames + 1e-9), rate - 1)
    thousandths = min(round((frames - frame_index) * 1000), 999)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}:{frame_index:02d}.{thousandths:03d}"


def arkit_weights(weights: np.ndarray, names: list[str]) -> np.ndarray:
    """(T, 52) weights in `ARKIT_NAMES` order from (T, K) weights of ARKit `names` (others 0)."""
    full = np.zeros((len(weights), len(ARKIT_NAMES)), dtype=np.float64)
    for column, name in enumerate(names):
        full[:, ARKIT_NAMES.index(name)] = weights[:, column]
    return full


def write_live_link_csv(path: str | Path, weights: np.ndarray, fps: float) -> None:
    """A Live Link Face CSV of (T, 52) weights in `ARKIT_NAMES` order."""
    columns = [ARKIT_NAMES.index(name) for name in LIVE_LINK_ORDER]
    ordered = np.asarray(weights, dtype=np.float64)[:, columns]
    rest = ",".join(["0"] * len(HEAD_AND_EYES))
    count = len(ARKIT_NAMES) + len(HEAD_AND_EYES)
    lines = [",".join(LIVE_LINK_COLUMNS)]
    for frame, row in enumerate(ordered):
        values = ",".join(f"{value:.6f}" for value in row)
        lines.append(f"{timecode(frame, fps)},{count},{values},{rest}")
    with atomic_path(path) as tmp:
        tmp.write_text("\n".join(lines) + "\n")


def write_a2f_json(path: str | Path, weights: np.ndarray, fps: float) -> None:
    """An Audio2Face-style JSON of (T, 52) weights in `ARKIT_NAMES` order."""
    weights = np.asarray(weights, dtype=np.float64)
    document = {
        "exportFps": fps,
        "numPoses": len(ARKIT_NAMES),
        "numFrames": len(weights),
        "facsNames": list(ARKIT_NAMES),
        "weightMat": np.round(weights, 6).tolist(),
    }
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(document) + "\n")
