"""Helpers of the browser tests (`test_view.py`, `test_stream.py`): Debian's chromium driven by
playwright (never `playwright install`), and the live commands run as subprocesses."""

from __future__ import annotations

import os
import re
import select
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

CHROMIUM = Path(os.environ.get("MESHTALK_CHROMIUM", "/usr/lib/chromium/chromium"))
BASE_ARGS = [
    "--no-sandbox",
    "--enable-unsafe-swiftshader",
    "--use-angle=swiftshader",
    # Composite the page in software, as Chrome does on a machine without a GPU (WebGL still on
    # SwiftShader): compositing through SwiftShader took about one of the 2 cores here (the GPU
    # process at 90-107% against 62-74%) and delayed drawn frames (received to drawn p95 50-98 ms
    # against 18-32 ms in the microphone test).
    "--disable-gpu-compositing",
    "--autoplay-policy=no-user-gesture-required",
]


def need_chromium() -> None:
    """Skip (with the reason) where the browser or playwright is missing."""
    if not CHROMIUM.is_file():
        pytest.skip(f"chromium is missing ({CHROMIUM}; apt-get install -y chromium)")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        pytest.skip("playwright is missing (pip install playwright; no browser download needed)")


@contextmanager
def browser(fake_audio: Path | None = None):
    """A headless chromium; with `fake_audio` its microphone plays that WAV in real time."""
    need_chromium()
    from playwright.sync_api import sync_playwright

    args = list(BASE_ARGS)
    if fake_audio is not None:
        args += [
            "--use-fake-ui-for-media-stream",
            "--use-fake-device-for-media-stream",
            f"--use-file-for-fake-audio-capture={fake_audio}%noloop",
        ]
    with sync_playwright() as playwright:
        instance = playwright.chromium.launch(executable_path=str(CHROMIUM), args=args)
        try:
            yield instance
        finally:
            instance.close()


def open_page(instance, url: str, size=(640, 480)):
    """A page at `url` collecting console errors in `page.console_errors`."""
    page = instance.new_page(viewport={"width": size[0], "height": size[1]})
    page.console_errors = []
    page.on("console", lambda m: m.type == "error" and page.console_errors.append(m.text))
    page.on("pageerror", lambda e: page.console_errors.append(str(e)))
    page.goto(url)
    return page


@contextmanager
def served(*args: str, timeout: float = 120.0, stdin=None):
    """Run `meshtalk ARGS --no-open` until it prints its address; yield (process, url); stop it
    with SIGTERM at the end (its stderr is in process.stderr_text)."""
    command = [sys.executable, "-m", "meshtalk.cli.main", *args, "--no-open"]
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=stdin, text=True
    )
    url = None
    deadline = time.monotonic() + timeout
    while url is None and time.monotonic() < deadline:
        ready, _, _ = select.select([process.stdout], [], [], 0.5)
        if ready:
            line = process.stdout.readline()
            match = re.search(r"(http://\S+)", line)
            if match:
                url = match.group(1)
        if process.poll() is not None:
            break
    if url is None:
        process.kill()
        raise AssertionError(f"meshtalk {' '.join(args)} did not serve: {process.stderr.read()}")
    try:
        yield process, url
    finally:
        if process.stdin is not None and not process.stdin.closed:
            process.stdin.close()
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        process.stderr_text = process.stderr.read()
        process.stdout.close()
        process.stderr.close()
