"""The MeshTalk paper's claims, reproduced on the synthetic world with the `tiny` preset on the CPU.

Every stage-1 variant uses the tiny preset with 8 heads and the upper-face terms weighted 6 (see
HEADS and UPPER_FACE_WEIGHT for what the preset's own 4 heads did).

Makes a synthetic dataset (`meshtalk synth`, options in DATASET: 64 identities x 6 sentences; the
paper's split protocol, so the test split is held-out identities speaking held-out sentences),
trains the variants side by side and measures every row here, on the test split:

Table 1 (latent space; the paper's Table 1): stage 1 with the cross-modality loss, with plain L2,
and with the expression-only encoder input (the encoder sees only the meshes: `fusion_input:
expression`), each with its own audio-conditioned prior: stage-1 reconstruction error (argmax
codes of the true meshes), prior perplexity (teacher-forced on those codes; C for a uniform prior)
and the swap ratios (decoding with another segment's audio moves the mouth this many times more
than the upper face; with another segment's expression, the upper face this many times more than
the mouth).

Table 2 (animation; the paper's Table 2 and Figure 6): codes sampled from each prior given the
test audio alone (temperature 1, several takes) against an audio-only L2 regression of the vertices
(`meshtalk.models.regression.AudioRegression`), the static template and the tracked meshes: lip
vertex error (per frame the largest L2 distance over the lip vertices, mouth mask > 0.5, averaged
over frames, mm), mean vertex error, upper-face motion standard deviation (per vertex the standard
deviation of its position over a segment's frames, upper-face-mask weighted mean, mm) and blinks
per minute (a blink: the eyelid gap, between the upper and the lower lid landmarks, falls below
half its neutral value; it counts again once the gap is back above 3/4).

Claims, each met or not with its figures: lips follow the audio (lip vertex error of samples at
most 0.5x the static template's); samples blink at the data's rate within 30% while the regression
barely blinks (at most 0.3x the data's rate); the cross-modality loss lowers the prior's perplexity
(below plain L2's).

About 10-15 minutes on 2 cores, more on a busy machine (`--quick`: a smoke run of a few steps,
about a minute). Not a test: it prints the tables and, with --json, writes the figures; --figures
DIR writes claims_frames.png (a grid of test frames: data, sample, regression) and
claims_error_map.png (per-vertex error); --workdir keeps the dataset and the runs, and --reuse
measures them again without training.

`--world ict` makes the same split on the ICT-FaceKit head (`synth --face ict`, 6,706 vertices,
eSpeak NG voices), the bundled default model's world; its stage 1 costs about 5x more per step
and warms the Gumbel noise up over the first half of the steps, as the bundled model's recipe does.

    python benchmarks/claims.py [--quick] [--world ict] [--json claims.json] [--figures DIR]
                                [--workdir DIR]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
import yaml
from _claims_measures import (
    CLOSED,
    HEADS,
    REOPENED,
    UPPER_FACE_WEIGHT,
    Tally,
    count_blinks,
    eyelid_closure,
    eyelid_pairs,
    segments,
)
from _claims_report import claims_met, print_tables, write_pictures
from _measure import add_json_option, check_json, run_main, write_json
from quality import CONFIGS, _meshtalk, _quiet
from rich.console import Console
from safetensors.torch import load_file, save_file

from meshtalk.models.regression import AudioRegression
from meshtalk.models.sampler import PriorSampler
from meshtalk.pipelines.checkpoint import load_run
from meshtalk.pipelines.data.store import PreparedStore, SegmentDataset
from meshtalk.pipelines.train.latent import fit_to_data, load_config_file
from meshtalk.pipelines.train.pairs import PairedSegments
from meshtalk.pipelines.train.validation import latent_figures, prior_figures

log = logging.getLogger("claims")

DATASET = (
    "--identities", "64", "--sentences", "6", "--grid", "24", "--expression-drift", "0.6",
    "--drop-rate", "0", "--voice", "formant", "--blinks-per-minute", "15", "--seed", "0",
)  # fmt: skip
"""`meshtalk synth` options of the full run: 51 identities train on their first 5 sentences, the
13 held out validate (3) and test (10) on their 6th; the built-in head at grid 24 (about 1.2k
vertices); no dropped frames, so every test segment is one unbroken take."""
ICT_FACEKIT = Path(__file__).resolve().parents[1].parent / "shared" / "reference" / "ict_facekit"
ICT_DATASET = (
    "--identities", "64", "--sentences", "6", "--face", "ict", "--face-model", str(ICT_FACEKIT),
    "--expression-drift", "0.6", "--drop-rate", "0", "--voice", "espeak", "--seed", "0",
)  # fmt: skip
"""`--world ict`: the same split on the ICT-FaceKit head (`synth --face ict`: its 6,706-vertex face
area driven through its expression shapes, eSpeak NG voices), the bundled default model's world."""
QUICK_DATASET = (
    "--identities", "6", "--sentences", "3", "--grid", "16", "--expression-drift", "0.6",
    "--drop-rate", "0", "--voice", "formant", "--seed", "0",
)  # fmt: skip


@dataclass(frozen=True)
class Sizes:
    latent_steps: int
    prior_steps: int
    regression_steps: int
    takes: int
    """Samples drawn per test segment from each prior."""
    swap_segments: int
    """Test windows (with a partner) of the swap ratios."""


FULL = Sizes(latent_steps=2000, prior_steps=1500, regression_steps=2000, takes=8, swap_segments=32)
QUICK = Sizes(latent_steps=10, prior_steps=10, regression_steps=10, takes=2, swap_segments=4)

LATENT_VARIANTS = ("cross-modality", "plain L2", "expression-only input")


def variant(source: Path, target: Path, section: str, **values) -> Path:
    """A copy of a config file with some values of one section (added if missing) replaced."""
    config = yaml.safe_load(source.read_text())
    config.setdefault(section, {}).update(values)
    target.write_text(yaml.safe_dump(config))
    return target


# --- the world ------------------------------------------------------------------------------------


def make_world(work: Path, dataset: tuple[str, ...]) -> tuple[Path, Path]:
    """Synthesize and prepare the dataset; returns (store, the synth's topology folder)."""
    data, store = work / "multiface", work / "data"
    _quiet(_meshtalk("synth", str(data), *dataset))
    topology = data / "topology"
    landmarks = str(topology / "landmarks.yaml")
    _quiet(
        _meshtalk("prep", str(data), "-o", str(store), "--crop", "none", "--landmarks", landmarks)
    )
    return store, topology


# --- measures -------------------------------------------------------------------------------------


# --- training -------------------------------------------------------------------------------------


def start(commands: list[list[str]]) -> list[subprocess.Popen]:
    """Start commands at once, one thread each (the machine's 2 cores)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    return [
        subprocess.Popen(c, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        for c in commands
    ]


def finish(processes: list[subprocess.Popen]) -> None:
    for process in processes:
        _, error = process.communicate()
        if process.returncode:
            raise SystemExit(f"{' '.join(process.args)} failed: {error.decode()[-2000:]}")


def regression_model(store_path: Path, latent_config: Path) -> AudioRegression:
    """An untrained regression with the audio encoder of a stage-1 config, fitted to the data."""
    store = PreparedStore(store_path)
    config = fit_to_data(load_config_file(latent_config)[0], store, store_path)
    model = AudioRegression(config)
    model.set_statistics(torch.from_numpy(store.std).clamp_min(1e-3))
    return model


def train_regression(
    store_path: Path, latent_config: Path, steps: int, seed: int = 0
) -> AudioRegression:
    """The audio-only L2 regression, trained in this process: the tiny preset's audio encoder,
    its learning rate (decayed 10x at 5/6 of the steps), batches of 8 windows of 32 frames."""
    training = load_config_file(latent_config)[1]
    store = PreparedStore(store_path)
    torch.manual_seed(seed)
    model = regression_model(store_path, latent_config)
    batch = training.batch_size
    data = SegmentDataset(store, "train", training.frames, length=steps * batch, seed=seed)
    loader = torch.utils.data.DataLoader(data, batch_size=batch, num_workers=0)
    optimizer = torch.optim.Adam(model.parameters(), lr=training.lr)
    decay = torch.optim.lr_scheduler.StepLR(optimizer, max(1, steps * 5 // 6), training.lr_decay)
    model.train()
    for step, items in enumerate(loader):
        torch.manual_seed(seed + step + 1)  # dropout
        loss = model.loss(items)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        decay.step()
        if step % 250 == 0:
            log.info("regression step %d: %.3f mm^2", step, loss.item())
    return model.eval()


def train_all(
    work: Path, dataset, sizes: Sizes, console: Console, reuse: bool, warmup: bool = False
):
    """The world and every trained model: (store, topology folder, run folder of each latent
    variant, the regression). With `reuse`, what an earlier run left in `work` is taken as is.
    `warmup`: the Gumbel noise of every stage-1 variant warmed up over the first half of its
    steps, as the bundled default model's recipe does (the ICT world: without it the decoder
    learns to ignore the untrained encoder's codes and every sample holds the mean mouth)."""
    store_path, topology = work / "data", work / "multiface" / "topology"
    runs = {name: work / f"run-{i}" for i, name in enumerate(LATENT_VARIANTS)}
    weights = work / "regression.safetensors"
    decay = max(1, sizes.latent_steps * 5 // 6)
    cross = variant(
        CONFIGS / "latent-tiny.yaml",
        work / "cross.yaml",
        "train",
        lr_decay_step=decay,
        upper_face_weight=UPPER_FACE_WEIGHT,
    )
    cross = variant(cross, cross, "model", heads=HEADS)
    if warmup:
        cross = variant(cross, cross, "train", gumbel_warmup=max(1, sizes.latent_steps // 2))
    if reuse and weights.is_file():
        console.log(f"reusing the dataset and the trained runs in {work}")
        regression = regression_model(store_path, cross)
        regression.load_state_dict(load_file(str(weights)))
        return store_path, topology, runs, regression.eval()
    console.log("synthetic world: meshtalk synth " + " ".join(dataset))
    store_path, topology = make_world(work, dataset)
    plain = variant(cross, work / "plain.yaml", "train", cross_modality=False)
    expression_only = variant(plain, work / "expression.yaml", "model", fusion_input="expression")
    latent_configs = dict(zip(LATENT_VARIANTS, (cross, plain, expression_only)))
    console.log(f"stage 1, {sizes.latent_steps} steps: three variants side by side")
    finish(
        start(
            [
                _meshtalk("train", "latent", "--data", str(store_path), "--config",
                          str(latent_configs[name]), "-o", str(run), "--steps",
                          str(sizes.latent_steps), "--no-progress")
                for name, run in runs.items()
            ]
        )
    )  # fmt: skip
    prior_config = variant(
        CONFIGS / "prior-tiny.yaml",
        work / "prior.yaml",
        "train",
        lr_decay_step=max(1, sizes.prior_steps * 3 // 4),
    )
    console.log(
        f"stage 2, {sizes.prior_steps} steps, three priors, beside the regression "
        f"({sizes.regression_steps} steps)"
    )
    priors = start(
        [
            _meshtalk("train", "prior", "--latent", str(run), "--data", str(store_path),
                      "--config", str(prior_config), "-o", str(run), "--steps",
                      str(sizes.prior_steps), "--no-progress")
            for run in runs.values()
        ]
    )  # fmt: skip
    regression = train_regression(store_path, cross, sizes.regression_steps)
    finish(priors)
    save_file(regression.state_dict(), str(weights))
    return store_path, topology, runs, regression


# --- measuring the variants -----------------------------------------------------------------------


def test_batches(store: PreparedStore, count: int, heads: int, classes: int) -> list[dict]:
    """`count` fixed test windows of 32 frames, each with a partner, in batches of 8."""
    windows = SegmentDataset(store, "test", 32, length=1, seed=11)
    paired = PairedSegments(windows, heads, classes)
    items = [paired[i] for i in range(count)]
    return [
        {k: torch.stack([item[k] for item in items[i : i + 8]]) for k in items[0]}
        for i in range(0, len(items), 8)
    ]


@torch.no_grad()
def measure_latent(run_dir: Path, store, tests, masks, lips, eyes, sizes: Sizes):
    """Table 1's figures of a run and Table 2's rows of its samples and its reconstruction."""
    run = load_run(run_dir)
    latent, prior = run.latent, run.prior
    classes = latent.config.classes
    reconstruction, samples = Tally(store.num_vertices), Tally(store.num_vertices)
    sequences = []
    for index, segment in enumerate(tests):
        vertices, template = segment.vertices[None], segment.template[None]
        expression, audio = latent.codes(
            vertices, template, segment.mel[None], segment.starts[None]
        )
        codes = latent.encoder.fusion_model(expression, audio).argmax(-1)
        sequences.append((codes[0], audio[0]))
        decoded = latent.decoder(template, F.one_hot(codes, classes).float())
        reconstruction.add(decoded, segment, masks, lips, eyes)
        sampler = PriorSampler(prior, batch=sizes.takes, seed=index)
        drawn = sampler.sample(audio.expand(sizes.takes, -1, -1))
        one_hot = F.one_hot(drawn, classes).float()
        sampled = latent.decoder(template.expand(sizes.takes, -1, -1), one_hot)
        samples.add(sampled, segment, masks, lips, eyes)
    batches = test_batches(store, sizes.swap_segments, latent.config.heads, classes)
    swaps = latent_figures(latent, batches, masks, torch.device("cpu"))
    table1 = {
        "test_reconstruction_mm": reconstruction.figures()["mean_vertex_error_mm"],
        "test_prior_perplexity": prior_figures(prior, sequences, torch.device("cpu"))["perplexity"],
        "classes": classes,
        "audio_swap_mouth_over_upper_face_x": swaps["audio_swap_mouth_over_upper"],
        "audio_swap_mouth_mm": swaps["audio_swap_mouth_mm"],
        "audio_swap_upper_face_mm": swaps["audio_swap_upper_mm"],
        "expression_swap_upper_face_over_mouth_x": swaps["expression_swap_upper_over_mouth"],
        "expression_swap_upper_face_mm": swaps["expression_swap_upper_mm"],
        "expression_swap_mouth_mm": swaps["expression_swap_mouth_mm"],
    }
    return table1, samples, reconstruction, (latent, prior)


# --- pictures -------------------------------------------------------------------------------------


# --- the benchmark --------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run of a few steps")
    add_json_option(parser)
    parser.add_argument("--figures", type=Path, help="write the two PNG pictures into this folder")
    parser.add_argument("--workdir", type=Path, help="keep the dataset and runs here")
    parser.add_argument(
        "--reuse", action="store_true", help="measure what an earlier run left in --workdir"
    )
    parser.add_argument(
        "--world",
        choices=("builtin", "ict"),
        default="builtin",
        help="the synthetic world: the built-in head (1.2k vertices) or the ICT-FaceKit head",
    )
    args = parser.parse_args()
    check_json(parser, args)
    if args.reuse and not args.workdir:
        parser.error("--reuse needs the --workdir of an earlier run")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(1)
    console = Console(width=160)
    sizes = QUICK if args.quick else FULL
    dataset = QUICK_DATASET if args.quick else DATASET
    if args.world == "ict":
        if not ICT_FACEKIT.is_dir():
            parser.error(f"--world ict needs the ICT-FaceKit model in {ICT_FACEKIT}")
        dataset = ICT_DATASET
        if args.quick:
            dataset = ("--identities", "6", "--sentences", "3", *ICT_DATASET[4:])
    began = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="meshtalk-claims-") as tmp:
        work = args.workdir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        store_path, topology, runs, regression = train_all(
            work, dataset, sizes, console, args.reuse, warmup=args.world == "ict"
        )
        trained = time.perf_counter() - began
        store = PreparedStore(store_path)

        console.log("measuring on the test split")
        tests = segments(store, "test")
        masks = {k: torch.from_numpy(v) for k, v in store.masks.items()}
        lips, eyes = masks["mouth"] > 0.5, eyelid_pairs(topology)
        table1, table2, models = {}, {}, {}
        reconstruction_rows = {}
        for name, run in runs.items():
            table1[name], samples, reconstruction, models[name] = measure_latent(
                run, store, tests, masks, lips, eyes, sizes
            )
            table2[f"samples, {name}"] = samples
            reconstruction_rows[f"stage-1 reconstruction, {name} (encoder sees the meshes)"] = (
                reconstruction
            )
        rows = {
            "audio-only L2 regression": Tally(store.num_vertices),
            "static template": Tally(store.num_vertices),
            "tracked meshes (the data)": Tally(store.num_vertices),
        }
        predictions = {}
        with torch.no_grad():
            for segment in tests:
                predicted = regression(
                    segment.template[None], segment.mel[None], segment.starts[None]
                )
                predictions[segment.name] = predicted[0]
                rows["audio-only L2 regression"].add(predicted, segment, masks, lips, eyes)
                still = segment.template.expand_as(segment.vertices)[None]
                rows["static template"].add(still, segment, masks, lips, eyes)
                rows["tracked meshes (the data)"].add(
                    segment.vertices[None], segment, masks, lips, eyes
                )
        table2.update(rows)
        table2.update(reconstruction_rows)
        everything = segments(store, "train") + segments(store, "val") + tests
        data_blinks = sum(
            count_blinks(eyelid_closure(s.vertices, s.template, eyes)) for s in everything
        )
        data_minutes = sum(s.minutes for s in everything)
        data_rate = data_blinks / data_minutes
        heat = {
            "samples, cross-modality": table2["samples, cross-modality"],
            "audio-only L2 regression": table2["audio-only L2 regression"],
        }
        table2 = {name: tally.figures() for name, tally in table2.items()}
        figures = {
            "dataset": "meshtalk synth " + " ".join(dataset) + f" (V={store.num_vertices})",
            "test_segments": len(tests),
            "test_minutes": sum(s.minutes for s in tests),
            "sizes": sizes.__dict__,
            "stage1_upper_face_weight": UPPER_FACE_WEIGHT,
            "stage1_heads": HEADS,
            "blink_rule": f"eyelid closure 1 - gap/neutral gap reaches {CLOSED}, "
            f"re-armed below {REOPENED}",
            "table1_latent_space": table1,
            "table2_animation": table2,
            "data_all_segments": {
                "segments": len(everything),
                "minutes": data_minutes,
                "blinks_counted": data_blinks,
                "blinks_per_minute": data_rate,
            },
            "claims": claims_met(table1, table2, data_rate),
            "training_seconds": trained,
            "total_seconds": time.perf_counter() - began,
        }
        print_tables(console, figures)
        if args.figures:
            write_pictures(args.figures, topology, tests, models, predictions, heat, console)
    if args.json:
        write_json(args.json, json.dumps(figures, indent=2) + "\n")
        console.log(f"wrote {args.json}")
    console.log(f"{figures['total_seconds'] / 60:.1f} min in all")


if __name__ == "__main__":
    run_main(main)
