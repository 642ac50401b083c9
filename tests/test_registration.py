"""Registration finds the face on any target and refuses non-faces (issue 29)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from meshtalk.pipelines.data.masks import load_landmarks
from meshtalk.pipelines.errors import MeshtalkError
from meshtalk.pipelines.io.mesh import read_mesh
from meshtalk.pipelines.transfer.registration import register
from tests import transfer_heads as heads

SCALE_ERROR = 0.05
"""Registered scale within this fraction of the true one."""
LANDMARK_ERROR = 0.05
"""The similarity puts the lip and eyelid landmarks within this fraction of the face's size
(its RMS radius, as placed) of where they truly are."""


@pytest.fixture(scope="module")
def template(reference_topology):
    return read_mesh(reference_topology / "face_template.obj")


@pytest.fixture(scope="module")
def landmarks(template) -> dict[str, np.ndarray]:
    return load_landmarks("meshtalk", len(template.vertices))


def _head(name: str, template, landmarks) -> heads.Head:
    resampled = heads.resampled(template, 6000)
    return {
        "subdivided once": lambda: heads.subdivided(template, 1),
        "subdivided twice": lambda: heads.subdivided(template, 2),
        "resampled": lambda: resampled,
        "metres, turned 90": lambda: heads.metres_turned(resampled),
        "cm, Z up": lambda: heads.z_up(resampled),
        "bust": lambda: heads.bust(resampled),
        "eyes and teeth": lambda: heads.with_eyes_and_teeth(resampled, landmarks),
        "face mask, unit size": lambda: heads.face_mask(template, landmarks),
    }[name]()


@pytest.mark.parametrize(
    "name",
    [
        "subdivided once",
        "subdivided twice",
        "resampled",
        "metres, turned 90",
        "cm, Z up",
        "bust",
        "eyes and teeth",
        "face mask, unit size",
    ],
)
def test_the_face_is_found(name, template, landmarks):
    head = _head(name, template, landmarks)
    registration = register(template, head.mesh)
    points = template.vertices[
        np.concatenate([landmarks[key] for key in ("lip_outer", "left_eyelid", "right_eyelid")])
    ].astype(np.float64)
    truth, found = head.truth, registration.similarity
    placed = points @ found[:3, :3].T + found[:3, 3]
    true = points @ truth[:3, :3].T + truth[:3, 3]
    landmark_error = np.linalg.norm(placed - true, axis=1).max() / registration.face_size
    scale_error = registration.scale / head.scale - 1
    info = registration.info()
    print(
        f"{name}: scale error {scale_error:+.4f}, landmarks {landmark_error:.4f} face sizes, "
        f"coverage {info['coverage']:.3f} (aligned {info['aligned_coverage']:.3f}), distances "
        f"mean {info['distance_mean'] / info['face_size']:.4f} p95 "
        f"{info['distance_p95'] / info['face_size']:.4f} max "
        f"{info['distance_max'] / info['face_size']:.4f} face sizes"
    )
    assert abs(scale_error) <= SCALE_ERROR
    assert landmark_error <= LANDMARK_ERROR
    front, up = truth[:3, :3] @ [0.0, 0.0, 1.0], truth[:3, :3] @ [0.0, 1.0, 0.0]
    assert np.dot(registration.front, front / np.linalg.norm(front)) > 0.99
    assert np.dot(registration.up, up / np.linalg.norm(up)) > 0.99
    assert info["coverage"] >= 0.75
    if name != "face mask, unit size":  # the mask's border cuts off a fifth of the face
        assert info["distance_mean"] <= 0.02 * info["face_size"]
    assert json.loads(json.dumps(info)) == info  # plain JSON values


@pytest.mark.parametrize("name", ["cube", "sphere", "hand_blob"])
def test_non_faces_are_refused_in_one_line(name, template, tmp_path):
    mesh = getattr(heads, name)()
    path = tmp_path / f"{name}.ply"
    with pytest.raises(MeshtalkError, match="no face found") as error:
        register(template, mesh, target_path=path)
    message = str(error.value)
    assert "\n" not in message and str(path) in message and "--landmarks" in message


def test_a_face_given_upright_stays_upright(template, landmarks):
    head = heads.face_mask(template, landmarks)
    registration = register(template, head.mesh)
    assert registration.front @ [0.0, 0.0, 1.0] > 0.99 and registration.up @ [0, 1, 0] > 0.99


PEAK_SCRIPT = textwrap.dedent(
    """
    import sys, time
    import numpy as np
    from meshtalk.pipelines.io.mesh import Mesh, read_mesh
    from meshtalk.pipelines.transfer.registration import register
    template = read_mesh(sys.argv[1])
    target = Mesh(vertices=np.load(sys.argv[2]), faces=np.load(sys.argv[3]))
    def peak_mb():  # this process's own high-water mark (ru_maxrss keeps the parent's)
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    before = peak_mb()
    clock = time.perf_counter()
    try:
        register(template, target)
        outcome = "registered"
    except Exception as error:
        outcome = type(error).__name__
    print(len(target.faces), before, peak_mb(), time.perf_counter() - clock, outcome)
    """
)


def test_a_large_target_registers_in_bounded_memory(reference_topology, tmp_path):
    """A 330k-face ellipsoid (no face: refused after the whole alignment search) adds a few
    hundred MB at most, where trimesh's closest-point query needed gigabytes; measured in a
    child process (benchmarks/transfer.py measures 400k vertices)."""
    import trimesh

    ball = trimesh.creation.icosphere(subdivisions=7, radius=1.0)
    np.save(tmp_path / "v.npy", (ball.vertices * [76.0, 104.0, 94.0]).astype(np.float32))
    np.save(tmp_path / "f.npy", ball.faces.astype(np.int64))
    template = str(reference_topology / "face_template.obj")
    answer = subprocess.run(
        [sys.executable, "-c", PEAK_SCRIPT, template, tmp_path / "v.npy", tmp_path / "f.npy"],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    faces, before, peak, seconds, outcome = answer.stdout.split()
    print(
        f"{faces} faces: peak RSS {float(peak):.0f} MB (before {float(before):.0f} MB), "
        f"{float(seconds):.1f} s, {outcome}"
    )
    assert int(faces) > 300_000
    assert outcome in ("registered", "MeshtalkError")
    assert float(peak) - float(before) < 600
