"""A short engines-vs-PyTorch check on the user's own requests: same kept indices, same tokens, and the
median prefill time of each, measured in one run. Where they differ (an fp16 dir: a near tie can flip a kept
token, and a changed token changes the rest), it says by how much: the lowest kept-set overlap of any stage, and
how many tokens agree before the first that differs."""
import statistics
import sys

from export.reference import reference_generator

RUNS = 3


def median_prefill_ms(generator, requests) -> float:
    generator.generate(requests, 1)  # warm-up: first calls pay one-off costs
    return statistics.median(generator.generate(requests, 1)[0].timings_ms["prefill_total"] for _ in range(RUNS))


def compare_with_torch(generator, requests, results, max_new_tokens: int, out=sys.stderr) -> dict:
    reference = reference_generator(generator.m)
    expected = reference.generate(requests, max_new_tokens)
    same_tokens = all(a.token_ids == b.token_ids for a, b in zip(results, expected))
    same_kept = all(a.stages == b.stages for a, b in zip(results, expected))
    overlap = min((lowest_overlap(b.stages, a.stages) for a, b in zip(results, expected)), default=1.0)
    agree = min(common_prefix(a.token_ids, b.token_ids) for a, b in zip(results, expected))
    engines_ms, torch_ms = median_prefill_ms(generator, requests), median_prefill_ms(reference, requests)
    report = {"same_tokens": same_tokens, "same_kept_indices": same_kept, "lowest_kept_overlap": overlap,
              "tokens_before_first_difference": agree, "engines_prefill_ms": engines_ms, "torch_prefill_ms": torch_ms,
              "prefill_ratio_engines_over_torch": engines_ms / torch_ms}
    kept = "identical" if same_kept else f"DIFFER (lowest overlap of a stage {overlap:.3f})"
    tokens = "identical" if same_tokens else f"DIFFER (the first {agree} agree)"
    print(f"[compare] PyTorch reference ({generator.m.dtype}): kept indices {kept}, greedy tokens {tokens}; median "
          f"prefill over {RUNS} runs: engines {engines_ms:.1f} ms, torch {torch_ms:.1f} ms "
          f"(ratio {report['prefill_ratio_engines_over_torch']:.2f})", file=out)
    return report


def lowest_overlap(want: list[dict], got: list[dict]) -> float:
    """The lowest share, over stages, of the reference's kept indices the engines kept too."""
    kept = {s["name"]: set(s["kept"]) for s in got}
    return min((len(set(s["kept"]) & kept.get(s["name"], set())) / max(len(s["kept"]), 1) for s in want), default=1.0)


def common_prefix(a: list[int], b: list[int]) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
