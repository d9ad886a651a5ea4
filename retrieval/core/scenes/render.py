"""Draw a :class:`Scene` with Pillow: a muted textured background, then supersampled shapes on top.

Backgrounds are low-saturation mid-tones (gradient + blotches, noise or stripes), so the eight
saturated/black/white object colours never blend in, yet no two images share background pixels.
"""
from __future__ import annotations

import colorsys
import math

import numpy as np
from PIL import Image, ImageDraw

from retrieval.core.scenes.scene import Scene, SceneObject

RGB = {
    "red": (215, 35, 35),
    "green": (35, 165, 55),
    "blue": (35, 75, 215),
    "yellow": (240, 215, 35),
    "purple": (135, 50, 185),
    "orange": (245, 135, 20),
    "white": (245, 245, 245),
    "black": (20, 20, 20),
}
SUPERSAMPLE = 4  # draw shapes at 4x and box-filter down: clean anti-aliased edges at 64 px
COLOUR_JITTER = 12  # +- per channel: a model must learn "red", not one RGB triple


def render(scene: Scene, size: int = 128, supersample: int = SUPERSAMPLE) -> Image.Image:
    """The RGB image of ``scene``, ``size`` x ``size`` pixels; same scene and size give identical pixels."""
    rng = np.random.default_rng(scene.texture_seed)
    background = _background(rng, size)  # [size, size, 3] float32 in 0..255
    big = size * supersample
    paint = Image.new("RGB", (big, big))  # colours premultiplied by coverage (black = uncovered)
    cover = Image.new("L", (big, big))
    draw_paint, draw_cover = ImageDraw.Draw(paint), ImageDraw.Draw(cover)
    for obj in scene.objects:
        jitter = rng.integers(-COLOUR_JITTER, COLOUR_JITTER + 1, size=3)
        colour = tuple(int(c) for c in np.clip(np.array(RGB[obj.colour]) + jitter, 0, 255))
        _draw_shape(draw_paint, obj, big, colour)
        _draw_shape(draw_cover, obj, big, 255)
    paint_small = np.asarray(paint.reduce(supersample), dtype=np.float32)  # [size, size, 3]
    alpha = np.asarray(cover.reduce(supersample), dtype=np.float32)[..., None] / 255.0  # [size, size, 1]
    out = background * (1.0 - alpha) + paint_small  # objects never overlap, so one "over" per pixel is exact
    return Image.fromarray(np.clip(out + 0.5, 0, 255).astype(np.uint8))


def _draw_shape(draw: ImageDraw.ImageDraw, obj: SceneObject, canvas: int, fill: int | tuple[int, ...]) -> None:
    cx, cy = obj.centre[0] * canvas, obj.centre[1] * canvas
    r = obj.radius * canvas
    if obj.shape == "circle":
        k = 0.88 * r
        draw.ellipse((cx - k, cy - k, cx + k, cy + k), fill=fill)
        return
    angle = math.radians(obj.rotation)
    cos, sin = math.cos(angle), math.sin(angle)
    points = [(cx + r * (x * cos + y * sin), cy + r * (-x * sin + y * cos)) for x, y in _OUTLINES[obj.shape]]
    draw.polygon(points, fill=fill)


def _star(points: int = 5, inner: float = 0.46) -> list[tuple[float, float]]:
    return [((1.0 if k % 2 == 0 else inner) * math.sin(math.pi * k / points),
             -(1.0 if k % 2 == 0 else inner) * math.cos(math.pi * k / points)) for k in range(2 * points)]


def _cross(arm: float = 0.95, half: float = 0.3) -> list[tuple[float, float]]:
    quarter = [(half, -arm), (half, -half), (arm, -half)]  # one quarter turn of the plus sign's outline
    return [(x * c - y * s, x * s + y * c) for c, s in ((1, 0), (0, 1), (-1, 0), (0, -1)) for x, y in quarter]


# Outlines in the unit circle (x right, y down), sized so the shapes look about equally heavy.
_OUTLINES = {
    "square": [(-0.7, -0.7), (0.7, -0.7), (0.7, 0.7), (-0.7, 0.7)],
    "triangle": [(0.0, -1.0), (0.866, 0.5), (-0.866, 0.5)],
    "diamond": [(0.0, -1.0), (0.68, 0.0), (0.0, 1.0), (-0.68, 0.0)],
    "star": _star(),
    "cross": _cross(),
}


def _muted(rng: np.random.Generator) -> np.ndarray:
    """A low-saturation mid-tone: far from every object colour, including white and black."""
    hue, sat, val = rng.random(), rng.uniform(0.05, 0.3), rng.uniform(0.38, 0.68)
    return np.array(colorsys.hsv_to_rgb(hue, sat, val), dtype=np.float32) * 255.0


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """[size, size, 3] float32: soft gradient between two muted tones, plus blotches, noise or stripes.

    Everything is smooth on purpose: per-pixel grain would triple the PNG size for no extra variety.
    """
    axis = np.linspace(0.0, 1.0, size, dtype=np.float32)
    theta = rng.uniform(0, 2 * math.pi)
    ramp = math.cos(theta) * axis[None, :] + math.sin(theta) * axis[:, None]  # [size, size]
    ramp = (ramp - ramp.min()) / max(float(ramp.max() - ramp.min()), 1e-6)
    start, end = _muted(rng), _muted(rng)
    image = start + (end - start) * ramp[..., None]  # [size, size, 3]
    texture = rng.integers(4)
    if texture == 0:  # blotches: a tiny grid of muted tones, smoothly upsampled
        cells = int(rng.integers(3, 8))
        grid = np.stack([_muted(rng) for _ in range(cells * cells)]).reshape(cells, cells, 3)
        image = 0.55 * image + 0.45 * _upsample(grid, size)
    elif texture == 1:  # noise: finer grey value noise that modulates brightness by up to +-15 %
        cells = int(rng.integers(10, 20))
        grid = rng.uniform(0.85, 1.15, size=(cells, cells, 1)).repeat(3, axis=2) * 255.0 / 1.15
        image = image * _upsample(grid, size) * (1.15 / 255.0)
    elif texture == 2:  # stripes: a soft sine wave in brightness at a random angle and period
        phi = rng.uniform(0, math.pi)
        period = size / rng.uniform(3, 9)
        coord = math.cos(phi) * np.arange(size)[None, :] + math.sin(phi) * np.arange(size)[:, None]
        image = image * (1.0 + 0.12 * np.sin(2 * math.pi * coord / period))[..., None]
    return image  # texture 3: the plain gradient


def _upsample(grid: np.ndarray, size: int) -> np.ndarray:
    """[cells, cells, 3] in 0..255 -> [size, size, 3] float32, bicubic (smooth, no blocks)."""
    tile = Image.fromarray(np.clip(grid, 0, 255).astype(np.uint8))
    return np.asarray(tile.resize((size, size), Image.Resampling.BICUBIC), dtype=np.float32)
