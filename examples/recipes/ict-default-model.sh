#!/usr/bin/env bash
# The bundled default model, from nothing: synthetic speech of the ICT-FaceKit head (USC ICT, MIT
# license), prep, both training stages with the `default` preset and the Gumbel noise warmed up
# (examples/configs/latent-ict-*.yaml, prior-ict-default.yaml), then copied into the package
# (pipelines/data/resources/default_model/: the model, the whole head with its rig and license).
# Reproducible: same seed, same data, same run (rerunning the synth below reproduced every
# training file byte for byte).
#
# Measured on 2 cores: synth 30-100 s, prep 15-27 s, stage 1 25-30 min on one core, the larger
# synth and prep about 3 min, stage 1's audio encoder fine-tuned on it 8-15 min, stage 2 about
# 75 s; then the low-latency twin (`meshtalk stream`'s default): the 120-sentence set prepared
# again with the paper's -500/+100 ms window (about 2 min), stage 1 fine-tuned to it (10-25 min),
# its prior (about 75 s): about an hour in all.
#
#   examples/recipes/ict-default-model.sh [WORK_DIR] [ICT_FACEKIT_DIR]
#       # defaults: out/ict-default-model, ../shared/reference/ict_facekit
#
# ICT_FACEKIT_DIR holds the model as repacked in ../shared/reference/ict_facekit (its README:
# generic_neutral_mesh.obj, ICTFaceModelMaterial.mtl, vertex_indices.json, shapes.npz, LICENSE).
# Training runs on one thread (OMP_NUM_THREADS=1): on 2 cores shared with other jobs, two threads
# were 4x slower than one (barrier waits).
set -euo pipefail

work="${1:-out/ict-default-model}"
ict="${2:-../shared/reference/ict_facekit}"
meshtalk="${MESHTALK:-meshtalk}"
python="${PYTHON:-python}"
here="$(cd "$(dirname "$0")/../.." && pwd)"
configs="$here/examples/configs"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" MKL_NUM_THREADS="${MKL_NUM_THREADS:-1}"

# 10 identities (each its own face from the identity components and eSpeak NG voice) x 30 English
# sentences; blinks, brows, saccades and a slow expression drift independent of the speech.
"$meshtalk" synth "$work/data" --face ict --face-model "$ict" --identities 10 --sentences 30 \
    --seed 19 --expression-drift 0.15
"$meshtalk" prep "$work/data" -o "$work/store"
"$meshtalk" train latent --data "$work/store" -o "$work/stage1" --device cpu --resume \
    --config "$configs/latent-ict-default.yaml"
# More of the same world (120 sentences, the first 30 as above) for what follows: stage 1's audio
# encoder and fusion fine-tuned on it, decoder and expression encoder frozen
# (latent-ict-default-audio.yaml), then stage 2 (on stage 1's 30 sentences the prior overfits
# within 500 steps: prior-ict-default.yaml says what was measured).
"$meshtalk" synth "$work/data-prior" --face ict --face-model "$ict" --identities 10 \
    --sentences 120 --seed 19 --expression-drift 0.15
"$meshtalk" prep "$work/data-prior" -o "$work/store-prior"
"$meshtalk" train latent --data "$work/store-prior" -o "$work/run" --init "$work/stage1" \
    --device cpu --resume --config "$configs/latent-ict-default-audio.yaml"
"$meshtalk" train prior --latent "$work/run" --data "$work/store-prior" -o "$work/run" \
    --device cpu --resume --config "$configs/prior-ict-default.yaml"

# The low-latency twin: the same latent space and decoder, an audio encoder for the paper's
# window fine-tuned from stage 1 on the 120-sentence set (latent-ict-live.yaml says what was
# measured).
"$meshtalk" prep "$work/data-prior" -o "$work/store-prior-paper" --window paper
"$meshtalk" train latent --data "$work/store-prior-paper" -o "$work/live" --init "$work/stage1" \
    --device cpu --resume --config "$configs/latent-ict-live.yaml"
"$meshtalk" train prior --latent "$work/live" --data "$work/store-prior-paper" -o "$work/live" \
    --device cpu --resume --config "$configs/prior-ict-default.yaml"

# Weights, configs and topology (no optimizer state), the face area's template, the whole head
# with its rig and license (from the data's topology/) and a spoken clip; the twin beside it,
# its decoder (the default's, byte for byte) named by a shared.json instead of copied.
"$python" - "$work" "$here/pipelines/data/resources/default_model" <<'PY'
import sys
from pathlib import Path

from meshtalk.pipelines.data.resources.default_model import bundle, bundle_live

work, destination = Path(sys.argv[1]), Path(sys.argv[2])
out = bundle(work / "run", work / "data" / "topology" / "template.ply", destination)
print(f"bundled into {out}, the low-latency twin into {bundle_live(work / 'live', destination)}")
PY
