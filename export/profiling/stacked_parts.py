"""What the engines' stacked prefill bar in `cli.py profile --plot` draws: the parts wide enough to see, by name,
and the rest as one part, so that its legend names only what can be seen."""
from export.profiling.profile import OUTSIDE

VISIBLE = 0.02  # of the bar: a narrower part is a sliver, too thin to see or to match to a legend entry
MAX_NAMED = 5  # named parts; with "other" a legend of at most 6 entries, one row under the bar
OTHER = "other"  # the label of the parts grouped into one starts with it
LABELS = {OUTSIDE: "outside graphs (preprocess, glue)"}


def stacked_parts(breakdown_ms: dict, visible: float = VISIBLE, max_named: int = MAX_NAMED) -> list[tuple[str, float]]:
    """(label, ms) in the order prefill ran them: the largest `max_named` parts of at least `visible` of the prefill,
    then the others summed as one "other" part (absent when there are none). They add up to the prefill."""
    parts = {k: v for k, v in breakdown_ms.items() if k != "decode"}
    total = sum(parts.values())
    wide = sorted((k for k, v in parts.items() if v >= visible * total), key=parts.get, reverse=True)[:max_named]
    rest = [k for k in parts if k not in wide]
    named = [(LABELS.get(k, k), parts[k]) for k in parts if k in wide]
    if not rest:
        return named
    return named + [(f"{OTHER} ({len(rest)} parts)" if len(rest) > 1 else LABELS.get(rest[0], rest[0]),
                     sum(parts[k] for k in rest))]
