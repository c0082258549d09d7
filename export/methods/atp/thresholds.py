"""ATP's constant thresholds, calibrated so that the mean kept count over a calibration set hits a target.

Points are calibrated in order (a point's scores depend on what earlier points kept). theta_s is fixed so
that the coarsest spatial grid always stays (uniform anchors, as SAP intends) and theta_r is found by
bisection: the mean count falls monotonically as theta_r rises. Targets fall geometrically from the full
image to `keep` at the last point. Works on any Generator (torch runners at export, engines after it),
because the thresholds are graph inputs read from the manifest's pipeline.
"""
import hashlib

import numpy as np

from runtime.errors import ConfigError

SPATIAL_THETA = 0.95  # spatial scores are 1 - 1/stride^2: only the stride-6 grid (0.972) passes
KEEP_ALL = [-1.0, 2.0]  # normalised redundant scores are in [0, 1]


def point_targets(n_patches: int, keep: int, n_points: int) -> list[float]:
    return [n_patches * (keep / n_patches) ** ((j + 1) / n_points) for j in range(n_points)]


def mean_counts(generator, requests) -> list[float]:
    results = generator.generate(requests, max_new_tokens=1)
    return [float(np.mean([len(r.stages[j]["kept"]) for r in results])) for j in range(len(results[0].stages))]


class Memo:
    """Wraps a runner and replays its output for a feed it has seen: while one point is calibrated, the vision
    graph and the segments before that point get the same feeds every time, so they run once."""

    def __init__(self, runner):
        self.runner, self.last = runner, (None, None)  # one entry: outputs carry KV caches, memory adds up

    def infer(self, feed):
        key = hashlib.sha1()
        for name in sorted(feed):
            key.update(name.encode() + str(feed[name].shape).encode() + np.ascontiguousarray(feed[name]).tobytes())
        digest = key.hexdigest()
        if self.last[0] != digest:
            self.last = (digest, self.runner.infer(feed))
        return self.last[1]


def calibrate_thresholds(generator, requests, keep: int, progress=lambda msg: None, iterations: int = 9):
    """Sets (theta_r, theta_s) of every thresholded segment of generator.pipe in place; returns them."""
    segments = [s for s in generator.pipe.segments if s.thresholds is not None]
    n_patches = generator.facts["num_patches"]
    grid = int(round(n_patches ** 0.5))
    anchors = sum(1 for r in range(0, grid, 6) for c in range(0, grid, 6))
    if not anchors < keep <= n_patches:
        raise ConfigError(f"--keep must be in {anchors + 1}..{n_patches} with calibrated ATP thresholds (the "
                          f"{anchors} tokens of the coarsest spatial grid always stay), got {keep}")
    for seg in segments:
        seg.thresholds = list(KEEP_ALL)
    engines = generator.engines
    generator.engines = {name: Memo(runner) for name, runner in engines.items()}
    try:
        return _bisect(generator, requests, keep, segments, n_patches, progress, iterations)
    finally:
        generator.engines = engines


def _bisect(generator, requests, keep, segments, n_patches, progress, iterations):
    for j, (seg, target) in enumerate(zip(segments, point_targets(n_patches, keep, len(segments)))):
        lo, hi, best = 0.0, 1.0, None
        for _ in range(iterations):
            mid = (lo + hi) / 2
            seg.thresholds = [mid, SPATIAL_THETA]
            count = mean_counts(generator, requests)[j]
            if best is None or abs(count - target) < abs(best[1] - target):
                best = (mid, count)
            lo, hi = (mid, hi) if count > target else (lo, mid)
        seg.thresholds = [best[0], SPATIAL_THETA]
        generator.m.stage(seg.stage).mean_keep = round(best[1], 1)  # what FLOPs and profiles count for this point
        progress(f"[calibrate] ATP point {j} ({seg.stage}): theta_r {best[0]:.4f} keeps {best[1]:.1f} tokens "
                 f"on average (target {target:.1f})")
    return [s.thresholds for s in segments]
