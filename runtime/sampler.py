"""Picks the next token of each row of a logits batch by that row's SamplingParams, in Hugging Face's and vLLM's
order: temperature, then top-k, then top-p over what top-k left, then one draw from the renormalised distribution.

Each request owns its RNG and draws one number per token it samples, so a seeded request gives the same tokens
alone or in any batch. Sampling computes in float64: a low temperature scales logits far apart, and top-p sums
many small probabilities."""
import numpy as np

from runtime.sampling import SamplingParams


class Sampler:
    def __init__(self, params: list[SamplingParams]):
        self.params = params
        # seed None: fresh entropy from the OS; greedy rows draw nothing and need none
        self.rngs = [None if p.greedy else np.random.default_rng(p.seed) for p in params]

    def pick(self, logits: np.ndarray, rows=None, fill: int = 0) -> np.ndarray:
        """The next token id [B] of each of `rows` (default: every row) of `logits` [B, V]; the other rows get
        `fill` and draw nothing, so a finished request does not move its RNG."""
        out = np.full(len(logits), fill, np.int64)
        for b in range(len(logits)) if rows is None else rows:
            out[b] = sample(logits[b], self.params[b], self.rngs[b])
        return out


def sample(logits: np.ndarray, params: SamplingParams, rng: np.random.Generator) -> int:
    if params.greedy:
        return int(np.argmax(logits))  # what generation did before sampling existed, bit for bit
    ids, probs = candidates(logits, params)
    cdf = np.cumsum(probs)
    i = int(np.searchsorted(cdf, rng.random() * cdf[-1], side="right"))  # inverse CDF: one uniform per token
    return int(ids[min(i, len(ids) - 1)])


def candidates(logits: np.ndarray, params: SamplingParams) -> tuple[np.ndarray, np.ndarray]:
    """The token ids a sampled row may pick, likeliest first (ties: the lower id first, as argmax), and their
    renormalised probabilities."""
    x = np.asarray(logits, np.float64) / params.temperature
    ids = top_ids(x, params.top_k)
    p = softmax(x[ids])
    if params.top_p < 1:
        # the nucleus: the shortest prefix whose probability reaches top_p, never empty
        n = min(int(np.searchsorted(np.cumsum(p), params.top_p, side="left")) + 1, len(p))
        ids, p = ids[:n], p[:n] / p[:n].sum()
    return ids, p


def top_ids(x: np.ndarray, k: int) -> np.ndarray:
    """Ids of the k largest of x (all of them for k = 0), largest first, the lower id first among equals."""
    if k == 0 or k >= len(x):
        return np.argsort(-x, kind="stable")
    kth = np.partition(x, len(x) - k)[len(x) - k]  # the k-th largest value: O(V), not a full sort of the vocabulary
    ids = np.flatnonzero(x >= kth)  # every id at least that large (ties included), in ascending order
    return ids[np.argsort(-x[ids], kind="stable")][:k]


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max())
    return e / e.sum()
