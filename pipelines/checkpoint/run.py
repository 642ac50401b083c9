"""A run folder, and `load_run`: the one way to read a trained run back.

    RUN/run.json                   what each stage trained on, with which settings, every invocation
    RUN/latent/encoder, decoder    stage 1 (components in the `format` of this package)
    RUN/latent/trainer.json        its step (and optimizer.safetensors, to resume training)
    RUN/prior/prior                stage 2, when trained
    RUN/prior/trainer.json
    RUN/topology/                  masks/<name>.npy (V,) and template.npy (V, 3) of the data stage 1
                                   trained on, and topology.json (their names, V, the identity)

Training writes a stage only through `save_stage` and reads it back only through `resume_stage`;
everything else (stage-2 training, inference, benchmarks, tests) loads through `load_run`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from meshtalk.models.config import LatentModelConfig
from meshtalk.models.latent import LatentAutoencoder
from meshtalk.models.prior import ContextModel, PriorModelConfig
from meshtalk.pipelines.checkpoint.format import (
    CONFIG_FILE,
    load_component_state,
    load_optimizer,
    model_config,
    read_component_config,
    read_json,
    read_trainer_state,
    readable,
    weights_file,
    write_checkpoint,
)
from meshtalk.pipelines.errors import MeshtalkError
from meshtalk.pipelines.frontend import AudioFrontEnd
from meshtalk.pipelines.io import atomic
from meshtalk.pipelines.io.provenance import file_sha256

log = logging.getLogger(__name__)

LATENT, PRIOR = "latent", "prior"
"""The stages of a run, each a folder of the run named after it."""
COMPONENTS = {LATENT: ("encoder", "decoder"), PRIOR: ("prior",)}
"""The components each stage saves, each a folder of the stage's checkpoint."""
RUN_RECORD = "run.json"
"""Per stage: its settings, the data it trained on and every invocation (train.loop.RunRecord)."""
TOPOLOGY = "topology"
"""The run's topology folder: region masks and a template of the data stage 1 trained on."""
TOPOLOGY_RECORD = "topology.json"


def stage_folder(run_dir: Path, stage: str) -> Path:
    """Where `stage`'s checkpoint of the run in `run_dir` lives."""
    if stage not in COMPONENTS:
        raise ValueError(f"stage must be one of {', '.join(COMPONENTS)}, got {stage!r}")
    return Path(run_dir) / stage


def save_stage(
    run_dir: Path,
    stage: str,
    components: dict[str, tuple[nn.Module, dict]],
    optimizer: tuple[torch.optim.Optimizer, dict[int, str]],
    step: int,
) -> None:
    """Write a stage's training checkpoint: its components (module, config), optimizer, step."""
    if tuple(components) != COMPONENTS[stage]:
        raise ValueError(f"stage {stage} saves {COMPONENTS[stage]}, not {tuple(components)}")
    write_checkpoint(
        stage_folder(run_dir, stage), components, optimizer, {"stage": stage, "step": step}
    )


def resume_stage(
    run_dir: Path,
    stage: str,
    modules: dict[str, nn.Module],
    optimizer: torch.optim.Optimizer,
    names: dict[int, str],
) -> int:
    """Load a stage's checkpoint into its modules and optimizer; returns the step it reached."""
    folder = stage_folder(run_dir, stage)
    step = read_trainer_state(folder)["step"]
    for name in COMPONENTS[stage]:
        load_component_state(folder / name, modules[name])
    load_optimizer(folder, optimizer, names)
    return step


def save_topology(
    run_dir: Path,
    masks: dict[str, np.ndarray],
    template: np.ndarray,
    identity: str,
    faces: np.ndarray | None = None,
) -> None:
    """Write `RUN/topology/` atomically: region masks (V,), a (V, 3) template, the triangles when
    known (`faces.npy`, (F, 3)) and what they are.

    Inference reads them back through `load_run` (`run.masks`, `run.template`): the forehead and
    neck masks drive the temporal smoothing of SPEC section 6; the triangles let `animate` and
    `retarget` transfer onto meshes of another topology.
    """
    template = np.asarray(template, dtype=np.float32)
    vertices = template.shape[0]
    if template.shape != (vertices, 3) or any(
        np.shape(mask) != (vertices,) for mask in masks.values()
    ):
        raise ValueError(f"masks must be (V,) and the template (V, 3), V = {vertices}")
    folder = Path(run_dir) / TOPOLOGY
    tmp = atomic.temporary_dir(folder)
    try:
        (tmp / "masks").mkdir()
        for name, mask in masks.items():
            np.save(tmp / "masks" / f"{name}.npy", np.asarray(mask, dtype=np.float32))
        np.save(tmp / "template.npy", template)
        if faces is not None and len(faces):
            faces = np.asarray(faces)
            if faces.ndim != 2 or faces.shape[1] != 3 or faces.min() < 0 or faces.max() >= vertices:
                raise ValueError(f"faces must be (F, 3) indices below {vertices}")
            np.save(tmp / "faces.npy", faces.astype(np.int32))
        record = {"num_vertices": vertices, "masks": list(masks), "identity": identity}
        (tmp / TOPOLOGY_RECORD).write_text(json.dumps(record, indent=2) + "\n")
        atomic.replace_dir(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def load_topology(run_dir: Path, num_vertices: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """(masks, template) of `RUN/topology/`, checked against the run's vertex count."""
    folder = readable(Path(run_dir) / TOPOLOGY)
    record_file = folder / TOPOLOGY_RECORD
    if not record_file.is_file():
        raise MeshtalkError(record_file, "missing (the run's topology folder is incomplete)")
    record = read_json(record_file)
    names = record.get("masks")
    if not isinstance(names, list) or not all(
        isinstance(n, str) and n.isidentifier() for n in names
    ):
        raise MeshtalkError(record_file, f"'masks' must be a list of names, got {names!r}")
    masks = {
        name: _topology_array(folder / "masks" / f"{name}.npy", (num_vertices,)) for name in names
    }
    return masks, _topology_array(folder / "template.npy", (num_vertices, 3))


def _topology_array(path: Path, shape: tuple[int, ...]) -> np.ndarray:
    try:
        array = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise MeshtalkError(path, "missing") from None
    except (OSError, ValueError) as error:
        raise MeshtalkError(path, f"not a readable .npy file ({error})") from None
    if array.shape != shape or not np.issubdtype(array.dtype, np.floating):
        raise MeshtalkError(
            path,
            f"holds {array.dtype} {array.shape}, expected float32 {shape} (the run's topology)",
        )
    if not np.isfinite(array).all():
        raise MeshtalkError(path, "holds NaN or infinite values")
    return array.astype(np.float32, copy=False)


@dataclass(frozen=True)
class StageCheckpoint:
    """Where a stage of a run was read from, and what it is."""

    stage: str
    """'latent' or 'prior'."""
    folder: Path
    """The checkpoint folder that was read (`RUN/<stage>`, or its old name during a swap)."""
    step: int
    """Training steps the checkpoint holds."""
    configs: dict[str, dict]
    """Component name -> its config.json."""
    config_sha256: dict[str, str]
    """Component name -> sha256 of its config.json."""
    record: dict | None
    """The stage's entry of run.json (settings, data, invocations); None where there is none."""

    def weights_sha256(self, component: str) -> str:
        """sha256 of a component's model.safetensors (read on demand: the file may be large)."""
        return file_sha256(weights_file(self.folder / component))


@dataclass
class Run:
    """A trained run: stage 1, stage 2 when trained, the audio front end and what they came from."""

    folder: Path
    """The run folder (or a stage-1 checkpoint folder given on its own)."""
    latent: LatentAutoencoder
    """Stage 1: `latent.encoder` (audio, expression, fusion) and `latent.decoder`, in eval mode."""
    prior: ContextModel | None
    """Stage 2, in eval mode; None where the run has no prior yet."""
    front_end: AudioFrontEnd
    """Waveform -> per-frame audio windows, as stage 1 was trained (its config.json)."""
    num_vertices: int
    """Vertices of the topology the run was trained on."""
    template: np.ndarray | None
    """(V, 3) template of the first training identity (`RUN/topology/`); None for runs saved
    without one."""
    masks: dict[str, np.ndarray] | None
    """Region masks of the topology, name -> (V,) float32 ('mouth', 'upper_face', 'eyelids',
    'forehead', 'neck'), from `RUN/topology/`; None for runs saved without them."""
    stages: dict[str, StageCheckpoint]
    """'latent', and 'prior' when present: where each was read from, its step and config."""

    @property
    def latent_config(self) -> dict:
        """Stage 1's config.json (the encoder's): model sizes, audio front end."""
        return self.stages[LATENT].configs["encoder"]


def load_run(path: Path, device: torch.device | str = "cpu", prior: bool = True) -> Run:
    """A trained run, its models loaded on the CPU, then moved to `device` in eval mode.

    Args:
        path: a run folder, or its stage-1 checkpoint folder (`RUN/latent`, or such a folder on
            its own: then there is no prior). A run folder that holds only a prior (stage 2
            trained with `-o` elsewhere than stage 1) takes stage 1 from where its run.json says.
        device: where the models go.
        prior: load stage 2 when the run has it (False: stage 1 only, as stage-2 training needs).

    Raises:
        MeshtalkError: one line naming the file that is missing, damaged or does not fit.
    """
    run_dir, latent_dir = _locate(Path(path))
    prior_dir = readable(stage_folder(run_dir, PRIOR)) if run_dir is not None else None
    if latent_dir is None:
        latent_dir = _recorded_stage1(run_dir)
    stages = {LATENT: _stage_checkpoint(LATENT, latent_dir)}
    front_end = _front_end(stages[LATENT])
    latent = _load_latent(stages[LATENT], front_end)
    prior_model = None
    if prior and prior_dir is not None and prior_dir.is_dir():
        stages[PRIOR] = _stage_checkpoint(PRIOR, prior_dir)
        prior_model = _load_prior(stages[PRIOR], stages[LATENT], latent.config)
        prior_model.to(device).eval()
    masks, template = None, None
    if run_dir is not None and readable(run_dir / TOPOLOGY).is_dir():
        masks, template = load_topology(run_dir, latent.config.num_vertices)
    return Run(
        folder=run_dir if run_dir is not None else latent_dir,
        latent=latent.to(device).eval(),
        prior=prior_model,
        front_end=front_end,
        num_vertices=latent.config.num_vertices,
        template=template,
        masks=masks,
        stages=stages,
    )


def _has_stage1(folder: Path) -> bool:
    return (folder / "encoder" / CONFIG_FILE).is_file()


def _locate(path: Path) -> tuple[Path | None, Path | None]:
    """(run folder, stage-1 folder): None for a stage-1 folder on its own, or a run without one."""
    inside = readable(stage_folder(path, LATENT))
    if _has_stage1(inside):
        return path, inside
    itself = readable(path)
    if _has_stage1(itself):
        return (path.parent if path.name == LATENT else None), itself
    if readable(stage_folder(path, PRIOR)).is_dir() and (path / RUN_RECORD).is_file():
        return path, None
    raise MeshtalkError(path, "holds no stage-1 checkpoint (latent/encoder/config.json)")


def _recorded_stage1(run_dir: Path) -> Path:
    """The stage-1 folder a run of stage 2 alone trained on, as its run.json records it."""
    record_file = run_dir / RUN_RECORD
    settings = (read_json(record_file).get(PRIOR) or {}).get("settings") or {}
    recorded = (settings.get("latent") or {}).get("path")
    if not isinstance(recorded, str):
        raise MeshtalkError(run_dir, "holds no stage-1 checkpoint (latent/encoder/config.json)")
    folder = readable(Path(recorded))
    if not _has_stage1(folder):
        raise MeshtalkError(
            record_file, f"records stage 1 at {recorded}, which holds no stage-1 checkpoint"
        )
    return folder


def _stage_record(stage: str, folder: Path) -> dict | None:
    """The entry of `stage` in the run.json beside its checkpoint folder, if there is one."""
    run_dir = folder.parent
    if folder not in (stage_folder(run_dir, stage), readable(stage_folder(run_dir, stage))):
        return None
    if not (run_dir / RUN_RECORD).is_file():
        return None
    entry = read_json(run_dir / RUN_RECORD).get(stage)
    return entry if isinstance(entry, dict) else None


def _stage_checkpoint(stage: str, folder: Path) -> StageCheckpoint:
    configs = {name: read_component_config(folder / name) for name in COMPONENTS[stage]}
    hashes = {
        name: hashlib.sha256((folder / name / CONFIG_FILE).read_bytes()).hexdigest()
        for name in COMPONENTS[stage]
    }
    return StageCheckpoint(
        stage=stage,
        folder=folder,
        step=read_trainer_state(folder)["step"],
        configs=configs,
        config_sha256=hashes,
        record=_stage_record(stage, folder),
    )


def _load_latent(stage: StageCheckpoint, front_end: AudioFrontEnd) -> LatentAutoencoder:
    encoder, decoder = stage.folder / "encoder", stage.folder / "decoder"
    # Checked before anything is allocated; configs written before the model held its window
    # length take it from the front end.
    window = {"audio_window_frames": front_end.window_frames}
    sizes = model_config(encoder, LatentModelConfig, **window)
    if model_config(decoder, LatentModelConfig, **window) != sizes:
        raise MeshtalkError(
            decoder / CONFIG_FILE, f"model: differs from the encoder's ({encoder / CONFIG_FILE})"
        )
    with _no_random_initialisation():  # every tensor is loaded below
        model = LatentAutoencoder(sizes)
    load_component_state(encoder, model.encoder, assign=True)
    load_component_state(decoder, model.decoder, assign=True)
    return model


def _front_end(stage: StageCheckpoint) -> AudioFrontEnd:
    """Stage 1's audio front end (runs written before it was saved: from its mel and window)."""
    try:
        return AudioFrontEnd.from_component_config(stage.configs["encoder"])
    except ValueError as error:
        raise MeshtalkError(stage.folder / "encoder" / CONFIG_FILE, str(error)) from None


def _load_prior(
    stage: StageCheckpoint, stage1: StageCheckpoint, latent: LatentModelConfig
) -> ContextModel:
    folder = stage.folder / "prior"
    sizes = model_config(folder, PriorModelConfig)
    wanted = {"heads": latent.heads, "classes": latent.classes, "audio_dim": latent.code_dim}
    clashes = [
        f"{key} {getattr(sizes, key)} (stage 1 has {value})"
        for key, value in wanted.items()
        if getattr(sizes, key) != value
    ]
    if clashes:
        raise MeshtalkError(
            folder / CONFIG_FILE, "model: does not fit the run's stage 1: " + ", ".join(clashes)
        )
    trained_on = ((stage.record or {}).get("settings") or {}).get("latent") or {}
    encoder = trained_on.get("encoder_sha256")
    if _trained_on(stage.configs["prior"], latent) not in (None, latent) or (
        encoder is not None and encoder != stage1.weights_sha256("encoder")
    ):
        log.warning(
            "%s: the prior was trained on another stage-1 checkpoint than %s (their sizes match)",
            folder / CONFIG_FILE,
            stage1.folder,
        )
    # Built on the meta device: neither its random weights nor its head masks are computed, as
    # every tensor (the masks too) is loaded below.
    with torch.device("meta"):
        model = ContextModel(sizes)
    load_component_state(folder, model, assign=True)
    return model


_RANDOM_INITIALISERS = (
    "uniform_", "normal_", "trunc_normal_", "kaiming_uniform_", "kaiming_normal_",
    "xavier_uniform_", "xavier_normal_", "orthogonal_",
)  # fmt: skip


@contextlib.contextmanager
def _no_random_initialisation():
    """Build modules without drawing their random initial weights (a tenth of a second at the
    release's sizes): `load_component_state` then overwrites every parameter and buffer, checked
    by name and shape, so nothing drawn would survive."""
    from torch.nn import init

    saved = {name: getattr(init, name) for name in _RANDOM_INITIALISERS}
    try:
        for name in _RANDOM_INITIALISERS:
            setattr(init, name, _leave)
        yield
    finally:
        for name, function in saved.items():
            setattr(init, name, function)


def _leave(tensor, *args, **kwargs):
    return tensor


def _trained_on(prior_config: dict, latent: LatentModelConfig) -> LatentModelConfig | None:
    """The stage-1 sizes a prior's config.json says it was trained on (None: unreadable)."""
    section = prior_config.get("latent")
    values = section.get("model") if isinstance(section, dict) else None
    if not isinstance(values, dict):
        return None
    try:  # written before stage 1 held its window length: the run's
        return LatentModelConfig.from_dict(values, latent.audio_window_frames)
    except (TypeError, ValueError):
        return None
