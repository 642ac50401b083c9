"""Shared fixtures: small synthetic datasets made by the tests themselves."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Bit-for-bit comparisons between runs (a resumed run equals an uninterrupted one, in this process
# and in subprocesses) need one summation order everywhere: torch's CPU kernels split sums by the
# number of threads, and on some CPUs (seen on an Intel Xeon, not on an AMD EPYC) one and two
# threads differ in the last bit. Every test process, and every process a test starts, runs torch
# on one thread.
os.environ["OMP_NUM_THREADS"] = "1"

from meshtalk.pipelines.data.prep import PrepConfig
from meshtalk.pipelines.data.prep import run as prep
from meshtalk.pipelines.data.synth import SynthConfig
from meshtalk.pipelines.data.synth import run as synth

REFERENCE = Path(__file__).resolve().parents[1].parent / "shared" / "reference"
TOPOLOGY = REFERENCE / "meshtalk_topology"


@pytest.fixture(scope="session", autouse=True)
def one_torch_thread():
    import torch

    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def reference_topology() -> Path:
    if not (TOPOLOGY / "face_template.obj").is_file():
        pytest.skip("../shared/reference is not beside the project")
    return TOPOLOGY


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory) -> Path:
    """3 identities x 3 sentences on a 24x24 built-in face, with dropped frames."""
    root = tmp_path_factory.mktemp("synth") / "multiface"
    synth(SynthConfig(output=root, identities=3, sentences=3, grid=24, seed=7, drop_rate=0.04))
    return root


@pytest.fixture(scope="session")
def tiny_store(tiny_dataset, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("store") / "data"
    prep(
        PrepConfig(
            root=tiny_dataset,
            output=out,
            crop="none",
            landmarks=str(tiny_dataset / "topology" / "landmarks.yaml"),
            progress=False,
        )
    )
    return out


def builtin_prep_config(root: Path, output: Path, **overrides) -> PrepConfig:
    """Prep settings for the built-in face topology."""
    settings = dict(
        root=root,
        output=output,
        crop="none",
        landmarks=str(root / "topology" / "landmarks.yaml"),
        progress=False,
    )
    settings.update(overrides)
    return PrepConfig(**settings)


@pytest.fixture(scope="session")
def tiny_trained_run(tiny_store, tmp_path_factory) -> Path:
    """A tiny run of both stages (a few steps each) in one folder, with its topology."""
    from meshtalk.pipelines.train.latent import run as train_latent
    from meshtalk.pipelines.train.prior import run as train_prior
    from tests.test_train_latent import tiny_run
    from tests.test_train_prior import prior_run

    out = tmp_path_factory.mktemp("trained") / "run"
    train_latent(tiny_run(tiny_store, out, steps=3))
    train_prior(prior_run(out, tiny_store, out, steps=3))
    return out
