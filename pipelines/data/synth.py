"""`meshtalk synth`: a procedural talking-face dataset in the exact Multiface layout.

Every sentence is a sequence of phones (vowels with formants, plosives, fricatives, pauses).
The same phone timeline drives both the audio (a formant synthesiser) and the mouth (jaw
opening, lip rounding, spreading and closure), so lips are a deterministic function of the audio.
Blinks and brow raises are Poisson events independent of the audio, and a mild head motion goes
into the `_transform.txt` head poses. Ground truth is written to `OUT/ground_truth/`.

Faces are a template plus a weighted sum of motion fields (`MotionBasis`): one field per
articulation parameter, built from the region masks of the topology.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from meshtalk.pipelines.data.masks import build_masks, read_mask_dir, write_mask_dir
from meshtalk.pipelines.data.topology import (
    MESHTALK_NUM_VERTICES,
    MULTIFACE_NUM_VERTICES,
    expand_to_multiface,
    kept_vertices,
)
from meshtalk.pipelines.errors import MeshtalkError
from meshtalk.pipelines.io.atomic import write_text_atomic
from meshtalk.pipelines.io.audio import write_wav
from meshtalk.pipelines.io.mesh import Mesh, read_mesh, write_bin, write_mesh, write_transform

log = logging.getLogger(__name__)

FPS = 30
AUDIO_RATE = 48_000
CONTROL_RATE = 1000  # articulation curves are built at 1 kHz, then sampled
NEUTRAL_SEGMENT = "E001_Neutral_Eyes_Open"
MOUTH_PARAMS = ("jaw", "round", "spread", "closure")
EVENT_PARAMS = ("blink", "brow")
MOTION_PARAMS = MOUTH_PARAMS + EVENT_PARAMS
BLINK, BROW = (MOTION_PARAMS.index(name) for name in ("blink", "brow"))
"""Columns of the blink and brow-raise parameters."""


@dataclass
class SynthConfig:
    """Settings of `meshtalk synth`."""

    output: Path
    """Directory to write the dataset into (one folder per identity)."""
    identities: int = 2
    """Number of identities (each with its own face shape and voice; the first is the template)."""
    sentences: int = 4
    """Number of `SEN_*` speech segments per identity (the same sentences for everyone)."""
    seed: int = 0
    """Random seed; the same seed gives byte-identical data."""
    template: Path | None = None
    """Template mesh to deform (PLY/OBJ); None for the built-in face topology."""
    masks: Path | None = None
    """Mask directory for `template` (the authors' file names); required with a template."""
    multiface_topology: bool = False
    """Write 7306-vertex Multiface meshes that the 'meshtalk' crop turns back into the template."""
    grid: int = 48
    """Resolution of the built-in face (grid x grid vertices)."""
    neutral_frames: int = 30
    """Frames in the neutral segment."""
    min_words: int = 4
    """Fewest words per sentence."""
    max_words: int = 8
    """Most words per sentence."""
    frame_step: int = 3
    """Step between the ids of consecutive frames, as in Multiface."""
    drop_rate: float = 0.02
    """Fraction of captured frames whose tracked mesh is missing (never the first frame)."""
    blinks_per_minute: float = 15.0
    """Mean rate of eye blinks (Poisson, independent of the audio)."""
    brow_raises_per_minute: float = 6.0
    """Mean rate of brow raises (Poisson, independent of the audio)."""
    expression_drift: float = 0.0
    """Std of a slow, speech-independent upper-face expression: brow level (raised or lowered) and
    squint (eyelids partly closed), in units of a full brow raise and a full blink; 0 for none."""
    head_motion: bool = True
    """Write a mild head motion into the transforms (identity transforms otherwise)."""

    def __post_init__(self) -> None:
        self.output = Path(self.output)
        problems = []
        if self.identities < 1:
            problems.append(f"--identities must be at least 1, got {self.identities}")
        if self.sentences < 1:
            problems.append(f"--sentences must be at least 1, got {self.sentences}")
        if (self.template is None) != (self.masks is None):
            problems.append("--template and --masks go together")
        if self.multiface_topology and self.template is None:
            problems.append("--multiface-topology needs --template (the MeshTalk topology)")
        if not 0 <= self.drop_rate < 0.5:
            problems.append(f"--drop-rate must be in [0, 0.5), got {self.drop_rate}")
        if not 0 <= self.expression_drift <= 1:
            problems.append(f"--expression-drift must be in [0, 1], got {self.expression_drift}")
        if self.grid < 16:
            problems.append(f"--grid must be at least 16, got {self.grid}")
        if self.min_words < 1 or self.max_words < self.min_words:
            problems.append(f"words per sentence {self.min_words}..{self.max_words} is empty")
        if problems:
            raise MeshtalkError(None, "; ".join(problems))


# --- the built-in face ------------------------------------------------------------------------


def builtin_face(grid: int) -> tuple[Mesh, dict[str, list[int]]]:
    """A procedural neutral face (mm) on a grid, and its landmark vertices.

    Returns:
        The mesh (x right, y up, z towards the viewer) and landmarks in the format of
        `masks.load_landmarks`.
    """
    u, v = np.meshgrid(np.linspace(-1, 1, grid), np.linspace(-1, 1, grid))
    x = 72.0 * u * (1.0 - 0.25 * np.clip(-v, 0, 1))  # narrower towards the chin
    y = 105.0 * v
    z = 55.0 * np.sqrt(np.clip(1.0 - 0.75 * u**2 - 0.35 * v**2, 0.0, None))
    z += 16.0 * np.exp(-(u**2) / 0.012 - (v - 0.08) ** 2 / 0.05)  # nose
    for side in (-1, 1):  # eye sockets
        z -= 5.0 * np.exp(-((u - 0.38 * side) ** 2) / 0.02 - (v - 0.3) ** 2 / 0.004)
    z += 6.0 * np.exp(-(u**2) / 0.08 - (v + 0.32) ** 2 / 0.01)  # lips
    vertices = np.stack([x, y, z], axis=-1).reshape(-1, 3).astype(np.float32)
    index = np.arange(grid * grid).reshape(grid, grid)
    a, b, c, d = index[:-1, :-1], index[:-1, 1:], index[1:, :-1], index[1:, 1:]
    faces = np.concatenate(
        [np.stack([a, b, d], -1).reshape(-1, 3), np.stack([a, d, c], -1).reshape(-1, 3)]
    )

    def nearest(points_uv: list[tuple[float, float]]) -> list[int]:
        flat_u, flat_v = u.ravel(), v.ravel()
        ids = [int(np.argmin((flat_u - pu) ** 2 + (flat_v - pv) ** 2)) for pu, pv in points_uv]
        return list(dict.fromkeys(ids))

    angles = np.linspace(0, 2 * np.pi, 16, endpoint=False)
    landmarks = {
        "lip_outer": nearest([(0.3 * np.cos(t), -0.32 + 0.09 * np.sin(t)) for t in angles]),
        "left_eyelid": nearest(
            [(-0.38 + 0.13 * np.cos(t), 0.3 + 0.05 * np.sin(t)) for t in angles]
        ),
        "right_eyelid": nearest(
            [(0.38 + 0.13 * np.cos(t), 0.3 + 0.05 * np.sin(t)) for t in angles]
        ),
        "brows": nearest([(s * w, 0.45) for s in (-1, 1) for w in (0.2, 0.38, 0.55)]),
        "chin": nearest([(s * w, -0.72 + 0.1 * w) for s in (-1, 1) for w in (0.0, 0.25, 0.5)]),
    }
    return Mesh(vertices=vertices, faces=faces.astype(np.int64)), landmarks


# --- motion fields ------------------------------------------------------------------------------


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(x, -60, 60)))


@dataclass
class MotionBasis:
    """One displacement field (V, 3) per motion parameter: face = template + sum(p_k * field_k)."""

    names: tuple[str, ...]
    fields: np.ndarray  # (K, V, 3) float32

    def apply(self, template: np.ndarray, params: np.ndarray) -> np.ndarray:
        """Faces (T, V, 3) for parameters (T, K)."""
        flat = params.astype(np.float32) @ self.fields.reshape(len(self.names), -1)
        return template[None] + flat.reshape(len(params), *template.shape)


def motion_basis(vertices: np.ndarray, masks: dict[str, np.ndarray]) -> MotionBasis:
    """Motion fields of jaw, rounding, spreading, lip closure, blink and brow raise for a face."""
    v = vertices.astype(np.float64)
    mouth = masks["mouth"].astype(np.float64)
    lips = mouth > 0.5
    if lips.sum() < 3 or (masks["eyelids"] > 0.5).sum() < 2:
        raise MeshtalkError(None, "masks mark no lips or no eyelids: cannot animate this face")
    mouth_centre = (v[lips] * mouth[lips, None]).sum(0) / mouth[lips].sum()
    eyelid_points = v[masks["eyelids"] > 0.5]
    centred = eyelid_points - eyelid_points.mean(0)
    lateral_axis = np.linalg.svd(centred, full_matrices=False)[2][0]
    side = centred @ lateral_axis > 0
    eye_centres = [eyelid_points[~side].mean(0), eyelid_points[side].mean(0)]
    eye_mid = (eye_centres[0] + eye_centres[1]) / 2
    iod = float(np.linalg.norm(eye_centres[1] - eye_centres[0]))
    up = eye_mid - mouth_centre
    up /= np.linalg.norm(up)
    right = eye_centres[1] - eye_centres[0]
    right -= up * (right @ up)
    right /= np.linalg.norm(right)
    forward = np.cross(right, up)
    if (mouth_centre - v.mean(0)) @ forward < 0:
        forward = -forward

    rel = v - mouth_centre
    height, lateral = rel @ up, rel @ right
    lower = _sigmoid(-height / (0.02 * iod))
    broad_mouth = np.sqrt(np.clip(mouth, 0, 1))
    fields = {
        "jaw": (lower * broad_mouth)[:, None] * (-0.2 * iod * up - 0.04 * iod * forward)
        + ((1 - lower) * mouth)[:, None] * (0.03 * iod * up),
        "round": mouth[:, None]
        * (-0.3 * lateral[:, None] * right[None] + 0.08 * iod * forward[None]),
        "spread": mouth[:, None]
        * (0.15 * lateral[:, None] * right[None] - 0.02 * iod * forward[None]),
        "closure": (mouth * np.exp(-np.abs(height) / (0.1 * iod)) * -np.sign(height))[:, None]
        * (0.05 * iod * up),
    }
    blink = np.zeros_like(v)
    for centre in eye_centres:
        rel_eye = v - centre
        near = np.exp(-((np.linalg.norm(rel_eye, axis=1) / (0.16 * iod)) ** 2))
        above = _sigmoid((rel_eye @ up) / (0.01 * iod))
        blink += (near * above)[:, None] * (-0.11 * iod * up)
        blink += (near * (1 - above))[:, None] * (0.02 * iod * up)
    fields["blink"] = blink
    brow_height = (v - eye_mid) @ up
    frontal = np.exp(-((((v - eye_mid) @ right) / (0.9 * iod)) ** 4))
    brow = np.exp(-(((brow_height - 0.35 * iod) / (0.25 * iod)) ** 2)) * frontal
    fields["brow"] = brow[:, None] * (0.08 * iod * up)
    names = MOTION_PARAMS
    return MotionBasis(names, np.stack([fields[n] for n in names]).astype(np.float32))


# --- speech -------------------------------------------------------------------------------------

# Vowels: jaw opening, rounding, spreading, F1, F2, F3 (Hz).
VOWELS = {
    "a": (1.0, 0.0, 0.2, 750, 1250, 2600),
    "e": (0.55, 0.0, 0.6, 500, 1850, 2600),
    "i": (0.25, 0.0, 1.0, 300, 2250, 3000),
    "o": (0.6, 0.8, 0.0, 500, 900, 2500),
    "u": (0.3, 1.0, 0.0, 320, 800, 2400),
}
# Consonants: kind, lip closure, jaw, noise band (Hz) for fricatives and bursts.
CONSONANTS = {
    "p": ("plosive", 1.0, 0.05, (500, 4000)),
    "b": ("plosive", 1.0, 0.05, (300, 3000)),
    "m": ("nasal", 1.0, 0.05, None),
    "t": ("plosive", 0.0, 0.2, (2500, 7000)),
    "k": ("plosive", 0.0, 0.25, (1500, 4000)),
    "s": ("fricative", 0.0, 0.1, (4000, 9000)),
    "f": ("fricative", 0.6, 0.1, (1500, 7000)),
}


@dataclass
class Phone:
    """One phone of a sentence: start and duration in seconds."""

    symbol: str
    start: float
    duration: float


def sentence_words(rng: np.random.Generator, min_words: int, max_words: int) -> list[str]:
    """A random sentence of pseudo-words built from consonant-vowel syllables."""
    words = []
    for _ in range(rng.integers(min_words, max_words + 1)):
        syllables = []
        for _ in range(rng.integers(1, 4)):
            onset = rng.choice([*CONSONANTS, ""], p=[0.14] * 7 + [0.02])
            syllables.append(onset + rng.choice(list(VOWELS)))
        words.append("".join(syllables))
    return words


def phone_timeline(
    words: list[str], rate: float, rng: np.random.Generator
) -> tuple[list[Phone], float]:
    """Timed phones of a sentence (pauses as ' '), and its total duration in seconds."""
    phones: list[Phone] = []
    t = rng.uniform(0.25, 0.4)  # silence before speech
    for index, word in enumerate(words):
        if index:
            pause = rng.uniform(0.06, 0.18) / rate
            phones.append(Phone(" ", t, pause))
            t += pause
        for symbol in word:
            if symbol in VOWELS:
                duration = rng.uniform(0.11, 0.2)
            elif CONSONANTS[symbol][0] == "plosive":
                duration = rng.uniform(0.06, 0.09)
            else:
                duration = rng.uniform(0.07, 0.12)
            phones.append(Phone(symbol, t, duration / rate))
            t += duration / rate
    return phones, t + rng.uniform(0.3, 0.45)


def _gaussian_kernel(sigma_samples: float) -> np.ndarray:
    radius = int(3 * sigma_samples) + 1
    kernel = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma_samples) ** 2)
    return kernel / kernel.sum()


def _gaussian_smooth(curve: np.ndarray, sigma_samples: float) -> np.ndarray:
    kernel = _gaussian_kernel(sigma_samples)
    radius = len(kernel) // 2
    padded = np.pad(curve, (radius, radius), mode="edge")
    return np.convolve(padded, kernel, mode="valid")


def articulation(phones: list[Phone], duration: float) -> dict[str, np.ndarray]:
    """Control curves at CONTROL_RATE: mouth parameters and the synthesiser's source settings."""
    n = int(np.ceil(duration * CONTROL_RATE)) + 1
    curves = {
        name: np.zeros(n)
        for name in ("jaw", "round", "spread", "closure", "voice", "noise", "nasal")
    }
    formants = np.tile(np.array([500.0, 1500.0, 2500.0]), (n, 1))
    noise_band = np.zeros((n, 2))
    curves["jaw"][:] = 0.05
    for phone in phones:
        a, b = int(phone.start * CONTROL_RATE), int((phone.start + phone.duration) * CONTROL_RATE)
        if phone.symbol in VOWELS:
            jaw, rnd, spread, f1, f2, f3 = VOWELS[phone.symbol]
            curves["jaw"][a:b], curves["round"][a:b], curves["spread"][a:b] = jaw, rnd, spread
            curves["voice"][a:b] = 1.0
            formants[a:b] = (f1, f2, f3)
        elif phone.symbol in CONSONANTS:
            kind, closure, jaw, band = CONSONANTS[phone.symbol]
            curves["closure"][a:b], curves["jaw"][a:b] = closure, jaw
            if kind == "nasal":
                curves["nasal"][a:b] = 1.0
            elif kind == "fricative":
                curves["noise"][a:b] = 0.5
                noise_band[a:b] = band
            else:  # silence while closed, then a short burst
                burst = max(a, b - int(0.015 * CONTROL_RATE))
                curves["noise"][burst:b] = 0.8
                noise_band[burst:b] = band
    mouth_sigma = 0.025 * CONTROL_RATE  # coarticulation
    for name in MOUTH_PARAMS:
        curves[name] = _gaussian_smooth(curves[name], mouth_sigma)
    for name in ("voice", "noise", "nasal"):
        curves[name] = _gaussian_smooth(curves[name], 0.006 * CONTROL_RATE)
    for k in range(3):
        formants[:, k] = _gaussian_smooth(formants[:, k], 0.012 * CONTROL_RATE)
    curves["formants"] = formants
    curves["noise_band"] = noise_band
    return curves


def synthesise_audio(
    curves: dict[str, np.ndarray], duration: float, f0: float, rng: np.random.Generator
) -> np.ndarray:
    """A formant synthesiser: harmonics of a gliding f0 shaped by three formants, plus noise."""
    n = int(round(duration * AUDIO_RATE))
    t_audio = np.arange(n) / AUDIO_RATE
    t_control = np.arange(len(curves["voice"])) / CONTROL_RATE

    def at_audio_rate(curve: np.ndarray) -> np.ndarray:
        return np.interp(t_audio, t_control, curve)

    def glide(t: np.ndarray) -> np.ndarray:  # declining intonation with a slow vibrato
        return f0 * (1.1 - 0.2 * t / max(duration, 1e-3)) * (1 + 0.03 * np.sin(2 * np.pi * 3.1 * t))

    phase = 2 * np.pi * np.cumsum(glide(t_audio)) / AUDIO_RATE
    # Harmonic amplitudes change slowly: compute them at the control rate, then interpolate.
    pitch = glide(t_control)
    formants = curves["formants"]
    signal = np.zeros(n)
    for k in range(1, int(5000 / f0) + 1):
        frequency = k * pitch
        gain = sum(
            1.0 / np.sqrt((1 - (frequency / fk) ** 2) ** 2 + (frequency / (fk * 8)) ** 2)
            for fk in formants.T
        )
        murmur = 1.0 / np.sqrt((1 - (frequency / 250) ** 2) ** 2 + (frequency / 2000) ** 2)
        amplitude = (curves["voice"] * gain + 0.5 * curves["nasal"] * murmur) / k
        signal += at_audio_rate(amplitude) * np.sin(k * phase)
    white = rng.standard_normal(n)
    spectrum = np.fft.rfft(white)
    freqs = np.fft.rfftfreq(n, 1 / AUDIO_RATE)
    noise_level = at_audio_rate(curves["noise"])
    low = at_audio_rate(curves["noise_band"][:, 0])
    for band in ((300, 3000), (500, 4000), (1500, 4000), (1500, 7000), (2500, 7000), (4000, 9000)):
        filtered = np.fft.irfft(spectrum * ((freqs >= band[0]) & (freqs < band[1])), n)
        signal += 3.0 * noise_level * (np.abs(low - band[0]) < 1) * filtered
    signal += 1e-3 * rng.standard_normal(n)
    return (0.5 * signal / np.abs(signal).max()).astype(np.float32)


def event_curve(
    times: np.ndarray, onsets: np.ndarray, duration: float, attack: float, release: float
) -> np.ndarray:
    """Sum of raised-cosine events (0..1) starting at `onsets`, evaluated at `times` (s)."""
    curve = np.zeros_like(times)
    for onset in onsets:
        rise = (times >= onset) & (times < onset + attack)
        curve[rise] = np.maximum(
            curve[rise], 0.5 - 0.5 * np.cos(np.pi * (times[rise] - onset) / attack)
        )
        hold_end = onset + attack + duration
        curve[(times >= onset + attack) & (times < hold_end)] = 1.0
        fall = (times >= hold_end) & (times < hold_end + release)
        curve[fall] = np.maximum(
            curve[fall], 0.5 + 0.5 * np.cos(np.pi * (times[fall] - hold_end) / release)
        )
    return curve


def expression_drift(
    rng: np.random.Generator, n_frames: int, strength: float
) -> tuple[np.ndarray, np.ndarray]:
    """A slow upper-face expression over `n_frames`: brow level (signed) and squint (0..1).

    Each is white noise smoothed over about half a second, scaled to std `strength`; the squint is
    the positive half of its curve, so the eyes squint about half the time.
    """
    sigma = 0.4 * FPS
    std = float(np.sqrt((_gaussian_kernel(sigma) ** 2).sum()))  # of smoothed unit white noise
    brow, squint = (
        strength / std * _gaussian_smooth(rng.standard_normal(n_frames), sigma) for _ in range(2)
    )
    return brow, np.clip(squint, 0.0, 1.0)


def poisson_onsets(
    rng: np.random.Generator, rate_per_minute: float, duration: float, gap: float
) -> np.ndarray:
    """Event onsets of a Poisson process, at least `gap` seconds apart."""
    onsets, t = [], 0.0
    while rate_per_minute > 0:
        t += rng.exponential(60.0 / rate_per_minute)
        if t >= duration:
            break
        if not onsets or t - onsets[-1] >= gap:
            onsets.append(t)
    return np.asarray(onsets)


def head_poses(rng: np.random.Generator, times: np.ndarray, enabled: bool) -> np.ndarray:
    """Smooth head poses (T, 3, 4): rotations of a few degrees and translations of a few mm."""
    poses = np.zeros((len(times), 3, 4))
    poses[:, :, :3] = np.eye(3)
    if not enabled:
        return poses
    freq = rng.uniform(0.1, 0.5, size=(6, 2))
    phase = rng.uniform(0, 2 * np.pi, size=(6, 2))
    wave = (np.sin(2 * np.pi * freq[None, :, :] * times[:, None, None] + phase[None]).sum(-1)) / 2
    yaw, pitch, roll = (np.radians(3.0) * wave[:, k] for k in range(3))
    for i, (a, b, c) in enumerate(zip(yaw, pitch, roll)):
        rz = np.array([[np.cos(c), -np.sin(c), 0], [np.sin(c), np.cos(c), 0], [0, 0, 1]])
        ry = np.array([[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]])
        rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
        poses[i, :, :3] = rz @ ry @ rx
    poses[:, :, 3] = 4.0 * wave[:, 3:6] + np.array([0.0, 0.0, 1000.0])
    return poses


def identity_face(template: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """An identity's neutral face: the template scaled and bent by smooth random bumps."""
    centre = template.mean(0)
    scale = rng.uniform(0.9, 1.1, size=3)
    face = centre + (template - centre) * scale
    extent = float(np.linalg.norm(template.max(0) - template.min(0)))
    for _ in range(6):
        anchor = template[rng.integers(len(template))]
        width = rng.uniform(0.08, 0.2) * extent
        amplitude = rng.uniform(-0.02, 0.02) * extent
        direction = rng.standard_normal(3)
        direction /= np.linalg.norm(direction)
        weight = np.exp(-((np.linalg.norm(template - anchor, axis=1) / width) ** 2))
        face += amplitude * weight[:, None] * direction
    return face.astype(np.float32)


# --- writing a dataset --------------------------------------------------------------------------


def identity_name(index: int, seed: int) -> str:
    """A Multiface-style identity folder name."""
    return (
        f"m--2018{(index % 12) + 1:02d}{(index % 28) + 1:02d}--0000--{seed * 1000 + index:07d}--GHS"
    )


def _write_frames(
    identity_dir: Path,
    segment: str,
    frame_ids: list[int],
    faces: np.ndarray,
    poses: np.ndarray,
    kept: np.ndarray | None,
) -> None:
    mesh_dir = identity_dir / "tracked_mesh" / segment
    mesh_dir.mkdir(parents=True, exist_ok=True)
    if kept is not None:
        faces = expand_to_multiface(faces, kept, MULTIFACE_NUM_VERTICES)
    for frame_id, face, pose in zip(frame_ids, faces, poses):
        write_bin(mesh_dir / f"{frame_id:06d}.bin", face)
        write_transform(mesh_dir / f"{frame_id:06d}_transform.txt", pose)


def run(config: SynthConfig) -> Path:
    """Write the dataset; returns the output directory."""
    from meshtalk.pipelines.io.progress import progress_bar

    if config.template is not None:
        base = read_mesh(config.template)
        masks = read_mask_dir(config.masks, len(base.vertices))
        landmarks = None
    else:
        base, landmarks = builtin_face(config.grid)
        masks = build_masks(base.vertices, {k: np.asarray(v) for k, v in landmarks.items()})
    kept = None
    if config.multiface_topology:
        if len(base.vertices) != MESHTALK_NUM_VERTICES:
            raise MeshtalkError(
                config.template,
                f"--multiface-topology needs the {MESHTALK_NUM_VERTICES}-vertex MeshTalk topology, "
                f"this template has {len(base.vertices)} vertices",
            )
        kept = kept_vertices("meshtalk", MULTIFACE_NUM_VERTICES)

    out = config.output
    if out.exists() and not out.is_dir():
        raise MeshtalkError(out, "exists and is not a folder (synth writes a dataset folder)")
    out.mkdir(parents=True, exist_ok=True)
    topology_dir = out / "topology"
    write_mesh(topology_dir / "template.ply", base)
    write_mask_dir(topology_dir / "masks", masks)
    if landmarks is not None:
        import yaml

        write_text_atomic(
            topology_dir / "landmarks.yaml",
            yaml.safe_dump(
                {"num_vertices": len(base.vertices), **landmarks}, default_flow_style=None
            ),
        )

    sentence_rng = np.random.default_rng([config.seed, 1])
    sentences = [
        sentence_words(sentence_rng, config.min_words, config.max_words)
        for _ in range(config.sentences)
    ]
    segment_names = [f"SEN_{i + 1:02d}_" + "_".join(words[:3]) for i, words in enumerate(sentences)]
    total = config.identities * (config.sentences + 1)
    with progress_bar() as progress:
        task = progress.add_task("synth", total=total)
        for identity in range(config.identities):
            rng = np.random.default_rng([config.seed, 2, identity])
            name = identity_name(identity, config.seed)
            identity_dir = out / name
            # Identity 0 keeps the template's own shape, so prep can be checked against it exactly.
            template = base.vertices if identity == 0 else identity_face(base.vertices, rng)
            basis = motion_basis(template, masks)
            f0 = rng.uniform(95, 230)
            rate = rng.uniform(0.9, 1.15)
            frame_list: list[str] = []
            all_faces: list[np.ndarray] = []
            next_id = int(rng.integers(0, 50)) * config.frame_step

            # Neutral segment: no speech, no blinks, a little head motion.
            ids = [next_id + i * config.frame_step for i in range(config.neutral_frames)]
            next_id = ids[-1] + 30 * config.frame_step
            times = np.arange(len(ids)) / FPS
            params = np.zeros((len(ids), len(basis.names)))
            faces = basis.apply(template, params)  # exactly the neutral face
            _write_frames(
                identity_dir,
                NEUTRAL_SEGMENT,
                ids,
                faces,
                head_poses(rng, times, config.head_motion),
                kept,
            )
            frame_list += [f"{NEUTRAL_SEGMENT} {i:06d}" for i in ids]
            all_faces.append(faces)
            progress.advance(task)

            for segment, words in zip(segment_names, sentences):
                phones, duration = phone_timeline(
                    words, rate, np.random.default_rng([config.seed, 3, identity, len(frame_list)])
                )
                curves = articulation(phones, duration)
                audio = synthesise_audio(curves, duration, f0, rng)
                write_wav(identity_dir / "audio" / f"{segment}.wav", audio, AUDIO_RATE)
                n_frames = int(duration * FPS)
                ids = [next_id + i * config.frame_step for i in range(n_frames)]
                next_id = ids[-1] + 30 * config.frame_step
                times = np.arange(n_frames) / FPS
                control_index = np.minimum(
                    (times * CONTROL_RATE).round().astype(int), len(curves["jaw"]) - 1
                )
                blink_onsets = poisson_onsets(rng, config.blinks_per_minute, duration, gap=0.6)
                brow_onsets = poisson_onsets(rng, config.brow_raises_per_minute, duration, gap=1.5)
                params = np.stack(
                    [curves[n][control_index] for n in MOUTH_PARAMS]
                    + [
                        event_curve(times, blink_onsets, 0.03, 0.07, 0.12),
                        event_curve(times, brow_onsets, 0.3, 0.2, 0.3),
                    ],
                    axis=1,
                )
                if config.expression_drift > 0:
                    drift_rng = np.random.default_rng([config.seed, 4, identity, len(frame_list)])
                    brow, squint = expression_drift(drift_rng, n_frames, config.expression_drift)
                    params[:, BROW] += brow
                    params[:, BLINK] = np.maximum(params[:, BLINK], squint)
                faces = basis.apply(template, params) + rng.normal(
                    0, 0.02, (n_frames, *template.shape)
                ).astype(np.float32)
                dropped = (
                    sorted(
                        int(i)
                        for i in rng.choice(
                            np.arange(1, n_frames),
                            size=int(config.drop_rate * n_frames),
                            replace=False,
                        )
                    )
                    if n_frames > 1
                    else []
                )
                present = np.setdiff1d(np.arange(n_frames), dropped)
                _write_frames(
                    identity_dir,
                    segment,
                    [ids[i] for i in present],
                    faces[present],
                    head_poses(rng, times, config.head_motion)[present],
                    kept,
                )
                frame_list += [f"{segment} {i:06d}" for i in ids]
                all_faces.append(faces[present])
                _write_ground_truth(
                    out / "ground_truth" / name / f"{segment}.json",
                    segment=segment,
                    words=words,
                    phones=phones,
                    duration=duration,
                    frame_ids=ids,
                    dropped=[ids[i] for i in dropped],
                    times=times,
                    params=params,
                    blink_onsets=blink_onsets,
                    brow_onsets=brow_onsets,
                    f0=f0,
                )
                progress.advance(task)

            stacked = np.concatenate(all_faces)
            mean = stacked.mean(0)
            if kept is not None:
                mean = expand_to_multiface(mean, kept, MULTIFACE_NUM_VERTICES)
            write_bin(identity_dir / "vert_mean.bin", mean)
            write_text_atomic(identity_dir / "vert_var.txt", f"{float(stacked.var()):.6f}\n")
            write_text_atomic(identity_dir / "frame_list.txt", "\n".join(frame_list) + "\n")
    log.info("wrote %d identities x %d sentences to %s", config.identities, config.sentences, out)
    return out


def _write_ground_truth(
    path: Path,
    *,
    segment: str,
    words: list[str],
    phones: list[Phone],
    duration: float,
    frame_ids: list[int],
    dropped: list[int],
    times: np.ndarray,
    params: np.ndarray,
    blink_onsets: np.ndarray,
    brow_onsets: np.ndarray,
    f0: float,
) -> None:
    record = {
        "segment": segment,
        "words": words,
        "audio_seconds": duration,
        "f0_hz": f0,
        "fps": FPS,
        "frame_ids": frame_ids,
        "dropped_frame_ids": dropped,
        "frame_times_s": [round(float(t), 6) for t in times],
        "mouth_open": [round(float(x), 5) for x in params[:, 0]],
        "lip_rounding": [round(float(x), 5) for x in params[:, 1]],
        "lip_spreading": [round(float(x), 5) for x in params[:, 2]],
        "lip_closure": [round(float(x), 5) for x in params[:, 3]],
        "blink": [round(float(x), 5) for x in params[:, BLINK]],
        "brow_raise": [round(float(x), 5) for x in params[:, BROW]],
        "blink_onsets_s": [round(float(t), 4) for t in blink_onsets],
        "brow_raise_onsets_s": [round(float(t), 4) for t in brow_onsets],
        "phones": [
            {"phone": p.symbol, "start_s": round(p.start, 4), "duration_s": round(p.duration, 4)}
            for p in phones
        ],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, json.dumps(record))
