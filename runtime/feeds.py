"""Float feeds in the dtypes a graph's record names: the runtime makes pixels, pseudo-CLS vectors and thresholds in
fp32, while an fp16 graph takes every float input in fp16. Engines stay strict about dtypes; this is the one place
that converts."""
import numpy as np

from runtime.manifest import GraphRecord

DTYPE_NAMES = {"fp32": "float32", "fp16": "float16"}  # manifest.dtype -> numpy: what the runtime allocates (KV buffers)


def float_inputs(record: GraphRecord) -> dict[str, np.dtype]:
    """The graph's float inputs and their dtypes: read once per graph, not per call."""
    dtypes = {t.name: np.dtype(t.dtype) for t in record.inputs}
    return {name: dtype for name, dtype in dtypes.items() if dtype.kind == "f"}


def cast_floats(feed: dict, dtypes: dict[str, np.dtype]) -> dict:
    """A copy of `feed` whose numpy float arrays have the dtypes `float_inputs` gave (those already right, and
    everything not a float array, are passed as they are)."""
    return {name: value.astype(dtypes[name]) if _needs_cast(value, dtypes.get(name)) else value
            for name, value in feed.items()}


def _needs_cast(value, dtype) -> bool:
    return dtype is not None and isinstance(value, np.ndarray) and value.dtype != dtype and value.dtype.kind == "f"
