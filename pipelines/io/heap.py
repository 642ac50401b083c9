"""Keeping a long run's heap from growing: large buffers come from mmap and go back when freed.

glibc raises its mmap threshold each time a large block is freed, after which blocks of that size
come from the heap and its per-thread arenas, where the freed ones are rarely returned: animate's
stages, which allocate and free frames of vertices in three threads for hours, then grow by
gigabytes (`benchmarks/animate.py`: 120 minutes of speech peaked at 2.2 GB against 1.0 GB for 3).
A fixed threshold of 64 KiB (what `mallopt(M_MMAP_THRESHOLD)` sets, as MALLOC_MMAP_THRESHOLD_
does from the environment) keeps every such buffer in its own mapping, unmapped on free.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

M_MMAP_THRESHOLD = -3
"""glibc's mallopt parameter number for the mmap threshold (malloc.h)."""
THRESHOLD = 1 << 16
"""Blocks at least this large are mapped on their own (64 KiB: a chunk of frames is far larger)."""


def bound_heap() -> bool:
    """Set glibc's mmap threshold once (nothing elsewhere); True if it was set."""
    if not sys.platform.startswith("linux"):
        return False
    name = ctypes.util.find_library("c") or "libc.so.6"
    try:
        libc = ctypes.CDLL(name)
        return bool(libc.mallopt(M_MMAP_THRESHOLD, THRESHOLD))
    except (OSError, AttributeError):  # another C library (musl): nothing to set
        return False
