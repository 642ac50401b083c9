"""`meshtalk eval`: animate every segment of a split from its audio and score it against the data.

For each segment of the split (a prepared store, `meshtalk prep`):

    samples                the prior's codes drawn from the segment's audio (N takes), decoded
                           onto the identity's template: what `meshtalk animate` makes (without
                           its forehead/neck smoothing)
    stage1_reconstruction  stage 1 decoding the codes its encoder gives the true meshes and audio
                           (argmax): the best the decoder can do
    static_template        the neutral template in every frame (no motion at all)
    data                   the tracked meshes themselves (motion std and blinks only)

are scored with `scores.score_animation`; the prior's perplexity of the true codes comes with
them. `evaluate` returns an `EvalResults`; `run` also writes OUT/ (see `report`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from meshtalk.pipelines.data.store import PreparedStore, SegmentRef
from meshtalk.pipelines.errors import MeshtalkError
from meshtalk.pipelines.eval import metrics
from meshtalk.pipelines.eval.scores import Regions, Scores, score_animation, summarise

log = logging.getLogger(__name__)

SAMPLES, RECONSTRUCTION, TEMPLATE, DATA = (
    "samples",
    "stage1_reconstruction",
    "static_template",
    "data",
)
METHODS = (SAMPLES, RECONSTRUCTION, TEMPLATE, DATA)
"""The rows of the results, in order."""
MAX_TAKES = 64


@dataclass(kw_only=True)
class EvalConfig:
    """One `meshtalk eval` run."""

    run: Path
    """A trained run folder with a prior (stage 2)."""
    data: Path
    """A prepared store (`meshtalk prep`) of the run's topology."""
    split: str = "test"
    """Which segments to animate: train, val or test."""
    takes: int = 1
    """Samples drawn per segment (their figures are averaged)."""
    seed: int = 0
    """Seed of the sampler (segment k of the split is drawn with seed + k)."""
    temperature: float = 1.0
    """Logits are divided by it before drawing."""
    output: Path | None = None
    """Folder for metrics.json, error_map.png, motion_std.png and worst_segment.mp4 (None: only
    the table, and `json` if given)."""
    json: Path | None = None
    """Also write the results as JSON to this file."""
    video: bool = True
    """Render the worst segment (by the samples' lip vertex error) beside the data into OUT."""
    mesh: Path | None = None
    """PLY/OBJ mesh of the topology whose faces the video uses (None: the store's source dataset's
    topology/template.ply)."""
    video_seconds: float = 6.0
    """The video shows at most this many seconds of the worst segment."""
    device: str = "auto"
    """auto, cpu, cuda or mps."""
    force: bool = False
    """Write into an OUT that holds other files or an earlier evaluation."""
    progress: bool = False
    """Show a progress bar over segments."""

    def __post_init__(self) -> None:
        from meshtalk.pipelines.data.splits import SPLITS

        self.run, self.data = Path(self.run), Path(self.data)
        for name in ("output", "json", "mesh"):
            if getattr(self, name) is not None:
                setattr(self, name, Path(getattr(self, name)))
        problems = []
        if self.split not in SPLITS:
            problems.append(f"--split must be one of {', '.join(SPLITS)}, got '{self.split}'")
        if not 1 <= self.takes <= MAX_TAKES:
            problems.append(f"--takes must be between 1 and {MAX_TAKES}, got {self.takes}")
        if not (math.isfinite(self.temperature) and self.temperature > 0):
            problems.append(f"--temperature must be a positive number, got {self.temperature}")
        if not 0 <= self.seed < 2**62:
            problems.append(f"--seed must be between 0 and 2^62 - 1, got {self.seed}")
        if not self.video_seconds > 0:
            problems.append(f"video_seconds must be positive, got {self.video_seconds}")
        if self.json is not None and self.json.suffix.lower() != ".json":
            problems.append(f"--json must name a .json file, got {self.json}")
        if problems:
            raise MeshtalkError(None, "; ".join(problems))


@dataclass
class SegmentData:
    """One segment of a store, in memory: what a predictor gets and what it is scored against."""

    ref: SegmentRef
    template: np.ndarray
    """(V, 3) the identity's neutral face."""
    vertices: np.ndarray
    """(T, V, 3) the tracked meshes (mm)."""
    mel: np.ndarray
    """(L, n_mels) log-mel span holding every frame's audio window."""
    mel_starts: np.ndarray
    """(T,) int64: frame k's window starts at mel[mel_starts[k]]."""
    times_s: np.ndarray
    """(T,) time of each frame in the segment's audio."""
    fps: float
    """Frame rate of the capture."""
    index: int
    """Position of the segment in its split."""

    @property
    def seconds(self) -> float:
        """Length of the segment (dropped frames included)."""
        return float(self.times_s[-1] - self.times_s[0]) + 1.0 / self.fps


def segments(store: PreparedStore, split: str) -> Iterator[SegmentData]:
    """The segments of a split, one at a time (each checked against the manifest)."""
    for index, ref in enumerate(store.split(split)):
        store.check_segment(ref)
        frames = store.frames(ref)
        mel, starts = store.audio_span(ref, frames["mel_index"])
        data = SegmentData(
            ref=ref,
            template=np.array(store.template(ref.identity), dtype=np.float32),
            vertices=np.array(store.vertices(ref), dtype=np.float32),
            mel=mel,
            mel_starts=starts,
            times_s=np.asarray(frames["times_s"], dtype=np.float64),
            fps=store.fps,
            index=index,
        )
        yield data


def store_regions(store: PreparedStore) -> Regions:
    """The metric regions of a store's topology (its masks, the first identity's template)."""
    try:
        return Regions.from_masks(store.masks, np.asarray(store.template(store.identities[0])))
    except ValueError as error:
        raise MeshtalkError(
            store.root / "masks", f"cannot score with these masks: {error}"
        ) from None


@dataclass
class SegmentResult:
    """The scores of one segment, per method."""

    identity: str
    segment: str
    scores: dict[str, Scores]
    """Method name -> its scores."""


@dataclass
class EvalResults:
    """Everything `evaluate` measured."""

    split: str
    takes: int
    regions: Regions
    segments: list[SegmentResult]
    prior: dict[str, float] = field(default_factory=dict)
    """perplexity, cross_entropy_nats, classes and codes (how many were scored)."""
    settings: dict = field(default_factory=dict)
    """run, data, seed, temperature, fps."""

    @property
    def methods(self) -> list[str]:
        present = {m for s in self.segments for m in s.scores}
        return [m for m in METHODS if m in present] + sorted(present - set(METHODS))

    def overall(self, method: str) -> dict[str, float]:
        """Figures of a method over every segment (frame-weighted)."""
        return summarise([s.scores[method] for s in self.segments if method in s.scores])

    def by_identity(self, method: str) -> dict[str, dict[str, float]]:
        """Identity -> the method's figures over that identity's segments."""
        identities = dict.fromkeys(s.identity for s in self.segments)
        return {
            identity: summarise(
                [
                    s.scores[method]
                    for s in self.segments
                    if s.identity == identity and method in s.scores
                ]
            )
            for identity in identities
        }

    def worst(self, method: str = SAMPLES, key: str = "lip_vertex_error_mm") -> SegmentResult:
        """The segment where a method's figure is largest."""
        return max(self.segments, key=lambda s: s.scores[method].figures[key])


Predictor = Callable[[SegmentData], np.ndarray]
"""A segment -> its (T, V, 3) or (N, T, V, 3) predicted meshes (mm)."""


def evaluate_predictors(
    store: PreparedStore,
    split: str,
    predictors: dict[str, Predictor],
    *,
    with_data: bool = True,
    progress: bool = False,
) -> EvalResults:
    """Score any predictors on a split of a store: the entry point for other models.

    Args:
        store: the prepared store.
        split: train, val or test.
        predictors: method name -> function from a `SegmentData` to its predicted meshes.
        with_data: also describe the data itself (method 'data': motion std, blinks).

    Raises:
        MeshtalkError: for a split without segments or masks the metrics cannot use.
    """
    from meshtalk.pipelines.io.progress import progress_bar

    refs = store.split(split)
    if not refs:
        raise MeshtalkError(store.root, f"has no '{split}' segments")
    regions = store_regions(store)
    results = []
    with progress_bar(disable=not progress) as bar:
        task = bar.add_task(f"evaluating {split}", total=len(refs))
        for data in segments(store, split):
            scores = {
                name: score_animation(
                    predict(data), data.vertices, data.template, regions, data.seconds
                )
                for name, predict in predictors.items()
            }
            if with_data:
                scores[DATA] = score_animation(
                    None, data.vertices, data.template, regions, data.seconds
                )
            results.append(SegmentResult(data.ref.identity, data.ref.name, scores))
            bar.advance(task)
    return EvalResults(split=split, takes=1, regions=regions, segments=results)


class RunPredictors:
    """The predictors of a trained run: its samples, its stage-1 reconstruction, the template.

    Also adds up the prior's negative log-likelihood of the true codes as segments pass.
    """

    def __init__(self, run, takes: int = 1, seed: int = 0, temperature: float = 1.0) -> None:
        from meshtalk.models.sampler import PriorSampler

        if run.prior is None:
            raise MeshtalkError(
                run.folder, "has no prior (stage 2): train one with meshtalk train prior"
            )
        self.run, self.takes, self.seed = run, takes, seed
        self.sampler = PriorSampler(run.prior, batch=takes, temperature=temperature, seed=seed)
        self.parameter = next(run.latent.parameters())
        self.nll, self.codes = 0.0, 0

    def _tensor(self, array: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(array)).to(self.parameter.device)

    @torch.inference_mode()
    def _codes(self, data: SegmentData) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(true codes (1, T, H), audio codes (1, T, D), template (1, V, 3)) of a segment."""
        latent = self.run.latent
        template = self._tensor(data.template)[None].to(self.parameter.dtype)
        expression, audio = latent.codes(
            self._tensor(data.vertices)[None].to(self.parameter.dtype),
            template,
            self._tensor(data.mel)[None].to(self.parameter.dtype),
            self._tensor(data.mel_starts)[None],
        )
        codes = latent.encoder.fusion_model(expression, audio).argmax(dim=-1)
        return codes, audio, template

    @torch.inference_mode()
    def predictors(self, data: SegmentData) -> dict[str, np.ndarray]:
        """Method -> predicted meshes of one segment (and the prior's NLL added up)."""
        codes, audio, template = self._codes(data)
        prior, decoder = self.run.prior, self.run.latent.decoder
        classes = prior.config.classes
        prior_audio = audio.to(next(prior.parameters()).dtype)
        log_p = prior.log_likelihood(codes.to(prior_audio.device), prior_audio)
        self.nll -= float(log_p.double().sum())
        self.codes += codes.numel()
        one_hot = F.one_hot(codes, classes).to(self.parameter.dtype)
        reconstruction = decoder(template, one_hot)[0].float().cpu().numpy()
        samples = self._samples(data, template, prior_audio)
        static = np.broadcast_to(data.template, data.vertices.shape)
        return {SAMPLES: samples, RECONSTRUCTION: reconstruction, TEMPLATE: static}

    @torch.inference_mode()
    def samples(self, data: SegmentData) -> np.ndarray:
        """(N, T, V, 3) the samples of a segment, again (the same draws as in `predictors`)."""
        _, audio, template = self._codes(data)
        return self._samples(data, template, audio.to(next(self.run.prior.parameters()).dtype))

    def _samples(self, data: SegmentData, template: torch.Tensor, audio: torch.Tensor):
        self.sampler.reset((self.seed + data.index) % 2**63)  # each segment its own draws
        sampled = self.sampler.sample(audio.expand(self.takes, -1, -1))
        one_hot = F.one_hot(sampled, self.run.prior.config.classes).to(self.parameter.dtype)
        meshes, _ = self.run.latent.decoder.decode(template.expand(self.takes, -1, -1), one_hot)
        return meshes.float().cpu().numpy()

    def prior_figures(self) -> dict[str, float]:
        """perplexity (exp of the mean NLL per code), cross_entropy_nats, classes, codes."""
        return {
            "perplexity": metrics.perplexity(self.nll, self.codes),
            "cross_entropy_nats": self.nll / max(self.codes, 1),
            "classes": self.run.prior.config.classes,
            "codes": self.codes,
        }


def check_inputs(run, store: PreparedStore, config: EvalConfig) -> None:
    """One line for a run and a store that do not go together."""
    if run.prior is None:
        raise MeshtalkError(
            config.run, "has no prior (stage 2): train one with meshtalk train prior"
        )
    if store.num_vertices != run.num_vertices:
        raise MeshtalkError(
            config.data,
            f"holds meshes of {store.num_vertices} vertices; the run was trained on "
            f"{run.num_vertices} (a store of another topology)",
        )
    ours, theirs = store.front_end, run.front_end
    if (ours.mel.n_mels, ours.window_frames) != (theirs.mel.n_mels, theirs.window_frames):
        raise MeshtalkError(
            config.data,
            f"its audio windows ({ours.mel.n_mels} mel bands x {ours.window_frames} frames) are "
            f"not the run's ({theirs.mel.n_mels} x {theirs.window_frames}): prep it with the "
            "run's settings",
        )
    if not store.split(config.split):
        raise MeshtalkError(config.data, f"has no '{config.split}' segments")


def evaluate(config: EvalConfig) -> tuple[EvalResults, RunPredictors]:
    """Score a run on a split.

    Returns:
        The results, and the run's predictors (`samples` draws a segment's samples again).
    """
    from meshtalk.pipelines.checkpoint import load_run
    from meshtalk.pipelines.train.loop import resolve_device

    device = resolve_device(config.device)
    store = PreparedStore(config.data)
    run = load_run(config.run, device)
    check_inputs(run, store, config)
    predictors = RunPredictors(run, config.takes, config.seed, config.temperature)
    slot: dict[str, np.ndarray] = {}

    def method(name: str) -> Predictor:
        def predict(data: SegmentData) -> np.ndarray:
            if name == SAMPLES:  # the first method of a segment computes all three
                slot.clear()
                slot.update(predictors.predictors(data))
            return slot[name]

        return predict

    results = evaluate_predictors(
        store,
        config.split,
        {name: method(name) for name in (SAMPLES, RECONSTRUCTION, TEMPLATE)},
        progress=config.progress,
    )
    results.takes = config.takes
    results.prior = predictors.prior_figures()
    results.settings = {
        "run": str(config.run),
        "data": str(config.data),
        "seed": config.seed,
        "temperature": config.temperature,
        "fps": store.fps,
    }
    return results, predictors
