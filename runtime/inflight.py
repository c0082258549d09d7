"""In-flight (continuous) batching: requests join a running batch at a decode-step boundary and leave it the step
they finish, each with its own visual token counts per stage and its own KV length per segment.

`step()` first admits waiting requests while rows are free: each is prefilled alone (batch 1, with the room for
its decode steps that `Generator.generate` gives it alone, so its prefill is the very one it gets alone), picks
its first token from the prefill's logits, and unless that finished it, its caches are copied into a free row of
the KV pools (runtime/kv_pool.py). Then one decode step runs every segment's decoder graph over the active rows
(rows 0..n-1 of the pools, fed as views and written in place), each row writing at its own slot and position and
attending to its own valid slots, then the LM head, and each row picks its next token with its own Sampler (its
own RNG). A row whose request finished (EOS, stop string, its token limit) is freed at once, the last active row
moved into its place, and its Result delivered to its Handle. Rows are independent in every graph, so a request
gets the tokens it gets alone.

Pool capacity: `capacity` fixes the slots per row of every segment (a request that needs more is refused with an
InputError); None (the default) grows a segment's pools when a joining request needs more slots than they hold
(by half again, at least to its need, at most the model's max positions), copying the active rows.

A bad request (a missing image, a prompt too long, ...) fails at admission: its Handle holds the error, which
`result()` raises, and the rows running go on untouched. `submit` and `step` are not thread-safe: one loop (a
server's) calls them."""
import time
from collections import deque
from dataclasses import dataclass, field, replace
from typing import Callable

import numpy as np

from engines.onnxruntime_runner import OnnxrtRunner
from engines.tensorrt.runner import TensorrtRunner
from runtime.errors import EngineDirError, InputError
from runtime.generator import Generator
from runtime.kv_pool import SegmentPool
from runtime.prefill import KvCaches, Timer
from runtime.preprocess import preprocess
from runtime.request import Request, Result
from runtime.sampler import Sampler
from runtime.stopping import Continuation


class Cancelled(Exception):
    """The request was dropped before it finished (InflightBatcher.cancel)."""


OnToken = Callable[[int, int, str], None]  # (request id, token id, text so far, cut before any stop string)


@dataclass(eq=False)  # handles are compared by identity: one per submitted request
class Handle:
    """One submitted request: its tokens as they come, the pool rows it held, then its Result or its error."""
    id: int
    request: Request
    on_token: OnToken | None = None
    rows: list[int] = field(default_factory=list)  # pool rows it held, in order (a leave may move it down)
    error: Exception | None = None
    done: bool = False
    joined_step: int | None = None  # the step() at whose start it joined (or failed, or finished at its first token)
    finished_step: int | None = None
    _result: Result | None = None
    # while it runs
    run: Continuation | None = None
    sampler: Sampler | None = None
    prefilled: tuple | None = None  # (Prefilled, Prompt, its KV bytes, its prefill Timer) once prefilled
    times: dict = field(default_factory=dict)  # perf_counter marks: submit, prefill, first (token), end
    next_position: int = 0  # where its first generated token goes
    decode_ms: float = 0.0  # the decode steps it rode, whole

    @property
    def tokens(self) -> list[int]:
        return self.run.tokens if self.run else []

    def result(self) -> Result:
        """Its Result; raises its error if it failed, or a RuntimeError while it still runs."""
        if self.error is not None:
            raise self.error
        if not self.done:
            raise RuntimeError(f"request {self.id} has not finished yet: call step() until it is done")
        return self._result


class InflightBatcher:
    """`submit(request) -> Handle`, then `step()` from one loop while `busy` (or `run(requests, arrivals)` for
    both); each Handle streams its tokens to its `on_token` and ends with `result()`. Rows 0..len(rows)-1 of
    the pools are the running requests, `rows[r]` the Handle in row r."""

    def __init__(self, generator: Generator, max_batch: int = 8, capacity: int | None = None,
                 max_new_tokens: int = 32):
        """max_new_tokens: the limit of every request whose sampling params set none."""
        check_runners(generator)
        if max_batch < 1:
            raise InputError(f"max_batch must be at least 1, got {max_batch}")
        limit = generator.facts["max_positions"]
        if capacity is not None and not 1 <= capacity <= limit:
            raise InputError(f"capacity must be between 1 and the model's {limit} positions, got {capacity}")
        Generator.sampling([], max_new_tokens)  # checks it
        self.g, self.max_batch, self.fixed = generator, max_batch, capacity is not None
        self.max_new_tokens = max_new_tokens
        self.pools = [SegmentPool(generator.m, seg, max_batch, capacity or 16) for seg in generator.pipe.segments]
        self.rows: list[Handle] = []  # row r holds rows[r]; rows beyond len(rows) are free
        self.waiting: deque[Handle] = deque()
        self.steps, self.peak_rows, self._ids = 0, 0, 0
        self.decode_timer = Timer(generator.m.graphs)  # every decode step's graph time, all rows together

    # -------------------------------------------------------------- API
    def submit(self, request: Request, on_token: OnToken | None = None) -> Handle:
        """Queues a request; it joins at the next step() with a free row."""
        handle = Handle(self._ids, request, on_token, times={"submit": time.perf_counter()})
        self._ids += 1
        self.waiting.append(handle)
        return handle

    def cancel(self, handle: Handle) -> bool:
        """Drops a request whose client went away: out of the queue, or its row freed at once for the next one. Its
        `result()` then raises Cancelled. False if it had already finished."""
        if handle.done:
            return False
        handle.error = Cancelled(f"request {handle.id} was cancelled after {len(handle.tokens)} tokens")
        handle.done, handle.finished_step = True, self.steps
        if handle in self.waiting:  # by identity (Handle has eq=False)
            self.waiting.remove(handle)
        elif handle in self.rows:
            self._free([handle])
        return True

    @property
    def busy(self) -> bool:
        return bool(self.rows or self.waiting)

    def step(self) -> list[Handle]:
        """Admits waiting requests into free rows, then runs one decode step over the active rows; returns the
        handles that finished (or failed) during it."""
        finished = self._admit()
        if self.rows:
            finished += self._decode()
        self.steps += 1
        return finished

    def run(self, requests: list[Request], arrivals: list[int] | None = None,
            on_token: OnToken | None = None) -> list[Handle]:
        """Submits request i before step arrivals[i] (default: all at once) and steps until all are done. Handles,
        not Results, come back: one request's error must not cost the others their results (`h.result()` raises
        it)."""
        arrivals = arrivals or [0] * len(requests)
        if len(arrivals) != len(requests):
            raise InputError(f"got {len(requests)} requests but {len(arrivals)} arrival steps")
        order = sorted(range(len(requests)), key=lambda i: arrivals[i])
        handles, start, k = [None] * len(requests), self.steps, 0
        while k < len(order) or self.busy:
            while k < len(order) and arrivals[order[k]] <= self.steps - start:
                handles[order[k]] = self.submit(requests[order[k]], on_token)
                k += 1
            self.step()
        return handles

    # -------------------------------------------------------------- joining
    def _admit(self) -> list[Handle]:
        finished = []
        while self.waiting and len(self.rows) < self.max_batch:
            h = self.waiting.popleft()
            h.joined_step = self.steps
            try:
                self._prefill(h)
            except Exception as e:  # an InputError mostly; nothing of it is in the pools yet: the rows go on
                h.error, h.done, h.finished_step = e, True, self.steps
                finished.append(h)
                continue
            done = h.prefilled[0]
            if not self._pick(h, done.logits):
                self._join(h, done.caches)
            else:
                finished.append(h)
            # what its Result still needs; its caches are in the pools now, its logits used
            h.prefilled = (replace(done, logits=None, caches=None, visual=replace(done.visual, embeds=None)),
                           *h.prefilled[1:])
        return finished

    def _prefill(self, h: Handle):
        g, start = self.g, time.perf_counter()
        h.times["prefill"] = start
        (params,), (limit,) = g.sampling([h.request], self.max_new_tokens)
        prompt = g.prompts.encode(h.request.prompt)
        g._check_lengths([prompt], [limit])
        pixels = preprocess(g._image(h.request), g.preprocess_cfg)[None]
        timer = Timer(g.m.graphs)
        done = g.prefill([prompt], pixels, timer, limit - 1)  # as generate([request]) prefills it
        need = [cache.used + limit - 1 for cache in done.caches.segments]
        for pool, n in zip(self.pools, need):
            if n > pool.capacity and self.fixed:
                raise InputError(f"request {h.id} needs {n} KV slots in segment {pool.seg.decoder} (its prompt and "
                                 f"{limit} new tokens), but the pools were made with capacity={pool.capacity}. "
                                 "Raise capacity, or leave it None to grow the pools as needed.")
        for pool, n in zip(self.pools, need):
            if n > pool.capacity:
                pool.grow(min(max(n, pool.capacity * 3 // 2), g.facts["max_positions"]), len(self.rows))
        h.run, h.sampler = Continuation(limit, params.stop), Sampler([params])
        h.next_position = int(done.caches.next_position[0])
        h.prefilled = (done, prompt, done.caches.nbytes(), timer)

    def _join(self, h: Handle, caches: KvCaches):
        row = len(self.rows)
        for pool, cache in zip(self.pools, caches.segments):
            pool.place(row, cache)
        self.rows.append(h)
        h.rows.append(row)
        self.peak_rows = max(self.peak_rows, len(self.rows))

    # -------------------------------------------------------------- decoding
    def _decode(self) -> list[Handle]:
        n, start = len(self.rows), time.perf_counter()
        tokens = np.array([[h.tokens[-1]] for h in self.rows], np.int32)
        positions = np.array([[h.next_position + len(h.tokens) - 1] for h in self.rows], np.int32)
        logits = self.g._step(tokens, positions, KvCaches([p.rows(n) for p in self.pools], None), self.decode_timer)
        ms = (time.perf_counter() - start) * 1e3
        finished = []
        for h, row_logits in zip(list(self.rows), logits):
            h.decode_ms += ms
            if self._pick(h, row_logits[None]):
                finished.append(h)
        self._free(finished)
        return finished

    def _pick(self, h: Handle, logits: np.ndarray) -> bool:
        """Its next token from its logits [1, V]; True if that finished it (its Result is then made)."""
        token = int(h.sampler.pick(logits)[0])
        h.run.add(token, self.g.eos, self.g.prompts.decode)
        if len(h.tokens) == 1:
            h.times["first"] = time.perf_counter()  # from the prefill's logits
        if h.on_token is not None:
            h.on_token(h.id, token, h.run.text(self.g.prompts.decode))
        if h.run.finish_reason is None:
            return False
        h.times["end"], h.finished_step = time.perf_counter(), self.steps
        h._result, h.done = self._result(h), True
        return True

    def _free(self, finished: list[Handle]):
        """Frees their rows; live rows from above the new end move into the holes below it, so the active rows stay
        0..n-1 (a finished row is never moved)."""
        gone = {h.id for h in finished}
        n = len(self.rows) - len(gone)
        holes = [r for r in range(n) if self.rows[r].id in gone]
        movers = [r for r in range(n, len(self.rows)) if self.rows[r].id not in gone]
        for dst, src in zip(holes, movers):
            for pool in self.pools:
                pool.move(src, dst)
            self.rows[dst] = self.rows[src]
            self.rows[dst].rows.append(dst)
        del self.rows[n:]

    def _result(self, h: Handle) -> Result:
        done, prompt, kv_bytes, timer = h.prefilled
        ms = lambda a, b: round((h.times[b] - h.times[a]) * 1e3, 3)  # noqa: E731
        timings = {**{k: round(v, 3) for k, v in timer.ms.items()}, "queue": ms("submit", "prefill"),
                   "prefill_total": ms("prefill", "first"), "time_to_first_token": ms("submit", "first"),
                   "decode": round(h.decode_ms, 3), "decode_total": ms("first", "end"), "total": ms("submit", "end")}
        return self.g.result(done, 0, prompt, h.run, timings, kv_bytes)


def check_runners(generator: Generator):
    """In-flight batching keeps KV caches in host numpy pools that the decoder graphs write in place: ONNX Runtime
    on the CPU does; caches kept on a GPU (TensorRT plans, ONNX Runtime's CUDA/TensorRT providers) are refused."""
    for seg in generator.pipe.segments:
        runner = generator.engines[seg.decoder]
        if isinstance(runner, TensorrtRunner):
            raise EngineDirError(f"in-flight batching does not support TensorRT plans yet (graph {seg.decoder}): "
                                 "their KV caches stay on the GPU, and the pools are host numpy buffers. Use "
                                 "Generator.generate (static batches) or the ONNX dir with --provider cpu.")
        if isinstance(runner, OnnxrtRunner):
            if runner.kv_device == "auto":
                runner.activate()
            if runner.kv_device is not None:
                raise EngineDirError(f"in-flight batching keeps KV caches in host numpy pools, but graph {seg.decoder} "
                                     f"keeps them on {runner.kv_device!r} (its providers: "
                                     f"{runner.session.get_providers() if runner.session else '?'}). Open the engine "
                                     "dir with provider='cpu', or use Generator.generate.")
