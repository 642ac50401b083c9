"""animate's pipeline: sample, decode + smooth, write, and draw + encode the video, side by side.

The caller's thread computes audio codes and samples them a chunk at a time; the chunks then pass
through stages in threads of their own (`Relay`): decoding and smoothing, writing the npz and PC2
(and per-frame meshes), and, with a video, handing the written frames to `VideoStage`, a child
process that draws and encodes them while the sampler goes on. Every stage holds at most two
chunks (the pipe to the video process about one), so a slow stage holds up the sampler instead of
piling up memory, and memory stays flat for speech of any length.

Thread budgets on the CPU (the sampler is the critical path, and a step is many small torch calls
separated by Python): torch runs one intra-op thread while the stages run; the video's drawing and
encoding run in their own process, so that moderngl, which holds its interpreter lock while
llvmpipe draws, never holds up the sampler's Python; llvmpipe and x264 there have threads of their
own that wait without spinning (`render/stage.py`).
"""

from __future__ import annotations

import time

import numpy as np

from meshtalk.pipelines.errors import MeshtalkError
from meshtalk.pipelines.inference.relay import Relay
from meshtalk.pipelines.io.mesh import Mesh

SAMPLER_THREADS = 1
"""torch's intra-op threads while the stages run (the process's setting: the decoder's too). One:
on 2 cores the other stages and the video process use the second core, and a team of two OpenMP
threads waits at every one of a step's many barriers for a thread the scheduler took away (60 s of
speech, float, no video, release sizes, load average 9-11 from other jobs: animate took 16-23 s
with one thread, 33-56 s with two, and 188-225 s with two and the decoder in the sampler's
thread)."""


def generate(
    config, run, template: Mesh, audio_codes, total: int, writers, smoothers, seconds, video=None
) -> None:
    """Sample, decode, smooth and write every frame, `chunk_frames` at a time.

    Args:
        config: the `AnimateConfig` (takes, sampling settings, chunk_frames, progress).
        run: the loaded run (prior, decoder).
        template: the mesh the decoder draws onto (the model's topology).
        audio_codes: gives the (1, n, code_dim) audio codes of the `total` frames a chunk at a
            time (`frontend_stream.stream_audio_codes`); this thread computes them as needed.
        writers: one `TakeWriter` per take; smoothers: one `RegionSmoother` per take, or None.
        seconds: busy seconds per stage, added to.
        video: a `VideoStage` given every take's written frames, or None.
    """
    import torch
    import torch.nn.functional as F

    from meshtalk.models.sampler import PriorSampler
    from meshtalk.pipelines.io.heap import release_pages
    from meshtalk.pipelines.io.progress import progress_bar

    takes, prior, decoder = config.takes, run.prior, run.latent.decoder
    clock = time.perf_counter()  # the sampler's preparation of its weights counts as sampling
    sampler = PriorSampler(
        prior,
        batch=takes,
        temperature=config.temperature,
        argmax=config.argmax,
        seed=config.seed,
        weights="int8" if config.int8 else "float",
    )
    seconds["sampling"] += time.perf_counter() - clock
    parameter = next(decoder.parameters())
    vertices = torch.from_numpy(np.ascontiguousarray(template.vertices, dtype=np.float32))
    template_batch = vertices.to(parameter.device, parameter.dtype)[None].expand(takes, -1, -1)
    with torch.inference_mode():
        encoded = decoder.encode_template(template_batch)
    # Weights read once are handed back: the float prior the sampler has made its own weights
    # from, and the template encoder (36 + 99 MB of mapped file pages at the release's sizes).
    release_pages([*prior.parameters(), *prior.buffers(), *decoder.encoder.parameters()])
    classes = prior.config.classes
    decoder_state = None

    def decode(codes):  # (N, n, H) codes -> (codes, [ready frames of each take])
        nonlocal decoder_state
        if codes is None:  # the end: what the smoothers still hold
            if smoothers is None:
                return None
            clock = time.perf_counter()
            rest = [smoother.finish() for smoother in smoothers]
            seconds["smoothing"] += time.perf_counter() - clock
            return None, rest
        with torch.inference_mode():
            clock = time.perf_counter()
            one_hot = F.one_hot(codes, classes).to(parameter.dtype)
            meshes, decoder_state = decoder.decode(template_batch, one_hot, decoder_state, encoded)
            meshes = meshes.float().cpu().numpy()
            seconds["decoding"] += time.perf_counter() - clock
        clock = time.perf_counter()
        if smoothers is None:
            ready = list(meshes)
        else:
            ready = [smoother.push(take) for smoother, take in zip(smoothers, meshes)]
        seconds["smoothing"] += time.perf_counter() - clock
        return codes.cpu().numpy(), ready

    def write(item):  # -> the frames as written (a transfer's mapping applied), for the video
        codes, ready = item
        clock = time.perf_counter()
        written = []
        for index, writer in enumerate(writers):
            if codes is not None:
                writer.codes.append(codes[index])
            written.append(writer.write(ready[index]))
        seconds["writing"] += time.perf_counter() - clock
        if video is None:
            bar.advance(task, len(ready[0]))
            return None
        return written

    def draw(written) -> None:
        video.write(written)
        bar.advance(task, len(written[0]))

    given = 0
    stages = [decode, write] if video is None else [decode, write, draw]
    with (
        progress_bar(disable=not config.progress) as bar,
        Relay(stages, flush=True, threads=SAMPLER_THREADS) as relay,
    ):
        task = bar.add_task("animating" if video is None else "animating + video", total=total)
        for chunk in _rechunked(audio_codes, config.chunk_frames, seconds):
            given += chunk.shape[1]
            if given > total:
                break
            clock = time.perf_counter()
            codes = sampler.push(chunk.expand(takes, -1, -1))  # (N, n, H)
            seconds["sampling"] += time.perf_counter() - clock
            relay.put(codes)
    if given != total:
        raise MeshtalkError(
            config.model, f"the audio front end gave {given} frames where {total} were due"
        )


def _rechunked(audio_codes, frames: int, seconds: dict[str, float]):
    """(1, frames, code_dim) chunks (the last shorter) of a stream of (1, n, code_dim) ones;
    the time spent computing them is added to seconds["audio_codes"]."""
    import torch

    pending, stream = None, iter(audio_codes)
    while True:
        clock = time.perf_counter()
        part = next(stream, None)
        seconds["audio_codes"] += time.perf_counter() - clock
        if part is None:
            break
        pending = part if pending is None else torch.cat([pending, part], dim=1)
        while pending.shape[1] >= frames:
            yield pending[:, :frames]
            pending = pending[:, frames:]
    if pending is not None and pending.shape[1]:
        yield pending
