"""Validation of an exported graph against its torch module, Optimum style: names, then shapes, then
values. Every failure is collected; one typed error is raised. Kept indices must match exactly."""
import numpy as np

from runtime.errors import PruneDeployError

ATOL, RTOL = 1e-4, 1e-3  # fp32 graph vs fp32 eager: reordered sums only, so differences stay ~1e-6 x magnitude


class ValidationError(PruneDeployError):
    """An exported graph disagrees with its PyTorch module."""


def compare(name: str, reference: dict[str, np.ndarray], actual: dict[str, np.ndarray]) -> dict[str, float]:
    """Returns the max abs difference per output; raises ValidationError listing every mismatch."""
    problems, diffs = [], {}
    missing, extra = sorted(set(reference) - set(actual)), sorted(set(actual) - set(reference))
    if missing or extra:
        problems.append(f"outputs missing {missing}, unexpected {extra}")
    for out in [o for o in reference if o in actual]:
        ref, got = reference[out], actual[out]
        if ref.shape != got.shape:
            problems.append(f"{out}: shape {list(got.shape)}, torch gives {list(ref.shape)}")
            continue
        if np.issubdtype(ref.dtype, np.integer):
            wrong = int((ref != got).sum())
            diffs[out] = float(wrong)
            if wrong:
                problems.append(f"{out}: {wrong} of {ref.size} indices differ from torch (must be identical)")
            continue
        diff = float(np.abs(ref.astype(np.float64) - got).max()) if ref.size else 0.0
        diffs[out] = diff
        bound = ATOL + RTOL * float(np.abs(ref).max() if ref.size else 0.0)
        if not diff <= bound:
            problems.append(f"{out}: max abs diff {diff:.3g} exceeds {bound:.3g}")
    if problems:
        raise ValidationError(f"graph {name} does not match its torch module: " + "; ".join(problems))
    return diffs
