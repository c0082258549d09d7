"""How one request picks its tokens: temperature, top-k, top-p, seed, stop strings and its own token limit.
Checked when made, so a bad value from a flag or a request line fails before any engine runs."""
import math
from dataclasses import dataclass
from numbers import Integral, Real

from runtime.errors import InputError

MAX_STOP_STRINGS = 16


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 0.0  # 0: greedy (argmax), exactly as without sampling
    top_p: float = 1.0  # nucleus: the smallest set of likeliest tokens holding at least this probability
    top_k: int = 0  # only the k likeliest tokens; 0: all
    seed: int | None = None  # None: a fresh random seed per generation
    stop: tuple[str, ...] = ()  # generation ends once the text contains one; the text is cut before it
    max_new_tokens: int | None = None  # None: the limit the generate call is given

    def __post_init__(self):
        object.__setattr__(self, "stop", _stop_strings(self.stop))  # a list from JSON becomes a tuple
        t, p = self.temperature, self.top_p
        if not _is_number(t) or not math.isfinite(t) or t < 0:
            raise InputError(f"temperature must be a finite number >= 0 (0 is greedy), got {t!r}")
        if not _is_number(p) or not 0 < p <= 1:
            raise InputError(f"top_p must be a number in (0, 1] (1 keeps every token), got {p!r}")
        if not _is_int(self.top_k) or self.top_k < 0:
            raise InputError(f"top_k must be an integer >= 0 (0 keeps every token), got {self.top_k!r}")
        if self.seed is not None and (not _is_int(self.seed) or self.seed < 0):
            raise InputError(f"seed must be an integer >= 0 (or left out for a random one), got {self.seed!r}")
        if self.max_new_tokens is not None and (not _is_int(self.max_new_tokens) or self.max_new_tokens < 1):
            raise InputError(f"max_new_tokens must be an integer >= 1, got {self.max_new_tokens!r}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


def _stop_strings(stop) -> tuple[str, ...]:
    if isinstance(stop, str):  # one stop string, as OpenAI also accepts
        stop = [stop]
    if not isinstance(stop, (list, tuple)) or not all(isinstance(s, str) and s for s in stop):
        raise InputError(f"stop must be a list of non-empty strings, got {stop!r}")
    if len(stop) > MAX_STOP_STRINGS:
        raise InputError(f"stop takes at most {MAX_STOP_STRINGS} strings, got {len(stop)}")
    return tuple(stop)


def _is_number(x) -> bool:
    return isinstance(x, Real) and not isinstance(x, bool)  # numpy scalars count; True does not


def _is_int(x) -> bool:
    return isinstance(x, Integral) and not isinstance(x, bool)


GREEDY = SamplingParams()  # what a request without sampling params gets
