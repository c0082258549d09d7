"""Static TensorRT-readiness check of ONNX graphs, without TensorRT: the rules of rules.py over one graph,
loaded without its weights (seconds for a 7B graph, no GPU). Errors are what TensorRT's ONNX parser or builder
would refuse; warnings are what it accepts at a cost."""
import json

import onnx

from engines.tensorrt.rules import (
    Problem,
    check_attention,
    check_dims,
    check_dtypes,
    check_int64_io,
    check_ops,
    check_topk,
)


def check_graph(name: str, model: onnx.ModelProto, trt_version: tuple | None, ranged=None) -> list[Problem]:
    """trt_version None: a recent TensorRT is assumed (version-dependent rules warn). ranged: see check_dims."""
    return (check_ops(name, model) + check_attention(name, model, trt_version) + check_dtypes(name, model)
            + check_topk(name, model) + check_dims(name, model, ranged) + check_int64_io(name, model))


def check_onnx_file(name: str, path, trt_version: tuple | None, ranged=None) -> list[Problem]:
    """check_graph on a file; a missing or unreadable file is itself a problem."""
    try:
        model = onnx.load(str(path), load_external_data=False)
    except FileNotFoundError:
        return [Problem(name, "missing-graph", f"{path} is missing; export the engine dir again")]
    except Exception as e:  # onnx's message names the parse failure
        return [Problem(name, "unreadable-graph", f"{path} does not load ({e}); export again")]
    return check_graph(name, model, trt_version, ranged)


def failed(problems: list[Problem], strict: bool = False) -> bool:
    return any(p.kind == "error" or strict for p in problems)


def format_problems(problems: list[Problem], where) -> str:
    if not problems:
        return f"{where}: every graph passes the TensorRT checks"
    width = max(len(p.graph) for p in problems)
    rule_width = max(len(p.rule) for p in problems)
    lines = [f"{'graph':{width}s}  {'kind':7s}  {'rule':{rule_width}s}  message"]
    lines += [f"{p.graph:{width}s}  {p.kind:7s}  {p.rule:{rule_width}s}  {p.message}" for p in problems]
    errors = sum(p.kind == "error" for p in problems)
    lines.append(f"{errors} error(s), {len(problems) - errors} warning(s)")
    return "\n".join(lines)


def problems_json(problems: list[Problem]) -> str:
    return json.dumps([p.to_json() for p in problems])
