"""`meshtalk import-weights`: the authors' released checkpoint as a run folder (SPEC sections 4, 7).

The release is three state dicts pickled with `torch.save`: `encoder.pkl`, `vertex_unet.pkl` and
`context_model.pkl`. They are read with `torch.load(weights_only=True)` only (a pickle that needs
anything beyond tensors is refused: such a pickle can run code), their sizes are read from their
shapes, and they are loaded strictly into our modules, whose names are the authors' one to one.
The run written holds everything that makes it reproduce the release, so `animate --model RUN`
needs no flag:

- the decoder reads [template code, one-hot codes] (`decoder_fusion: template_first`);
- the prior has no activation after its input layer (`input_activation: false`);
- the expression encoder reads the absolute mesh (`expression_input: mesh`), the log-mel is not
  standardised (`mel_mean` 0, `mel_std` 1);
- the audio front end frames the audio as the release's sampler does (`framing: release`, SPEC 7b).

    RUN/latent/encoder, decoder    config.json + model.safetensors, trainer.json (step 0)
    RUN/prior/prior                the same for the prior
    RUN/topology/                  with --masks / --template: the region masks and the template
    RUN/import.json                provenance: the source files' names and SHA-256, the sizes
"""

from __future__ import annotations

import json
import logging
import pickle
import re
import shutil
import warnings
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import nn

from meshtalk.models.config import LATENT_PRESETS, LatentModelConfig, MelConfig
from meshtalk.models.latent import LatentAutoencoder
from meshtalk.models.prior import PRIOR_PRESETS, ContextModel, PriorModelConfig, head_mask
from meshtalk.pipelines.checkpoint.format import CONFIG_FILE, check_fits, write_checkpoint
from meshtalk.pipelines.checkpoint.run import COMPONENTS, LATENT, PRIOR, TOPOLOGY, save_topology
from meshtalk.pipelines.errors import MeshtalkError
from meshtalk.pipelines.frontend import AudioFrontEnd
from meshtalk.pipelines.io import atomic
from meshtalk.pipelines.io.provenance import file_sha256, versions

log = logging.getLogger(__name__)

RELEASE_FILES = {
    "encoder": "encoder.pkl",
    "decoder": "vertex_unet.pkl",
    "prior": "context_model.pkl",
}
"""Component -> the release's file holding its state dict."""
SOURCE = "imported from the authors' release"
IMPORT_RECORD = "import.json"
TEMPLATE_FILE = "face_template.obj"
"""The template's name in the authors' topology folder (taken with --masks when no --template)."""


def release_front_end() -> AudioFrontEnd:
    """The release's audio front end: SPEC 3 log-mel, 1 s windows framed as its sampler (7b),
    no standardisation of the log-mel."""
    return AudioFrontEnd(
        mel=MelConfig(), window="release", framing="release", fps=30.0, mel_mean=0.0, mel_std=1.0
    )


@dataclass(frozen=True)
class Release:
    """The release's models, loaded strictly, and what they were read from."""

    latent: LatentAutoencoder
    prior: ContextModel
    front_end: AudioFrontEnd
    preset: str | None
    """'release' or 'paper' when the sizes are a preset's, else None."""
    files: dict[str, dict]
    """File name -> {'sha256', 'bytes'}."""


def read_state(path: Path) -> dict[str, torch.Tensor]:
    """A flat state dict (names -> tensors) from a `torch.save` pickle, tensors only.

    Raises:
        MeshtalkError: one line naming the file: missing, corrupt, a pickle that needs more than
            tensors (refused, never run), or not a flat mapping of names to tensors.
    """
    path = Path(path)
    if not path.is_file():
        raise MeshtalkError(
            path, "missing (the release has " + ", ".join(RELEASE_FILES.values()) + ")"
        )
    try:
        with warnings.catch_warnings():  # old pickle protocols warn; the content is checked here
            warnings.simplefilter("ignore")
            state = torch.load(path, weights_only=True, map_location="cpu")
    except pickle.UnpicklingError as error:
        wanted = re.search(r"unsupported GLOBAL (\S+)", str(error))
        what = f"asks for {wanted.group(1)}" if wanted else "holds more than tensors"
        raise MeshtalkError(
            path,
            f"refused: the pickle {what}, not only tensors (read with torch.load(weights_only="
            "True) only, as such a pickle can run code)",
        ) from None
    except Exception as error:  # noqa: BLE001 - any failure to parse a damaged file
        detail = str(error).splitlines()[0][:120] if str(error) else type(error).__name__
        raise MeshtalkError(path, f"not a readable torch checkpoint ({detail})") from None
    if not isinstance(state, dict):
        raise MeshtalkError(path, f"holds a {type(state).__name__}, not a state dict of tensors")
    for name, value in state.items():
        if not isinstance(name, str) or not torch.is_tensor(value):
            raise MeshtalkError(
                path,
                f"entry {name!r} is a {type(value).__name__}: not a flat state dict of tensors",
            )
    return dict(state)


def _shape(state: dict, name: str, path: Path, dims: int) -> tuple[int, ...]:
    if name not in state:
        raise MeshtalkError(path, f"has no {name} (not the release's {path.name})")
    shape = tuple(state[name].shape)
    if len(shape) != dims:
        raise MeshtalkError(path, f"{name} has shape {shape}, expected {dims} dimensions")
    return shape


def _count(state: dict, pattern: str) -> int:
    """How many consecutive indices i from 0 have `pattern.format(i)` in the state."""
    count = 0
    while pattern.format(count) in state:
        count += 1
    return count


def _prior_blocks(mask: torch.Tensor, path: Path) -> tuple[int, int, int]:
    """(heads, inputs per head, outputs per head) of the embedding's block mask (SPEC 7)."""
    rows, columns = mask.shape[:2]
    nonzero = (mask[..., 0] != 0).any(dim=1).nonzero()
    if len(nonzero) == 0:  # one head: it reads nothing of the current step
        return 1, columns, rows
    out_per_head = int(nonzero[0])
    in_per_head = int((mask[out_per_head, :, 0] != 0).sum())
    if out_per_head < 1 or in_per_head < 1 or rows % out_per_head or columns % in_per_head:
        raise MeshtalkError(path, "embedding.mask is not the block mask over heads of SPEC 7")
    return rows // out_per_head, in_per_head, out_per_head


def release_sizes(
    states: dict[str, dict[str, torch.Tensor]], paths: dict[str, Path]
) -> tuple[LatentModelConfig, PriorModelConfig]:
    """The model sizes the release's state dicts have, with the release's behaviour fields.

    Args:
        states: component ('encoder', 'decoder', 'prior') -> its state dict.
        paths: component -> the file it was read from (named in errors).
    """
    encoder, decoder, prior = states["encoder"], states["decoder"], states["prior"]
    epath, dpath, ppath = paths["encoder"], paths["decoder"], paths["prior"]
    mean = _shape(encoder, "expression_encoder.mean", epath, 4)
    if mean[:2] != (1, 1) or mean[3] != 3:
        raise MeshtalkError(
            epath, f"expression_encoder.mean has shape {mean}, expected (1, 1, V, 3)"
        )
    channels, _, kernel = _shape(encoder, "audio_encoder.convert_dimensions.weight", epath, 3)
    code_dim = _shape(encoder, "audio_encoder.code.weight", epath, 2)[0]
    expression_hidden = _shape(encoder, "expression_encoder.layers.0.weight", epath, 2)[0]
    fusion_hidden = _shape(encoder, "fusion_model.mlp.0.weight", epath, 2)[0]
    codes = _shape(encoder, "fusion_model.mlp.4.weight", epath, 2)[0]
    hidden = tuple(
        _shape(decoder, f"encoder.{i}.weight", dpath, 2)[0]
        for i in range(_count(decoder, "encoder.{}.weight"))
    )
    if not hidden:
        raise MeshtalkError(dpath, "has no encoder.0.weight (not the release's vertex_unet.pkl)")
    temporal = _count(decoder, "temporal.weight_ih_l{}")
    heads, classes, per_head = _prior_blocks(prior[_name(prior, "embedding.mask", ppath)], ppath)
    if heads * classes != codes:
        raise MeshtalkError(
            ppath,
            f"has {heads} heads of {classes} classes, the encoder ({epath.name}) has {codes} "
            "codes per frame",
        )
    audio_dim = _shape(prior, "context_layers.0.unmasked_linear.weight", ppath, 3)[1]
    try:
        latent = replace(
            LATENT_PRESETS["release"],
            num_vertices=mean[2],
            heads=heads,
            classes=classes,
            audio_channels=channels,
            audio_kernel=kernel,
            code_dim=code_dim,
            expression_hidden=expression_hidden,
            fusion_hidden=fusion_hidden,
            decoder_hidden=hidden,
            temporal_layers=temporal,
            mel_mean=0.0,
            mel_std=1.0,
            expression_input="mesh",
            decoder_fusion="template_first",
        )
    except ValueError as error:
        raise MeshtalkError(epath, f"sizes the model cannot take: {error}") from None
    try:
        prior_config = replace(
            PRIOR_PRESETS["release"],
            heads=heads,
            classes=classes,
            audio_dim=audio_dim,
            channels_per_head=per_head,
            input_activation=False,
        )
    except ValueError as error:
        raise MeshtalkError(ppath, f"sizes the model cannot take: {error}") from None
    return latent, prior_config


def _name(state: dict, name: str, path: Path) -> str:
    if name not in state:
        raise MeshtalkError(path, f"has no {name} (not the release's {path.name})")
    return name


def preset_of(latent: LatentModelConfig, prior: PriorModelConfig) -> str | None:
    """'release' or 'paper' when the sizes are that preset's, else None."""
    release = {
        "mel_mean": 0.0,
        "mel_std": 1.0,
        "expression_input": "mesh",
        "decoder_fusion": "template_first",
    }
    for name in ("release", "paper"):
        same_latent = replace(LATENT_PRESETS[name], **release) == latent
        if same_latent and replace(PRIOR_PRESETS[name], input_activation=False) == prior:
            return name
    return None


def load_strict(module: nn.Module, state: dict[str, torch.Tensor], path: Path) -> None:
    """Load a state dict whose names and shapes must be exactly the module's, finite values."""
    check_fits(module, state, path, "does not fit the model of its sizes")
    for name, value in state.items():
        if not value.is_floating_point():
            raise MeshtalkError(path, f"{name} holds {value.dtype} values, not floating point")
        if not torch.isfinite(value).all():
            raise MeshtalkError(path, f"{name} holds NaN or infinite values")
    module.load_state_dict(state, strict=True)


def _check_buffers(release: dict[str, dict], mel: dict[str, torch.Tensor], paths: dict) -> None:
    """The statistics are usable and the mel buffers are `mel`, those of SPEC 3's log-mel."""
    for component, prefix in (("encoder", "expression_encoder."), ("decoder", "")):
        stddev = release[component][f"{prefix}stddev"]
        if not (stddev > 0).all():
            raise MeshtalkError(paths[component], f"{prefix}stddev has values <= 0")
    if not torch.equal(
        release["encoder"]["expression_encoder.mean"], release["decoder"]["mean"]
    ) or not torch.equal(
        release["encoder"]["expression_encoder.stddev"], release["decoder"]["stddev"]
    ):
        log.warning("the encoder's and the decoder's mean/stddev differ; each keeps its own")
    # The front end computes the log-mel (SPEC 3) itself; the release's buffers must be that one.
    for name, value in mel.items():
        key = f"audio_encoder.melspec.{name}"
        theirs = release["encoder"][key].float()
        if not torch.allclose(theirs, value, rtol=1e-4, atol=1e-6):
            difference = float((theirs - value).abs().max())
            raise MeshtalkError(
                paths["encoder"],
                f"{key} differs from the log-mel of SPEC section 3 that the front end computes "
                f"(largest difference {difference:.3g})",
            )


def _check_masks(prior: ContextModel, path: Path) -> None:
    config = prior.config
    h, c, k = config.heads, config.classes, config.channels_per_head
    shapes = [(c, k)] + [(k, k)] * len(config.dilations) + [(k, c)]
    names = ["embedding"] + [f"context_layers.{i}" for i in range(len(config.dilations))]
    for layer, name, (inp, out) in zip(prior.layers(), [*names, "logits"], shapes, strict=True):
        if not torch.equal(layer.mask, head_mask(h, inp, out)):
            raise MeshtalkError(
                path,
                f"{name}.mask is not the block mask of SPEC 7 (head h reads heads < h only)",
            )


def load_release(release_dir: Path) -> Release:
    """The release's three state dicts, loaded strictly into models of their sizes.

    Raises:
        MeshtalkError: one line naming the file that is missing, refused or does not fit.
    """
    release_dir = Path(release_dir)
    if not release_dir.is_dir():
        raise MeshtalkError(release_dir, "release folder not found")
    paths = {name: release_dir / file for name, file in RELEASE_FILES.items()}
    states = {name: read_state(path) for name, path in paths.items()}
    latent_config, prior_config = release_sizes(states, paths)
    front_end = release_front_end()
    if front_end.window_frames != latent_config.audio_window_frames:
        raise MeshtalkError(paths["encoder"], "the release's window does not fit the encoder")
    latent = LatentAutoencoder(latent_config)
    mel = {k: v.clone() for k, v in latent.encoder.audio_encoder.melspec.state_dict().items()}
    load_strict(latent.encoder, states["encoder"], paths["encoder"])
    load_strict(latent.decoder, states["decoder"], paths["decoder"])
    _check_buffers(states, mel, paths)
    prior = ContextModel(prior_config)
    load_strict(prior, states["prior"], paths["prior"])
    _check_masks(prior, paths["prior"])
    files = {
        path.name: {"sha256": file_sha256(path), "bytes": path.stat().st_size}
        for path in paths.values()
    }
    return Release(
        latent=latent.eval(),
        prior=prior.eval(),
        front_end=front_end,
        preset=preset_of(latent_config, prior_config),
        files=files,
    )


@dataclass(kw_only=True)
class ImportConfig:
    """One `meshtalk import-weights` run."""

    release: Path
    """Folder with encoder.pkl, vertex_unet.pkl, context_model.pkl."""
    output: Path
    """The run folder to write."""
    masks: Path | None = None
    """Region masks under the authors' file names (SPEC: weighted_mouth_mask.txt, ...)."""
    template: Path | None = None
    """Template mesh (PLY/OBJ) of the release's topology; with `masks` alone, the masks folder's
    face_template.obj."""
    force: bool = False
    """Replace an existing run folder."""


def _check_output(output: Path, force: bool) -> None:
    if output.is_symlink() or (output.exists() and not output.is_dir()):
        raise MeshtalkError(output, "is a file, not a folder for the run")
    if output.is_dir() and any(output.iterdir()):
        is_run = (output / LATENT / "encoder" / CONFIG_FILE).is_file()
        if not force:
            hint = " (--force replaces it)" if is_run else ""
            raise MeshtalkError(output, f"is not empty{hint}")
        if not is_run:
            raise MeshtalkError(
                output, "is not empty and not a run folder; --force replaces only a run folder"
            )


def _topology(config: ImportConfig, num_vertices: int):
    """(masks, template, record) for RUN/topology/, or None without --masks and --template."""
    from meshtalk.pipelines.data.masks import read_mask_dir
    from meshtalk.pipelines.io.mesh import read_mesh

    if config.masks is None and config.template is None:
        return None
    template_path = config.template
    if template_path is None:
        template_path = Path(config.masks) / TEMPLATE_FILE
        if not template_path.is_file():
            raise MeshtalkError(
                config.masks, f"has no {TEMPLATE_FILE}; give the template with --template"
            )
    mesh = read_mesh(template_path)
    vertices = mesh.vertices
    if len(vertices) != num_vertices:
        raise MeshtalkError(
            template_path,
            f"has {len(vertices)} vertices, the release's model has {num_vertices}",
        )
    masks = {} if config.masks is None else read_mask_dir(config.masks, num_vertices)
    record = {"template": {"file": template_path.name, "sha256": file_sha256(template_path)}}
    if config.masks is not None:
        record["masks"] = str(Path(config.masks).resolve())
    return masks, vertices, record, mesh.faces


def run(config: ImportConfig) -> Path:
    """Import the release into a run folder (written atomically); returns the folder."""
    output = Path(config.output)
    _check_output(output, config.force)
    release = load_release(config.release)
    latent_config, prior_config = release.latent.config, release.prior.config
    topology = _topology(config, latent_config.num_vertices)
    record = {
        "source": SOURCE,
        "release": str(Path(config.release).resolve()),
        "files": release.files,
        "preset": release.preset,
        "latent": latent_config.to_dict(),
        "prior": prior_config.to_dict(),
        "front_end": release.front_end.to_dict(),
        "versions": versions(),
    }
    if topology is not None:
        record["topology"] = topology[2]

    def component(name: str) -> dict:
        file = RELEASE_FILES[name]
        return {"source": SOURCE, "file": file, "sha256": release.files[file]["sha256"]}

    encoder_config = {
        "stage": LATENT,
        "model": latent_config.to_dict(),
        "front_end": release.front_end.to_dict(),
        "audio_window": release.front_end.audio_window(),
    }
    components = {
        LATENT: {
            name: (
                getattr(release.latent, name),
                {"component": name, **encoder_config, "source": component(name)},
            )
            for name in COMPONENTS[LATENT]
        },
        PRIOR: {
            "prior": (
                release.prior,
                {
                    "component": "prior",
                    "stage": PRIOR,
                    "model": prior_config.to_dict(),
                    "latent": {"component": "encoder", **encoder_config},
                    "source": component("prior"),
                },
            )
        },
    }
    tmp = atomic.temporary_dir(output)
    try:
        for stage, parts in components.items():
            trainer = {"stage": stage, "step": 0, "source": SOURCE}
            write_checkpoint(tmp / stage, parts, None, trainer)
        if topology is not None:
            save_topology(tmp, topology[0], topology[1], identity=SOURCE, faces=topology[3])
        (tmp / IMPORT_RECORD).write_text(json.dumps(record, indent=2) + "\n")
        atomic.replace_dir(tmp, output)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    preset = f"the '{release.preset}' preset" if release.preset else "sizes of no preset"
    log.info(
        "%s: %s (%s; H=%d, C=%d, V=%d)%s",
        output,
        SOURCE,
        preset,
        latent_config.heads,
        latent_config.classes,
        latent_config.num_vertices,
        f", with its topology in {TOPOLOGY}/" if topology is not None else "",
    )
    return output
