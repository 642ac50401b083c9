"""Split protocols by identity and sentence."""

from __future__ import annotations

import pytest

from meshtalk.pipelines.data.splits import assign_splits
from meshtalk.pipelines.errors import MeshtalkError


def _segments(identities: int, sentences: int) -> dict[str, list[str]]:
    return {
        f"id{i:02d}": [f"SEN_{s:02d}" for s in range(1, sentences + 1)] for i in range(identities)
    }


def test_paper_protocol_at_paper_scale():
    assignment = assign_splits("paper", _segments(250, 50))
    train_ids = {i for (i, _), s in assignment.items() if s == "train"}
    val_ids = {i for (i, _), s in assignment.items() if s == "val"}
    test_ids = {i for (i, _), s in assignment.items() if s == "test"}
    assert (len(train_ids), len(val_ids), len(test_ids)) == (200, 10, 40)
    assert not train_ids & (val_ids | test_ids)
    train_sentences = {n for (i, n), s in assignment.items() if s == "train"}
    held_sentences = {n for (i, n), s in assignment.items() if s != "train"}
    assert train_sentences == {f"SEN_{s:02d}" for s in range(1, 41)}
    assert held_sentences == {f"SEN_{s:02d}" for s in range(41, 51)}


def test_multiface_protocol():
    assignment = assign_splits("multiface", _segments(13, 50))
    test = {(i, n) for (i, n), s in assignment.items() if s == "test"}
    assert {i for i, _ in test} == {"id00", "id03", "id04", "id07"}  # 1, 4, 5, 8 of the sorted list
    assert {n for _, n in test} == {f"SEN_{s}" for s in range(46, 51)}
    assert not {i for (i, _), s in assignment.items() if s == "train"} & {i for i, _ in test}


def test_small_data_still_has_every_split():
    for identities, sentences in ((1, 3), (2, 5), (3, 3)):
        splits = set(assign_splits("paper", _segments(identities, sentences)).values())
        assert splits == {"train", "val", "test"}, (identities, sentences)


def test_yaml_splits(tmp_path):
    path = tmp_path / "splits.yaml"
    path.write_text("train: [id00, id01/SEN_01]\nval: [id01/SEN_02]\n")
    assignment = assign_splits(path, _segments(3, 2))
    assert assignment == {
        ("id00", "SEN_01"): "train",
        ("id00", "SEN_02"): "train",
        ("id01", "SEN_01"): "train",
        ("id01", "SEN_02"): "val",
    }


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("train: [id00]\nvalid: [id01]\n", "unknown key 'valid'"),
        ("train: id00\n", "'train' must be a list"),
        ("train: [id00]\nval: [id00/SEN_01]\n", "id00/SEN_01 is in train and val"),
        ("val: [id00]\n", "leaves no training segments"),
        ("train: [", "cannot read splits"),
    ],
)
def test_bad_yaml_splits(tmp_path, text, message):
    path = tmp_path / "splits.yaml"
    path.write_text(text)
    with pytest.raises(MeshtalkError, match=message):
        assign_splits(path, _segments(2, 2))
