"""Expression weights of the ICT-FaceKit head over time: the mouth from eSpeak NG's phonemes
through a viseme table with coarticulation, and the upper face's events (blinks, brow raises and
frowns, eye saccades, a slow drift), which are independent of the audio.

Visemes are ARKit weights. Coarticulation follows the dominance model of Cohen and Massaro (1993):
each phone pulls every weight towards its viseme's target with a dominance that is full during
the phone and decays exponentially before it (anticipation, slower) and after it (carry-over,
faster); the weight is the dominance-weighted mean of the targets. Lip closures (p, b, m) and the
lip-teeth contact of f and v dominate strongly within their phone, so they are reached even in
fast speech, while their pull on the neighbouring vowels is an ordinary phone's.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from meshtalk.pipelines.data.layout import FPS
from meshtalk.pipelines.data.synth.espeak import DIPHTHONGS, Utterance
from meshtalk.pipelines.data.synth.events import event_curve, expression_drift, poisson_onsets


def _both(name: str, value: float) -> dict[str, float]:
    return {f"{name}_L": value, f"{name}_R": value}


VISEMES: dict[str, dict[str, float]] = {
    "sil": {},
    "aa": {"jawOpen": 0.5, **_both("mouthLowerDown", 0.3), **_both("mouthUpperUp", 0.12)},
    "E": {"jawOpen": 0.32, **_both("mouthStretch", 0.25), **_both("mouthLowerDown", 0.2)},
    "I": {"jawOpen": 0.14, **_both("mouthStretch", 0.4), **_both("mouthSmile", 0.25)},
    "O": {"jawOpen": 0.38, "mouthFunnel": 0.55, "mouthPucker": 0.25},
    "U": {"jawOpen": 0.12, "mouthPucker": 0.75, "mouthFunnel": 0.35},
    "PP": {"jawOpen": 0.08, "mouthClose": 0.09, **_both("mouthPress", 0.35)},
    "FF": {"jawOpen": 0.07, "mouthRollLower": 0.55, **_both("mouthUpperUp", 0.2)},
    "TH": {"jawOpen": 0.16, **_both("mouthStretch", 0.1)},
    "DD": {"jawOpen": 0.13, **_both("mouthStretch", 0.15)},
    "SS": {"jawOpen": 0.05, **_both("mouthStretch", 0.35), **_both("mouthSmile", 0.1)},
    "SH": {"jawOpen": 0.09, "mouthFunnel": 0.5, "mouthPucker": 0.2, **_both("mouthUpperUp", 0.2)},
    "kk": {"jawOpen": 0.2, **_both("mouthStretch", 0.1)},
    "RR": {"jawOpen": 0.12, "mouthFunnel": 0.3, "mouthPucker": 0.25},
}
"""ARKit expression weights of each viseme at its target (names as in ICT-FaceKit)."""

DOMINANCE = {"sil": 4.0, "PP": 12.0, "FF": 6.0, "O": 1.5, "U": 1.5, "SH": 1.2}
"""How strongly a viseme holds its target against its neighbours (1 where not listed)."""
ANTICIPATION_S, CARRY_OVER_S = 0.08, 0.05
"""Time constants of the dominance before and after a phone."""
HOLD_S = 0.015
"""How fast a strong viseme's extra dominance fades outside its phone."""

VISEME_OF = {
    **dict.fromkeys(["a", "a#", "A:", "A@", "aa", "{", "V", "A"], "aa"),
    **dict.fromkeys(["E", "e", "e@", "3:", "3", "@", "@2", "@5", "a2", "@L", "E2", "E@"], "E"),
    **dict.fromkeys(["i", "i:", "I", "I2", "I#", "i@", "j", "i@3"], "I"),
    **dict.fromkeys(["0", "O", "O:", "O@", "o", "o@", "0#", "O2"], "O"),
    **dict.fromkeys(["u", "u:", "U", "U@", "w", "u@"], "U"),
    **dict.fromkeys(["p", "b", "m", "m-"], "PP"),
    **dict.fromkeys(["f", "v"], "FF"),
    **dict.fromkeys(["T", "D"], "TH"),
    **dict.fromkeys(["t", "d", "n", "l", "t#", "d#", "n-", "l-", "*"], "DD"),
    **dict.fromkeys(["s", "z", "s2"], "SS"),
    **dict.fromkeys(["S", "Z", "tS", "dZ"], "SH"),
    **dict.fromkeys(["k", "g", "N", "h", "x", "?", "n^"], "kk"),
    **dict.fromkeys(["r", "R", "r-"], "RR"),
}
"""eSpeak NG's English phoneme mnemonics -> viseme (anything else: 'sil')."""
HALF_VISEME = {"a": "aa", "e": "E", "i": "I", "o": "O", "u": "U"}
"""Diphthong halves (`espeak.DIPHTHONGS`) -> viseme."""


@dataclass
class VisemePhone:
    """A phone on the viseme table: espeak's mnemonic, its viseme, start and length (s)."""

    phoneme: str
    viseme: str
    start: float
    duration: float


def viseme_phones(utterance: Utterance, offset: float = 0.0) -> list[VisemePhone]:
    """espeak's timed phonemes as visemes (diphthongs split in two halves), shifted by `offset`."""
    end = len(utterance.samples) / utterance.rate
    timed = [p for p in utterance.phonemes if p.name]
    phones = []
    for index, phoneme in enumerate(timed):
        stop = timed[index + 1].start if index + 1 < len(timed) else end
        duration = stop - phoneme.start
        if duration <= 0:
            continue
        name = phoneme.name.lstrip("',")
        start = offset + phoneme.start
        if name in DIPHTHONGS:
            for k, half in enumerate(DIPHTHONGS[name]):
                viseme = HALF_VISEME[half]
                phones.append(VisemePhone(name, viseme, start + k * duration / 2, duration / 2))
        else:
            phones.append(VisemePhone(name, VISEME_OF.get(name, "sil"), start, duration))
    return phones


def mouth_weights(
    phones: list[VisemePhone], times: np.ndarray, names: tuple[str, ...]
) -> np.ndarray:
    """Mouth expression weights (T, E) at `times` (s) from the phones, coarticulated."""
    targets = np.zeros((len(phones) + 2, len(names)))
    dominance = np.zeros((len(phones) + 2, len(times)))

    def pull(viseme: str, before: np.ndarray, after: np.ndarray) -> np.ndarray:
        # Full strength in the phone; outside it a strong viseme's extra weight fades within
        # HOLD_S, so it is reached in its phone without swallowing its neighbours' vowels.
        distance = before + after
        strength = 1.0 + (DOMINANCE.get(viseme, 1.0) - 1.0) * np.exp(-distance / HOLD_S)
        return strength * np.exp(-before / ANTICIPATION_S - after / CARRY_OVER_S)

    # Silence before the first and after the last phone.
    first = phones[0].start if phones else np.inf
    last = phones[-1].start + phones[-1].duration if phones else -np.inf
    zero = np.zeros_like(times)
    dominance[0] = pull("sil", zero, np.maximum(times - first, 0))
    dominance[1] = pull("sil", np.maximum(last - times, 0), zero)
    for row, phone in enumerate(phones, start=2):
        for name, value in VISEMES[phone.viseme].items():
            targets[row, names.index(name)] = value
        before = np.maximum(phone.start - times, 0.0)
        after = np.maximum(times - phone.start - phone.duration, 0.0)
        dominance[row] = pull(phone.viseme, before, after)
    dominance += 1e-9
    return (dominance.T @ targets) / dominance.sum(0)[:, None]


@dataclass
class UpperFaceEvents:
    """The upper face's events of one segment (onsets in s) and its gaze (T, 2) over time."""

    blink_onsets: np.ndarray
    brow_onsets: np.ndarray
    frown_onsets: np.ndarray
    gaze: np.ndarray
    """Per frame: horizontal (towards the face's left, +) and vertical (up, +) gaze in [-1, 1]."""


def saccades(rng: np.random.Generator, times: np.ndarray) -> np.ndarray:
    """Gaze (T, 2): fixations of 0.3-2.5 s, jumping to a new target in about two frames."""
    gaze = np.zeros((len(times), 2))
    current, t = np.zeros(2), 0.0
    duration = float(times[-1]) + 1.0 / FPS if len(times) else 0.0
    while t < duration:
        target = np.array(
            [np.clip(rng.normal(0, 0.3), -0.7, 0.7), np.clip(rng.normal(0, 0.18), -0.5, 0.5)]
        )
        ramp = np.clip((times - t) / 0.05, 0.0, 1.0)[:, None]
        gaze = np.where((times >= t)[:, None], current + ramp * (target - current), gaze)
        current = target
        t += rng.uniform(0.3, 2.5)
    return gaze


def upper_face_events(
    rng: np.random.Generator,
    times: np.ndarray,
    blinks_per_minute: float,
    brow_raises_per_minute: float,
    frowns_per_minute: float,
) -> UpperFaceEvents:
    """Poisson blinks, brow raises and frowns over `times`, and saccades."""
    duration = float(times[-1]) + 1.0 / FPS if len(times) else 0.0
    return UpperFaceEvents(
        blink_onsets=poisson_onsets(rng, blinks_per_minute, duration, gap=0.6),
        brow_onsets=poisson_onsets(rng, brow_raises_per_minute, duration, gap=1.5),
        frown_onsets=poisson_onsets(rng, frowns_per_minute, duration, gap=1.5),
        gaze=saccades(rng, times),
    )


def upper_face_weights(
    events: UpperFaceEvents,
    times: np.ndarray,
    names: tuple[str, ...],
    drift_rng: np.random.Generator | None,
    drift: float,
) -> np.ndarray:
    """Upper-face expression weights (T, E): blinks, brows, frowns, gaze and the slow drift."""
    weights = np.zeros((len(times), len(names)))

    def add(name: str, curve: np.ndarray) -> None:
        weights[:, names.index(name)] += curve

    blink = event_curve(times, events.blink_onsets, 0.03, 0.07, 0.12)
    raise_ = event_curve(times, events.brow_onsets, 0.3, 0.2, 0.3)
    frown = event_curve(times, events.frown_onsets, 0.4, 0.2, 0.3)
    brow_level = np.zeros(len(times))
    squint = np.zeros(len(times))
    if drift > 0 and drift_rng is not None:
        brow_level, squint = expression_drift(drift_rng, len(times), drift)
    up = 0.7 * raise_ + np.clip(brow_level, 0, None)
    down = 0.6 * frown + np.clip(-brow_level, 0, None)
    for side in ("_L", "_R"):
        add("browInnerUp" + side, up)
        add("browOuterUp" + side, 0.7 * up)
        add("browDown" + side, down)
        add("eyeSquint" + side, 0.5 * squint)
        add("cheekSquint" + side, 0.3 * squint)
    # Eyelids close over the squint; a blink closes them fully.
    closed = np.maximum(blink, 0.35 * squint)
    horizontal, vertical = events.gaze[:, 0], events.gaze[:, 1]
    left, right = np.clip(horizontal, 0, None), np.clip(-horizontal, 0, None)
    add("eyeLookOut_L", left)
    add("eyeLookIn_R", left)
    add("eyeLookIn_L", right)
    add("eyeLookOut_R", right)
    for side in ("_L", "_R"):
        add("eyeLookUp" + side, np.clip(vertical, 0, None))
        add("eyeLookDown" + side, np.clip(-vertical, 0, None))
        add("eyeBlink" + side, closed)
    return np.clip(weights, 0.0, 1.0)
