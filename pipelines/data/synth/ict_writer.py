"""`meshtalk synth --face ict`: talking ICT-FaceKit heads in the Multiface layout.

Every identity is the model's neutral plus its identity components with standard-normal
coefficients (identity 0: the neutral itself), speaking in its own eSpeak NG voice. Each frame is
`identity neutral + w @ expressions`, where the weights w are the mouth's (visemes of espeak's
phonemes, coarticulated) plus the upper face's (blinks, brow raises and frowns, saccades, a slow
drift; independent of the audio). The tracked meshes hold the face area (`ict.FACE_AREA`
vertices); `topology/` holds it as the template with masks and landmarks, the whole head
(`head.obj`, its parts, UVs and materials), the rig (`ict_rig.npz`: every expression on the whole
head, the identity's neutral) and the model's MIT license. The ground truth carries every frame's
expression weights by name.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np

from meshtalk.pipelines.data.layout import FPS, NEUTRAL_SEGMENT, SPEECH_PREFIX, TOPOLOGY_DIR
from meshtalk.pipelines.data.masks import build_masks
from meshtalk.pipelines.data.synth import ict
from meshtalk.pipelines.data.synth.events import head_poses
from meshtalk.pipelines.data.synth.speech import AUDIO_RATE, english_words
from meshtalk.pipelines.data.synth.visemes import (
    VisemePhone,
    mouth_weights,
    upper_face_events,
    upper_face_weights,
    viseme_phones,
)
from meshtalk.pipelines.data.synth.writer import (
    SynthConfig,
    _write_frames,
    espeak_audio,
    identity_name,
    write_identity_stats,
)
from meshtalk.pipelines.errors import MeshtalkError
from meshtalk.pipelines.io.atomic import write_text_atomic
from meshtalk.pipelines.io.audio import write_wav
from meshtalk.pipelines.io.mesh import copy_materials, write_mesh

HEAD_FILE = "head.obj"
RIG_FILE = "ict_rig.npz"
LICENSE_FILE = "ICT-FaceKit-LICENSE.txt"
FROWNS_PER_MINUTE = 3.0


def write_rig(path: Path, model: ict.IctModel, neutral: np.ndarray) -> None:
    """The whole head's rig: expression names and shapes, the neutral (mm), the face area's size
    and the head's parts (float32; read with `np.load(..., allow_pickle=False)`)."""
    from meshtalk.pipelines.io.atomic import atomic_path

    with atomic_path(path) as temporary, open(temporary, "wb") as handle:
        np.savez_compressed(
            handle,
            expression_names=np.asarray(model.expression_names),
            expressions=model.expressions.astype(np.float32),
            neutral=neutral.astype(np.float32),
            face_area=np.int64(ict.FACE_AREA),
            landmarks_68=model.landmarks,
            license=np.asarray((model.folder / "LICENSE").read_text()),
            part_names=np.asarray([p[0] for p in ict.PARTS]),
            part_ranges=np.asarray([p[1:] for p in ict.PARTS], dtype=np.int64),
        )


def write_topology(folder: Path, model: ict.IctModel) -> dict[str, np.ndarray]:
    """topology/: the face area (template.ply), masks, landmarks, the whole head, rig, license."""
    import yaml

    from meshtalk.pipelines.data.layout import (
        TOPOLOGY_LANDMARKS,
        TOPOLOGY_MASKS,
        TOPOLOGY_TEMPLATE,
    )
    from meshtalk.pipelines.data.masks import write_mask_dir

    face = ict.face_area(model.head)
    landmarks = ict.face_landmarks(model)
    masks = build_masks(face.vertices, {k: np.asarray(v) for k, v in landmarks.items()})
    write_mesh(folder / TOPOLOGY_TEMPLATE, face)
    write_mask_dir(folder / TOPOLOGY_MASKS, masks)
    write_text_atomic(
        folder / TOPOLOGY_LANDMARKS,
        yaml.safe_dump({"num_vertices": len(face.vertices), **landmarks}, default_flow_style=None),
    )
    write_mesh(folder / HEAD_FILE, model.head)
    copy_materials(model.head, folder)
    write_rig(folder / RIG_FILE, model, model.neutral)
    shutil.copyfile(model.folder / "LICENSE", folder / LICENSE_FILE)
    return masks


def run(config: SynthConfig) -> Path:
    """Write the dataset of `config` (face 'ict'); returns the output directory."""
    from meshtalk.pipelines.io.progress import progress_bar

    out = config.output
    if out.exists() and not out.is_dir():
        raise MeshtalkError(out, "exists and is not a folder (synth writes a dataset folder)")
    with progress_bar() as progress:

        def advancer(total: int) -> Callable[[], None]:
            task = progress.add_task("synth", total=total)
            return lambda: progress.advance(task)

        _run(config, advancer)
    return out


def _run(config: SynthConfig, advance_factory: Callable[[int], Callable[[], None]]) -> None:
    if config.voice != "espeak":
        raise MeshtalkError(None, "--face ict speaks with eSpeak NG (--voice espeak)")
    if config.template is not None:
        raise MeshtalkError(None, "--face ict and --template do not go together")
    if config.face_model is None:
        raise MeshtalkError(None, "--face ict needs --face-model DIR (the ICT-FaceKit folder)")
    model = ict.load_ict(config.face_model)
    out = config.output
    out.mkdir(parents=True, exist_ok=True)
    write_topology(out / TOPOLOGY_DIR, model)
    sentence_rng = np.random.default_rng([config.seed, 1])
    sentences = [
        english_words(sentence_rng, config.min_words, config.max_words)
        for _ in range(config.sentences)
    ]
    names = [
        f"{SPEECH_PREFIX}{i + 1:02d}_" + "_".join(words[:3]) for i, words in enumerate(sentences)
    ]
    advance = advance_factory(config.identities * (config.sentences + 1))
    face_expressions = np.ascontiguousarray(model.expressions[:, : ict.FACE_AREA])
    for identity in range(config.identities):
        rng = np.random.default_rng([config.seed, 2, identity])
        coefficients = None if identity == 0 else ict.identity_coefficients(model, rng)
        neutral = ict.identity_neutral(model, coefficients)[: ict.FACE_AREA]
        _write_identity(
            config,
            identity,
            identity_name(identity, config.seed),
            neutral,
            face_expressions,
            model.expression_names,
            coefficients,
            list(zip(names, sentences)),
            rng,
            advance,
        )


def _write_identity(
    config: SynthConfig,
    identity: int,
    name: str,
    neutral: np.ndarray,
    expressions: np.ndarray,
    expression_names: tuple[str, ...],
    coefficients: np.ndarray | None,
    sentences: list[tuple[str, list[str]]],
    rng: np.random.Generator,
    advance: Callable[[], None],
) -> None:
    out = config.output
    identity_dir = out / name
    f0 = rng.uniform(95, 230)
    rate = rng.uniform(0.9, 1.15)
    frame_list: list[str] = []
    all_faces: list[np.ndarray] = []
    next_id = int(rng.integers(0, 50)) * config.frame_step
    ids = [next_id + i * config.frame_step for i in range(config.neutral_frames)]
    next_id = ids[-1] + 30 * config.frame_step
    faces = np.repeat(neutral[None], len(ids), axis=0)
    poses = head_poses(rng, np.arange(len(ids)) / FPS, config.head_motion)
    _write_frames(identity_dir, NEUTRAL_SEGMENT, ids, faces, poses, None)
    frame_list += [f"{NEUTRAL_SEGMENT} {i:06d}" for i in ids]
    all_faces.append(faces)
    advance()
    for segment, words in sentences:
        timing_rng = np.random.default_rng([config.seed, 3, identity, len(frame_list)])
        spoken, lead, audio = espeak_audio(words, identity, f0, rate, timing_rng)
        duration = len(audio) / AUDIO_RATE
        write_wav(identity_dir / "audio" / f"{segment}.wav", audio, AUDIO_RATE)
        n_frames = int(duration * FPS)
        ids = [next_id + i * config.frame_step for i in range(n_frames)]
        next_id = ids[-1] + 30 * config.frame_step
        times = np.arange(n_frames) / FPS
        visemes = viseme_phones(spoken, offset=lead)
        events = upper_face_events(
            rng, times, config.blinks_per_minute, config.brow_raises_per_minute, FROWNS_PER_MINUTE
        )
        drift_rng = np.random.default_rng([config.seed, 4, identity, len(frame_list)])
        weights = mouth_weights(visemes, times, expression_names) + upper_face_weights(
            events, times, expression_names, drift_rng, config.expression_drift
        )
        weights = np.clip(weights, 0.0, 1.0).astype(np.float32)
        faces = ict.apply_weights(neutral, expressions, weights)
        faces += rng.normal(0, 0.02, faces.shape).astype(np.float32)
        dropped = (
            sorted(
                int(i)
                for i in rng.choice(
                    np.arange(1, n_frames), size=int(config.drop_rate * n_frames), replace=False
                )
            )
            if n_frames > 1
            else []
        )
        present = np.setdiff1d(np.arange(n_frames), dropped)
        poses = head_poses(rng, times, config.head_motion)
        _write_frames(
            identity_dir, segment, [ids[i] for i in present], faces[present], poses[present], None
        )
        frame_list += [f"{segment} {i:06d}" for i in ids]
        all_faces.append(faces[present])
        _write_ground_truth(
            out / "ground_truth" / name / f"{segment}.json",
            segment=segment,
            words=words,
            visemes=visemes,
            duration=duration,
            frame_ids=ids,
            dropped=[ids[i] for i in dropped],
            times=times,
            weights=weights,
            names=expression_names,
            events=events,
            f0=f0,
            coefficients=coefficients,
        )
        advance()
    write_identity_stats(identity_dir, all_faces, frame_list)


def _write_ground_truth(
    path: Path,
    *,
    segment: str,
    words: list[str],
    visemes: list[VisemePhone],
    duration: float,
    frame_ids: list[int],
    dropped: list[int],
    times: np.ndarray,
    weights: np.ndarray,
    names: tuple[str, ...],
    events,  # noqa: ANN001
    f0: float,
    coefficients: np.ndarray | None,
) -> None:
    def curve(values: np.ndarray) -> list[float]:
        return [round(float(x), 5) for x in values]

    column = {n: weights[:, k] for k, n in enumerate(names)}
    record = {
        "segment": segment,
        "face": "ict",
        "words": words,
        "audio_seconds": duration,
        "f0_hz": f0,
        "fps": FPS,
        "frame_ids": frame_ids,
        "dropped_frame_ids": dropped,
        "frame_times_s": [round(float(t), 6) for t in times],
        "mouth_open": curve(column["jawOpen"]),
        "lip_rounding": curve(column["mouthPucker"]),
        "lip_spreading": curve((column["mouthStretch_L"] + column["mouthStretch_R"]) / 2),
        "lip_closure": curve(column["mouthClose"]),
        "blink": curve((column["eyeBlink_L"] + column["eyeBlink_R"]) / 2),
        "brow_raise": curve((column["browInnerUp_L"] + column["browInnerUp_R"]) / 2),
        "blink_onsets_s": [round(float(t), 4) for t in events.blink_onsets],
        "brow_raise_onsets_s": [round(float(t), 4) for t in events.brow_onsets],
        "frown_onsets_s": [round(float(t), 4) for t in events.frown_onsets],
        "gaze": [[round(float(h), 4), round(float(v), 4)] for h, v in events.gaze],
        "expression_weights": {n: curve(column[n]) for n in names},
        "identity_coefficients": None if coefficients is None else curve(coefficients),
        "phones": [
            {
                "phone": p.phoneme,
                "viseme": p.viseme,
                "start_s": round(p.start, 4),
                "duration_s": round(p.duration, 4),
            }
            for p in visemes
        ],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, json.dumps(record))
