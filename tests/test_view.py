"""`meshtalk view`: the server's data and rules, and the page in a real Chromium (live_browser)."""

from __future__ import annotations

import http.client
import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import pytest

from meshtalk.pipelines.live.protocol import MESH_HEADER
from tests.live_browser import browser, need_chromium, open_page, served

BACKGROUND = np.array([0x20, 0x24, 0x2A])  # the page's scene background (face.js)


@pytest.fixture(scope="module")
def animation(tmp_path_factory) -> Path:
    """Two sampled takes of the bundled example (different motion, one speech)."""
    out = tmp_path_factory.mktemp("view") / "out"
    command = [sys.executable, "-m", "meshtalk.cli.main", "animate", "--example", "-o", str(out),
               "--takes", "2", "--no-video"]  # fmt: skip
    subprocess.run(command, check=True, capture_output=True)
    return out


def get(url: str, path: str, headers: dict | None = None) -> tuple[int, bytes]:
    """A raw GET (http.client does not normalise `..`)."""
    where = urlparse(url)
    connection = http.client.HTTPConnection(where.hostname, where.port, timeout=30)
    connection.request("GET", path, headers=headers or {})
    response = connection.getresponse()
    return response.status, response.read()


def npz(path: Path) -> dict:
    with np.load(path, allow_pickle=False) as archive:
        return {key: archive[key] for key in archive.files}


def test_view_serves_the_takes_and_nothing_else(animation):
    with served("view", str(animation)) as (_, url):
        status, body = get(url, "/view.json")
        assert status == 200
        listing = json.loads(body)
        assert [t["name"] for t in listing["takes"]] == ["take_0", "take_1"]
        take = npz(animation / "take_1" / "animation.npz")
        entry = listing["takes"][1]
        count, frames, size = entry["target_count"], len(take["vertices"]), 0
        # The clip as the GLB export's morph targets and weights, within its recorded error
        # (0.1 mm at most), in a fraction of the raw frames' bytes.
        for key in ("targets", "weights"):
            status, body = get(url, entry[key])
            assert status == 200
            size += len(body)
            if key == "targets":
                targets = np.frombuffer(body, "<f4").reshape(count, -1)
            else:
                weights = np.frombuffer(body, "<f4").reshape(frames, count)
        assert 0 < entry["max_error"] <= 0.1 and size < 0.5 * take["vertices"].nbytes
        rebuilt = (weights.astype(np.float64) @ targets).reshape(take["vertices"].shape)
        error = np.linalg.norm(rebuilt + take["template"] - take["vertices"], axis=-1).max()
        assert error <= entry["max_error"] + 1e-4, (error, entry["max_error"])
        assert np.abs(weights).max() > 0 and (weights >= 0).all() and (weights <= 1).all()
        status, body = get(url, listing["takes"][1]["mesh"])
        magic, vertices, faces = MESH_HEADER.unpack_from(body)
        # The bundled head is made of parts: the page draws the faces the video draws (not the
        # clear shells over the eyes) and paints the parts as the video does.
        assert take["drawn_faces"].sum() < len(take["faces"])
        assert (magic, vertices, faces) == (
            b"MTMS",
            *take["template"].shape[:1],
            int(take["drawn_faces"].sum()),
        )
        status, body = get(url, listing["takes"][1]["colours"])
        colours = np.frombuffer(body, "<f4").reshape(take["template"].shape)
        np.testing.assert_array_equal(colours, take["part_colours"])
        assert len(np.unique(colours, axis=0)) >= 6  # skin, mouth, teeth, tongue, sclera, iris
        status, body = get(url, listing["takes"][0]["audio"])
        assert status == 200 and body[:4] == b"RIFF"
        import soundfile

        speech, rate = soundfile.read(io.BytesIO(body), dtype="float32")
        assert rate == int(take["audio_rate"]) and len(speech) == len(take["audio"])
        status, _ = get(url, "/static/three/three.module.js")
        assert status == 200
        escapes = ("/static/../../../etc/passwd", "/static/..%2F..%2Fview.py", "/../view.py",
                   "/static/../server.py", "/take/0/../../etc/passwd", "/etc/passwd")  # fmt: skip
        for path in escapes:
            assert get(url, path)[0] == 404, path
        status, _ = get(url, "/view.json", {"Host": "attacker.example:80"})
        assert status == 403  # DNS rebinding: a foreign Host is refused


def test_view_refuses_bad_folders_in_one_line(tmp_path):
    (tmp_path / "empty").mkdir()
    bad = tmp_path / "bad" / "animation.npz"
    bad.parent.mkdir()
    bad.write_bytes(b"PK\x03\x04 not a zip")
    cases = ((tmp_path / "empty", "holds no animation.npz"), (bad.parent, "unreadable"),
             (tmp_path / "none", "not found"))  # fmt: skip
    for folder, words in cases:
        result = subprocess.run(
            [sys.executable, "-m", "meshtalk.cli.main", "view", str(folder), "--no-open"],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert result.returncode == 1
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and words in lines[0], lines


def canvas_pixels(page) -> np.ndarray:
    from PIL import Image

    shot = page.locator("#face").screenshot()
    return np.asarray(Image.open(io.BytesIO(shot)).convert("RGB")).astype(np.int32)


def test_view_page_plays_the_animation_at_real_time(animation):
    need_chromium()
    take = npz(animation / "take_0" / "animation.npz")
    probe = [int(i) for i in np.argsort(-np.ptp(take["vertices"][:, :, 1], axis=0))[:8]]
    with served("view", str(animation)) as (_, url), browser() as instance:
        page = open_page(instance, url)
        page.wait_for_function("window.meshtalk.ready && window.meshtalk.draws > 2", timeout=90_000)
        max_error = page.evaluate("meshtalk.takes[0].max_error")  # the basis's, at most 0.1 mm
        assert 0 < max_error <= 0.1
        # The page's own script started the speech (page.evaluate would count as a gesture).
        page.wait_for_function("window.meshtalk.playing === true", timeout=30_000)
        clock = page.evaluate("""() => new Promise((done) => {
            const a = [meshtalk.clock(), performance.now() / 1000];
            setTimeout(() => done([a, [meshtalk.clock(), performance.now() / 1000]]), 2000);
        })""")
        audio_s, wall_s = clock[1][0] - clock[0][0], clock[1][1] - clock[0][1]
        assert abs(audio_s - wall_s) < 0.15, clock
        for _ in range(4):  # the frame drawn at audio time t is the animation's frame at t
            drawn = page.evaluate(f"({{last: meshtalk.last, at: meshtalk.probe({probe})}})")
            t, frame = drawn["last"]["t"], drawn["last"]["frame"]
            expected = min(len(take["vertices"]) - 1, int(t * float(take["fps"]) + 1e-6))
            assert frame == expected
            error = np.linalg.norm(np.array(drawn["at"]) - take["vertices"][frame, probe], axis=1)
            assert error.max() <= max_error + 1e-3, (error, max_error)
            time.sleep(0.4)
        page.evaluate("meshtalk.pause()")
        page.evaluate("meshtalk.seek(1.0)")
        page.wait_for_function("Math.abs(meshtalk.last.t - 1.0) < 0.01", timeout=10_000)
        pixels = canvas_pixels(page)
        face = np.abs(pixels - BACKGROUND).sum(axis=-1) > 30
        assert face.mean() > 0.05  # the face covers more than 5% of the canvas
        luminance = pixels[face].mean(axis=-1)
        assert luminance.std() > 8 and np.ptp(luminance) > 60  # lit and shaded, not flat
        # painted by part: the vertex colours are the npz's (sRGB -> linear)
        drawn_colours = np.array(page.evaluate(
            "Array.from(meshtalk.takes[0].face.geometry.attributes.color.array)"
        )).reshape(-1, 3)  # fmt: skip
        srgb = take["part_colours"]
        linear = np.where(srgb <= 0.04045, srgb / 12.92, ((srgb + 0.055) / 1.055) ** 2.4)
        np.testing.assert_allclose(drawn_colours, linear, atol=1e-5)
        shots = os.environ.get("MESHTALK_SCREENSHOTS")
        if shots:
            page.screenshot(path=str(Path(shots) / "view.png"))
        assert page.console_errors == [] and page.evaluate("meshtalk.errors") == []


def test_view_compare_shows_a_colour_bar_in_mm(animation):
    need_chromium()
    a = npz(animation / "take_0" / "animation.npz")
    b = npz(animation / "take_1" / "animation.npz")
    with served("view", str(animation / "take_0"), "--compare", str(animation / "take_1")) as (
        _,
        url,
    ):
        status, body = get(url, "/view.json")
        compare = json.loads(body)["compare"]
        distances = np.linalg.norm(a["vertices"] - b["vertices"], axis=-1)
        assert compare["max_mm"] == pytest.approx(np.percentile(distances, 99), rel=1e-4)
        with browser() as instance:
            page = open_page(instance, url)
            page.wait_for_function("window.meshtalk.ready && meshtalk.draws > 2", timeout=90_000)
            bar = page.locator("#colorbar")
            assert bar.is_visible()
            assert bar.inner_text().count("mm") == 2
            page.evaluate("meshtalk.pause(); meshtalk.seek(2.0)")
            page.wait_for_function("Math.abs(meshtalk.last.t - 2.0) < 0.01", timeout=10_000)
            pixels = canvas_pixels(page)
            face = np.abs(pixels - BACKGROUND).sum(axis=-1) > 30
            hue_spread = (pixels[face].max(axis=-1) - pixels[face].min(axis=-1)).std()
            assert hue_spread > 10  # a heat map, not the skin colour alone
            shots = os.environ.get("MESHTALK_SCREENSHOTS")
            if shots:
                page.screenshot(path=str(Path(shots) / "view_compare.png"))
            assert page.console_errors == [] and page.evaluate("meshtalk.errors") == []


def test_view_compare_pairs_take_by_take(animation):
    other = animation.parent / "other"
    if not other.exists():
        other.mkdir()
        for take in ("take_0", "take_1"):  # the takes in the other order: two real pairs
            twin = "take_1" if take == "take_0" else "take_0"
            (other / take).mkdir()
            (other / take / "animation.npz").write_bytes(
                (animation / twin / "animation.npz").read_bytes()
            )
    with served("view", str(animation), "--compare", str(other)) as (_, url):
        listing = json.loads(get(url, "/view.json")[1])
    names = [t["name"] for t in listing["takes"]]
    assert names == ["take_0", "compare: take_0", "take_1", "compare: take_1"]
    compare = listing["compare"]
    assert compare["pairs"] == [[0, 1], [2, 3]]
    a = npz(animation / "take_0" / "animation.npz")["vertices"]
    b = npz(animation / "take_1" / "animation.npz")["vertices"]
    distances = np.linalg.norm(a - b, axis=-1)  # both pairs: take 0 against take 1
    assert compare["mean_mm"] == pytest.approx([distances.mean()] * 2, rel=1e-4)
    assert compare["max_mm"] == pytest.approx(np.percentile(distances, 99), rel=1e-4)


def test_view_elsewhere_than_localhost_warns(animation):
    with served("view", str(animation), "--host", "0.0.0.0") as (process, url):
        assert get(url, "/view.json")[0] == 200
    assert "warning: listening on 0.0.0.0" in process.stderr_text
