"""KV pools for in-flight batching: per decoder segment, one buffer [max_batch, Hkv, capacity, D] per layer's key
and value, a `valid` [max_batch, capacity] slot mask and each row's `used` slots. A row holds one request: its
prefilled slots are copied in when it joins, its decode slots follow them, and its own `used` is its write index.

The active rows are always rows 0..n-1 (a leaving row's place is taken by the last row), so a decode step feeds
`buffer[:n]`: a view of the pool, contiguous because it slices the first axis only, which ONNX Runtime's IOBinding
wraps without a copy and writes the new slots into in place (engines/onnxruntime_runner.py). A step costs what
its n rows cost, never max_batch rows, and a leave costs one row's copy."""
from dataclasses import dataclass

import numpy as np

from engines.kv_names import PAST, PRESENT, kv_names
from runtime.errors import EngineDirError
from runtime.manifest import Manifest, Segment
from runtime.prefill import SegmentCache, empty_buffers


class SegmentPool:
    def __init__(self, manifest: Manifest, seg: Segment, max_batch: int, capacity: int):
        self.m, self.seg = manifest, seg
        self.buffers = empty_buffers(manifest, seg, max_batch, capacity)  # past_key_values.* name -> array
        self.valid = np.zeros((max_batch, capacity), bool)
        self.used = np.zeros(max_batch, np.int64)

    @property
    def capacity(self) -> int:
        return self.valid.shape[1]

    def grow(self, capacity: int, n: int):
        """Reallocate with `capacity` slots per row, the n active rows copied. Feeds are bound per call, so the next
        step binds the new buffers."""
        old, self.buffers = self.buffers, empty_buffers(self.m, self.seg, len(self.valid), capacity)
        for name, buffer in old.items():
            self.buffers[name][:n, :, :buffer.shape[2]] = buffer[:n]
        valid, self.valid = self.valid, np.zeros((len(self.valid), capacity), bool)
        self.valid[:n, :valid.shape[1]] = valid[:n]

    def place(self, row: int, cache: SegmentCache):
        """Row `row` takes request 0 of a batch-1 prefill's cache: its written slots, the rest of the row cleared."""
        n = cache.used
        for i, (key, value) in cache.layers.items():
            for kind, src in (("key", key), ("value", value)):
                self.buffers[f"{PAST}.{i}.{kind}"][row, :, :n] = src[0, :, :n]
        self.valid[row] = False
        self.valid[row, :n] = cache.valid[0, :n]
        self.used[row] = n

    def move(self, src: int, dst: int):
        for buffer in self.buffers.values():
            buffer[dst] = buffer[src]
        self.valid[dst], self.used[dst] = self.valid[src], self.used[src]

    def rows(self, n: int) -> "PoolRows":
        return PoolRows(self, n)


@dataclass
class PoolRows:
    """Rows 0..n-1 of a pool as one decode step's caches (the step_feed / stepped pair of SegmentCache)."""
    pool: SegmentPool
    n: int

    def step_feed(self) -> dict:
        p, n = self.pool, self.n
        p.valid[np.arange(n), p.used[:n]] = True  # each row's new token sees itself, at that row's own slot
        return {"attention_mask": p.valid[:n, None, :].copy(), "write_index": p.used[:n].astype(np.int32),
                **{name: buffer[:n] for name, buffer in p.buffers.items()}}

    def stepped(self, seg: Segment, out: dict):
        p, n = self.pool, self.n
        for past, present in zip(kv_names(PAST, range(seg.first, seg.last + 1)),
                                 kv_names(PRESENT, range(seg.first, seg.last + 1))):
            view, got = p.buffers[past][:n], out[present]
            if not isinstance(got, np.ndarray):
                raise EngineDirError(f"graph {seg.decoder} returned {present} as {type(got).__name__}; in-flight "
                                     "batching keeps KV caches in host numpy pools. Run it with ONNX Runtime on the "
                                     "CPU (or kv_device=None), or use Generator.generate")
            if got.__array_interface__["data"][0] != view.__array_interface__["data"][0]:
                view[...] = got  # a runner that did not write in place: its new cache is copied into the pool
        p.used[:n] += 1
