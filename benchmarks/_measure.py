"""Measuring helpers shared by the benchmark scripts."""

from __future__ import annotations

import contextlib
import subprocess
import threading
import time

import psutil


def peak_tree_rss(process: subprocess.Popen) -> tuple[int, float]:
    """Wait for a process; return its tree's peak summed RSS (bytes) and wall time (s)."""
    peak = 0
    start = time.perf_counter()
    parent = psutil.Process(process.pid)
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            try:
                total = parent.memory_info().rss
                for child in parent.children(recursive=True):
                    with contextlib.suppress(psutil.NoSuchProcess):
                        total += child.memory_info().rss
                peak = max(peak, total)
            except psutil.NoSuchProcess:
                return
            time.sleep(0.02)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    process.wait()
    elapsed = time.perf_counter() - start
    done.set()
    thread.join()
    if process.returncode:
        raise SystemExit(f"{process.args[3]} failed with exit code {process.returncode}")
    return peak, elapsed
