"""Choosing among draws of stage 1 by their validation (pipelines.train.select)."""

from __future__ import annotations

from pathlib import Path

import pytest

from meshtalk.pipelines.errors import MeshtalkError
from meshtalk.pipelines.train.select import last_validation, pick_latent_run


def draw(folder: Path, *validations: tuple[int, float, float]) -> Path:
    """A run folder whose metrics.csv holds (step, expression swap, lip error) validations."""
    folder.mkdir()
    rows = ["step,name,value", "10,train/total,3.5"]
    for step, swap, lip in validations:
        rows += [f"{step},val/expression_swap_upper_over_mouth,{swap}"]
        rows += [f"{step},val/lip_vertex_error_mm,{lip}"]
    (folder / "metrics.csv").write_text("\n".join(rows) + "\n")
    return folder


def test_the_draw_using_its_expression_path_with_the_lowest_lip_error_is_kept(tmp_path):
    dead = draw(tmp_path / "dead", (500, 0.7, 5.0), (3000, 0.0, 3.0))
    good = draw(tmp_path / "good", (500, 0.0, 6.0), (3000, 1.9, 3.8))
    better = draw(tmp_path / "better", (3000, 1.2, 3.6))
    assert last_validation(dead)["val/expression_swap_upper_over_mouth"] == 0.0
    assert pick_latent_run([dead, good]) == good
    assert pick_latent_run([dead, good, better]) == better
    assert pick_latent_run([dead, good, better], min_expression_swap=1.5) == good


def test_no_usable_draw_is_one_line_giving_each_draws_figures(tmp_path):
    dead = draw(tmp_path / "dead", (3000, 0.0, 4.92))
    with pytest.raises(MeshtalkError) as caught:
        pick_latent_run([dead])
    message = str(caught.value)
    assert "\n" not in message and "swap 0.00x, lip error 4.92 mm" in message
    with pytest.raises(MeshtalkError, match="no stage-1 metrics"):
        pick_latent_run([tmp_path / "nothing"])
    empty = draw(tmp_path / "empty")
    with pytest.raises(MeshtalkError, match="records no validation"):
        pick_latent_run([empty])


def test_the_module_prints_the_kept_draw_or_one_error_line(tmp_path, capsys):
    from meshtalk.pipelines.train.select import main

    dead = draw(tmp_path / "dead", (3000, 0.0, 4.92))
    good = draw(tmp_path / "good", (3000, 1.9, 3.8))
    assert main([str(dead), str(good)]) == 0
    out, err = capsys.readouterr()
    assert out.strip() == str(good) and "expression swap 1.90x" in err
    assert main([str(dead)]) == 1
    out, err = capsys.readouterr()
    assert out == "" and err.startswith("error: ") and err.count("\n") == 1
