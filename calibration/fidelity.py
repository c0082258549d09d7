"""How close a lower-precision engine dir comes to its fp32 original: logit cosine, greedy-token agreement,
kept-index overlap, and the rule for when greedy tokens may differ at all.

Only at a near tie. Step by step, while the two runs have produced the same tokens (so they see the same
context), each step's logits must have cosine >= MIN_COSINE with fp32's. The first differing token is accepted
only where fp32's top two logits lie within NEAR_TIE of the logit range: there rounding may pick either. After
it the contexts differ and nothing more is comparable.

The bounds come from the tiny model's torch reference run entirely in fp16 against fp32 (5 photos x 3
prompts, 8 tokens): cosine at least 0.99945 at every step compared, and 3 of 15 requests changed a token, at
margins of 0.05-0.33% of the range. A TensorRT fp16 plan keeps norms and softmax fp32, so it should round
less; int8 lands at 0.988, a layer computed wrongly lower still.
"""
import numpy as np

MIN_COSINE = 0.998
NEAR_TIE = 0.01  # of the fp32 logits' max - min at that step


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-30))


def greedy_mismatch(want_logits, got_logits, want_tokens, got_tokens, min_cosine: float = MIN_COSINE,
                    near_tie: float = NEAR_TIE) -> str | None:
    """None when `got` (one request: per-step logits [V] and tokens) is within tolerance of fp32's `want`;
    otherwise the step and what broke."""
    for step, (w, g, a, b) in enumerate(zip(want_logits, got_logits, want_tokens, got_tokens)):
        similarity = cosine(w, g)
        if similarity < min_cosine:
            return f"step {step}: logit cosine {similarity:.5f} is below {min_cosine}"
        if a != b:
            second, first = np.sort(w)[-2:]
            margin, span = float(first - second), float(w.max() - w.min())
            if margin > near_tie * span:
                return (f"step {step}: token {b} instead of {a}, but fp32's top two logits are {margin:.4g} apart, "
                        f"{margin / span:.1%} of their range: not a near tie (<= {near_tie:.0%})")
            return None
    if len(want_tokens) != len(got_tokens):
        return f"{len(got_tokens)} tokens instead of {len(want_tokens)} with the same tokens up to there"
    return None


def token_agreement(a: list[int], b: list[int]) -> tuple[float, float]:
    """(matching tokens before the first divergence, matching positions overall), both over len(a)."""
    n = max(len(a), 1)
    prefix = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
    overall = sum(x == y for x, y in zip(a, b))
    return prefix / n, overall / n


def kept_overlap(stages_a: list[dict], stages_b: list[dict]) -> dict[str, float]:
    """|A ∩ B| / |A| per stage, A the fp32 kept indices."""
    b = {s["name"]: set(s["kept"]) for s in stages_b}
    return {s["name"]: len(set(s["kept"]) & b.get(s["name"], set())) / max(len(s["kept"]), 1) for s in stages_a}
