"""The resident store (`pipelines.data.resident`): the same batches as the memory-mapped path."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from torch.utils.data import DataLoader

from meshtalk.pipelines.data.resident import placement
from meshtalk.pipelines.data.store import PreparedStore, SegmentDataset
from meshtalk.pipelines.errors import MeshtalkError
from meshtalk.pipelines.train.latent import run
from meshtalk.pipelines.train.loop import StepBatches
from meshtalk.pipelines.train.pairs import PairedSegments
from meshtalk.pipelines.train.targets import CodeWindows, segment_key
from tests.test_train_latent import tiny_run

CPU = torch.device("cpu")


def assert_same_batches(dataset, indices: StepBatches, workers: int = 0) -> int:
    """Every step's batch of the DataLoader and of the resident path equal, key for key."""
    loader = DataLoader(dataset, batch_sampler=indices, num_workers=workers)
    steps = 0
    for mapped, resident in zip(loader, dataset.resident(indices, CPU), strict=True):
        assert list(resident) == list(mapped)
        for key, value in mapped.items():
            assert resident[key].dtype == value.dtype, key
            assert torch.equal(resident[key], value), (steps, key)
        steps += 1
    return steps


@pytest.mark.parametrize("seed", [0, 3, 11])
def test_stage1_batches_equal_the_memory_mapped_path(tiny_store, seed):
    segments = SegmentDataset(tiny_store, "train", frames=8, length=1, seed=seed)
    paired = PairedSegments(segments, heads=4, classes=8)
    assert len(segments.segments) > 1  # partners are drawn from other segments
    assert assert_same_batches(paired, StepBatches(0, 6, 3)) == 6
    # Several processes (rank 1 of 2) and a resumed run (from step 4) take the same items.
    assert assert_same_batches(paired, StepBatches(4, 7, 4, rank=1, world_size=2)) == 3


def test_stage1_batches_equal_with_loader_workers(tiny_store):
    segments = SegmentDataset(tiny_store, "train", frames=16, length=1, seed=5)
    paired = PairedSegments(segments, heads=2, classes=4)
    assert assert_same_batches(paired, StepBatches(0, 3, 2), workers=1) == 3


def test_stage2_windows_equal_the_memory_mapped_path(tiny_store):
    store = PreparedStore(tiny_store)
    generator = torch.Generator().manual_seed(0)
    targets = {}
    for segment in store.split("train"):
        key = segment_key(segment)
        targets[f"{key}/codes"] = torch.randint(0, 8, (segment.frames, 4), generator=generator)
        targets[f"{key}/audio"] = torch.randn(segment.frames, 6, generator=generator)
    for seed in (0, 9):
        windows = CodeWindows(store, "train", 8, targets, seed, length=100)
        assert assert_same_batches(windows, StepBatches(0, 5, 4)) == 5


def test_placement_follows_the_mode_and_device():
    assert placement("auto", CPU, 1) is None  # the CPU default stays the memory-mapped path
    assert placement("no", CPU, 1) is None
    assert placement("yes", CPU, 10**12) == "device"
    with pytest.raises(ValueError, match="one of auto, yes, no"):
        placement("always", CPU, 1)


def test_training_with_resident_data_equals_the_memory_mapped_run(tiny_store, tmp_path):
    from meshtalk.pipelines import checkpoint as ckpt

    runs = {}
    for mode in ("no", "yes"):
        config = replace(tiny_run(tiny_store, tmp_path / mode, steps=3), data_on_device=mode)
        runs[mode] = ckpt.load_run(run(config)).latent.state_dict()
    for name, value in runs["no"].items():
        assert torch.equal(runs["yes"][name], value), name


def test_bf16_is_refused_off_cuda(tiny_store, tmp_path):
    config = replace(tiny_run(tiny_store, tmp_path / "run", steps=1), bf16=True)
    with pytest.raises(MeshtalkError, match="--bf16 is for CUDA; this run is on cpu"):
        run(config)


def test_the_command_line_refuses_an_unknown_data_placement(tiny_store, tmp_path):
    from typer.testing import CliRunner

    from meshtalk.cli.main import app

    args = ["train", "latent", "--data", str(tiny_store), "-o", str(tmp_path / "run")]
    result = CliRunner().invoke(app, [*args, "--data-on-device", "always", "--device", "cpu"])
    assert result.exit_code == 1
    assert "--data-on-device must be one of auto, yes, no, got 'always'" in result.output
    assert not (tmp_path / "run").exists()
