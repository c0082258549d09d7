"""Captures real feeds: the fp32 engine dir runs through the runtime Generator with recording runners, so each
graph sees the pruned visual lengths and the KV caches of real prefill and decode steps."""
import sys
from pathlib import Path

import numpy as np

from runtime.load import open_engine_dir
from runtime.request import Request


class RecordingRunner:
    """Wraps a runner (infer(feed) -> dict) and keeps every feed it is given (and, optionally, its outputs). Numpy
    feeds are kept as copies taken before the call: KV buffers are written in place, by this runner and later ones."""

    def __init__(self, runner, keep_outputs: bool = False):
        self.runner, self.keep_outputs = runner, keep_outputs
        self.feeds, self.outputs = [], []

    def infer(self, feed: dict) -> dict:
        self.feeds.append({k: v.copy() if isinstance(v, np.ndarray) else v for k, v in feed.items()})
        out = self.runner.infer(feed)
        if self.keep_outputs:
            self.outputs.append(out)
        return out

    def clear(self):
        self.feeds, self.outputs = [], []


def record(generator, keep_outputs: bool = False) -> dict[str, RecordingRunner]:
    """Replaces the generator's engines by recording wrappers (in place) and returns them by graph name."""
    recorders = {name: RecordingRunner(runner, keep_outputs) for name, runner in generator.engines.items()}
    generator.engines = recorders
    return recorders


def capture_feeds(engine_dir, requests: list[Request], max_new_tokens: int = 4, provider: str = "cpu",
                  progress=lambda m: print(m, file=sys.stderr, flush=True)) -> dict[str, list[dict]]:
    """{graph name: [feed, ...]}: one request at a time (batch 1, no padding), prefill then greedy decode."""
    generator = open_engine_dir(engine_dir, provider)
    recorders = record(generator)
    for k, request in enumerate(requests, 1):
        generator.generate([request], max_new_tokens)
        image = Path(request.image).name if isinstance(request.image, (str, Path)) else "image"
        progress(f"[calibrate] captured request {k}/{len(requests)} ({image})")
    return {name: r.feeds for name, r in recorders.items()}
