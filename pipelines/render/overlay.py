"""What is drawn over rendered frames: panel titles and the distance heat map's colour bar.

Everything is drawn once into small patches (PIL for the text) and pasted onto each frame, so a
frame costs a few small array copies, not a drawing pass.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from meshtalk.pipelines.render.renderer import BACKGROUND

COLOUR_MAP = "YlOrRd"
"""Matplotlib colour map of the distance heat map: pale yellow where close, dark red where far (a
light low end keeps the shading of the face readable where the meshes agree)."""
TEXT_COLOUR = (40, 40, 40)
COLOUR_BAR_WIDTH = 64
"""Pixels at the right of a comparison kept for the colour bar and its labels."""


def _font(size: int):
    from PIL import ImageFont

    return ImageFont.load_default(size=size)


def colour_lookup(levels: int = 256) -> np.ndarray:
    """(levels, 3) float32 RGB of the heat map's colour map, for a per-vertex table look-up."""
    import matplotlib

    return matplotlib.colormaps[COLOUR_MAP](np.linspace(0, 1, levels))[:, :3].astype(np.float32)


def distance_colours(distances: np.ndarray, maximum: float, lookup: np.ndarray) -> np.ndarray:
    """(V,) distances -> (V, 3) float32 colours; 0 is the map's first colour, `maximum` its last."""
    scale = (len(lookup) - 1) / max(maximum, 1e-12)
    index = np.clip(distances * scale, 0, len(lookup) - 1).astype(np.intp)
    return lookup[index]


def nice_maximum(value: float) -> float:
    """The smallest of 1, 2, 2.5, 5 times a power of ten that is at least `value` (> 0)."""
    if not np.isfinite(value) or value <= 0:
        return 1.0
    power = 10.0 ** np.floor(np.log10(value))
    for step in (1.0, 2.0, 2.5, 5.0, 10.0):
        if step * power >= value * (1 - 1e-9):
            return float(step * power)
    return float(10 * power)


@dataclass
class Overlay:
    """Patches pasted onto every frame: (row, column, RGB uint8 patch, alpha float32 patch)."""

    patches: list[tuple[int, int, np.ndarray, np.ndarray]] = field(default_factory=list)

    def add_text(self, text: str, x: int, y: int, size: int = 13, width: int | None = None) -> None:
        """Text with its top-left corner at (x, y), cut to `width` pixels if given."""
        from PIL import Image, ImageDraw

        font = _font(size)
        left, top, right, bottom = font.getbbox(text)
        box_width = right if width is None else min(right, width)
        if box_width <= 0 or bottom <= 0:
            return
        mask = Image.new("L", (box_width, bottom), 0)
        ImageDraw.Draw(mask).text((0, 0), text, fill=255, font=font)
        alpha = np.asarray(mask, dtype=np.float32)[..., None] / 255.0
        rgb = np.broadcast_to(np.asarray(TEXT_COLOUR, dtype=np.uint8), (*alpha.shape[:2], 3))
        self.patches.append((y, x, np.ascontiguousarray(rgb), alpha))

    def add_image(self, image: np.ndarray, x: int, y: int) -> None:
        """An opaque (h, w, 3) uint8 image with its top-left corner at (x, y)."""
        alpha = np.ones((*image.shape[:2], 1), dtype=np.float32)
        self.patches.append((y, x, image, alpha))

    def apply(self, frame: np.ndarray) -> np.ndarray:
        """Paste every patch onto `frame` (in place, clipped to it) and return it."""
        height, width = frame.shape[:2]
        for y, x, rgb, alpha in self.patches:
            h, w = min(rgb.shape[0], height - y), min(rgb.shape[1], width - x)
            if h <= 0 or w <= 0:
                continue
            region = frame[y : y + h, x : x + w]
            a = alpha[:h, :w]
            if a.min() >= 1.0:
                region[:] = rgb[:h, :w]
            else:
                region[:] = (rgb[:h, :w] * a + region * (1.0 - a) + 0.5).astype(np.uint8)
        return frame


def colour_bar(height: int, maximum: float, unit: str = "mm") -> np.ndarray:
    """A vertical colour bar with labels, (height, COLOUR_BAR_WIDTH, 3) uint8 on the background.

    The bar spans the middle 60% of `height`: `maximum` at its top, 0 at its bottom.
    """
    from PIL import Image, ImageDraw

    background = tuple(int(round(c * 255)) for c in BACKGROUND)
    image = Image.new("RGB", (COLOUR_BAR_WIDTH, height), background)
    draw = ImageDraw.Draw(image)
    top, bottom = int(height * 0.2), int(height * 0.8)
    bar_left, bar_right = 6, 18
    lookup = colour_lookup(max(bottom - top, 2))
    strip = (lookup[::-1] * 255 + 0.5).astype(np.uint8)
    pixels = np.asarray(image).copy()
    pixels[top : top + len(strip), bar_left:bar_right] = strip[:, None, :]
    image = Image.fromarray(pixels)
    draw = ImageDraw.Draw(image)
    font = _font(11)
    for fraction in (0.0, 0.5, 1.0):
        value = maximum * fraction
        y = bottom - fraction * (bottom - top)
        label = f"{value:.3g}"  # 3 digits fit beside the bar
        draw.line([(bar_right, y), (bar_right + 3, y)], fill=TEXT_COLOUR)
        draw.text((bar_right + 5, y - 6), label, fill=TEXT_COLOUR, font=font)
    draw.text((bar_left, max(top - 18, 0)), unit, fill=TEXT_COLOUR, font=font)
    return np.asarray(image, dtype=np.uint8).copy()
