"""The training images, rendered once and shared by every stage: pixels as uint8, each patch's object, and the
scenes themselves (questions and captions are drawn from them afresh at every step)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from demo.scenes import COLOURS, PATTERNS, Scene, patch_labels, render, sample_scene

COLOUR_IDS = {c: i + 1 for i, c in enumerate(COLOURS)}  # 0: background
PATTERN_IDS = {s: i + 1 for i, s in enumerate(PATTERNS)}


@dataclass
class Pool:
    scenes: list[Scene]
    pixels: np.ndarray  # [N, 336, 336, 3] uint8
    colour: np.ndarray  # [N, 576] int64: the colour id of the object on each patch, 0 for background
    pattern: np.ndarray  # [N, 576] int64
    column: np.ndarray  # [576] float32: each patch's x centre in [0, 1]
    owner: np.ndarray | None = None  # [N, 576] int8: 1 + the index of the object on each patch, 0 for background

    def __len__(self):
        return len(self.scenes)


def make_pool(seed: int, count: int, n_min: int, n_max: int, progress=lambda done, total: None) -> Pool:
    rng = np.random.default_rng([seed, 0x9001])
    scenes, pixels = [], np.empty((count, 336, 336, 3), np.uint8)
    colour, pattern = np.zeros((count, 576), np.int64), np.zeros((count, 576), np.int64)
    owners = np.zeros((count, 576), np.int8)
    for i in range(count):
        scene = sample_scene(rng, n_min, n_max)
        scenes.append(scene)
        pixels[i] = np.asarray(render(scene))
        owner = owners[i] = patch_labels(scene).reshape(-1)
        for j, t in enumerate(scene.things):
            colour[i, owner == j + 1], pattern[i, owner == j + 1] = COLOUR_IDS[t.colour], PATTERN_IDS[t.pattern]
        if (i + 1) % 1000 == 0 or i + 1 == count:
            progress(i + 1, count)
    column = np.tile((np.arange(24, dtype=np.float32) + 0.5) / 24, 24)
    return Pool(scenes, pixels, colour, pattern, column, owners)
