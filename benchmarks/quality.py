"""What the two training stages learn on the synthetic dataset, with the `tiny` preset on the CPU.

Makes a synthetic dataset (64 identities x 6 sentences, 32 x 32 grid: V=1024; the paper's split
protocol: 51 identities train on their first 5 sentences, 3 unseen identities validate on their
unseen 6th; `--expression-drift 0.6`, so the upper face moves between blinks and brow raises,
independently of the audio: 0.62 mm mean displacement against 2.4 mm for the mouth), then side by
side:

1. stage 1 (`examples/configs/latent-tiny.yaml`, `upper_face_weight: 3`, the learning-rate decay
   moved to 5/6 of the steps) with the cross-modality loss, the same with plain L2, and the same
   with the method's equal weights, each in its own process: validation reconstruction error at
   step 0 and at the end, lip vertex error, and the swap ratios (decoding with another segment's
   audio moves the mouth this many times more than the upper face; with another segment's
   expression, the upper face this many times more than the mouth);
2. stage 2 (`examples/configs/prior-tiny.yaml`) on the cross-modality run, with and without audio
   conditioning: validation perplexity (C for a uniform prior) and top-1 accuracy.

About 20 minutes on 2 cores. Not a test: it prints a table and, with --json, writes the figures.

    python benchmarks/quality.py [--steps 3000] [--prior-steps 2000] [--json results.json]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml
from _measure import add_json_option, check_json, run_main, write_json
from rich.console import Console
from rich.table import Table

from meshtalk.pipelines.checkpoint import load_run
from meshtalk.pipelines.train.latent import load_config_file

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "examples" / "configs"


def _meshtalk(*args: str) -> list[str]:
    return [sys.executable, "-m", "meshtalk.cli.main", *args]


def _quiet(command: list[str]) -> None:
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


DATASET = ("--identities", "64", "--sentences", "6", "--grid", "32", "--expression-drift", "0.6")
"""`meshtalk synth` options of the dataset. Many identities, as in the paper's 250: with 16 (13
training) the decoder and the expression encoder fit the training faces, and on an unseen face an
expression swap moved the upper face half as far as on a training face."""


def make_store(workdir: Path) -> Path:
    data, store = workdir / "multiface", workdir / "data"
    _quiet(_meshtalk("synth", str(data), *DATASET))
    landmarks = str(data / "topology" / "landmarks.yaml")
    _quiet(
        _meshtalk("prep", str(data), "-o", str(store), "--crop", "none", "--landmarks", landmarks)
    )
    return store


def variant(source: Path, target: Path, section: str, **values) -> Path:
    """A copy of a shipped config with some values of one section replaced."""
    config = yaml.safe_load(source.read_text())
    config[section].update(values)
    target.write_text(yaml.safe_dump(config))
    return target


def run_side_by_side(commands: list[list[str]]) -> None:
    """Run commands at once, one thread each (the machine's 2 cores, one per run)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    processes = [
        subprocess.Popen(c, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        for c in commands
    ]
    for process in processes:
        _, error = process.communicate()
        if process.returncode:
            raise SystemExit(f"{' '.join(process.args)} failed: {error.decode()[-2000:]}")


def metrics(path: Path) -> dict[str, dict[int, float]]:
    """name -> {step: value} from a metrics CSV."""
    series: dict[str, dict[int, float]] = {}
    with open(path, newline="") as handle:
        for row in csv.DictReader(handle):
            series.setdefault(row["name"], {})[int(row["step"])] = float(row["value"])
    return series


def latent_figures(run: Path) -> dict:
    values = metrics(run / "metrics.csv")
    steps = sorted(values["val/reconstruction_mm"])
    first, last = steps[0], steps[-1]

    def at(name: str, step: int = last) -> float:
        return values[f"val/{name}"][step]

    return {
        "steps": last,
        "val_reconstruction_mm_at_step_0": at("reconstruction_mm", first),
        "val_reconstruction_mm_at_end": at("reconstruction_mm"),
        "val_reconstruction_fall_x": at("reconstruction_mm", first) / at("reconstruction_mm"),
        "val_lip_vertex_error_mm_at_end": at("lip_vertex_error_mm"),
        "audio_swap_mouth_mm": at("audio_swap_mouth_mm"),
        "audio_swap_upper_face_mm": at("audio_swap_upper_mm"),
        "audio_swap_mouth_over_upper_face_x": at("audio_swap_mouth_over_upper"),
        "expression_swap_upper_face_mm": at("expression_swap_upper_mm"),
        "expression_swap_mouth_mm": at("expression_swap_mouth_mm"),
        "expression_swap_upper_face_over_mouth_x": at("expression_swap_upper_over_mouth"),
    }


def prior_figures(run: Path) -> dict:
    values = metrics(run / "prior_metrics.csv")
    perplexity = values["val/perplexity"]
    best = min(perplexity, key=perplexity.get)
    return {
        "steps": max(perplexity),
        "val_perplexity_at_end": perplexity[max(perplexity)],
        "val_perplexity_best": perplexity[best],
        "val_perplexity_best_step": best,
        "val_top1_accuracy_at_end": values["val/accuracy"][max(perplexity)],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=3000, help="stage-1 steps per run")
    parser.add_argument("--prior-steps", type=int, default=2000, help="stage-2 steps per run")
    add_json_option(parser)
    args = parser.parse_args()
    check_json(parser, args)
    console = Console(width=150)
    with tempfile.TemporaryDirectory(prefix="meshtalk-quality-") as tmp:
        work = Path(tmp)
        console.log("synthetic dataset: meshtalk synth " + " ".join(DATASET))
        store = make_store(work)
        decay_step = max(1, args.steps * 5 // 6)
        latent_config = variant(
            CONFIGS / "latent-tiny.yaml", work / "cross.yaml", "train", lr_decay_step=decay_step
        )
        weight = load_config_file(latent_config)[1].upper_face_weight
        plain = variant(latent_config, work / "plain.yaml", "train", cross_modality=False)
        equal = variant(latent_config, work / "equal.yaml", "train", upper_face_weight=1.0)
        runs = {
            f"cross-modality, upper-face weight {weight:g} (the config)": (
                latent_config,
                work / "cross",
            ),
            "plain L2 (cross-modality off)": (plain, work / "plain"),
            "cross-modality, equal weights (SPEC)": (equal, work / "equal"),
        }
        console.log(f"stage 1, {args.steps} steps: the three runs side by side")
        run_side_by_side(
            [
                _meshtalk("train", "latent", "--data", str(store), "--config", str(config),
                          "-o", str(run), "--steps", str(args.steps), "--no-progress")
                for config, run in runs.values()
            ]
        )  # fmt: skip
        latent = {name: latent_figures(run) for name, (_, run) in runs.items()}

        prior_config = CONFIGS / "prior-tiny.yaml"
        no_audio = variant(prior_config, work / "no-audio.yaml", "model", audio_conditioning=False)
        priors = {"with audio": work / "cross", "without audio": work / "cross-no-audio"}
        shutil.copytree(priors["with audio"], priors["without audio"])
        console.log(f"stage 2, {args.prior_steps} steps: with and without audio side by side")
        run_side_by_side(
            [
                _meshtalk("train", "prior", "--latent", str(run), "--data", str(store),
                          "--config", str(config), "-o", str(run),
                          "--steps", str(args.prior_steps), "--no-progress")
                for config, run in zip((prior_config, no_audio), priors.values())
            ]
        )  # fmt: skip
        prior = {name: prior_figures(run) for name, run in priors.items()}
        classes = load_run(work / "cross", prior=False).latent.config.classes

    table = Table(title=f"Stage 1, tiny preset, {args.steps} steps (validation, argmax codes)")
    for column in ("run", "recon. step 0 mm", "recon. end mm", "fall", "LVE mm",
                   "audio swap mouth/upper", "expr. swap upper/mouth"):  # fmt: skip
        table.add_column(column, justify="right")
    for name, f in latent.items():
        table.add_row(
            name,
            f"{f['val_reconstruction_mm_at_step_0']:.3f}",
            f"{f['val_reconstruction_mm_at_end']:.3f}",
            f"{f['val_reconstruction_fall_x']:.1f}x",
            f"{f['val_lip_vertex_error_mm_at_end']:.2f}",
            f"{f['audio_swap_mouth_over_upper_face_x']:.1f}x "
            f"({f['audio_swap_mouth_mm']:.3f} / {f['audio_swap_upper_face_mm']:.3f} mm)",
            f"{f['expression_swap_upper_face_over_mouth_x']:.2f}x "
            f"({f['expression_swap_upper_face_mm']:.4f} / {f['expression_swap_mouth_mm']:.4f} mm)",
        )
    console.print(table)
    table = Table(title=f"Stage 2, tiny preset, {args.prior_steps} steps (C = {classes})")
    for column in ("prior", "perplexity end", "best (step)", "top-1 accuracy"):
        table.add_column(column, justify="right")
    for name, f in prior.items():
        table.add_row(
            name,
            f"{f['val_perplexity_at_end']:.3f}",
            f"{f['val_perplexity_best']:.3f} ({f['val_perplexity_best_step']})",
            f"{f['val_top1_accuracy_at_end']:.3f}",
        )
    console.print(table)
    if args.json:
        figures = {
            "dataset": "meshtalk synth " + " ".join(DATASET) + " (V=1024)",
            "stage1_lr_decay_step": decay_step,
            "stage1_tiny": latent,
            "stage2_tiny": {"classes": classes, **prior},
        }
        write_json(args.json, json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    run_main(main)
