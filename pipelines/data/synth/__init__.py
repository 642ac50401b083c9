"""`meshtalk synth`: a procedural talking-face dataset in the exact Multiface layout.

Every sentence is a sequence of phones (vowels with formants, plosives, fricatives, pauses).
The same phone timeline drives both the audio (a formant synthesiser) and the mouth (jaw
opening, lip rounding, spreading and closure), so lips are a deterministic function of the audio.
Blinks and brow raises are Poisson events independent of the audio, and a mild head motion goes
into the `_transform.txt` head poses. Ground truth is written to `OUT/ground_truth/`.

Faces are a template plus a weighted sum of motion fields (`MotionBasis`): one field per
articulation parameter, built from the region masks of the topology.

Laid out by part: `face` (the built-in face, motion fields, identity shapes), `speech` (phones,
articulation, audio), `events` (blinks, brows, drift, head poses), `writer` (the settings and the
dataset's files).
"""

from meshtalk.pipelines.data.synth.writer import SynthConfig, run

__all__ = ["SynthConfig", "run"]
