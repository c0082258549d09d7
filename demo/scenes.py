"""Synthetic scenes for the demo task: a few objects, each with a colour, a fill pattern and a size, on a varied
background. Seeded, numpy and Pillow only. Objects are small beside the 24x24 patch grid (2-4 patches across),
so which visual tokens survive pruning decides whether the one asked about is still seen.

What a question asks of an object (colour, pattern) can be read on any one of its patches. Silhouettes could not:
a ViT of this size, trained from scratch on a CPU for minutes, learnt patch colours in 100 steps but was no better
than chance at circle / square / triangle / star / cross after 600, since the inside of a 3-patch circle looks like
the inside of a square. So objects are discs or tiles at random, and patterns carry the second attribute."""
from __future__ import annotations

import colorsys
import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

SIZE = 336  # LLaVA-1.5's input: 24x24 patches of 14 px, so images need no resize
PATCH = 14
COLOURS = {"red": (215, 35, 35), "green": (35, 165, 55), "blue": (40, 75, 225), "yellow": (240, 215, 35),
           "purple": (145, 55, 195), "orange": (245, 135, 25), "white": (248, 248, 248), "black": (20, 20, 20)}
PATTERNS = ("plain", "striped", "dotted", "checked")
OUTLINES = ("disc", "tile")  # drawn at random, never asked
SIZES = {"small": (26, 32), "large": (44, 54)}  # side of the bounding square, px


@dataclass(frozen=True)
class Thing:
    colour: str
    pattern: str
    size: str
    box: tuple[int, int, int, int]  # x0, y0, x1, y1 (exclusive), px
    outline: str = "tile"

    @property
    def centre(self) -> tuple[float, float]:
        return (self.box[0] + self.box[2]) / 2, (self.box[1] + self.box[3]) / 2

    @property
    def name(self) -> str:
        return f"{self.pattern} {self.colour}"


@dataclass(frozen=True)
class Scene:
    things: tuple[Thing, ...]
    background: dict  # what render() needs to redraw it: base colour, gradient, texture, noise seed


def sample_scene(rng: np.random.Generator, n_min: int = 3, n_max: int = 6) -> Scene:
    """n_min..n_max objects that do not touch (a gap of 6 px), anywhere on the image."""
    n = int(rng.integers(n_min, n_max + 1))
    things: list[Thing] = []
    while len(things) < n:
        for _ in range(200):
            size = "small" if rng.random() < 0.5 else "large"
            side = int(rng.integers(SIZES[size][0], SIZES[size][1] + 1))
            x0, y0 = (int(v) for v in rng.integers(4, SIZE - side - 4, size=2))
            box = (x0, y0, x0 + side, y0 + side)
            if all(not _near(box, t.box, 6) for t in things):
                things.append(Thing(str(rng.choice(list(COLOURS))), str(rng.choice(PATTERNS)), size, box,
                                    str(rng.choice(OUTLINES))))
                break
        else:
            break  # the image is full: fewer objects
    return Scene(tuple(things), _sample_background(rng))


def _near(a, b, gap: int) -> bool:
    return a[0] < b[2] + gap and b[0] < a[2] + gap and a[1] < b[3] + gap and b[1] < a[3] + gap


def _sample_background(rng: np.random.Generator) -> dict:
    """A muted colour (low saturation, mid value, so black, white and every object colour stand out), a linear
    gradient, one of three textures and pixel noise."""
    h, s, v = rng.random(), rng.uniform(0.05, 0.3), rng.uniform(0.38, 0.72)
    return {"base": [255 * c for c in colorsys.hsv_to_rgb(h, s, v)], "angle": float(rng.uniform(0, 2 * math.pi)),
            "gradient": float(rng.uniform(0, 30)), "texture": str(rng.choice(["plain", "stripes", "blobs"])),
            "texture_amp": float(rng.uniform(4, 14)), "period": float(rng.uniform(10, 40)),
            "noise_seed": int(rng.integers(2**31))}


def render(scene: Scene) -> Image.Image:
    image = Image.fromarray(_background(scene.background))
    for t in scene.things:
        side = t.box[2] - t.box[0]
        image.paste(Image.fromarray(pattern_fill(t.pattern, COLOURS[t.colour], side)), t.box[:2],
                    outline_mask(t.outline, side))
    return image


def patch_labels(scene: Scene) -> np.ndarray:
    """[24, 24] int: 1 + the index of the object that covers a patch most (at least a fifth of it), else 0."""
    cover = np.zeros((len(scene.things) + 1, SIZE // PATCH, SIZE // PATCH))
    for i, t in enumerate(scene.things):
        mask = Image.new("L", (SIZE, SIZE), 0)
        mask.paste(outline_mask(t.outline, t.box[2] - t.box[0]), t.box[:2])
        m = np.asarray(mask, dtype=np.float32) / 255
        cover[i + 1] = m.reshape(SIZE // PATCH, PATCH, SIZE // PATCH, PATCH).mean(axis=(1, 3))
    cover[0] = 0.2
    return cover.argmax(0)


def outline_mask(outline: str, side: int) -> Image.Image:
    mask = Image.new("L", (side, side), 0)
    draw = ImageDraw.Draw(mask)
    if outline == "disc":
        draw.ellipse([0, 0, side - 1, side - 1], fill=255)
    elif outline == "tile":
        draw.rounded_rectangle([1, 1, side - 2, side - 2], radius=side // 6, fill=255)
    else:
        raise ValueError(f"unknown outline {outline!r}")
    return mask


def pattern_fill(pattern: str, colour, side: int) -> np.ndarray:
    """[side, side, 3] uint8: the colour, with the pattern in a shade of it (darker for light colours, lighter for
    black) at periods of 6-10 px, so that every 14 px patch of the object shows it."""
    base = np.asarray(colour, np.float32)
    shade = base * 0.45 if base.mean() > 60 else base + (255 - base) * 0.45
    y, x = np.mgrid[0:side, 0:side]
    if pattern == "plain":
        mark = np.zeros((side, side), bool)
    elif pattern == "striped":
        mark = (y // 3) % 2 == 1
    elif pattern == "dotted":
        mark = ((x % 7) - 3) ** 2 + ((y % 7) - 3) ** 2 <= 1.6 ** 2
    elif pattern == "checked":
        mark = ((x // 5) + (y // 5)) % 2 == 1
    else:
        raise ValueError(f"unknown pattern {pattern!r}")
    return np.where(mark[..., None], shade, base).astype(np.uint8)


def _background(bg: dict) -> np.ndarray:
    y, x = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32) / SIZE - 0.5
    ramp = (x * math.cos(bg["angle"]) + y * math.sin(bg["angle"])) * 2 * bg["gradient"]
    rng = np.random.default_rng(bg["noise_seed"])
    if bg["texture"] == "stripes":
        texture = np.sin((x * math.sin(bg["angle"]) - y * math.cos(bg["angle"])) * SIZE * 2 * math.pi / bg["period"])
    elif bg["texture"] == "blobs":
        coarse = rng.standard_normal((8, 8)).astype(np.float32)
        texture = np.asarray(Image.fromarray(coarse).resize((SIZE, SIZE), Image.BICUBIC)) / 1.5
    else:
        texture = np.zeros((SIZE, SIZE), np.float32)
    light = ramp + bg["texture_amp"] * texture
    pixels = np.asarray(bg["base"], np.float32)[None, None] + light[..., None]
    pixels += rng.normal(0, 3.0, pixels.shape).astype(np.float32)
    return np.clip(pixels, 0, 255).astype(np.uint8)
