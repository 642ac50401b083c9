"""`meshtalk import-weights`: the authors' release (SPEC section 7) as a run that reproduces it.

Release-format state dicts are built here from SPEC 7's names and shapes (random tensors, saved
with `torch.save`), imported through the CLI, and the imported models are checked against
references written from SPEC sections 4 and 7b, not from our modules.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
import torch.nn.functional as F
import torchaudio
from typer.testing import CliRunner

from meshtalk.cli.main import app
from meshtalk.models.config import LatentModelConfig
from meshtalk.models.latent import LatentAutoencoder
from meshtalk.models.prior import ContextModel
from meshtalk.models.sampler import PriorSampler
from meshtalk.pipelines import checkpoint as ckpt
from meshtalk.pipelines.checkpoint import release as importer
from meshtalk.pipelines.data.masks import REFERENCE_MASK_FILES, write_mask_dir
from meshtalk.pipelines.io.mesh import Mesh, read_mesh, write_mesh

SLOPE = 0.2

# SPEC section 7, for H=16, C=128, V=6172, as written there.
SPEC_7 = {
    "encoder.pkl": {
        "audio_encoder.melspec.spectrogram.window": (800,),
        "audio_encoder.melspec.mel_scale.fb": (1025, 80),
        "audio_encoder.convert_dimensions.weight": (128, 80, 5),
        "audio_encoder.convert_dimensions.bias": (128,),
        **{f"audio_encoder.convs.{i}.weight": (128, 128, 5) for i in range(6)},
        **{f"audio_encoder.convs.{i}.bias": (128,) for i in range(6)},
        "audio_encoder.code.weight": (128, 128),
        "audio_encoder.code.bias": (128,),
        "expression_encoder.mean": (1, 1, 6172, 3),
        "expression_encoder.stddev": (1, 1, 6172, 3),
        "expression_encoder.layers.0.weight": (256, 18516),
        "expression_encoder.layers.0.bias": (256,),
        "expression_encoder.layers.1.weight": (128, 256),
        "expression_encoder.layers.1.bias": (128,),
        "expression_encoder.lstm.weight_ih_l0": (512, 128),
        "expression_encoder.lstm.weight_hh_l0": (512, 128),
        "expression_encoder.lstm.bias_ih_l0": (512,),
        "expression_encoder.lstm.bias_hh_l0": (512,),
        "expression_encoder.code.weight": (128, 128),
        "expression_encoder.code.bias": (128,),
        "fusion_model.mlp.0.weight": (256, 256),
        "fusion_model.mlp.0.bias": (256,),
        "fusion_model.mlp.2.weight": (256, 256),
        "fusion_model.mlp.2.bias": (256,),
        "fusion_model.mlp.4.weight": (2048, 256),
        "fusion_model.mlp.4.bias": (2048,),
    },
    "vertex_unet.pkl": {
        "vertex_bias": (18516,),
        "mean": (1, 1, 6172, 3),
        "stddev": (1, 1, 6172, 3),
        "encoder.0.weight": (512, 18516),
        "encoder.0.bias": (512,),
        "encoder.1.weight": (256, 512),
        "encoder.1.bias": (256,),
        "encoder.2.weight": (128, 256),
        "encoder.2.bias": (128,),
        "fusion.weight": (128, 2176),
        "fusion.bias": (128,),
        **{f"temporal.weight_{k}_l{i}": (512, 128) for k in ("ih", "hh") for i in (0, 1)},
        **{f"temporal.bias_{k}_l{i}": (512,) for k in ("ih", "hh") for i in (0, 1)},
        "decoder.0.weight": (256, 128),
        "decoder.0.bias": (256,),
        "decoder.1.weight": (512, 256),
        "decoder.1.bias": (512,),
        "decoder.2.weight": (18516, 512),
        "decoder.2.bias": (18516,),
    },
    "context_model.pkl": {
        "embedding.mask": (1024, 2048, 1),
        "embedding.masked_linear.weight": (1024, 2048, 1),
        "embedding.masked_linear.bias": (1024,),
        "embedding.unmasked_linear.weight": (1024, 128, 1),
        "embedding.unmasked_linear.bias": (1024,),
        **{
            f"context_layers.{i}.{name}": shape
            for i in range(4)
            for name, shape in {
                "mask": (1024, 1024, 1),
                "masked_linear.weight": (1024, 1024, 1),
                "masked_linear.bias": (1024,),
                "unmasked_linear.weight": (1024, 128, 1),
                "unmasked_linear.bias": (1024,),
                "historic.weight": (1024, 1024, 2),
                "historic.bias": (1024,),
            }.items()
        },
        "logits.mask": (2048, 1024, 1),
        "logits.masked_linear.weight": (2048, 1024, 1),
        "logits.masked_linear.bias": (2048,),
        "logits.unmasked_linear.weight": (2048, 128, 1),
        "logits.unmasked_linear.bias": (2048,),
    },
}

RELEASE = dict(heads=16, classes=128, vertices=6172)
SMALL = dict(
    heads=4,
    classes=8,
    vertices=30,
    channels=8,
    code=16,
    expression=32,
    fusion=24,
    widths=(40, 24, 16),
    per_head=4,
)


def release_shapes(
    heads: int,
    classes: int,
    vertices: int,
    channels: int = 128,
    code: int = 128,
    expression: int = 256,
    fusion: int = 256,
    widths: tuple[int, int, int] = (512, 256, 128),
    per_head: int = 64,
) -> dict[str, dict[str, tuple[int, ...]]]:
    """SPEC 7's table for other sizes: file -> name -> shape."""
    v3, hc, hk, bottleneck = 3 * vertices, heads * classes, heads * per_head, widths[-1]
    encoder = {
        "audio_encoder.melspec.spectrogram.window": (800,),
        "audio_encoder.melspec.mel_scale.fb": (1025, 80),
        "audio_encoder.convert_dimensions.weight": (channels, 80, 5),
        "audio_encoder.convert_dimensions.bias": (channels,),
        "audio_encoder.code.weight": (code, channels),
        "audio_encoder.code.bias": (code,),
        "expression_encoder.mean": (1, 1, vertices, 3),
        "expression_encoder.stddev": (1, 1, vertices, 3),
        "expression_encoder.layers.0.weight": (expression, v3),
        "expression_encoder.layers.0.bias": (expression,),
        "expression_encoder.layers.1.weight": (code, expression),
        "expression_encoder.layers.1.bias": (code,),
        "expression_encoder.lstm.weight_ih_l0": (4 * code, code),
        "expression_encoder.lstm.weight_hh_l0": (4 * code, code),
        "expression_encoder.lstm.bias_ih_l0": (4 * code,),
        "expression_encoder.lstm.bias_hh_l0": (4 * code,),
        "expression_encoder.code.weight": (code, code),
        "expression_encoder.code.bias": (code,),
        "fusion_model.mlp.0.weight": (fusion, 2 * code),
        "fusion_model.mlp.0.bias": (fusion,),
        "fusion_model.mlp.2.weight": (fusion, fusion),
        "fusion_model.mlp.2.bias": (fusion,),
        "fusion_model.mlp.4.weight": (hc, fusion),
        "fusion_model.mlp.4.bias": (hc,),
    }
    for i in range(6):
        encoder[f"audio_encoder.convs.{i}.weight"] = (channels, channels, 5)
        encoder[f"audio_encoder.convs.{i}.bias"] = (channels,)
    down = (v3, *widths)
    decoder = {"vertex_bias": (v3,), "mean": (1, 1, vertices, 3), "stddev": (1, 1, vertices, 3)}
    for i in range(3):
        decoder[f"encoder.{i}.weight"] = (down[i + 1], down[i])
        decoder[f"encoder.{i}.bias"] = (down[i + 1],)
        decoder[f"decoder.{i}.weight"] = (down[2 - i], down[3 - i])
        decoder[f"decoder.{i}.bias"] = (down[2 - i],)
    decoder["fusion.weight"] = (bottleneck, bottleneck + hc)
    decoder["fusion.bias"] = (bottleneck,)
    for i in range(2):
        for kind in ("ih", "hh"):
            decoder[f"temporal.weight_{kind}_l{i}"] = (4 * bottleneck, bottleneck)
            decoder[f"temporal.bias_{kind}_l{i}"] = (4 * bottleneck,)

    def layer(prefix: str, out: int, inp: int, historic: bool) -> dict:
        shapes = {
            f"{prefix}.mask": (out, inp, 1),
            f"{prefix}.masked_linear.weight": (out, inp, 1),
            f"{prefix}.masked_linear.bias": (out,),
            f"{prefix}.unmasked_linear.weight": (out, code, 1),
            f"{prefix}.unmasked_linear.bias": (out,),
        }
        if historic:
            shapes |= {
                f"{prefix}.historic.weight": (out, inp, 2),
                f"{prefix}.historic.bias": (out,),
            }
        return shapes

    prior = layer("embedding", hk, hc, False)
    for i in range(4):
        prior |= layer(f"context_layers.{i}", hk, hk, True)
    prior |= layer("logits", hc, hk, False)
    return {"encoder.pkl": encoder, "vertex_unet.pkl": decoder, "context_model.pkl": prior}


def block_mask(heads: int, in_per_head: int, out_per_head: int) -> torch.Tensor:
    """SPEC 7: output block h is zero for input columns from h * in on (and one before)."""
    mask = torch.ones(heads * out_per_head, heads * in_per_head, 1)
    for h in range(heads):
        mask[h * out_per_head : (h + 1) * out_per_head, h * in_per_head :] = 0
    return mask


def release_state(sizes: dict, seed: int = 0) -> dict[str, OrderedDict]:
    """Random release-format state dicts of `sizes` (file -> state dict)."""
    generator = torch.Generator().manual_seed(seed)
    heads, classes, per_head = sizes["heads"], sizes["classes"], sizes["per_head"]
    mel = torchaudio.transforms.MelSpectrogram(
        sample_rate=16000, n_fft=2048, win_length=800, hop_length=160, n_mels=80
    )
    masks = {
        "embedding.mask": block_mask(heads, classes, per_head),
        "logits.mask": block_mask(heads, per_head, classes),
        **{f"context_layers.{i}.mask": block_mask(heads, per_head, per_head) for i in range(4)},
    }
    statistics = {
        "mean": torch.randn(1, 1, sizes["vertices"], 3, generator=generator),
        "stddev": torch.rand(1, 1, sizes["vertices"], 3, generator=generator) + 0.5,
    }
    states = {}
    for file, shapes in release_shapes(**sizes).items():
        state = OrderedDict()
        for name, shape in shapes.items():
            if name in masks:
                value = masks[name]
            elif name == "audio_encoder.melspec.spectrogram.window":
                value = mel.spectrogram.window.clone()
            elif name == "audio_encoder.melspec.mel_scale.fb":
                value = mel.mel_scale.fb.clone()
            elif name.endswith(("mean", "stddev")):  # one set of statistics, as the release
                value = statistics[name.rpartition("stddev" if "stddev" in name else "mean")[1]]
            else:
                fan_in = shape[1] * (shape[2] if len(shape) > 2 else 1) if len(shape) > 1 else 4
                value = 2 * torch.randn(shape, generator=generator) / fan_in**0.5
            state[name] = value
        states[file] = state
    return states


def save_release(folder: Path, states: dict[str, dict]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for file, state in states.items():
        torch.save(state, folder / file)
    return folder


def invoke(*args: str):
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    """(release state dicts, release folder, imported run folder) for the small sizes."""
    root = tmp_path_factory.mktemp("release")
    states = release_state(SMALL)
    release = save_release(root / "release", states)
    result = invoke("import-weights", release, "-o", root / "model")
    assert result.exit_code == 0, result.output
    return states, release, root / "model"


def test_the_shape_table_is_spec_7_for_the_release_sizes():
    assert release_shapes(**RELEASE) == SPEC_7
    counts = {file: len(shapes) for file, shapes in SPEC_7.items()}
    assert counts == {"encoder.pkl": 36, "vertex_unet.pkl": 25, "context_model.pkl": 38}


def test_release_sizes_give_the_release_preset_with_exactly_its_names_and_shapes():
    """Sizes read from SPEC 7's shapes (meta tensors: shapes only) are the 'release' preset, and
    its modules hold exactly SPEC 7's names and shapes."""
    states = {}
    for file, shapes in SPEC_7.items():
        states[file] = {name: torch.empty(shape, device="meta") for name, shape in shapes.items()}
    states["context_model.pkl"]["embedding.mask"] = block_mask(16, 128, 64)
    files = dict(zip(("encoder", "decoder", "prior"), SPEC_7, strict=True))
    by_component = {component: states[file] for component, file in files.items()}
    paths = {component: Path(file) for component, file in files.items()}
    latent_config, prior_config = importer.release_sizes(by_component, paths)
    assert importer.preset_of(latent_config, prior_config) == "release"
    assert latent_config.decoder_fusion == "template_first"
    assert latent_config.expression_input == "mesh"
    assert (latent_config.mel_mean, latent_config.mel_std) == (0.0, 1.0)
    assert prior_config.input_activation is False
    latent, prior = LatentAutoencoder(latent_config), ContextModel(prior_config)  # the one full
    modules = {"encoder.pkl": latent.encoder, "vertex_unet.pkl": latent.decoder}
    modules["context_model.pkl"] = prior
    for file, module in modules.items():
        assert {k: tuple(v.shape) for k, v in module.state_dict().items()} == SPEC_7[file], file


def test_the_imported_run_holds_the_release_weights_bit_for_bit(imported):
    states, release, model = imported
    run = ckpt.load_run(model)
    loaded = {
        "encoder.pkl": run.latent.encoder.state_dict(),
        "vertex_unet.pkl": run.latent.decoder.state_dict(),
        "context_model.pkl": run.prior.state_dict(),
    }
    for file, state in states.items():
        assert set(loaded[file]) == set(state), file
        for name, value in state.items():
            assert torch.equal(loaded[file][name], value), (file, name)
    record = json.loads((model / importer.IMPORT_RECORD).read_text())
    assert record["source"] == "imported from the authors' release"
    for file in states:
        digest = hashlib.sha256((release / file).read_bytes()).hexdigest()
        assert record["files"][file]["sha256"] == digest
    assert record["preset"] is None  # small sizes are no preset's
    config = ckpt.read_component_config(model / "latent" / "encoder")
    assert config["source"]["file"] == "encoder.pkl"
    assert run.latent.config.heads == 4 and run.latent.config.num_vertices == 30
    assert run.masks is None and run.template is None  # no --masks / --template


def test_the_decoder_reads_template_code_then_codes(imported):
    """SPEC 4's decoder written out from vertex_unet.pkl: the fusion layer reads
    [template code, one-hot codes], and the whole decoding matches."""
    states, _, model = imported
    s = states["vertex_unet.pkl"]
    decoder = ckpt.load_run(model).latent.decoder
    assert decoder.config.decoder_fusion == "template_first"
    generator = torch.Generator().manual_seed(5)
    v, h, c, t = SMALL["vertices"], SMALL["heads"], SMALL["classes"], 7
    template = torch.randn(1, v, 3, generator=generator)
    codes = F.one_hot(torch.randint(0, c, (1, t, h), generator=generator), c).float()

    def linear(x, name):
        return x @ s[f"{name}.weight"].T + s[f"{name}.bias"]

    x = ((template - s["mean"][0]) / s["stddev"][0]).flatten(1)
    skips = []
    for i in range(3):
        skips.append(x)
        x = F.leaky_relu(linear(x, f"encoder.{i}"), SLOPE)
    template_code = x.unsqueeze(1).expand(1, t, -1)
    fusion_in = torch.cat([template_code, codes.flatten(2)], dim=-1)
    fused = linear(fusion_in, "fusion")
    swapped = linear(torch.cat([codes.flatten(2), template_code], dim=-1), "fusion")
    assert (fused - swapped).abs().max() > 0.1  # the order matters for these weights
    seen = {}
    hook = decoder.fusion.register_forward_hook(lambda m, i, o: seen.setdefault("out", o))
    with torch.no_grad():
        meshes = decoder(template, codes)
    hook.remove()
    torch.testing.assert_close(seen["out"], fused, rtol=1e-5, atol=1e-5)
    # The rest of SPEC 4's decoder: LSTM, the way up with skips, vertex bias, de-normalise.
    lstm = torch.nn.LSTM(16, 16, num_layers=2, batch_first=True)
    lstm.load_state_dict({k.removeprefix("temporal."): v for k, v in s.items() if "temporal" in k})
    with torch.no_grad():
        y, _ = lstm(F.leaky_relu(fused, SLOPE))
    for i, skip in enumerate(reversed(skips)):
        y = F.leaky_relu(linear(y, f"decoder.{i}"), SLOPE) + skip.unsqueeze(1)
    reference = (y + s["vertex_bias"]).view(1, t, v, 3) * s["stddev"] + s["mean"]
    torch.testing.assert_close(meshes, reference, rtol=1e-4, atol=1e-4)


def prior_reference(s: dict, one_hot: torch.Tensor, audio: torch.Tensor) -> torch.Tensor:
    """SPEC 4/7's prior written out from context_model.pkl: masked 1x1 layers, audio and the
    shifted causal convolution in the middle layers, leaky ReLU after the middle layers only."""
    b, t, h, c = one_hot.shape

    def masked(x, prefix):
        weight = s[f"{prefix}.masked_linear.weight"] * s[f"{prefix}.mask"]
        return F.conv1d(x, weight, s[f"{prefix}.masked_linear.bias"])

    x = masked(one_hot.reshape(b, t, h * c).transpose(1, 2), "embedding")  # no activation
    a = audio.transpose(1, 2)
    for i, d in enumerate((1, 2, 4, 8)):
        p = f"context_layers.{i}"
        y = masked(x, p) + F.conv1d(
            a, s[f"{p}.unmasked_linear.weight"], s[f"{p}.unmasked_linear.bias"]
        )
        shifted = F.pad(x, (1, 0))[..., :-1]  # step t reads t-1 and t-1-d
        y = y + F.conv1d(
            F.pad(shifted, (d, 0)), s[f"{p}.historic.weight"], s[f"{p}.historic.bias"], dilation=d
        )
        x = F.leaky_relu(y, SLOPE)
    return masked(x, "logits").transpose(1, 2).reshape(b, t, h, c)


def test_the_prior_has_no_activation_after_its_input_layer(imported):
    states, _, model = imported
    s = states["context_model.pkl"]
    prior = ckpt.load_run(model).prior
    assert prior.config.input_activation is False
    generator = torch.Generator().manual_seed(6)
    h, c, t = SMALL["heads"], SMALL["classes"], 24
    one_hot = F.one_hot(torch.randint(0, c, (2, t, h), generator=generator), c).float()
    audio = torch.randn(2, t, SMALL["code"], generator=generator)
    with torch.no_grad():
        logits = prior(one_hot, audio)
    reference = prior_reference(s, one_hot, audio)
    torch.testing.assert_close(logits, reference, rtol=1e-4, atol=1e-4)
    # With the activation after the input layer (our old priors) the logits differ clearly.
    old = ContextModel(
        prior.config.__class__(**{**prior.config.to_dict(), "input_activation": True})
    )
    old.load_state_dict(prior.state_dict())
    with torch.no_grad():
        assert (old(one_hot, audio) - reference).abs().max() > 0.1


@pytest.mark.parametrize("argmax", [True, False])
def test_the_sampler_follows_the_imported_prior(imported, argmax):
    _, _, model = imported
    prior = ckpt.load_run(model).prior
    audio = torch.randn(1, 40, SMALL["code"], generator=torch.Generator().manual_seed(7))
    sampler = PriorSampler(prior, argmax=argmax, seed=1, record_logits=True)
    codes = sampler.sample(audio, chunk=16)
    with torch.no_grad():
        full = prior(F.one_hot(codes, SMALL["classes"]).float(), audio)
    torch.testing.assert_close(torch.stack(sampler.recorded, dim=1), full, rtol=1e-4, atol=1e-4)
    if argmax:
        assert torch.equal(codes, full.argmax(dim=-1))
    assert len(codes.unique()) > 2


def test_the_imported_front_end_frames_audio_as_the_release(imported):
    """SPEC 7b: zero-pad the normalised waveform by 7733, frame k's 16000 samples from 533 k,
    each window's log-mel on its own (the release's MelSpectrogram, centred, reflect padding),
    T = len(range(8000, N + 15466 - 8000, 533)), frame k at 533 k / 16000 s."""
    _, _, model = imported
    run = ckpt.load_run(model)
    front_end = run.front_end
    assert (front_end.framing, front_end.window) == ("release", "release")
    assert (front_end.mel_mean, front_end.mel_std) == (0.0, 1.0)
    assert run.latent.config.expression_input == "mesh"
    audio_encoder = run.latent.encoder.audio_encoder
    assert (audio_encoder.mel_mean, audio_encoder.mel_std) == (0.0, 1.0)
    for n in (535, 1066, 1067, 16000, 16533, 48_123):
        assert front_end.frame_count(n) == len(range(8000, n + 15466 - 8000, 533)), n
    assert front_end.frame_count(534) == 0
    n = 24_000
    samples = np.sin(np.arange(n) * 0.05).astype(np.float32) * np.linspace(0.1, 1, n)
    times = front_end.frame_times(n)
    assert len(times) == 45 and times[3] == 3 * 533 / 16000
    normalised = 0.01 * samples / np.abs(samples).mean()
    padded = np.pad(normalised, (7733, 7733))
    mel = torchaudio.transforms.MelSpectrogram(
        sample_rate=16000, n_fft=2048, win_length=800, hop_length=160, n_mels=80
    )
    windows = front_end.windows(samples)
    assert windows.shape == (45, 80, 101)
    for k in (0, 1, 17, 44):
        chunk = torch.from_numpy(padded[533 * k : 533 * k + 16000].astype(np.float32))
        expected = torch.log(mel(chunk).clamp_min(1e-10))
        torch.testing.assert_close(torch.from_numpy(windows[k]), expected, rtol=1e-4, atol=1e-3)
    codes = front_end.audio_codes(audio_encoder, samples)
    with torch.no_grad():
        direct = audio_encoder(torch.from_numpy(windows)[None])
    torch.testing.assert_close(codes, direct)


class RunsCode:
    """Unpickling this runs a shell command."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_pickle_with_code_is_refused_and_nothing_is_written(imported, tmp_path):
    states, _, _ = imported
    release = save_release(tmp_path / "release", states)
    marker = tmp_path / "was_run"
    torch.save({**states["encoder.pkl"], "payload": RunsCode(marker)}, release / "encoder.pkl")
    result = invoke("import-weights", release, "-o", tmp_path / "model")
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "encoder.pkl" in lines[0] and "refused" in lines[0], lines
    assert "system" in lines[0]
    assert not marker.exists()
    assert not (tmp_path / "model").exists()
    assert not list(tmp_path.glob(".model*"))


def corrupt(release: Path) -> str:
    data = (release / "vertex_unet.pkl").read_bytes()
    (release / "vertex_unet.pkl").write_bytes(data[: len(data) // 2])
    return "vertex_unet.pkl: not a readable torch checkpoint"


def missing(release: Path) -> str:
    (release / "context_model.pkl").unlink()
    return "context_model.pkl: missing"


def wrong_shape(release: Path) -> str:
    state = torch.load(release / "vertex_unet.pkl", weights_only=True)
    state["decoder.1.weight"] = state["decoder.1.weight"][:, :-1].clone()
    torch.save(state, release / "vertex_unet.pkl")
    return "vertex_unet.pkl: does not fit the model of its sizes: decoder.1.weight has shape"


def not_tensors(release: Path) -> str:
    state = torch.load(release / "encoder.pkl", weights_only=True)
    torch.save({**state, "step": 3}, release / "encoder.pkl")
    return "encoder.pkl: entry 'step' is a int: not a flat state dict of tensors"


def extra_layer(release: Path) -> str:
    state = torch.load(release / "encoder.pkl", weights_only=True)
    state["audio_encoder.convs.6.weight"] = state["audio_encoder.convs.5.weight"]
    torch.save(state, release / "encoder.pkl")
    return "unexpected audio_encoder.convs.6.weight"


def other_heads(release: Path) -> str:
    state = torch.load(release / "encoder.pkl", weights_only=True)
    state["fusion_model.mlp.4.weight"] = state["fusion_model.mlp.4.weight"][:-8].clone()
    torch.save(state, release / "encoder.pkl")
    return "context_model.pkl: has 4 heads of 8 classes, the encoder (encoder.pkl) has 24"


def bad_mask(release: Path) -> str:
    state = torch.load(release / "context_model.pkl", weights_only=True)
    state["context_layers.2.mask"][0, 0, 0] = 1.0
    torch.save(state, release / "context_model.pkl")
    return "context_layers.2.mask is not the block mask of SPEC 7"


def nan_weight(release: Path) -> str:
    state = torch.load(release / "context_model.pkl", weights_only=True)
    state["logits.masked_linear.bias"][3] = float("nan")
    torch.save(state, release / "context_model.pkl")
    return "context_model.pkl: logits.masked_linear.bias holds NaN"


def zero_stddev(release: Path) -> str:
    state = torch.load(release / "vertex_unet.pkl", weights_only=True)
    state["stddev"][0, 0, 3, 1] = 0.0
    torch.save(state, release / "vertex_unet.pkl")
    return "vertex_unet.pkl: stddev has values <= 0"


def other_filter_bank(release: Path) -> str:
    state = torch.load(release / "encoder.pkl", weights_only=True)
    state["audio_encoder.melspec.mel_scale.fb"] *= 1.1
    torch.save(state, release / "encoder.pkl")
    return "audio_encoder.melspec.mel_scale.fb differs from the log-mel of SPEC section 3"


def a_list(release: Path) -> str:
    torch.save([torch.zeros(3)], release / "encoder.pkl")
    return "encoder.pkl: holds a list, not a state dict of tensors"


@pytest.mark.parametrize(
    "damage",
    [
        corrupt,
        missing,
        wrong_shape,
        not_tensors,
        extra_layer,
        other_heads,
        bad_mask,
        nan_weight,
        zero_stddev,
        other_filter_bank,
        a_list,
    ],
)
def test_bad_release_files_are_one_line_errors_and_write_nothing(imported, tmp_path, damage):
    states, _, _ = imported
    release = save_release(tmp_path / "release", states)
    message = damage(release)
    result = invoke("import-weights", release, "-o", tmp_path / "model")
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], lines
    assert not (tmp_path / "model").exists()
    assert not list(tmp_path.glob(".model*"))


def test_the_output_folder_is_refused_unless_it_may_be_replaced(imported, tmp_path):
    _, release, _ = imported
    target = tmp_path / "model"
    (tmp_path / "file").write_text("x")
    result = invoke("import-weights", release, "-o", tmp_path / "file")
    assert result.exit_code == 1 and "is a file" in result.output
    target.mkdir()
    (target / "notes.txt").write_text("mine")
    for extra in ([], ["--force"]):
        result = invoke("import-weights", release, "-o", target, *extra)
        assert result.exit_code == 1 and "is not empty" in result.output, result.output
        assert (target / "notes.txt").read_text() == "mine"
    (target / "notes.txt").unlink()
    assert invoke("import-weights", release, "-o", target).exit_code == 0  # empty: fine
    result = invoke("import-weights", release, "-o", target)
    assert result.exit_code == 1 and "--force replaces it" in result.output
    (target / "latent" / "stale.txt").write_text("old")
    assert invoke("import-weights", release, "-o", target, "--force").exit_code == 0
    assert not (target / "latent" / "stale.txt").exists()
    assert ckpt.load_run(target).prior is not None
    assert not list(tmp_path.glob(".model*"))


def test_masks_and_template_go_into_the_run_topology(imported, tmp_path):
    _, release, _ = imported
    v = SMALL["vertices"]
    rng = np.random.default_rng(0)
    masks = {name: rng.random(v).astype(np.float32) for name in REFERENCE_MASK_FILES}
    write_mask_dir(tmp_path / "topology", masks)
    vertices = rng.normal(size=(v, 3)).astype(np.float32)
    faces = np.array([[0, 1, 2], [2, 3, 4]])
    write_mesh(tmp_path / "topology" / importer.TEMPLATE_FILE, Mesh(vertices, faces))
    result = invoke(
        "import-weights", release, "-o", tmp_path / "model", "--masks", tmp_path / "topology"
    )
    assert result.exit_code == 0, result.output
    run = ckpt.load_run(tmp_path / "model")
    assert set(run.masks) == set(REFERENCE_MASK_FILES)
    for name, mask in masks.items():
        np.testing.assert_allclose(run.masks[name], mask, rtol=1e-6)
    written = read_mesh(tmp_path / "topology" / importer.TEMPLATE_FILE).vertices
    np.testing.assert_array_equal(run.template, written)
    np.testing.assert_allclose(written, vertices, atol=1e-6)  # OBJ keeps 6 decimals
    # Its triangles too: `animate` onto a mesh of another topology needs them.
    np.testing.assert_array_equal(np.load(tmp_path / "model" / "topology" / "faces.npy"), faces)
    # A template of another vertex count is refused, naming both counts.
    write_mesh(tmp_path / "small.obj", Mesh(vertices[:10], faces))
    result = invoke(
        "import-weights", release, "-o", tmp_path / "other", "--template", tmp_path / "small.obj"
    )
    assert result.exit_code == 1 and "has 10 vertices, the release's model has 30" in result.output
    assert not (tmp_path / "other").exists()


def test_old_configs_keep_the_behaviour_they_were_trained_with():
    """Configs saved before the release's facts were fields load with our earlier behaviour;
    new models take the release's."""
    assert LatentModelConfig().decoder_fusion == "template_first"
    values = LatentModelConfig().to_dict()
    del values["decoder_fusion"]
    assert LatentModelConfig.from_dict(values).decoder_fusion == "codes_first"
    from meshtalk.models.prior import PriorModelConfig

    assert PriorModelConfig().input_activation is False
    values = PriorModelConfig().to_dict()
    del values["input_activation"]
    assert PriorModelConfig.from_dict(values).input_activation is True


def test_animate_uses_the_imported_run_as_the_release_would(imported, tmp_path):
    """`animate --model` needs no flag: release framing, template-first decoder and the prior
    without input activation all come from the run; its argmax animation is the composition of
    the imported modules."""
    _, _, model = imported
    rng = np.random.default_rng(1)
    vertices = rng.normal(size=(SMALL["vertices"], 3)).astype(np.float32)
    write_mesh(tmp_path / "face.ply", Mesh(vertices, np.array([[0, 1, 2]])))
    n = 32_000
    t = np.arange(n) / 16000
    speech = (0.3 * np.sin(2 * np.pi * 220 * t) * (1 + np.sin(7 * t))).astype(np.float32)
    soundfile.write(tmp_path / "speech.wav", speech, 16000, subtype="FLOAT")
    out = tmp_path / "out"
    result = invoke(
        "animate", tmp_path / "speech.wav", tmp_path / "face.ply", "-o", out,
        "--model", model, "--argmax", "--no-video", "--no-smooth", "--float",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    animation = np.load(out / "animation.npz")
    frames = len(range(8000, n + 15466 - 8000, 533))
    assert animation["vertices"].shape == (frames, SMALL["vertices"], 3)
    np.testing.assert_allclose(animation["frame_times"], np.arange(frames) * 533 / 16000)
    run = ckpt.load_run(model)
    audio = run.front_end.audio_codes(run.latent.encoder.audio_encoder, speech)
    codes = PriorSampler(run.prior, argmax=True).sample(audio)
    assert np.array_equal(animation["codes"], codes[0].numpy())
    with torch.no_grad():
        one_hot = F.one_hot(codes, SMALL["classes"]).float()
        meshes = run.latent.decoder(torch.from_numpy(vertices)[None], one_hot)[0]
    np.testing.assert_allclose(animation["vertices"], meshes.numpy(), rtol=1e-4, atol=1e-4)
