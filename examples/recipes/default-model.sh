#!/usr/bin/env bash
# The earlier default model (bundled until the ICT-FaceKit one, examples/recipes/ict-default-model.sh,
# replaced it), from nothing: synthetic speech of the built-in procedural head, prep, both
# training stages with the `default` preset, then copied into the package
# (pipelines/data/resources/default_model/, replacing the bundled one). Reproducible: same seed, same data, same run.
#
#   examples/recipes/default-model.sh [WORK_DIR]     # default WORK_DIR: out/default-model
#
# About half an hour on 2 CPU cores (measured: 30 min with the test suite running beside it).
set -euo pipefail

work="${1:-out/default-model}"
meshtalk="${MESHTALK:-meshtalk}"
python="${PYTHON:-python}"
here="$(cd "$(dirname "$0")/../.." && pwd)"

# 10 identities (each its own head shape and eSpeak NG voice) x 30 English sentences.
"$meshtalk" synth "$work/data" --identities 10 --sentences 30 --seed 19 --voice espeak
"$meshtalk" prep "$work/data" -o "$work/store"
"$meshtalk" train latent --data "$work/store" -o "$work/run" --preset default --device cpu --resume
"$meshtalk" train prior --latent "$work/run" --data "$work/store" -o "$work/run" \
    --preset default --device cpu --resume

# Weights, configs and topology (no optimizer state), the head's template and a spoken clip.
"$python" - "$work/run" "$work/data/topology/template.ply" \
    "$here/pipelines/data/resources/default_model" <<'PY'
import sys
from pathlib import Path

from meshtalk.pipelines.data.resources.default_model import bundle

out = bundle(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]))
print(f"bundled into {out}")
PY
