#!/usr/bin/env bash
# The bundled default model and its low-latency twin, from nothing: synthetic speech of the
# ICT-FaceKit head (USC ICT, MIT license), prep (twice: the release's 1 s audio window and the
# paper's -500/+100 ms one), both training stages of each with the `default` preset and the
# Gumbel noise warmed up (examples/configs/*-ict-*.yaml), then copied into the package
# (pipelines/data/resources/default_model/: the model, the whole head with its rig and license,
# and live/ the twin that `meshtalk stream` uses). Reproducible: same seed, same data, same runs.
#
# Measured on 2 cores: synth 100 s, each prep 15 s, each stage 1 about 30 min on one core (the two
# run side by side), each stage 2 about a minute: about 35 minutes in all.
#
#   examples/recipes/ict-default-model.sh [WORK_DIR] [ICT_FACEKIT_DIR]
#       # defaults: out/ict-default-model, ../shared/reference/ict_facekit
#
# ICT_FACEKIT_DIR holds the model as repacked in ../shared/reference/ict_facekit (its README:
# generic_neutral_mesh.obj, ICTFaceModelMaterial.mtl, vertex_indices.json, shapes.npz, LICENSE).
# Each training runs on one thread (OMP_NUM_THREADS=1): on 2 cores two threads of one run were
# slower than one (barrier waits), and one run per core trains both models at once.
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
"$meshtalk" prep "$work/data" -o "$work/store-live" --window paper

train() {  # STORE RUN LATENT_CONFIG
    "$meshtalk" train latent --data "$1" -o "$2" --device cpu --resume --config "$3"
    "$meshtalk" train prior --latent "$2" --data "$1" -o "$2" --device cpu --resume \
        --config "$configs/prior-ict-default.yaml"
}
train "$work/store" "$work/run" "$configs/latent-ict-default.yaml" &
default=$!
train "$work/store-live" "$work/run-live" "$configs/latent-ict-live.yaml" &
live=$!
wait "$default"
wait "$live"

# Weights, configs and topology (no optimizer state), the face area's template, the whole head
# with its rig and license (from the data's topology/), a spoken clip, and the twin in live/.
"$python" - "$work" "$here/pipelines/data/resources/default_model" <<'PY'
import sys
from pathlib import Path

from meshtalk.pipelines.data.resources.default_model import bundle, bundle_live

work, destination = Path(sys.argv[1]), Path(sys.argv[2])
out = bundle(work / "run", work / "data" / "topology" / "template.ply", destination)
bundle_live(work / "run-live", destination)
print(f"bundled into {out}")
PY
