"""Keeping a long run's heap from growing: large buffers come from mmap and go back when freed.

glibc raises its mmap threshold each time a large block is freed, after which blocks of that size
come from the heap and its per-thread arenas, where the freed ones are rarely returned: animate's
stages, which allocate and free frames of vertices in three threads for hours, then grow by
gigabytes (`benchmarks/animate.py`: 120 minutes of speech peaked at 2.2 GB against 1.0 GB for 3).
A fixed threshold of 64 KiB (what `mallopt(M_MMAP_THRESHOLD)` sets, as MALLOC_MMAP_THRESHOLD_
does from the environment) keeps every such buffer in its own mapping, unmapped on free.

Weights loaded from safetensors are the file's pages mapped in place: those read once (the float
prior the int8 sampler is made from, the decoder's template encoder) stay resident for the whole
run unless handed back; `release_pages` asks the kernel to reclaim them (read again from the file
if anything touches them later).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import mmap
import sys
from collections.abc import Iterable

M_MMAP_THRESHOLD = -3
"""glibc's mallopt parameter number for the mmap threshold (malloc.h)."""
THRESHOLD = 1 << 16
"""Blocks at least this large are mapped on their own (64 KiB: a chunk of frames is far larger)."""
MADV_PAGEOUT = 21
"""madvise advice (Linux 5.4+): reclaim these pages now. Clean file pages are dropped (read again
on the next touch); anonymous or written pages go to swap or stay, so no data is ever lost, which
MADV_DONTNEED would not promise for a private mapping."""


@functools.cache
def _libc() -> ctypes.CDLL | None:
    """The C library, loaded once (None off Linux)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    except OSError:
        return None


def bound_heap() -> bool:
    """Set glibc's mmap threshold once (nothing elsewhere); True if it was set."""
    libc = _libc()
    if libc is None or not hasattr(libc, "mallopt"):  # another C library (musl): nothing to set
        return False
    return bool(libc.mallopt(M_MMAP_THRESHOLD, THRESHOLD))


def release_pages(tensors: Iterable) -> int:
    """Hand back the resident pages of CPU tensors that will not be read again for a while.

    Meant for weights mapped from a safetensors file (`load_component_state(assign=True)`): the
    kernel drops their clean pages and the process's resident memory falls by as much; a later
    read faults them in again from the file, so nothing changes but the memory. Returns the bytes
    advised (0 off Linux, on a kernel without MADV_PAGEOUT, or for tensors off the CPU).
    """
    libc = _libc()
    if libc is None or not hasattr(libc, "madvise"):
        return 0
    libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    page, advised, seen = mmap.PAGESIZE, 0, set()
    for tensor in tensors:
        if tensor.device.type != "cpu":
            continue
        storage = tensor.untyped_storage()
        pointer, size = storage.data_ptr(), storage.nbytes()
        if pointer in seen or size < page:
            continue
        seen.add(pointer)
        first, end = -(-pointer // page) * page, (pointer + size) // page * page  # whole pages
        if end > first:
            if libc.madvise(first, end - first, MADV_PAGEOUT) != 0:
                return advised  # EINVAL: a kernel before 5.4
            advised += end - first
    return advised
