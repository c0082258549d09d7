"""A graph's I/O signature against an expected one: names, dtypes and dims, every difference named.

A signature is {"inputs" | "outputs": [(name, dtype, shape)]}; a shape holds ints for fixed dims and names for
symbolic ones. A runner reports a dim it cannot name (a TensorRT plan's -1, ONNX Runtime's None) as dynamic,
which matches any symbolic dim.
"""
import numpy as np


def _dynamic(dim) -> bool:
    return dim is None or (isinstance(dim, int) and dim < 0)


def dim_problem(name: str, want: list, have: list) -> str | None:
    if len(want) != len(have):
        return f"{name} has rank {len(have)} {have}, expected {len(want)} {want}"
    for axis, (w, h) in enumerate(zip(want, have)):
        if _dynamic(h):
            if isinstance(w, int):
                return f"{name} axis {axis} is dynamic, expected the fixed size {w}"
        elif w != h:
            return f"{name} axis {axis} is {h!r}, expected {w!r}"
    return None


def signature_problems(want: dict, have: dict) -> list[str]:
    problems = []
    for kind in ("inputs", "outputs"):
        expected = {n: (dtype, shape) for n, dtype, shape in want[kind]}
        actual = {n: (dtype, shape) for n, dtype, shape in have[kind]}
        missing, extra = sorted(set(expected) - set(actual)), sorted(set(actual) - set(expected))
        if missing:
            problems.append(f"{kind} missing {missing}")
        if extra:
            problems.append(f"unexpected {kind} {extra}")
        for n in sorted(set(expected) & set(actual)):
            (want_dtype, want_shape), (have_dtype, have_shape) = expected[n], actual[n]
            if np.dtype(have_dtype).name != np.dtype(want_dtype).name:
                problems.append(f"{n} is {np.dtype(have_dtype).name}, expected {np.dtype(want_dtype).name}")
            elif (problem := dim_problem(n, list(want_shape), list(have_shape))) is not None:
                problems.append(problem)
    return problems
