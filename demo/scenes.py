"""Synthetic scenes for the demo task: a few flat shapes, each with a colour, a shape and a size, on a varied
background. Seeded, numpy and Pillow only. Objects are small beside the 24x24 patch grid (2-4 patches across),
so which visual tokens survive pruning decides whether the one asked about is still seen."""
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
SHAPES = ("circle", "square", "triangle", "star", "cross")
SIZES = {"small": (26, 32), "large": (44, 54)}  # side of the bounding square, px


@dataclass(frozen=True)
class Thing:
    colour: str
    shape: str
    size: str
    box: tuple[int, int, int, int]  # x0, y0, x1, y1 (exclusive), px

    @property
    def centre(self) -> tuple[float, float]:
        return (self.box[0] + self.box[2]) / 2, (self.box[1] + self.box[3]) / 2

    @property
    def name(self) -> str:
        return f"{self.colour} {self.shape}"


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
                things.append(Thing(str(rng.choice(list(COLOURS))), str(rng.choice(SHAPES)), size, box))
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
    draw = ImageDraw.Draw(image)
    for t in scene.things:
        draw_shape(draw, t.shape, t.box, COLOURS[t.colour])
    return image


def patch_labels(scene: Scene) -> np.ndarray:
    """[24, 24] int: 1 + the index of the object that covers a patch most (at least a fifth of it), else 0."""
    cover = np.zeros((len(scene.things) + 1, SIZE // PATCH, SIZE // PATCH))
    for i, t in enumerate(scene.things):
        mask = Image.new("L", (SIZE, SIZE), 0)
        draw_shape(ImageDraw.Draw(mask), t.shape, t.box, 255)
        m = np.asarray(mask, dtype=np.float32) / 255
        cover[i + 1] = m.reshape(SIZE // PATCH, PATCH, SIZE // PATCH, PATCH).mean(axis=(1, 3))
    cover[0] = 0.2
    return cover.argmax(0)


def draw_shape(draw: ImageDraw.ImageDraw, shape: str, box, fill) -> None:
    x0, y0, x1, y1 = box
    w, cx, cy = x1 - x0, (x0 + x1) / 2, (y0 + y1) / 2
    if shape == "circle":
        draw.ellipse([x0, y0, x1 - 1, y1 - 1], fill=fill)
    elif shape == "square":
        inset = w * 0.08
        draw.rectangle([x0 + inset, y0 + inset, x1 - 1 - inset, y1 - 1 - inset], fill=fill)
    elif shape == "triangle":
        draw.polygon([(cx, y0), (x1 - 1, y1 - 1), (x0, y1 - 1)], fill=fill)
    elif shape == "star":
        r_out, r_in = w / 2, w / 5
        draw.polygon([(cx + (r_out if k % 2 == 0 else r_in) * math.sin(k * math.pi / 5),
                       cy - (r_out if k % 2 == 0 else r_in) * math.cos(k * math.pi / 5)) for k in range(10)], fill=fill)
    elif shape == "cross":
        arm = w * 0.17
        draw.rectangle([x0, cy - arm, x1 - 1, cy + arm], fill=fill)
        draw.rectangle([cx - arm, y0, cx + arm, y1 - 1], fill=fill)
    else:
        raise ValueError(f"unknown shape {shape!r}")


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
