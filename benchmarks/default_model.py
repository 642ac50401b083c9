"""Does the bundled default model open its mouth for real speech, and keep it shut in silence?

Animates each real recording in ../shared/reference/speech/ (or the files given) with the bundled
model (or `--model RUN --template MESH` of the built-in head's topology), `--takes` samples each,
and measures per frame the lip gap: the largest vertical distance between the upper and lower lip
margins along the mouth cut of the built-in head (0 with the lips closed at rest). Frames are
voiced where the speech's RMS energy around the frame (one frame, 1/30 s) is at least `--voiced-db`
above the recording's noise floor (its 10th percentile), silent where it is at most `--silent-db`
above it. Reports the mean gap on each and their ratio (the target is at least 3).

    python benchmarks/default_model.py [SPEECH ...] [--takes 3] [--json results.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
from _measure import add_json_option, check_json, write_json
from rich.console import Console
from rich.table import Table

from meshtalk.pipelines.data.layout import FPS
from meshtalk.pipelines.data.synth.face import builtin_head
from meshtalk.pipelines.inference.animate import AnimateConfig
from meshtalk.pipelines.inference.animate import run as animate
from meshtalk.pipelines.io.audio import load_audio
from meshtalk.pipelines.io.mesh import read_mesh

ROOT = Path(__file__).resolve().parents[1]
REFERENCE_SPEECH = ROOT.parent / "shared" / "reference" / "speech"


def lip_pairs(template: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Upper and lower lip margin vertices of the built-in head whose vertices `template` has."""
    for grid in (48, *range(16, 97)):
        head = builtin_head(grid)
        if len(head.mesh.vertices) == len(template) and np.allclose(
            head.mesh.vertices, template, atol=1e-3
        ):
            return head.mouth_upper, head.mouth_lower
    raise SystemExit("the template is not the built-in head (meshtalk synth's topology)")


def frame_energy_db(samples: np.ndarray, rate: int, frames: int) -> np.ndarray:
    """RMS energy (dB) of the audio in a window of one frame centred on each frame's time."""
    half = int(rate / FPS / 2)
    centres = (np.arange(frames) / FPS * rate).astype(int)
    energy = []
    for centre in centres:
        window = samples[max(centre - half, 0) : centre + half]
        energy.append(10 * np.log10(np.mean(window**2) + 1e-12) if len(window) else -120.0)
    return np.asarray(energy)


def measure(
    speech: Path,
    model: Path | None,
    template: Path | None,
    takes: int,
    voiced_db: float,
    silent_db: float,
) -> dict:
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "out"
        config = AnimateConfig(
            speech=speech, output=out, model=model, template=template, takes=takes, video=False
        )
        animate(config)
        runs = [out] if takes == 1 else [out / f"take_{i}" for i in range(takes)]
        vertices = []
        for run in runs:
            with np.load(run / "animation.npz", allow_pickle=False) as archive:
                vertices.append(archive["vertices"])
        rest = read_mesh(config.template).vertices
    upper, lower = lip_pairs(rest)
    gaps = np.stack([(v[:, upper, 1] - v[:, lower, 1]).max(axis=1) for v in vertices])
    samples = load_audio(speech, 16_000)
    energy = frame_energy_db(samples, 16_000, gaps.shape[1])
    floor = float(np.percentile(energy, 10))
    voiced = energy >= floor + voiced_db
    silent = energy <= floor + silent_db
    voiced_gap = float(gaps[:, voiced].mean())
    silent_gap = float(gaps[:, silent].mean())
    return {
        "speech": speech.name,
        "frames": int(gaps.shape[1]),
        "voiced_frames": int(voiced.sum()),
        "silent_frames": int(silent.sum()),
        "noise_floor_db": round(floor, 1),
        "voiced_gap_mm": round(voiced_gap, 3),
        "silent_gap_mm": round(silent_gap, 3),
        "ratio": round(voiced_gap / max(silent_gap, 1e-3), 2),
        "max_gap_mm": round(float(gaps.max()), 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("speech", nargs="*", type=Path, help="recordings (default: the reference)")
    parser.add_argument("--model", type=Path, help="run folder (default: the bundled model)")
    parser.add_argument("--template", type=Path, help="template of --model (the built-in head)")
    parser.add_argument("--takes", type=int, default=3, help="samples per recording")
    parser.add_argument("--voiced-db", type=float, default=15.0, help="voiced: dB above floor")
    parser.add_argument("--silent-db", type=float, default=6.0, help="silent: dB above floor")
    add_json_option(parser)
    args = parser.parse_args()
    check_json(parser, args)
    files = args.speech or sorted(REFERENCE_SPEECH.glob("*.wav"))
    if not files:
        sys.exit(f"no recordings given and none in {REFERENCE_SPEECH}")
    results = [
        measure(f, args.model, args.template, args.takes, args.voiced_db, args.silent_db)
        for f in files
    ]
    table = Table(title="lip gap of the default model on real speech")
    for column in ("speech", "voiced frames", "silent frames", "voiced gap mm", "silent gap mm"):
        table.add_column(column)
    table.add_column("ratio (target >= 3)")
    for r in results:
        table.add_row(
            r["speech"],
            str(r["voiced_frames"]),
            str(r["silent_frames"]),
            f"{r['voiced_gap_mm']:.2f}",
            f"{r['silent_gap_mm']:.2f}",
            f"{r['ratio']:.1f}",
        )
    Console().print(table)
    if args.json:
        write_json(args.json, json.dumps({"recordings": results, "takes": args.takes}, indent=2))


if __name__ == "__main__":
    main()
