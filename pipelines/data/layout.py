"""The Multiface dataset layout: the names and rates that `synth` writes and `prep` reads.

ROOT/<IDENTITY>/frame_list.txt                     'SEGMENT FRAMEID' per captured frame
ROOT/<IDENTITY>/tracked_mesh/<SEGMENT>/<ID>.bin    float32 (V, 3) mesh, mm
ROOT/<IDENTITY>/tracked_mesh/<SEGMENT>/<ID>_transform.txt   3x4 head pose
ROOT/<IDENTITY>/audio/<SEGMENT>.wav
ROOT/<IDENTITY>/vert_mean.bin                      float32 (V, 3): gives V
ROOT/topology/                                     optional: the dataset's own topology
"""

from __future__ import annotations

FPS = 30
"""Capture rate of the tracked meshes (frames per second)."""
NEUTRAL_SEGMENT = "E001_Neutral_Eyes_Open"
"""Segment whose mean is an identity's neutral template."""
SPEECH_PREFIX = "SEN_"
"""Speech segments are the ones whose names start with this."""
TOPOLOGY_DIR = "topology"
"""Folder of a dataset's own topology (as `synth` writes it), beside the identities."""
TOPOLOGY_TEMPLATE = "template.ply"
"""Inside TOPOLOGY_DIR: the template mesh."""
TOPOLOGY_MASKS = "masks"
"""Inside TOPOLOGY_DIR: the region masks (the authors' file names)."""
TOPOLOGY_LANDMARKS = "landmarks.yaml"
"""Inside TOPOLOGY_DIR: the landmark vertices the masks are built from."""
STORE_FACES_FILE = "topology/faces.npy"
"""In a prepared store, optional: (F, 3) triangles of the topology (the `topology` folder is always
made, so that replacing a store with triangles by one without leaves none behind)."""
