"""What benchmarks/claims.py measures on a synthetic test split: segments, eyelid closure and
blinks, upper-face motion, and a tally of figures."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import yaml

from meshtalk.pipelines.data.store import PreparedStore
from meshtalk.pipelines.eval.metrics import lip_vertex_errors, mean_vertex_error

LIPS_FACTOR, BLINK_TOLERANCE, BARELY = 0.5, 0.3, 0.3
UPPER_FACE_WEIGHT, HEADS = 6.0, 8
"""Weight of the eyelid and upper-face terms, and latent heads, of every stage-1 variant (the tiny
preset's other sizes, C=16). Measured at 2000 steps on the procedural head with the preset's 4
heads: at weight 3 the cross-modality latent held the mouth but its expression path died (an
expression swap moved the upper face 0.0008 mm; no sample blinked); at weight 10 it held the upper
face and lost the mouth (lip vertex error of samples 0.99x the static template's). 8 heads give
room for both."""
CLOSED, REOPENED = 0.5, 0.25
"""A blink starts when the eyelid closure (1 - gap / neutral gap) reaches CLOSED and may start
again once it is back under REOPENED."""


@dataclass
class Segment:
    name: str
    vertices: torch.Tensor  # (T, V, 3)
    template: torch.Tensor  # (V, 3)
    mel: torch.Tensor  # (L, n_mels)
    starts: torch.Tensor  # (T,)

    @property
    def minutes(self) -> float:
        return len(self.vertices) / 30.0 / 60.0


def segments(store: PreparedStore, split: str) -> list[Segment]:
    found = []
    for ref in store.split(split):
        mel, starts = store.audio_span(ref, store.frames(ref)["mel_index"])
        found.append(
            Segment(
                f"{ref.identity}/{ref.name}",
                torch.from_numpy(np.array(store.vertices(ref))),
                torch.from_numpy(np.array(store.template(ref.identity))),
                torch.from_numpy(mel),
                torch.from_numpy(starts),
            )
        )
    return found


def eyelid_pairs(topology: Path) -> list[tuple[list[int], list[int]]]:
    """(upper lid, lower lid) landmark vertices of each eye: each eyelid list holds the upper
    margin's vertices, then the lower margin's (pipelines/data/masks.py); six points are the
    68-point landmarks' eye (corner, two upper, corner, two lower: ICT-FaceKit's topology), whose
    upper pair is taken against the lower pair below it, the corners left out."""
    landmarks = yaml.safe_load((topology / "landmarks.yaml").read_text())
    pairs = []
    for key in ("left_eyelid", "right_eyelid"):
        ids = landmarks[key]
        if len(ids) == 6:
            pairs.append(([ids[1], ids[2]], [ids[5], ids[4]]))
        else:
            pairs.append((ids[: len(ids) // 2], ids[len(ids) // 2 :]))
    return pairs


def eyelid_closure(vertices: torch.Tensor, template: torch.Tensor, eyes) -> torch.Tensor:
    """(..., T, V, 3) -> (..., T): 1 - eyelid gap / neutral gap, averaged over the two eyes (0 open
    as the neutral face, 1 closed)."""
    closures = []
    for upper, lower in eyes:
        gap = (vertices[..., upper, :].mean(-2) - vertices[..., lower, :].mean(-2)).norm(dim=-1)
        neutral = (template[upper].mean(0) - template[lower].mean(0)).norm()
        closures.append(1 - gap / neutral)
    return torch.stack(closures).mean(0)


def count_blinks(closure: torch.Tensor) -> int:
    """Blinks in a (T,) closure curve (see CLOSED and REOPENED)."""
    count, closed = 0, False
    for value in closure.tolist():
        if not closed and value >= CLOSED:
            count, closed = count + 1, True
        elif closed and value < REOPENED:
            closed = False
    return count


def upper_face_motion_std(vertices: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """(..., T, V, 3) -> (...): per vertex the standard deviation of its position over the frames
    (the root of the summed per-axis variances, mm), weighted mean over the upper face."""
    per_vertex = vertices.var(dim=-3, unbiased=False).sum(-1).sqrt()
    return (per_vertex * weights).sum(-1) / weights.sum()


class Tally:
    """Figures of one Table 2 row summed over segments (frame-weighted) and takes."""

    def __init__(self, num_vertices: int) -> None:
        self.frames = self.lve = self.mve = self.upper = self.minutes = 0.0
        self.blinks = 0
        self.vertex_error = torch.zeros(num_vertices)

    def add(self, prediction: torch.Tensor, segment: Segment, masks, lips, eyes) -> None:
        """Prediction (K, T, V, 3): K takes of one segment."""
        target = segment.vertices.expand_as(prediction)
        k, t = prediction.shape[:2]
        self.frames += k * t
        self.lve += k * t * lip_vertex_errors(prediction, target, lips)[0]
        self.mve += k * t * mean_vertex_error(prediction, target)
        self.upper += t * float(upper_face_motion_std(prediction, masks["upper_face"]).sum())
        closure = eyelid_closure(prediction, segment.template, eyes)
        self.blinks += sum(count_blinks(c) for c in closure)
        self.minutes += k * segment.minutes
        self.vertex_error += (prediction - target).norm(dim=-1).sum(dim=(0, 1))

    def figures(self) -> dict[str, float]:
        return {
            "lip_vertex_error_mm": self.lve / self.frames,
            "mean_vertex_error_mm": self.mve / self.frames,
            "upper_face_motion_std_mm": self.upper / self.frames,
            "blinks_per_minute": self.blinks / self.minutes,
            "blinks_counted": self.blinks,
            "minutes": self.minutes,
        }
