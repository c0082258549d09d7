"""A short engines-vs-PyTorch check on the user's own requests: same kept indices, same tokens, and the
median prefill time of each, measured in one run."""
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
    engines_ms, torch_ms = median_prefill_ms(generator, requests), median_prefill_ms(reference, requests)
    report = {"same_tokens": same_tokens, "same_kept_indices": same_kept, "engines_prefill_ms": engines_ms,
              "torch_prefill_ms": torch_ms, "prefill_ratio_engines_over_torch": engines_ms / torch_ms}
    print(f"[compare] PyTorch reference: kept indices {'identical' if same_kept else 'DIFFER'}, greedy tokens "
          f"{'identical' if same_tokens else 'DIFFER'}; median prefill over {RUNS} runs: engines {engines_ms:.1f} ms, "
          f"torch {torch_ms:.1f} ms (ratio {report['prefill_ratio_engines_over_torch']:.2f})", file=out)
    return report
