"""`meshtalk eval` metrics on hand-made cases with known answers, and against torchmetrics."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torchmetrics.functional.multimodal import lip_vertex_error as torchmetrics_lve
from torchmetrics.multimodal import LipVertexError

from meshtalk.pipelines.eval import metrics
from meshtalk.pipelines.eval.scores import Regions, score_animation, summarise

T, V = 12, 40
LIPS = np.arange(10, 20)


def face(seed: int = 0) -> torch.Tensor:
    """(T, V, 3) random meshes in mm."""
    return torch.randn(T, V, 3, generator=torch.Generator().manual_seed(seed)) * 10


def test_a_constant_offset_of_1mm_gives_every_metric_its_known_value():
    target = face()
    prediction = target + torch.tensor([0.6, 0.0, 0.8])  # |offset| = 1 mm
    assert metrics.lip_vertex_error(prediction, target, LIPS, "l2") == pytest.approx(1.0)
    assert metrics.lip_vertex_error(prediction, target, LIPS, "squared") == pytest.approx(1.0)
    assert metrics.lip_vertex_error(prediction, target, LIPS, "centred") == pytest.approx(
        0.0, abs=1e-5
    )
    assert metrics.mean_vertex_error(prediction, target) == pytest.approx(1.0)
    upper = np.linspace(0, 1, V)
    signed, absolute = metrics.upper_face_dynamics_deviation(prediction, target, upper)
    assert signed == pytest.approx(0.0, abs=1e-5) and absolute == pytest.approx(0.0, abs=1e-5)
    doubled = target + 2 * torch.tensor([0.6, 0.0, 0.8])
    assert metrics.lip_vertex_error(doubled, target, LIPS, "l2") == pytest.approx(2.0)
    assert metrics.lip_vertex_error(doubled, target, LIPS, "squared") == pytest.approx(4.0)
    assert metrics.lip_vertex_errors(doubled, target, LIPS) == pytest.approx((2.0, 4.0))


def test_one_lip_vertex_off_in_half_the_frames():
    target = face()
    prediction = target.clone()
    prediction[::2, LIPS[3], 1] += 3.0  # 3 mm up, in frames 0, 2, 4, ...
    assert metrics.lip_vertex_error(prediction, target, LIPS, "l2") == pytest.approx(1.5)
    assert metrics.lip_vertex_error(prediction, target, LIPS, "squared") == pytest.approx(4.5)
    # the lip mean moves by 3/L: the moved vertex is left 3 (1 - 1/L) from where it should be
    centred = 0.5 * 3.0 * (1 - 1 / len(LIPS))
    assert metrics.lip_vertex_error(prediction, target, LIPS, "centred") == pytest.approx(centred)
    assert metrics.mean_vertex_error(prediction, target) == pytest.approx(1.5 / V)
    # a vertex off the lips counts for the mean error, not for the lip errors
    other = target.clone()
    other[:, 0] += 5.0
    assert metrics.lip_vertex_error(other, target, LIPS, "l2") == 0.0


def test_squared_lip_error_equals_torchmetrics_on_random_data():
    for seed in range(3):
        prediction, target = face(seed), face(seed + 10)
        expected = float(torchmetrics_lve(prediction, target, LIPS.tolist()))
        ours = metrics.lip_vertex_error(prediction, target, LIPS, "squared")
        assert ours == pytest.approx(expected, rel=1e-6)
        module = LipVertexError(mouth_map=LIPS.tolist())
        module.update(prediction, target)
        assert ours == pytest.approx(float(module.compute()), rel=1e-6)
        # per frame, the paper's variant is the square root of the same maximum
        per_frame = metrics.lip_vertex_error_per_frame(prediction, target, LIPS, "l2")
        assert float(per_frame.pow(2).mean()) == pytest.approx(expected, rel=1e-6)
        assert metrics.lip_vertex_error(prediction, target, LIPS, "l2") < math.sqrt(expected)


def test_the_centred_variant_follows_the_authors_snippet_on_random_data():
    prediction, target = face(1), face(2)
    geom, pred = target[:, LIPS, :], prediction[:, LIPS, :]
    geom = geom - torch.mean(geom, dim=-2, keepdim=True)
    pred = pred - torch.mean(pred, dim=-2, keepdim=True)
    error = torch.max(torch.sum((pred - geom) ** 2, dim=-1) ** 0.5, dim=1)[0]
    ours = metrics.lip_vertex_error(prediction, target, LIPS, "centred")
    assert ours == pytest.approx(float(error.mean()), rel=1e-6)
    mask = np.zeros(V, dtype=bool)
    mask[LIPS] = True  # a bool mask selects the same vertices
    assert metrics.lip_vertex_error(prediction, target, mask, "centred") == pytest.approx(ours)


def test_lip_vertices_are_the_mouth_mask_above_one_half():
    mouth = np.array([0.0, 0.5, 0.51, 1.0, 0.2, 0.9])
    assert metrics.lip_vertices(mouth).tolist() == [2, 3, 5]
    with pytest.raises(ValueError, match="variant"):
        metrics.lip_vertex_error(face(), face(), LIPS, "cubed")


def test_motion_std_and_upper_face_dynamics_deviation():
    still = torch.zeros(T, V, 3)
    moving = still.clone()
    moving[:, :, 0] = torch.tensor([1.0, -1.0] * (T // 2))[:, None]  # +-1 mm along x: std 1 mm
    assert torch.allclose(metrics.motion_std(moving), torch.ones(V))
    assert torch.allclose(metrics.motion_std(still), torch.zeros(V))
    upper = np.zeros(V)
    upper[:10] = 1.0
    # twice the data's motion on the upper face: deviation +1 mm; a still face: -1 mm
    signed, absolute = metrics.upper_face_dynamics_deviation(2 * moving, moving, upper)
    assert (signed, absolute) == pytest.approx((1.0, 1.0))
    signed, absolute = metrics.upper_face_dynamics_deviation(still, moving, upper)
    assert (signed, absolute) == pytest.approx((-1.0, 1.0))


def test_perplexity_of_a_uniform_prior_is_the_class_count():
    classes, codes = 128, 1000
    assert metrics.perplexity(codes * math.log(classes), codes) == pytest.approx(classes)
    assert metrics.perplexity(0.0, codes) == 1.0


def test_perplexity_of_a_diverged_prior_is_infinite_not_an_overflow():
    # A prior fed audio codes of 5e4 (a stage-1 run whose audio code blew up on the silence
    # padding) scored a mean cross-entropy past 709 nats: validation must report it, not crash.
    assert metrics.perplexity(800.0 * 1000, 1000) == math.inf
    assert metrics.perplexity(700.0, 1) == pytest.approx(math.exp(700.0))


def test_blink_onsets_count_each_closure_once():
    open_gap = 8.0
    closure = np.zeros(60)
    closure[10:14] = [0.3, 0.9, 1.0, 0.6]  # a blink at frame 11
    closure[14:17] = [0.4, 0.55, 0.3]  # not reopened below 25%: the same blink
    closure[30:33] = [0.7, 1.0, 0.2]  # a second at frame 30
    closure[45:48] = [0.45, 0.4, 0.1]  # a squint: no blink
    gap = open_gap * (1 - closure)
    assert metrics.blink_onsets(gap, open_gap).tolist() == [11, 30]
    assert metrics.blinks_per_minute(2, 2.0) == 60.0


def test_eyelid_pairs_of_the_meshtalk_topology_face_each_other(reference_topology):
    from meshtalk.pipelines.data.masks import read_mask_dir
    from meshtalk.pipelines.io.mesh import read_mesh

    template = read_mesh(reference_topology / "face_template.obj").vertices
    masks = read_mask_dir(reference_topology, len(template))
    pairs = metrics.eyelid_pairs(template, masks["eyelids"], masks["mouth"])
    lids = set(np.flatnonzero(masks["eyelids"] > 0.5).tolist())
    assert len(pairs) > 20 and set(pairs.ravel().tolist()) <= lids
    upper, lower = template[pairs[:, 0]], template[pairs[:, 1]]
    assert (upper[:, 1] > lower[:, 1]).all()  # y is up on the template
    assert (np.sign(upper[:, 0]) == np.sign(lower[:, 0])).all()  # the same eye
    assert np.linalg.norm(upper - lower, axis=1).max() < 15.0  # mm: across one eye


@pytest.fixture(scope="module")
def blinking_store(tmp_path_factory):
    """One identity of the built-in head blinking 40 times a minute, with its ground truth."""
    from meshtalk.pipelines.data.prep import run as prep
    from meshtalk.pipelines.data.synth import SynthConfig
    from meshtalk.pipelines.data.synth import run as synth
    from tests.conftest import builtin_prep_config

    root = tmp_path_factory.mktemp("blinks")
    synth(
        SynthConfig(
            output=root / "mf", identities=1, sentences=3, grid=16, seed=3, blinks_per_minute=40
        )
    )
    prep(builtin_prep_config(root / "mf", root / "data"))
    return root


def test_blinks_are_found_where_the_synthetic_ground_truth_put_them(blinking_store):
    from meshtalk.pipelines.data.store import PreparedStore

    store = PreparedStore(blinking_store / "data")
    regions = Regions.from_masks(store.masks, np.asarray(store.template(store.identities[0])))
    found, truth, scores = [], [], []
    for segment in store.segments:
        template = np.asarray(store.template(segment.identity))
        vertices = np.asarray(store.vertices(segment))
        times = store.frames(segment)["times_s"]
        gap = metrics.eyelid_gap(vertices, regions.eyelid_pairs)
        found += times[
            metrics.blink_onsets(gap, metrics.eyelid_gap(template, regions.eyelid_pairs))
        ].tolist()
        path = blinking_store / "mf" / "ground_truth" / segment.identity / f"{segment.name}.json"
        truth += json.loads(path.read_text())["blink_onsets_s"]
        seconds = float(times[-1] - times[0]) + 1 / store.fps
        scores.append(score_animation(None, vertices, template, regions, seconds))
    assert len(truth) >= 2 and len(found) == len(truth)
    # an onset is found once the lids are half closed: within 0.15 s after the true onset
    assert np.all((np.array(found) >= np.array(truth)) & (np.array(found) < np.array(truth) + 0.15))
    total = sum(s.seconds for s in scores)
    assert summarise(scores)["blinks_per_minute"] == pytest.approx(60 * len(truth) / total)
