"""One thread owns the generator; the server's front ends (the OpenAI endpoint, the Triton models) hand it requests
from their own threads and get tokens and results back through callbacks, called on that thread.

`batching="inflight"` (the default) steps an InflightBatcher: requests join the running batch at a decode step and
leave it when they finish. `"static"` is the baseline it is measured against: up to max_batch waiting requests are
generated together, and the next ones wait for the whole batch. Both give each request the tokens it gets alone.

Admission control: at most max_batch + max_queue requests are in the loop at once (running or waiting for a row);
one more is refused at once with Overloaded (HTTP 429), and one submitted while the loop stops with Unavailable (503). An error
of the loop itself (an engine that fails mid-step) fails the requests it held, and the loop goes on serving."""
import threading
from dataclasses import dataclass
from typing import Callable

from runtime.generator import Generator
from runtime.inflight import Cancelled, Handle, InflightBatcher
from runtime.request import Request, Result
from runtime.sampling import GREEDY
from runtime.stopping import Continuation

BATCHING = ("inflight", "static")


class Overloaded(Exception):
    """The queue is full: answer 429 and let the client retry."""


class Unavailable(Exception):
    """The loop is stopping (or stopped): answer 503."""


@dataclass(eq=False)
class Job:
    """One request on its way through the loop. on_token(token id, text so far) streams; on_done(result, error) ends
    it, exactly once, with one of the two None."""
    request: Request
    on_token: Callable[[int, str], None] | None
    on_done: Callable[[Result | None, Exception | None], None] | None
    handle: Handle | None = None
    cancelled: bool = False
    ended: bool = False


class EngineLoop:
    def __init__(self, generator: Generator, max_batch: int = 8, max_queue: int = 32, max_new_tokens: int = 32,
                 batching: str = "inflight"):
        if batching not in BATCHING:
            raise ValueError(f"batching must be one of {BATCHING}, got {batching!r}")
        if max_queue < 0:
            raise ValueError(f"max_queue must be at least 0, got {max_queue}")
        self.g, self.max_batch, self.max_queue, self.batching = generator, max_batch, max_queue, batching
        self.max_new_tokens = max_new_tokens
        self.batcher = InflightBatcher(generator, max_batch, max_new_tokens=max_new_tokens) if batching == "inflight" \
            else None
        self._cv = threading.Condition()
        self._inbox: list[Job] = []  # submitted, not yet seen by the loop
        self._cancels: list[Job] = []
        self._waiting = 0  # seen by the loop, not yet in a row
        self._jobs: dict[int, Job] = {}  # handle id -> job, while in the batcher
        self._static: list[Job] = []
        self._stopping = False
        self._outstanding = 0  # submitted, not yet ended
        self.running = 0
        self.completed = self.failed = self.refused = self.cancelled = 0
        self._thread = threading.Thread(target=self._loop, name="prunevlm-engine-loop", daemon=True)

    # ------------------------------------------------------------------ any thread
    def start(self) -> "EngineLoop":
        self._thread.start()
        return self

    def submit(self, request: Request, on_token=None, on_done=None) -> Job:
        job = Job(request, on_token, on_done)
        with self._cv:
            if self._stopping:
                raise Unavailable("the server is shutting down; retry on another replica")
            if self._outstanding >= self.max_batch + self.max_queue:
                self.refused += 1
                raise Overloaded(f"the server is at capacity ({self.max_batch} running, {self.max_queue} queued); "
                                 "retry later")
            self._inbox.append(job)
            self._outstanding += 1
            self._cv.notify()
        return job

    def cancel(self, job: Job):
        """The client went away: its row is freed at the next step (a no-op if it already ended)."""
        with self._cv:
            job.cancelled = True
            self._cancels.append(job)
            self._cv.notify()

    def generate(self, request: Request, on_token=None, timeout: float | None = None) -> Result:
        """Blocking: submit, wait, return its Result or raise its error."""
        done, box = threading.Event(), {}
        self.submit(request, on_token, lambda result, error: (box.update(result=result, error=error), done.set()))
        if not done.wait(timeout):
            raise TimeoutError(f"no result within {timeout} s")
        if box["error"] is not None:
            raise box["error"]
        return box["result"]

    def stats(self) -> dict:
        with self._cv:
            return {"running": self.running, "queued": len(self._inbox) + self._waiting, "completed": self.completed,
                    "failed": self.failed, "refused": self.refused, "cancelled": self.cancelled,
                    "max_batch": self.max_batch, "max_queue": self.max_queue, "batching": self.batching}

    def stop(self, timeout: float = 10.0):
        """Refuses new requests, fails the ones not yet finished with Unavailable, and joins the thread."""
        with self._cv:
            self._stopping = True
            self._cv.notify()
        if self._thread.is_alive():
            self._thread.join(timeout)

    # ------------------------------------------------------------------ the loop's thread
    def _loop(self):
        while True:
            with self._cv:
                while not (self._inbox or self._cancels or self._busy() or self._stopping):
                    self._cv.wait()
                if self._stopping:
                    break
                inbox, self._inbox = self._inbox, []
                cancels, self._cancels = self._cancels, []
            try:
                self._take(inbox, cancels)
                self._step_inflight() if self.batcher else self._step_static()
            except Exception as e:  # the engines failed mid-step: fail what they held, keep serving
                self._fail_all(e)
            with self._cv:
                self._waiting = len(self.batcher.waiting) if self.batcher else len(self._static)
                self.running = len(self.batcher.rows) if self.batcher else 0
        self._fail_all(Unavailable("the server shut down before this request finished"), inbox=True)

    def _busy(self) -> bool:
        return self.batcher.busy if self.batcher else bool(self._static)

    def _take(self, inbox: list[Job], cancels: list[Job]):
        for job in inbox:
            if job.cancelled:
                self._end(job, None, Cancelled("the client went away before the request started"))
            elif self.batcher:
                job.handle = self.batcher.submit(job.request, self._streamer(job))
                self._jobs[job.handle.id] = job
            else:
                self._static.append(job)
        for job in cancels:
            if job.handle is not None and self.batcher.cancel(job.handle):
                self._end(self._jobs.pop(job.handle.id), None, job.handle.error)
            elif job in self._static:
                self._static.remove(job)
                self._end(job, None, Cancelled("the client went away before the request started"))

    @staticmethod
    def _streamer(job: Job):
        if job.on_token is None:
            return None
        return lambda _id, token, text: None if job.cancelled else job.on_token(token, text)

    def _step_inflight(self):
        if not self.batcher.busy:
            return
        for h in self.batcher.step():
            job = self._jobs.pop(h.id)
            self._end(job, None if h.error else h.result(), h.error)

    def _step_static(self):
        batch, self._static = self._static[:self.max_batch], self._static[self.max_batch:]
        if not batch:
            return
        try:
            results = self.g.generate([j.request for j in batch], self.max_new_tokens)
            outcomes = [(r, None) for r in results]
        except Exception:  # one bad request fails the batch: each alone, so it fails alone
            outcomes = [self._alone(j.request) for j in batch]
        for job, (result, error) in zip(batch, outcomes):
            if result is not None and job.on_token is not None and not job.cancelled:
                self._replay(job, result)
            self._end(job, result, error)

    def _alone(self, request: Request):
        try:
            return self.g.generate([request], self.max_new_tokens)[0], None
        except Exception as e:
            return None, e

    def _replay(self, job: Job, result: Result):
        """A static batch streams nothing while it runs: its tokens go out when it ends, with the text each gave."""
        run = Continuation(len(result.token_ids) + 1, (job.request.sampling or GREEDY).stop)
        for token in result.token_ids:
            run.add(token, self.g.eos, self.g.prompts.decode)
            job.on_token(token, run.text(self.g.prompts.decode))

    def _fail_all(self, error: Exception, inbox: bool = False):
        if self.batcher:
            for job in list(self._jobs.values()):
                self.batcher.cancel(job.handle)
                self._end(job, None, error)
            self._jobs.clear()
            self.batcher = InflightBatcher(self.g, self.max_batch, max_new_tokens=self.max_new_tokens)
        for job in self._static:
            self._end(job, None, error)
        self._static = []
        if inbox:
            with self._cv:
                pending, self._inbox = self._inbox, []
            for job in pending:
                self._end(job, None, error)

    def _end(self, job: Job, result: Result | None, error: Exception | None):
        if job.ended:
            return
        job.ended = True
        with self._cv:
            self._outstanding -= 1
            if error is None:
                self.completed += 1
            elif isinstance(error, Cancelled):
                self.cancelled += 1
            else:
                self.failed += 1
        if job.on_done is not None:
            job.on_done(result, error)
