"""Tables and pictures of benchmarks/claims.py: the claims met, a frame grid of the models side by
side and per-vertex error maps."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from _claims_measures import (
    BARELY,
    BLINK_TOLERANCE,
    HEADS,
    LIPS_FACTOR,
    UPPER_FACE_WEIGHT,
    count_blinks,
    eyelid_closure,
    eyelid_pairs,
)
from rich.console import Console
from rich.table import Table

from meshtalk.models.sampler import PriorSampler


def frame_grid(
    path: Path, faces, rows: dict[str, torch.Tensor], picks: list[int], fps: float = 30.0
) -> None:
    """Rows of meshes (T, V, 3) at some frames, rendered, labelled, saved as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from meshtalk.pipelines.io.atomic import atomic_path
    from meshtalk.pipelines.render.renderer import MeshRenderer, Panel

    first = next(iter(rows.values()))
    cell = (180, 220)
    renderer = MeshRenderer(
        faces, first[0].numpy(), size=(cell[0] * len(picks), cell[1] * len(rows)), samples=4
    )
    try:
        image = renderer.render_panels(
            [[Panel(mesh[t].numpy()) for mesh in rows.values()] for t in picks]
        )
    finally:
        renderer.close()
    figure, axis = plt.subplots(figsize=(image.shape[1] / 80 + 1.6, image.shape[0] / 80 + 0.4))
    axis.imshow(image)
    axis.set_xticks([cell[0] * (i + 0.5) for i in range(len(picks))])
    axis.set_xticklabels([f"{t / fps:.2f} s" for t in picks])
    axis.set_yticks([cell[1] * (i + 0.5) for i in range(len(rows))])
    axis.set_yticklabels(list(rows))
    axis.tick_params(length=0)
    for side in axis.spines.values():
        side.set_visible(False)
    figure.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        figure.savefig(tmp, dpi=80, bbox_inches="tight")
    plt.close(figure)


def error_map(path: Path, faces, template: np.ndarray, maps: dict[str, np.ndarray]) -> None:
    """Per-vertex errors (mm) painted on the template, one rendered panel per map, shared scale."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from meshtalk.pipelines.io.atomic import atomic_path
    from meshtalk.pipelines.render.overlay import (
        COLOUR_MAP,
        colour_lookup,
        distance_colours,
        nice_maximum,
    )
    from meshtalk.pipelines.render.renderer import MeshRenderer, Panel

    maximum = nice_maximum(max(float(np.percentile(m, 99)) for m in maps.values()))
    lookup = colour_lookup()
    renderer = MeshRenderer(faces, template, size=(300 * len(maps), 340), samples=4)
    try:
        image = renderer.render_panels(
            [[Panel(template, colours=distance_colours(m, maximum, lookup))] for m in maps.values()]
        )
    finally:
        renderer.close()
    figure, axis = plt.subplots(figsize=(image.shape[1] / 80 + 1.4, image.shape[0] / 80 + 0.6))
    axis.imshow(image)
    axis.set_xticks([300 * (i + 0.5) for i in range(len(maps))])
    axis.set_xticklabels(list(maps))
    axis.xaxis.tick_top()
    axis.set_yticks([])
    axis.tick_params(length=0)
    for side in axis.spines.values():
        side.set_visible(False)
    scale = plt.cm.ScalarMappable(plt.Normalize(0, maximum), matplotlib.colormaps[COLOUR_MAP])
    figure.colorbar(scale, ax=axis, fraction=0.03, label="mean vertex error (mm)")
    figure.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        figure.savefig(tmp, dpi=80, bbox_inches="tight")
    plt.close(figure)


@torch.no_grad()
def write_pictures(folder: Path, topology, tests, models, predictions, heat, console) -> None:
    """claims_frames.png: the test segment with the most data blinks, rows data / a sample / the
    regression; claims_error_map.png: per-vertex mean error of samples and of the regression."""
    from meshtalk.pipelines.io.mesh import read_mesh

    folder.mkdir(parents=True, exist_ok=True)
    faces = read_mesh(topology / "template.ply").faces
    eyes = eyelid_pairs(topology)
    segment = max(tests, key=lambda s: count_blinks(eyelid_closure(s.vertices, s.template, eyes)))
    latent, prior = models["cross-modality"]
    _, audio = latent.codes(
        segment.vertices[None], segment.template[None], segment.mel[None], segment.starts[None]
    )
    drawn = PriorSampler(prior, seed=0).sample(audio)
    sample = latent.decoder(segment.template[None], F.one_hot(drawn, latent.config.classes).float())
    rows = {
        "data": segment.vertices,
        "sample": sample[0],
        "regression": predictions[segment.name],
    }
    # six evenly spaced frames, two of them moved onto the data's and the sample's widest blink
    picks = np.linspace(0, len(segment.vertices) - 1, 8).round().astype(int)[1:-1]
    taken = []
    for row in ("data", "sample"):
        peak = int(eyelid_closure(rows[row], segment.template, eyes).argmax())
        distance = np.abs(picks - peak).astype(float)
        distance[taken] = np.inf
        taken.append(int(distance.argmin()))
        picks[taken[-1]] = peak
    frame_grid(folder / "claims_frames.png", faces, rows, sorted(set(picks.tolist())))
    template = tests[0].template.numpy()
    maps = {name: (tally.vertex_error / tally.frames).numpy() for name, tally in heat.items()}
    error_map(folder / "claims_error_map.png", faces, template, maps)
    console.log(f"wrote {folder / 'claims_frames.png'} and {folder / 'claims_error_map.png'}")


def claims_met(table1: dict, table2: dict, data_rate: float) -> dict[str, dict]:
    cross, template = table2["samples, cross-modality"], table2["static template"]
    regression = table2["audio-only L2 regression"]
    lips_ratio = cross["lip_vertex_error_mm"] / template["lip_vertex_error_mm"]
    sample_rate, regression_rate = cross["blinks_per_minute"], regression["blinks_per_minute"]
    blink_off = abs(sample_rate - data_rate) / data_rate
    perplexity = {name: f["test_prior_perplexity"] for name, f in table1.items()}
    return {
        "lips_follow_the_audio": {
            "claim": f"lip vertex error of samples at most {LIPS_FACTOR}x the static template's "
            "(held-out identities and sentences)",
            "samples_lip_vertex_error_mm": cross["lip_vertex_error_mm"],
            "static_template_lip_vertex_error_mm": template["lip_vertex_error_mm"],
            "ratio": lips_ratio,
            "met": lips_ratio <= LIPS_FACTOR,
        },
        "samples_blink_regression_does_not": {
            "claim": f"samples blink at the data's rate within {BLINK_TOLERANCE:.0%}; the "
            f"regression at most {BARELY}x the data's rate",
            "data_blinks_per_minute": data_rate,
            "samples_blinks_per_minute": sample_rate,
            "samples_off_by": blink_off,
            "regression_blinks_per_minute": regression_rate,
            "met": blink_off <= BLINK_TOLERANCE and regression_rate <= BARELY * data_rate,
        },
        "cross_modality_lowers_perplexity": {
            "claim": "the cross-modality loss gives a prior of lower perplexity than plain L2",
            "perplexity_cross_modality": perplexity["cross-modality"],
            "perplexity_plain_l2": perplexity["plain L2"],
            "perplexity_expression_only_input": perplexity["expression-only input"],
            "met": perplexity["cross-modality"] < perplexity["plain L2"],
        },
    }


def print_tables(console: Console, figures: dict) -> None:
    sizes = figures["sizes"]
    table = Table(
        title=f"Table 1: latent space (tiny preset, H={HEADS}, upper-face weight "
        f"{UPPER_FACE_WEIGHT:g}, stage 1 {sizes['latent_steps']} steps, prior "
        f"{sizes['prior_steps']}; test split: held-out identities and sentences)"
    )
    for column in ("stage 1", "reconstruction mm", "perplexity", "audio swap mouth/upper",
                   "expression swap upper/mouth"):  # fmt: skip
        table.add_column(column, justify="right")
    for name, f in figures["table1_latent_space"].items():
        table.add_row(
            name,
            f"{f['test_reconstruction_mm']:.3f}",
            f"{f['test_prior_perplexity']:.2f} (C={f['classes']})",
            f"{f['audio_swap_mouth_over_upper_face_x']:.1f}x",
            f"{f['expression_swap_upper_face_over_mouth_x']:.2f}x",
        )
    console.print(table)
    table = Table(
        title=f"Table 2: animation from audio ({sizes['takes']} sampled takes per test segment)"
    )
    for column in ("", "lip vertex error mm", "mean vertex error mm", "upper-face motion std mm",
                   "blinks / min"):  # fmt: skip
        table.add_column(column, justify="right")
    for name, f in figures["table2_animation"].items():
        table.add_row(
            name,
            f"{f['lip_vertex_error_mm']:.3f}",
            f"{f['mean_vertex_error_mm']:.3f}",
            f"{f['upper_face_motion_std_mm']:.3f}",
            f"{f['blinks_per_minute']:.1f}",
        )
    console.print(table)
    console.print(
        f"data's blink rate over all {figures['data_all_segments']['segments']} segments: "
        f"{figures['data_all_segments']['blinks_per_minute']:.1f} / min"
    )
    table = Table(title="Claims")
    for column in ("claim", "figures", "met"):
        table.add_column(column)
    for claim in figures["claims"].values():
        shown = ", ".join(
            f"{k} {v:.3g}" for k, v in claim.items() if isinstance(v, float) and k != "met"
        )
        table.add_row(claim["claim"], shown, "met" if claim["met"] else "NOT met")
    console.print(table)
