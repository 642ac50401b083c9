"""Does the bundled default model speak, keep its mouth shut in silence, blink, and move smoothly?

Animates each real recording in ../shared/reference/speech/ (or the files given) and eSpeak NG
sentences that are not in the training data (`--sentences`, voices the training never used) with
the bundled model (or `--model RUN --template MESH`), `--takes` samples each, and measures:

- the lip gap per frame: the largest vertical distance between the inner lips (the ICT-FaceKit
  head's landmarks 61-67, 62-66, 63-65; the built-in head's lip margins along its mouth cut).
  Frames are voiced where the speech's RMS energy around the frame (1/30 s) is at least
  `--voiced-db` above the recording's noise floor (its 10th percentile), silent where it is at
  most `--silent-db` above it; reported: the mean gap on each and their ratio (target >= 3),
  with a 95% interval of that ratio from the takes (a bootstrap over them: how far another
  set of takes could land); on the ICT-FaceKit head the unseen sentences also get the world's own
  ratio: the same measure on the mouth `synth --face ict` would give the sentence (eSpeak NG's
  phoneme timings through its viseme table onto the rig), what a model that learned the data
  exactly would reach;
- blinks per minute (ICT-FaceKit head): an eye is closed on a frame where its lid gap (landmarks
  43-47 and 38-40) is under a third of the rest; a blink is a run of closed frames. The training
  data's own rate is measured on its frames (`--data`, the same detector) when given;
- the crease: on every frame, the largest difference between neighbouring lip vertices' motion
  (mouth mask > 0.5), the worst frame against the same on the training data's frames (`--data`;
  target <= 2x);
- the expression swap of the run's last validation (stage 1: how far swapping the expression
  input moves the upper face against the mouth; target >= 3x), beside the training data's own
  (`--data`): the same ratio when two sentences swap the weights of the shapes that move
  independently of the audio (blinks, brows, squint, gaze), and the audio swap's when they swap
  the rest (the mouth's shapes), from the ground truth's expression weights and the head's rig.

    python benchmarks/default_model.py [SPEECH ...] [--takes 3] [--temperature 1] [--seed 0]
        [--data DATASET] [--json FILE]
"""

from __future__ import annotations

import argparse
import csv
import functools
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
from _measure import add_json_option, check_json, run_main, write_json
from rich.console import Console
from rich.table import Table

from meshtalk.pipelines.data.layout import FPS
from meshtalk.pipelines.inference.animate import AnimateConfig
from meshtalk.pipelines.inference.animate import run as animate
from meshtalk.pipelines.io.audio import load_audio

ROOT = Path(__file__).resolve().parents[1]
REFERENCE_SPEECH = ROOT.parent / "shared" / "reference" / "speech"
UNSEEN_SENTENCES = (
    ("Please call Stella and ask her to bring these things with her from the store.", "en-gb-x-rp"),
    ("Six spoons of fresh snow peas, five thick slabs of blue cheese.", "en-us+klatt"),
    ("We also need a small plastic snake and a big toy frog for the kids.", "en-us+m7"),
    ("She can scoop these things into three red bags, and we will go meet her.", "en-gb-scotland"),
)
"""Sentences (the speech accent archive's elicitation paragraph) in voices training never used."""
UNSEEN_LEAD = 0.6
"""Seconds of silence before and after each unseen sentence."""


def lip_measures(template: Path, run: Path):
    """(gap function of (T, V, 3) frames, lid-gap function or None, lip vertices or None)."""
    rig = template.parent / "ict_rig.npz"
    if rig.is_file():
        with np.load(rig, allow_pickle=False) as data:
            landmarks = data["landmarks_68"]
            face_area = int(data["face_area"])
        upper, lower = landmarks[[61, 62, 63]], landmarks[[67, 66, 65]]
        lids = (landmarks[[43, 44, 37, 38]], landmarks[[47, 46, 41, 40]])

        def lid_gaps(v: np.ndarray) -> np.ndarray:  # (T, 2): each eye's smallest lid gap
            gap = v[:, lids[0], 1] - v[:, lids[1], 1]
            return np.stack([gap[:, :2].mean(1), gap[:, 2:].mean(1)], 1)

        mouth = np.load(run / "topology" / "masks" / "mouth.npy", allow_pickle=False)
        lips = np.flatnonzero(mouth[:face_area] > 0.5)
        return (lambda v: (v[:, upper, 1] - v[:, lower, 1]).max(1)), lid_gaps, lips
    from meshtalk.pipelines.data.synth.face import builtin_head
    from meshtalk.pipelines.io.mesh import read_mesh

    rest = read_mesh(template).vertices
    for grid in (48, *range(16, 97)):
        head = builtin_head(grid)
        if len(head.mesh.vertices) == len(rest):
            pairs = (head.mouth_upper, head.mouth_lower)
            return (lambda v, p=pairs: (v[:, p[0], 1] - v[:, p[1], 1]).max(1)), None, None
    raise SystemExit(f"{template}: neither the ICT-FaceKit head nor the built-in head")


def blinks_per_minute(lid_gaps: np.ndarray, rest: np.ndarray) -> float:
    """Blinks a minute in (T, 2) lid gaps: runs of frames where both eyes are under 1/3 open."""
    closed = (lid_gaps < rest / 3).all(1)
    onsets = int(np.count_nonzero(closed[1:] & ~closed[:-1]) + closed[0])
    return onsets / (len(lid_gaps) / FPS / 60)


def crease(frames: np.ndarray, rest: np.ndarray, edges: np.ndarray) -> float:
    """The worst frame's largest difference (mm) between neighbouring vertices' motion."""
    motion = frames[:, : len(rest)] - rest[None]
    worst = 0.0
    for start in range(0, len(motion), 256):
        part = motion[start : start + 256]
        difference = np.linalg.norm(part[:, edges[:, 0]] - part[:, edges[:, 1]], axis=2)
        worst = max(worst, float(difference.max()))
    return worst


def lip_edges(template: Path, lips: np.ndarray) -> np.ndarray:
    from meshtalk.pipelines.io.mesh import read_mesh

    faces = read_mesh(template.parent / "template.ply").faces
    edges = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])
    keep = np.isin(edges, lips).all(1)
    return np.unique(np.sort(edges[keep], axis=1), axis=0)


def frame_energy_db(samples: np.ndarray, rate: int, frames: int) -> np.ndarray:
    """RMS energy (dB) of the audio in a window of one frame centred on each frame's time."""
    half = int(rate / FPS / 2)
    centres = (np.arange(frames) / FPS * rate).astype(int)
    energy = []
    for centre in centres:
        window = samples[max(centre - half, 0) : centre + half]
        energy.append(10 * np.log10(np.mean(window**2) + 1e-12) if len(window) else -120.0)
    return np.asarray(energy)


def ratio_interval(voiced: np.ndarray, silent: np.ndarray, draws: int = 2000) -> tuple:
    """95% bootstrap interval of mean(voiced) / mean(silent) over takes (one value per take)."""
    rng = np.random.default_rng(0)
    picks = rng.integers(0, len(voiced), size=(draws, len(voiced)))
    ratios = voiced[picks].mean(1) / np.maximum(silent[picks].mean(1), 1e-3)
    low, high = np.percentile(ratios, [2.5, 97.5])
    return float(low), float(high)


def measure(speech: Path, args, template: Path, run: Path, unseen: int | None = None) -> dict:
    gap_of, lid_gaps_of, lips = lip_measures(template, run)
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "out"
        config = AnimateConfig(
            speech=speech,
            output=out,
            model=args.model,
            template=args.template,
            takes=args.takes,
            temperature=args.temperature,
            seed=args.seed,
            video=False,
        )
        animate(config)
        runs = [out] if args.takes == 1 else [out / f"take_{i}" for i in range(args.takes)]
        vertices = []
        for run in runs:
            with np.load(run / "animation.npz", allow_pickle=False) as archive:
                vertices.append(archive["vertices"])
                rest = archive["template"]
    gaps = np.stack([gap_of(v) for v in vertices])
    samples = load_audio(speech, 16_000)
    energy = frame_energy_db(samples, 16_000, gaps.shape[1])
    floor = float(np.percentile(energy, 10))
    voiced = energy >= floor + args.voiced_db
    silent = energy <= floor + args.silent_db
    voiced_gap = float(gaps[:, voiced].mean())
    silent_gap = float(gaps[:, silent].mean())
    low, high = ratio_interval(gaps[:, voiced].mean(1), gaps[:, silent].mean(1))
    result = {
        "speech": speech.name,
        "frames": int(gaps.shape[1]),
        "voiced_frames": int(voiced.sum()),
        "silent_frames": int(silent.sum()),
        "noise_floor_db": round(floor, 1),
        "voiced_gap_mm": round(voiced_gap, 3),
        "silent_gap_mm": round(silent_gap, 3),
        "ratio": round(voiced_gap / max(silent_gap, 1e-3), 2),
        "ratio_95_interval_over_takes": [round(low, 2), round(high, 2)],
        "max_gap_mm": round(float(gaps.max()), 2),
    }
    world = None if unseen is None else world_gaps(unseen, template, gap_of, gaps.shape[1])
    if world is not None:  # the same measure on the data's own mouth for this sentence
        result["world_voiced_gap_mm"] = round(float(world[voiced].mean()), 3)
        result["world_silent_gap_mm"] = round(float(world[silent].mean()), 3)
        result["world_ratio"] = round(
            result["world_voiced_gap_mm"] / max(result["world_silent_gap_mm"], 1e-3), 2
        )
    if lid_gaps_of is not None:
        rest_lids = lid_gaps_of(rest[None])[0]
        rates = [blinks_per_minute(lid_gaps_of(v), rest_lids) for v in vertices]
        result["blinks_per_minute"] = round(float(np.mean(rates)), 1)
        edges = lip_edges(template, lips)
        result["lip_crease_mm"] = round(max(crease(v, rest, edges) for v in vertices), 3)
    return result


def training_data(data: Path, template: Path, run: Path) -> dict:
    """Blinks per minute and the lip crease on the training data's own frames (ICT head): every
    sentence of every identity, each against its neutral segment's first frame."""
    from meshtalk.pipelines.data.layout import NEUTRAL_SEGMENT
    from meshtalk.pipelines.io.mesh import read_bin

    _, lid_gaps_of, lips = lip_measures(template, run)
    edges = lip_edges(template, lips)
    blinks, seconds, worst = 0.0, 0.0, 0.0
    for identity in sorted(p for p in data.iterdir() if p.name.startswith("m--")):
        tracked = identity / "tracked_mesh"
        size = len(np.fromfile(identity / "vert_mean.bin", np.float32)) // 3
        rest = read_bin(sorted((tracked / NEUTRAL_SEGMENT).glob("*.bin"))[0], size)
        rest_lids = lid_gaps_of(rest[None])[0]
        for segment in sorted(tracked.glob("SEN_*")):
            frames = np.stack([read_bin(f, size) for f in sorted(segment.glob("*.bin"))])
            minutes = len(frames) / FPS / 60
            blinks += blinks_per_minute(lid_gaps_of(frames), rest_lids) * minutes
            seconds += minutes * 60
            worst = max(worst, crease(frames, rest, edges))
    return {"blinks_per_minute": round(blinks / (seconds / 60), 1), "lip_crease_mm": worst}


INDEPENDENT_SHAPES = ("brow", "eyeSquint", "cheekSquint", "eyeBlink", "eyeLook")
"""Name prefixes of the shapes `synth.visemes.upper_face_weights` drives (not the audio)."""


def data_swap_ratios(data: Path, pairs: int = 200) -> dict:
    """The data's own swap ratios: sentence a's expression weights with those of the independent
    shapes (or of the mouth's) taken from sentence b, through the rig, on the face area: the
    mask-weighted mean displacement on the upper face over the mouth's (and the reverse)."""
    from meshtalk.pipelines.data.masks import read_mask_dir

    topology = data / "topology"
    rig = np.load(topology / "ict_rig.npz", allow_pickle=False)
    names = [str(n) for n in rig["expression_names"]]
    shapes = rig["expressions"][:, : int(rig["face_area"])].astype(np.float64)
    masks = read_mask_dir(topology / "masks", shapes.shape[1])
    independent = np.array([n.startswith(INDEPENDENT_SHAPES) for n in names])
    files = sorted((data / "ground_truth").glob("*/SEN_*.json"))
    rng = np.random.default_rng(0)
    sums = dict.fromkeys(("expr_mouth", "expr_upper", "audio_mouth", "audio_upper"), 0.0)

    @functools.cache  # a file drawn in several pairs is read once
    def weights(index: int) -> np.ndarray:
        values = json.loads(files[index].read_text())["expression_weights"]
        return np.array([values[name] for name in names], dtype=np.float64).T  # (T, E)

    def moved(diff: np.ndarray, mask: np.ndarray) -> float:
        offsets = (diff @ shapes.reshape(len(shapes), -1)).reshape(len(diff), -1, 3)
        distance = np.linalg.norm(offsets, axis=-1)
        return float((distance * mask).sum(axis=1).mean() / mask.sum())

    for first, second in rng.choice(len(files), size=(pairs, 2)):
        a, b = weights(int(first)), weights(int(second))
        frames = min(len(a), len(b))
        diff = a[:frames] - b[:frames]
        for kind, chosen in (("expr", independent), ("audio", ~independent)):
            part = np.where(chosen, diff, 0.0)
            sums[f"{kind}_mouth"] += moved(part, masks["mouth"])
            sums[f"{kind}_upper"] += moved(part, masks["upper_face"])
    return {
        "pairs": pairs,
        "expression_swap_upper_over_mouth": round(sums["expr_upper"] / sums["expr_mouth"], 2),
        "audio_swap_mouth_over_upper": round(sums["audio_mouth"] / sums["audio_upper"], 2),
    }


def unseen_speech(folder: Path) -> list[Path]:
    """The unseen sentences spoken by eSpeak NG into `folder` (WAV)."""
    from meshtalk.pipelines.data.synth.espeak import speak
    from meshtalk.pipelines.io.audio import write_wav

    files = []
    for index, (text, voice) in enumerate(UNSEEN_SENTENCES):
        spoken = speak(text, voice, rate_wpm=165)
        silence = np.zeros(int(UNSEEN_LEAD * spoken.rate), np.float32)
        path = folder / f"unseen_{index}_{voice.replace('+', '_')}.wav"
        write_wav(path, np.concatenate([silence, spoken.samples, silence]), spoken.rate)
        files.append(path)
    return files


def world_gaps(index: int, template: Path, gap_of, frames: int) -> np.ndarray | None:
    """Lip gaps (T,) of the synthetic world's own mouth on unseen sentence `index`: eSpeak NG's
    phoneme timings through synth's viseme table and coarticulation onto the head's rig (the
    ground truth `synth --face ict` would write for it; no blinks, no drift), or None off the
    ICT head."""
    from meshtalk.pipelines.data.synth import ict
    from meshtalk.pipelines.data.synth.espeak import speak
    from meshtalk.pipelines.data.synth.visemes import mouth_weights, viseme_phones

    rig = template.parent / "ict_rig.npz"
    if not rig.is_file():
        return None
    with np.load(rig, allow_pickle=False) as data:
        area = int(data["face_area"])
        names = tuple(str(n) for n in data["expression_names"])
        neutral, shapes = data["neutral"][:area], data["expressions"][:, :area]
    text, voice = UNSEEN_SENTENCES[index]
    phones = viseme_phones(speak(text, voice, rate_wpm=165), offset=UNSEEN_LEAD)
    weights = np.clip(mouth_weights(phones, np.arange(frames) / FPS, names), 0.0, 1.0)
    return gap_of(ict.apply_weights(neutral, shapes, weights))


def expression_swap(run: Path) -> float | None:
    """The run's last validated expression swap (upper face over mouth), if recorded."""
    metrics = run / "metrics.csv"
    if not metrics.is_file():
        return None
    values = [
        float(row["value"])
        for row in csv.DictReader(metrics.open())
        if row["name"] == "val/expression_swap_upper_over_mouth"
    ]
    return values[-1] if values else None


def main() -> None:
    from meshtalk.pipelines.data.resources import default_model

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("speech", nargs="*", type=Path, help="recordings (default: the reference)")
    parser.add_argument("--model", type=Path, help="run folder (default: the bundled model)")
    parser.add_argument("--template", type=Path, help="template of --model")
    parser.add_argument("--takes", type=int, default=3, help="samples per recording")
    parser.add_argument("--voiced-db", type=float, default=15.0, help="voiced: dB above floor")
    parser.add_argument("--silent-db", type=float, default=6.0, help="silent: dB above floor")
    parser.add_argument("--data", type=Path, help="the training data (synth --face ict)")
    parser.add_argument(
        "--temperature", type=float, default=1.0, help="sampling temperature (animate's default 1)"
    )
    parser.add_argument("--seed", type=int, default=0, help="sampler seed (another set of takes)")
    parser.add_argument("--no-unseen", action="store_true", help="skip the eSpeak sentences")
    add_json_option(parser)
    args = parser.parse_args()
    check_json(parser, args)
    template = args.template or default_model.default_template()
    run = args.model or default_model.run_path()
    if not (run / "run.json").is_file():
        parser.error(f"{run}: not a run folder (no run.json)")
    if not template.is_file():
        parser.error(f"{template}: no such mesh")
    files = args.speech or sorted(REFERENCE_SPEECH.glob("*.wav"))
    if not files:
        sys.exit(f"no recordings given and none in {REFERENCE_SPEECH}")
    with tempfile.TemporaryDirectory() as folder:
        results = [measure(f, args, template, run) for f in files]
        if not args.no_unseen:
            unseen = unseen_speech(Path(folder))
            results += [measure(f, args, template, run, i) for i, f in enumerate(unseen)]
    summary = {
        "takes": args.takes,
        "temperature": args.temperature,
        "seed": args.seed,
        "recordings": results,
    }
    swap = expression_swap(run)
    summary["expression_swap_upper_over_mouth"] = swap
    if args.data is not None:
        summary["training_data"] = training_data(args.data, template, run)
        summary["training_data"]["swap_ratios"] = data_swap_ratios(args.data)
    table = Table(title="the default model on real speech and unseen eSpeak NG sentences")
    for column in ("speech", "voiced", "silent", "voiced gap mm", "silent gap mm"):
        table.add_column(column)
    table.add_column("ratio (>= 3)")
    table.add_column("world's own")
    table.add_column("95% over takes")
    table.add_column("blinks/min")
    table.add_column("lip crease mm")
    for r in results:
        table.add_row(
            r["speech"],
            str(r["voiced_frames"]),
            str(r["silent_frames"]),
            f"{r['voiced_gap_mm']:.2f}",
            f"{r['silent_gap_mm']:.2f}",
            f"{r['ratio']:.2f}",
            str(r.get("world_ratio", "-")),
            "{:.2f}-{:.2f}".format(*r["ratio_95_interval_over_takes"]),
            str(r.get("blinks_per_minute", "-")),
            str(r.get("lip_crease_mm", "-")),
        )
    Console().print(table)
    if "training_data" in summary:
        data = summary["training_data"]
        rates = [r["blinks_per_minute"] for r in results if "blinks_per_minute" in r]
        creases = [r["lip_crease_mm"] for r in results if "lip_crease_mm" in r]
        summary["blinks_per_minute_over_training"] = round(
            float(np.mean(rates)) / max(data["blinks_per_minute"], 1e-6), 2
        )
        summary["lip_crease_over_training"] = round(
            max(creases) / max(data["lip_crease_mm"], 1e-6), 2
        )
        Console().print(
            f"training data: {data['blinks_per_minute']} blinks/min, lip crease "
            f"{data['lip_crease_mm']:.3f} mm; model/training: blinks "
            f"{summary['blinks_per_minute_over_training']}x (target 0.7-1.3), crease "
            f"{summary['lip_crease_over_training']}x (target <= 2)"
        )
    own = summary.get("training_data", {}).get("swap_ratios")
    Console().print(
        f"expression swap (stage 1's last validation): {swap} (target >= 3)"
        + (
            ""
            if own is None
            else f"; the training data's own: {own['expression_swap_upper_over_mouth']}x "
            f"(audio swap {own['audio_swap_mouth_over_upper']}x, {own['pairs']} sentence pairs)"
        )
    )
    if args.json:
        write_json(args.json, json.dumps(summary, indent=2))


if __name__ == "__main__":
    run_main(main)
