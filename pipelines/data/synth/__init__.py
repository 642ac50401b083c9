"""`meshtalk synth`: a procedural talking-face dataset in the exact Multiface layout.

Every sentence is a timeline of phones (vowels, plosives, fricatives, pauses). With the default
`espeak` voice, eSpeak NG reads English sentences and its phoneme events time the phones; with the
`formant` voice, pseudo-words are timed here and a formant synthesiser speaks them. Either way the
same timeline drives the mouth (jaw opening, lip rounding, spreading and closure), so lips are a
deterministic function of the audio.
Blinks and brow raises are Poisson events independent of the audio, and a mild head motion goes
into the `_transform.txt` head poses. Ground truth is written to `OUT/ground_truth/`.

Faces are a template plus a weighted sum of motion fields (`MotionBasis`): one field per
articulation parameter, built from the region masks of the topology.

The built-in face is a procedural head (`face.builtin_head`): closed lips that part along a mouth
cut, eyelids that close over two eyeballs, brows, nose, cheeks and chin; 4.7k vertices at the
default `--grid 48`.

Laid out by part: `face` (the built-in head, motion fields, identity shapes), `speech` (phones,
articulation, formant audio), `espeak` (eSpeak NG through ctypes), `events` (blinks, brows,
drift, head poses), `writer` (the settings and the dataset's files). `--face ict`: `ict` (the
ICT-FaceKit model), `visemes` (its expression weights over time), `ict_writer` (its dataset).
"""

from pathlib import Path

from meshtalk.pipelines.data.synth.writer import SynthConfig


def run(config: SynthConfig) -> Path:
    """Write the dataset (`writer` for the built-in head or a template, `ict_writer` for the
    ICT-FaceKit head); returns the output directory."""
    if config.face == "ict":
        from meshtalk.pipelines.data.synth.ict_writer import run as run_ict

        return run_ict(config)
    from meshtalk.pipelines.data.synth.writer import run as run_builtin

    return run_builtin(config)


__all__ = ["SynthConfig", "run"]
