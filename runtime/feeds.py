"""Float feeds in the dtypes a graph's record names: the runtime makes pixels, pseudo-CLS vectors and thresholds in
fp32, while an fp16 graph takes every float input in fp16. Engines stay strict about dtypes; this is the one place
that converts."""
import numpy as np

from runtime.manifest import GraphRecord


def cast_floats(feed: dict, record: GraphRecord) -> dict:
    """A copy of `feed` whose numpy float arrays have the record's dtypes (those already right are not copied)."""
    wanted = {t.name: np.dtype(t.dtype) for t in record.inputs}
    return {name: value.astype(wanted[name]) if _needs_cast(value, wanted.get(name)) else value
            for name, value in feed.items()}


def _needs_cast(value, dtype) -> bool:
    return (dtype is not None and isinstance(value, np.ndarray) and np.issubdtype(value.dtype, np.floating)
            and np.issubdtype(dtype, np.floating) and value.dtype != dtype)
