"""`meshtalk synth`: the settings, and the dataset written in the Multiface layout."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from meshtalk.pipelines.data.layout import (
    FPS,
    NEUTRAL_SEGMENT,
    SPEECH_PREFIX,
    TOPOLOGY_DIR,
    TOPOLOGY_LANDMARKS,
    TOPOLOGY_MASKS,
    TOPOLOGY_TEMPLATE,
)
from meshtalk.pipelines.data.masks import build_masks, read_mask_dir, write_mask_dir
from meshtalk.pipelines.data.synth.events import (
    event_curve,
    expression_drift,
    head_poses,
    poisson_onsets,
)
from meshtalk.pipelines.data.synth.face import (
    BLINK,
    BROW,
    MOUTH_PARAMS,
    FaceRig,
    builtin_head,
    identity_face,
    motion_basis,
)
from meshtalk.pipelines.data.synth.speech import (
    AUDIO_RATE,
    CONTROL_RATE,
    Phone,
    articulation,
    english_words,
    phone_timeline,
    sentence_words,
    synthesise_audio,
)
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

if TYPE_CHECKING:
    from meshtalk.pipelines.data.synth.espeak import Utterance

log = logging.getLogger(__name__)


VOICES = ("espeak", "formant")
FACES = ("builtin", "ict")
ESPEAK_VARIANTS = ("m1", "f2", "m3", "f1", "m2", "f4", "m4", "f3", "m5", "f5")
"""espeak voice variants, one per identity in turn."""


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
    """Resolution of the built-in head (48: 4744 vertices, 24: 1198, 16: 594)."""
    voice: str | None = None
    """'espeak' (eSpeak NG reads English sentences; its phoneme timings drive the mouth) or
    'formant' (pseudo-words from the built-in formant synthesiser); None: espeak if it loads."""
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
    face: str = "builtin"
    """'builtin' (the procedural head) or 'ict' (the ICT-FaceKit head from `face_model`)."""
    face_model: Path | None = None
    """The ICT-FaceKit model's folder (with --face ict), e.g. ../shared/reference/ict_facekit."""

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
        if self.face not in FACES:
            problems.append(f"--face must be one of {', '.join(FACES)}, got '{self.face}'")
        if self.face == "ict" and self.face_model is None:
            problems.append("--face ict needs --face-model DIR (the ICT-FaceKit model's folder)")
        if self.grid < 16:
            problems.append(f"--grid must be at least 16, got {self.grid}")
        if self.voice is None:
            from meshtalk.pipelines.data.synth.espeak import available

            self.voice = "espeak" if available() else "formant"
        elif self.voice not in VOICES:
            problems.append(f"--voice must be one of {', '.join(VOICES)}, got '{self.voice}'")
        if self.min_words < 1 or self.max_words < self.min_words:
            problems.append(f"words per sentence {self.min_words}..{self.max_words} is empty")
        if problems:
            raise MeshtalkError(None, "; ".join(problems))


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

    out = config.output
    if out.exists() and not out.is_dir():
        raise MeshtalkError(out, "exists and is not a folder (synth writes a dataset folder)")
    base, masks, landmarks, kept, rig = _topology(config)
    out.mkdir(parents=True, exist_ok=True)
    _write_topology(out / TOPOLOGY_DIR, base, masks, landmarks)

    sentence_rng = np.random.default_rng([config.seed, 1])
    make_words = english_words if config.voice == "espeak" else sentence_words
    sentences = [
        make_words(sentence_rng, config.min_words, config.max_words)
        for _ in range(config.sentences)
    ]
    segment_names = [
        f"{SPEECH_PREFIX}{i + 1:02d}_" + "_".join(words[:3]) for i, words in enumerate(sentences)
    ]
    total = config.identities * (config.sentences + 1)
    with progress_bar() as progress:
        task = progress.add_task("synth", total=total)
        for identity in range(config.identities):
            _write_identity(
                config,
                identity,
                base,
                masks,
                list(zip(segment_names, sentences)),
                kept,
                rig,
                advance=lambda: progress.advance(task),
            )
    log.info("wrote %d identities x %d sentences to %s", config.identities, config.sentences, out)
    return out


def _topology(
    config: SynthConfig,
) -> tuple[
    Mesh, dict[str, np.ndarray], dict[str, list[int]] | None, np.ndarray | None, FaceRig | None
]:
    """The face to animate, its masks, its landmarks and rig (built-in head only), and the
    vertices the 'meshtalk' crop keeps (with --multiface-topology)."""
    rig = None
    if config.template is not None:
        base = read_mesh(config.template)
        masks = read_mask_dir(config.masks, len(base.vertices))
        landmarks = None
    else:
        head = builtin_head(config.grid)
        base, landmarks, rig = head.mesh, head.landmarks, head.rig
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
    return base, masks, landmarks, kept, rig


def _write_topology(
    folder: Path, base: Mesh, masks: dict[str, np.ndarray], landmarks: dict | None
) -> None:
    """The dataset's own topology/, which prep uses by default."""
    write_mesh(folder / TOPOLOGY_TEMPLATE, base)
    write_mask_dir(folder / TOPOLOGY_MASKS, masks)
    if landmarks is not None:
        import yaml

        write_text_atomic(
            folder / TOPOLOGY_LANDMARKS,
            yaml.safe_dump(
                {"num_vertices": len(base.vertices), **landmarks}, default_flow_style=None
            ),
        )


def _write_identity(
    config: SynthConfig,
    identity: int,
    base: Mesh,
    masks: dict[str, np.ndarray],
    sentences: list[tuple[str, list[str]]],
    kept: np.ndarray | None,
    rig: FaceRig | None,
    advance: Callable[[], None],
) -> None:
    """One identity: its face, its neutral segment, its (name, words) sentences, its frame list
    and mean; `advance` after each segment."""
    out = config.output
    rng = np.random.default_rng([config.seed, 2, identity])
    name = identity_name(identity, config.seed)
    identity_dir = out / name
    # Identity 0 keeps the template's own shape, so prep can be checked against it exactly.
    template = base.vertices if identity == 0 else identity_face(base.vertices, rng)
    basis = motion_basis(template, masks, rig)
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
    advance()

    for segment, words in sentences:
        timing_rng = np.random.default_rng([config.seed, 3, identity, len(frame_list)])
        if config.voice == "espeak":
            phones, duration, audio = _espeak_sentence(words, identity, f0, rate, timing_rng)
            curves = articulation(phones, duration)
        else:
            phones, duration = phone_timeline(words, rate, timing_rng)
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
        advance()

    write_identity_stats(identity_dir, all_faces, frame_list, kept)


def write_identity_stats(
    identity_dir: Path,
    all_faces: list[np.ndarray],
    frame_list: list[str],
    kept: np.ndarray | None = None,
) -> None:
    """An identity's `vert_mean.bin`, `vert_var.txt` and `frame_list.txt` (Multiface's files)
    from its written frames; `kept` expands the mean to Multiface's vertex count."""
    stacked = np.concatenate(all_faces)
    mean = stacked.mean(0)
    if kept is not None:
        mean = expand_to_multiface(mean, kept, MULTIFACE_NUM_VERTICES)
    write_bin(identity_dir / "vert_mean.bin", mean)
    write_text_atomic(identity_dir / "vert_var.txt", f"{float(stacked.var()):.6f}\n")
    write_text_atomic(identity_dir / "frame_list.txt", "\n".join(frame_list) + "\n")


def _espeak_sentence(
    words: list[str], identity: int, f0: float, rate: float, rng: np.random.Generator
) -> tuple[list[Phone], float, np.ndarray]:
    """One sentence read by eSpeak NG in the identity's voice: its phones on the articulation
    classes (timed from espeak's phoneme events, after a short silence), its length in seconds,
    and the audio at AUDIO_RATE with the same silences around it."""
    from meshtalk.pipelines.data.synth.espeak import to_phones

    spoken, lead, audio = espeak_audio(words, identity, f0, rate, rng)
    phones = [
        Phone(symbol, lead + start, length)
        for symbol, start, length in to_phones(spoken)
        if symbol != " "
    ]
    return phones, len(audio) / AUDIO_RATE, audio


def espeak_audio(
    words: list[str], identity: int, f0: float, rate: float, rng: np.random.Generator
) -> tuple[Utterance, float, np.ndarray]:
    """eSpeak NG's utterance of the sentence in the identity's voice, the silence before it (s),
    and the audio at AUDIO_RATE with silences and a room's noise floor around it."""
    from scipy.signal import lfilter, resample_poly

    from meshtalk.pipelines.data.synth.espeak import speak

    variant = ESPEAK_VARIANTS[identity % len(ESPEAK_VARIANTS)]
    pitch = int(np.clip(35 + (f0 - 95) / 135 * 40, 0, 100))
    spoken = speak(" ".join(words), f"en-us+{variant}", rate_wpm=int(160 * rate), pitch=pitch)
    lead, tail = rng.uniform(0.25, 0.4), rng.uniform(0.3, 0.45)
    speech = resample_poly(spoken.samples.astype(np.float64), AUDIO_RATE, spoken.rate)
    peak = float(np.abs(speech).max()) or 1.0
    gain = rng.uniform(0.25, 0.6)
    audio = np.concatenate(
        [np.zeros(int(lead * AUDIO_RATE)), gain * speech / peak, np.zeros(int(tail * AUDIO_RATE))]
    )
    # A room's noise floor, -60 to -34 dB and more or less muffled, as in real recordings (the
    # model must keep the mouth shut through it).
    pole = rng.uniform(0.0, 0.95)
    noise = lfilter([1 - pole], [1, -pole], rng.standard_normal(len(audio)))
    audio += 10 ** rng.uniform(-3.0, -1.7) * noise / noise.std()
    return spoken, lead, audio.astype(np.float32)


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
