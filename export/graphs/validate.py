"""Validation of an exported graph against its torch module, Optimum style: names, then shapes, then
values. Every failure is collected; one typed error is raised.

fp32 graphs must keep exactly torch's indices. An fp16 graph rounds every activation, as torch's fp16 does but not
at the same places, so a near tie among the scores can go either way: there the kept sets must overlap by
`min_kept_overlap` per request, and the float outputs, whose rows then belong to different tokens, are compared
only where the kept sets are identical. Measured on the embedded model's photos: IVTP's ViT stages overlap
torch's by 0.95-1.0, and torch's own fp16 and fp32 choices differ by up to 0.8%."""
from dataclasses import asdict, dataclass

import numpy as np

from runtime.errors import PruneDeployError


@dataclass(frozen=True)
class Tolerance:
    """|onnx - torch| <= atol + rtol * max|torch| per float output; kept sets overlap >= min_kept_overlap."""
    atol: float
    rtol: float
    min_kept_overlap: float = 1.0

    def to_json(self) -> dict:
        return asdict(self)


TOLERANCES = {
    "fp32": Tolerance(1e-4, 1e-3),  # fp32 graph vs fp32 eager: reordered sums only, differences ~1e-6 x magnitude
    # fp16 graph (ONNX Runtime rounds after each op) vs torch's fp16 modules: 11-bit mantissas through up to 32
    # random-weight layers; measured on the embedded model up to 1% of the output's range
    "fp16": Tolerance(1e-2, 5e-2, min_kept_overlap=0.9),
}


class ValidationError(PruneDeployError):
    """An exported graph disagrees with its PyTorch module."""


@dataclass
class Agreement:
    """What a graph's validation found: max abs difference per float output compared, and the kept-set overlap
    (the lowest over requests) of every kept output whose indices were not identical."""
    diffs: dict
    overlaps: dict

    @classmethod
    def worst(cls, agreements: list["Agreement"]) -> "Agreement":
        """One graph's agreements on several feeds as one: the largest difference, the lowest overlap."""
        diffs, overlaps = {}, {}
        for a in agreements:
            diffs.update({k: max(v, diffs.get(k, v)) for k, v in a.diffs.items()})
            overlaps.update({k: min(v, overlaps.get(k, v)) for k, v in a.overlaps.items()})
        return cls(diffs, overlaps)

    def summary(self) -> str:
        if self.overlaps:
            return ("kept sets overlap torch's " + ", ".join(f"{k} {v:.3f}" for k, v in self.overlaps.items())
                    + "; float outputs not compared, their rows hold other tokens")
        return f"max abs diff {max(self.diffs.values(), default=0.0):.2e}, kept indices identical"


def kept_overlap(ref: np.ndarray, got: np.ndarray) -> float:
    """The lowest, over requests (rows), share of torch's kept indices the graph kept too."""
    return min(len(set(r.tolist()) & set(g.tolist())) / max(len(r), 1) for r, g in zip(ref, got))


def compare(name: str, reference: dict[str, np.ndarray], actual: dict[str, np.ndarray],
            tolerance: Tolerance = TOLERANCES["fp32"]) -> Agreement:
    """Raises ValidationError listing every mismatch."""
    problems, diffs, overlaps = [], {}, {}
    missing, extra = sorted(set(reference) - set(actual)), sorted(set(actual) - set(reference))
    if missing or extra:
        problems.append(f"outputs missing {missing}, unexpected {extra}")
    shared = [o for o in reference if o in actual]
    for out in shared:
        ref, got = reference[out], actual[out]
        if ref.shape != got.shape:
            problems.append(f"{out}: shape {list(got.shape)}, torch gives {list(ref.shape)}")
        elif np.issubdtype(ref.dtype, np.integer) and (ref != got).any():
            wrong = int((ref != got).sum())
            overlaps[out] = kept_overlap(ref, got) if out.startswith("kept") and out != "kept_count" else 0.0
            if overlaps[out] < tolerance.min_kept_overlap:
                rule = ("must be identical" if tolerance.min_kept_overlap >= 1.0 else
                        f"kept sets overlap {overlaps[out]:.3f}, below {tolerance.min_kept_overlap}")
                problems.append(f"{out}: {wrong} of {ref.size} indices differ from torch ({rule})")
    for out in [] if overlaps else shared:  # rows of different kept sets are different tokens: not comparable
        ref, got = reference[out], actual[out]
        if ref.shape != got.shape or np.issubdtype(ref.dtype, np.integer):
            continue
        diff = float(np.abs(ref.astype(np.float64) - got).max()) if ref.size else 0.0
        diffs[out] = diff
        bound = tolerance.atol + tolerance.rtol * float(np.abs(ref).max() if ref.size else 0.0)
        if not diff <= bound:
            problems.append(f"{out}: max abs diff {diff:.3g} exceeds {bound:.3g}")
    if problems:
        raise ValidationError(f"graph {name} does not match its torch module: " + "; ".join(problems))
    return Agreement(diffs, overlaps)
