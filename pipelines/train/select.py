"""Choosing among draws of one stage-1 training (the same settings and data, other seeds).

A stage-1 run can end with its expression path unused: the codes then ignore the tracked meshes,
the decoder gives every frame the mean upper face (no blinks) and the mouth learns less (the
ICT-FaceKit default model's recipe, seed 0 on an AMD EPYC: expression swap 0 from step 500 on,
lip vertex error 4.9 mm where seed 1 reached 2x and 3.7 mm). Which seed does so depends on the
machine's arithmetic in the last bits, so a recipe trains several and keeps one by its validation.
"""

from __future__ import annotations

from pathlib import Path

from meshtalk.pipelines.errors import MeshtalkError
from meshtalk.pipelines.train.latent import LatentStage
from meshtalk.pipelines.train.loop import MetricsLog

SWAP = "val/expression_swap_upper_over_mouth"
LIP_ERROR = "val/lip_vertex_error_mm"


def last_validation(run: Path) -> dict[str, float]:
    """The last validated value of each `val/` figure in the run's metrics.csv."""
    path = Path(run) / LatentStage.metrics_file
    if not path.is_file():
        raise MeshtalkError(path, "not there: the run has no stage-1 metrics")
    values: dict[str, tuple[int, float]] = {}
    for row in MetricsLog.read(path):
        name = row.get("name") or ""
        if name.startswith("val/"):
            try:
                step, value = int(row["step"]), float(row["value"])
            except (KeyError, TypeError, ValueError):
                raise MeshtalkError(path, f"a damaged row: {row}") from None
            if name not in values or step >= values[name][0]:
                values[name] = (step, value)
    if SWAP not in values or LIP_ERROR not in values:
        raise MeshtalkError(path, "records no validation (expression swap, lip vertex error)")
    return {name: value for name, (_, value) in values.items()}


def pick_latent_run(runs: list[Path], min_expression_swap: float = 1.0) -> Path:
    """The draw whose expression path is used (its last validated expression swap moves the upper
    face at least `min_expression_swap` times as much as the mouth) with the lowest lip vertex
    error; a one-line error giving every draw's figures when none is."""
    return _pick({Path(run): last_validation(run) for run in runs}, min_expression_swap)


def _pick(figures: dict[Path, dict[str, float]], min_expression_swap: float) -> Path:
    if not figures:
        raise MeshtalkError(None, "no stage-1 runs to choose from")
    usable = [run for run, values in figures.items() if values[SWAP] >= min_expression_swap]
    if not usable:
        found = "; ".join(
            f"{run}: swap {values[SWAP]:.2f}x, lip error {values[LIP_ERROR]:.2f} mm"
            for run, values in figures.items()
        )
        raise MeshtalkError(
            None,
            f"no stage-1 draw uses its expression path (swap >= {min_expression_swap}x): "
            f"{found}; train more seeds",
        )
    return min(usable, key=lambda run: figures[run][LIP_ERROR])


def main(argv: list[str] | None = None) -> int:
    """`python -m meshtalk.pipelines.train.select RUN...`: print the kept draw (each draw's
    figures on stderr); a one-line error and status 1 when none is usable."""
    import argparse
    import sys

    parser = argparse.ArgumentParser(
        prog="python -m meshtalk.pipelines.train.select",
        description="Keep the stage-1 draw whose expression path is used (last validated "
        "expression swap >= --min-swap) with the lowest lip vertex error; print its folder.",
    )
    parser.add_argument("runs", nargs="+", type=Path, help="stage-1 run folders")
    parser.add_argument("--min-swap", type=float, default=1.0, help="least expression swap")
    args = parser.parse_args(argv)
    try:
        figures = {run: last_validation(run) for run in args.runs}  # each metrics.csv read once
        kept = _pick(figures, args.min_swap)
    except MeshtalkError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    for run, values in figures.items():
        print(
            f"{run}: expression swap {values[SWAP]:.2f}x, "
            f"lip vertex error {values[LIP_ERROR]:.2f} mm",
            file=sys.stderr,
        )
    print(kept)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
