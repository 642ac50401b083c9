"""`meshtalk eval` from end to end: check the outputs, evaluate, print the table, write the files.

Above both `evaluate` (the figures) and `report` (the table, JSON, pictures and video), which do
not import each other's module the other way round.
"""

from __future__ import annotations

from meshtalk.pipelines.eval import report
from meshtalk.pipelines.eval.evaluate import EvalConfig, EvalResults, evaluate


def run(config: EvalConfig) -> EvalResults:
    """Evaluate, print the table and write the JSON, pictures and video asked for."""
    faces = report.check_outputs(config)
    results, predictors = evaluate(config)
    report.print_table(results)
    report.write(config, results, predictors, faces)
    return results
