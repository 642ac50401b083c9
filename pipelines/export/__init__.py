"""Writers of animations as other tools open them: streamed `.npz`, PC2 point caches, mesh frames.

Each writer takes frames as they come, so an animation of any length is written in flat memory.
"""

from meshtalk.pipelines.export.frames import FRAME_FORMATS, FrameMeshWriter
from meshtalk.pipelines.export.npz import ArrayStream, NpzWriter, iter_rows, member_shape
from meshtalk.pipelines.export.pc2 import PC2Header, PC2Writer, read_pc2, read_pc2_header

__all__ = [
    "FRAME_FORMATS",
    "ArrayStream",
    "FrameMeshWriter",
    "NpzWriter",
    "PC2Header",
    "PC2Writer",
    "iter_rows",
    "member_shape",
    "read_pc2",
    "read_pc2_header",
]
