"""The bundled default model: a small run trained on synthetic speech of the ICT-FaceKit head.

`meshtalk animate SPEECH -o OUT/` uses it when no `--model` is given. It was trained by
`examples/recipes/ict-default-model.sh` on `meshtalk synth --face ict` data (eSpeak NG voices
reading English, the ICT-FaceKit head's face area driven through its ARKit-style expression
shapes): it is for trying the toolkit, not for real faces. For real quality
train on Multiface (`meshtalk prep`, `meshtalk train`) or import the authors' released weights.

    default_model/run/        the run folder (stage 1 and the prior; no optimizer state)
    default_model/live/       its low-latency twin (the paper's -500/+100 ms audio window), what
                              `meshtalk stream` runs: its own audio encoder and prior, the
                              default's decoder (latent/decoder/shared.json names run/'s file)
    default_model/template.ply  the model's face at rest, with its triangles
    default_model/head.obj, ict_rig.npz, ICTFaceModelMaterial.mtl, ICT-FaceKit-LICENSE.txt
                              with a model of the ICT-FaceKit head: the whole head, its rig and
                              the MIT license of the ICT-FaceKit model they derive from
    default_model/example.wav   a short sentence spoken by eSpeak NG (`meshtalk animate --example`)
"""

from __future__ import annotations

import json
import shutil
from importlib import resources
from pathlib import Path

EXAMPLE_TEXT = (
    "Hello! I am the default face of mesh talk. I learned to speak from synthetic voices."
)
"""What the bundled clip says."""
KEPT_SUFFIXES = (".json", ".safetensors", ".npy")
"""Files of a run folder the bundle keeps."""
LEFT_OUT = ("optimizer.safetensors", "prior_targets.safetensors")
"""Not bundled: the optimizer state and stage 2's cache of stage-1 codes (remade when needed)."""
HEAD_FILE, RIG_FILE = "head.obj", "ict_rig.npz"
"""The whole ICT-FaceKit head and its rig (`inference/head.py`), when the model was trained on
`synth --face ict` data; the model's MIT license travels with them (LICENSE_FILE)."""
LICENSE_FILE = "ICT-FaceKit-LICENSE.txt"


def folder() -> Path:
    """The bundled model's folder inside the installed package."""
    return Path(str(resources.files(__name__)))


def run_path() -> Path:
    """The bundled run folder."""
    return folder() / "run"


def live_run_path() -> Path:
    """The bundled low-latency run folder (`meshtalk stream`'s default), else the default's."""
    live = folder() / "live"
    return live if live.is_dir() else run_path()


def template_path() -> Path:
    """The bundled template mesh (PLY)."""
    return folder() / "template.ply"


def head_path() -> Path:
    """The whole head the bundled model's face area belongs to (OBJ; its rig beside it)."""
    return folder() / HEAD_FILE


def default_template() -> Path:
    """What `animate` draws with the bundled model: the whole head when it is bundled (its rig
    turns the model's face area into the whole head), else the model's own template."""
    return head_path() if (folder() / RIG_FILE).is_file() else template_path()


def lip_pairs(num_vertices: int):
    """(upper, lower) inner-lip vertex pairs of the bundled ICT-FaceKit head (its 68-point
    landmarks 61-67, 62-66, 63-65) for a mesh of its face area or whole head; None when the
    bundled model is not of that head or the mesh has other vertices."""
    import numpy as np

    rig = folder() / RIG_FILE
    if not rig.is_file():
        return None
    with np.load(rig, allow_pickle=False) as data:
        landmarks, face_area = data["landmarks_68"], int(data["face_area"])
        if num_vertices not in (face_area, len(data["neutral"])):
            return None
    return landmarks[[61, 62, 63]], landmarks[[67, 66, 65]]


def example_path() -> Path:
    """The bundled speech clip (WAV)."""
    return folder() / "example.wav"


def bundle(run: Path, template: Path, destination: Path | None = None) -> Path:
    """Copy a trained run (weights, configs, topology; no optimizer) and its template mesh into
    `destination` (default: this package folder), and speak the example clip with eSpeak NG."""
    from meshtalk.pipelines.data.synth.espeak import speak
    from meshtalk.pipelines.io.audio import write_wav
    from meshtalk.pipelines.io.mesh import copy_materials, read_mesh, write_mesh

    destination = Path(destination) if destination is not None else folder()
    copy_run(run, destination / "run")
    write_mesh(destination / "template.ply", read_mesh(template))
    rig = Path(template).parent / RIG_FILE  # synth --face ict's topology/: the whole head too
    for name in (HEAD_FILE, RIG_FILE, LICENSE_FILE):
        (destination / name).unlink(missing_ok=True)
    if rig.is_file():
        head = read_mesh(rig.parent / HEAD_FILE)
        write_mesh(destination / HEAD_FILE, head)
        copy_materials(head, destination)
        shutil.copyfile(rig, destination / RIG_FILE)
        shutil.copyfile(rig.parent / LICENSE_FILE, destination / LICENSE_FILE)
    spoken = speak(EXAMPLE_TEXT, "en-us+m3", rate_wpm=150)
    write_wav(destination / "example.wav", spoken.samples, spoken.rate)
    return destination


def copy_run(run: Path, target: Path) -> None:
    """Weights, configs and topology of a run folder (no optimizer state) into `target`."""
    if target.exists():
        shutil.rmtree(target)
    for path in sorted(Path(run).rglob("*")):
        if path.is_file() and path.suffix in KEPT_SUFFIXES and path.name not in LEFT_OUT:
            copy = target / path.relative_to(run)
            copy.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, copy)


def bundle_live(run: Path, destination: Path | None = None) -> Path:
    """Copy the low-latency twin's run folder into `destination`/live (default: this package
    folder) beside the bundled run; each of its weight files that is byte for byte the bundled
    run's (the frozen decoder) is not copied but named by a shared.json."""
    from meshtalk.pipelines.checkpoint.format import SHARED_FILE, WEIGHTS_FILE
    from meshtalk.pipelines.io.provenance import file_sha256

    destination = Path(destination) if destination is not None else folder()
    target = destination / "live"
    copy_run(run, target)
    for weights in sorted(target.rglob(WEIGHTS_FILE)):
        relative = weights.relative_to(target)
        same = destination / "run" / relative
        digest = file_sha256(weights)
        if same.is_file() and file_sha256(same) == digest:
            weights.unlink()
            name = Path("..", "..", "..", "run", *relative.parts)
            record = {"weights": name.as_posix(), "sha256": digest}
            (weights.parent / SHARED_FILE).write_text(json.dumps(record, indent=2) + "\n")
    return target


def is_bundled(run: str | Path) -> bool:
    """Whether `run` is the bundled default model's run folder or its low-latency twin's."""
    own = (run_path().resolve(), (folder() / "live").resolve())
    return Path(run).resolve() in own
