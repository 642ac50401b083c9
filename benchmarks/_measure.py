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


def add_json_option(parser) -> None:
    """`--json FILE` (the figures, with self-explaining keys) and `--force` to replace one."""
    from pathlib import Path

    parser.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    parser.add_argument("--force", action="store_true", help="replace an existing --json file")


def check_json(parser, args) -> None:
    """Refuse an existing --json file without --force, and with it one that is not a JSON object
    (not figures a benchmark wrote: --force replaces only those), before any work."""
    import json

    if args.json is not None and args.json.exists() and not args.force:
        parser.error(f"{args.json} exists; give --force to replace it")
    if args.json is not None and args.json.exists():
        try:
            figures = json.loads(args.json.read_bytes())
        except (OSError, ValueError):
            figures = None
        if not isinstance(figures, dict):
            parser.error(f"{args.json}: not a benchmark's JSON figures; not replaced")
    if args.json is not None and not args.json.parent.is_dir():
        parser.error(f"{args.json.parent}: no such folder for --json")


def write_json(path, text: str) -> None:
    """Write the figures' JSON text atomically (a temporary file renamed)."""
    from meshtalk.pipelines.io.atomic import write_text_atomic

    write_text_atomic(path, text if text.endswith("\n") else text + "\n")


def run_main(main) -> None:
    """Run a benchmark's `main`: a bad input (a `MeshtalkError`: the file and the problem) is one
    line and exit status 1, no traceback."""
    import sys

    from meshtalk.pipelines.errors import MeshtalkError

    try:
        main()
    except MeshtalkError as error:
        sys.exit(f"error: {error}")
