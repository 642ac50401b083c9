"""`meshtalk prep`: Multiface (or Multiface-layout) data -> a memory-mapped training store.

Store layout (all arrays are `.npy`, memory-mapped when read):

    DATA/manifest.json                    sources, settings, versions, identities, segments, splits
    DATA/mean.npy, std.npy                (V, 3) per-vertex statistics over the training frames
    DATA/masks/<name>.npy                 (V,) region masks (see masks.MASK_NAMES)
    DATA/masks.png                        the masks drawn on the first identity's template
    DATA/identities/<ID>/template.npy     (V, 3) neutral face
    DATA/identities/<ID>/<SEGMENT>/vertices.npy  (T, V, 3) float32 observed frames, mm
    DATA/identities/<ID>/<SEGMENT>/mel.npy       (M, 80) float32 log-mel of the padded utterance
    DATA/identities/<ID>/<SEGMENT>/frames.npz    frame_ids, times_s, mel_index (T,), poses (T, 3, 4)
    DATA/.meshtalk-store, DATA/.meshtalk.lock    prep made this folder; one writer at a time

The store is built in `DATA/.partial/` and moved into place when complete, `manifest.json` last,
so a folder with a manifest holds a complete store. Each finished identity carries a marker with its
statistics; a rerun after an interruption keeps finished identities and redoes the others, so no
frame is counted twice, and statistics are merged in name order, so the rerun's store is byte for
byte the uninterrupted one. Prep writes and deletes only inside `DATA`, which it locks.

Laid out by step: `config` (settings and records), `discover` (identities, segments, frame lists),
`segments` (one segment's meshes, moments and log-mel), `output` (the output folder), `build` (the
run), `report` (the closing table).
"""

from meshtalk.pipelines.data.prep.build import run
from meshtalk.pipelines.data.prep.config import (
    MANIFEST,
    OWN_NAMES,
    STORE_FORMAT,
    PrepConfig,
    Problem,
)

__all__ = ["MANIFEST", "OWN_NAMES", "STORE_FORMAT", "PrepConfig", "Problem", "run"]
