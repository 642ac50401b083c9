"""Should `animate` sample with int8 weights by default? Their quality against float's, measured.

On the bundled model (trained; its own head) for the bundled example and the reference sentence,
and on the release's sizes (random weights made as peaked as a trained prior's, as in
benchmarks/sample.py):

1. the int8 sampler's distributions against the float model's at the same positions (the int8
   sampler's own draws fed back to both): mean and largest KL(float || int8) in nats, and how
   often their most likely codes agree;
2. on the bundled model, what a user sees: the lip vertex error (mm, the MeshTalk paper's:
   per frame the largest lip-vertex distance, averaged over frames) between the float and the
   int8 animation with the same seed (the same Gumbel noise, so they differ only where int8's
   logits move a draw), beside the same error between two float takes (seeds 0 and 1), the
   variation a user already gets from one take to the next; and with --argmax.

int8 would be the default only if (2) is well below the take-to-take variation.

    python benchmarks/int8_default.py [--json FILE]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import torch.nn.functional as F
from _measure import add_json_option, check_json, run_main, write_json
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
LVE_KEYS = (
    "sampled_lip_error_int8_vs_float_mm",
    "sampled_lip_error_float_seed1_vs_seed0_mm",
    "argmax_lip_error_int8_vs_float_mm",
)
SENTENCE = ROOT.parent / "shared" / "reference" / "speech" / "example_sentence.wav"


@torch.inference_mode()
def distributions(prior, audio_codes: torch.Tensor) -> dict:
    """KL(float || int8) and top-1 agreement at the positions of the int8 sampler's own draws."""
    from meshtalk.models.sampler import PriorSampler

    sampler = PriorSampler(prior, seed=0, weights="int8", record_logits=True)
    sampled = sampler.sample(audio_codes)
    used = torch.stack(sampler.recorded, dim=1).float().log_softmax(dim=-1)
    one_hot = F.one_hot(sampled, prior.config.classes).float()
    exact = prior(one_hot, audio_codes).log_softmax(dim=-1)
    kl = (exact.exp() * (exact - used)).sum(dim=-1)
    return {
        "positions": int(kl.numel()),
        "mean_kl_float_to_int8_nats": kl.mean().item(),
        "max_kl_float_to_int8_nats": kl.max().item(),
        "argmax_agreement": (exact.argmax(-1) == used.argmax(-1)).float().mean().item(),
        "float_mean_entropy_nats": -(exact.exp() * exact).sum(-1).mean().item(),
    }


@torch.inference_mode()
def animation(run, template: torch.Tensor, audio_codes, weights: str, seed: int, argmax: bool):
    """(T, V, 3) decoded frames of one take."""
    from meshtalk.models.sampler import PriorSampler

    sampler = PriorSampler(run.prior, weights=weights, seed=seed, argmax=argmax)
    codes = sampler.sample(audio_codes)
    one_hot = F.one_hot(codes, run.prior.config.classes).float()
    meshes, _ = run.latent.decoder.decode(template[None], one_hot, None)
    return meshes[0]


def bundled_rows(speeches: list[Path]) -> list[dict]:
    from meshtalk.pipelines.checkpoint import load_run
    from meshtalk.pipelines.data.resources import default_model
    from meshtalk.pipelines.eval.metrics import lip_vertex_error, lip_vertices
    from meshtalk.pipelines.io.audio import load_audio
    from meshtalk.pipelines.io.mesh import read_mesh

    run = load_run(default_model.run_path(), torch.device("cpu"))
    template = torch.from_numpy(read_mesh(default_model.template_path()).vertices).float()
    lips = lip_vertices(run.masks["mouth"])
    rows = []
    for speech in speeches:
        with torch.inference_mode():
            codes = run.front_end.audio_codes(run.latent.encoder.audio_encoder, load_audio(speech))
        row = {"model": "bundled", "speech": speech.name, "frames": int(codes.shape[1])}
        row.update(distributions(run.prior, codes))
        for argmax in (False, True):
            name = "argmax" if argmax else "sampled"
            float0 = animation(run, template, codes, "float", 0, argmax)
            int8 = animation(run, template, codes, "int8", 0, argmax)
            row[f"{name}_lip_error_int8_vs_float_mm"] = lip_vertex_error(int8, float0, lips)
            if not argmax:
                float1 = animation(run, template, codes, "float", 1, argmax)
                row["sampled_lip_error_float_seed1_vs_seed0_mm"] = lip_vertex_error(
                    float1, float0, lips
                )
        rows.append(row)
    return rows


def release_row() -> dict:
    """The release's sizes: benchmarks/sample.py's int8 fidelity (10 s of speech)."""
    from sample import int8_fidelity

    row = {"model": "release sizes, random (peaked)", "speech": "10 s"}
    row.update(int8_fidelity(10.0))
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_json_option(parser)
    args = parser.parse_args()
    check_json(parser, args)
    from meshtalk.pipelines.data.resources import default_model

    torch.manual_seed(0)
    rows = bundled_rows([default_model.example_path(), SENTENCE]) + [release_row()]
    table = Table(title="int8 against float sampler weights")
    columns = ("model", "speech", "mean KL", "max KL", "top-1 agree", "entropy",
               "LVE int8-float", "LVE float seeds", "LVE argmax int8-float")  # fmt: skip
    for column in columns:
        table.add_column(column, justify="right")
    for row in rows:
        lve = [row.get(key) for key in LVE_KEYS]
        table.add_row(
            row["model"], row["speech"], f"{row['mean_kl_float_to_int8_nats']:.4f}",
            f"{row['max_kl_float_to_int8_nats']:.3f}", f"{row['argmax_agreement']:.4f}",
            f"{row['float_mean_entropy_nats']:.3f}",
            *("-" if value is None else f"{value:.3f}" for value in lve),
        )  # fmt: skip
    Console().print(table)
    Console().print(
        "KL in nats per code; LVE: lip vertex error in mm (template units) between two "
        "animations of the same speech: int8 against float with the same seed, and two float "
        "takes (seeds 0 and 1)"
    )
    if args.json:
        write_json(args.json, json.dumps({"rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    run_main(main)
