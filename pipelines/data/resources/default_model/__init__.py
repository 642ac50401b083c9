"""The bundled default model: a small run trained on synthetic speech of the built-in head.

`meshtalk animate SPEECH -o OUT/` uses it when no `--model` is given. It was trained by
`examples/recipes/default-model.sh` on `meshtalk synth` data (eSpeak NG voices reading English,
the built-in procedural head): it is for trying the toolkit, not for real faces. For real quality
train on Multiface (`meshtalk prep`, `meshtalk train`) or import the authors' released weights.

    default_model/run/        the run folder (stage 1 and the prior; no optimizer state)
    default_model/template.ply  the head at rest, with its triangles
    default_model/example.wav   a short sentence spoken by eSpeak NG (`meshtalk animate --example`)
"""

from __future__ import annotations

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


def folder() -> Path:
    """The bundled model's folder inside the installed package."""
    return Path(str(resources.files(__name__)))


def run_path() -> Path:
    """The bundled run folder."""
    return folder() / "run"


def template_path() -> Path:
    """The bundled template mesh (PLY)."""
    return folder() / "template.ply"


def example_path() -> Path:
    """The bundled speech clip (WAV)."""
    return folder() / "example.wav"


def bundle(run: Path, template: Path, destination: Path | None = None) -> Path:
    """Copy a trained run (weights, configs, topology; no optimizer) and its template mesh into
    `destination` (default: this package folder), and speak the example clip with eSpeak NG."""
    from meshtalk.pipelines.data.synth.espeak import speak
    from meshtalk.pipelines.io.audio import write_wav
    from meshtalk.pipelines.io.mesh import read_mesh, write_mesh

    destination = Path(destination) if destination is not None else folder()
    target = destination / "run"
    if target.exists():
        shutil.rmtree(target)
    for path in sorted(Path(run).rglob("*")):
        if path.is_file() and path.suffix in KEPT_SUFFIXES and path.name not in LEFT_OUT:
            copy = target / path.relative_to(run)
            copy.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, copy)
    write_mesh(destination / "template.ply", read_mesh(template))
    spoken = speak(EXAMPLE_TEXT, "en-us+m3", rate_wpm=150)
    write_wav(destination / "example.wav", spoken.samples, spoken.rate)
    return destination


def is_bundled(run: str | Path) -> bool:
    """Whether `run` is the bundled default model's run folder."""
    return Path(run).resolve() == run_path().resolve()
