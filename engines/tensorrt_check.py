"""`cli.py check`: runs the TensorRT rules over every graph of an exported engine dir, without TensorRT.

Graphs are loaded without their weights (onnx.load(..., load_external_data=False)), so checking a 7B
export takes seconds and no GPU. Errors are what the TensorRT ONNX parser or builder would refuse;
warnings are what it accepts at a cost.
"""
import json
from pathlib import Path

import onnx

from engines.tensorrt_rules import (Problem, check_attention, check_dims, check_dtypes, check_int64_io, check_ops,
                                    check_topk)
from runtime.errors import EngineDirError


def parse_trt_version(text: str) -> tuple:
    """'10.3' or '10.3.0' -> (10, 3, 0)."""
    try:
        parts = tuple(int(p) for p in text.split("."))
    except ValueError:
        parts = ()
    if not 2 <= len(parts) <= 4:
        raise ValueError(f"--tensorrt wants a version like 10.3 or 10.14.1, got {text!r}")
    return parts


def installed_trt_version() -> tuple | None:
    """TensorRT's (major, minor, ...) if it imports here, else None (the check then assumes a recent one)."""
    try:
        import tensorrt
    except ImportError:
        return None
    return tuple(int(p) for p in tensorrt.__version__.split(".")[:3] if p.isdigit())


def check_graph(name: str, model: onnx.ModelProto, trt_version: tuple | None) -> list[Problem]:
    return (check_ops(name, model) + check_attention(name, model, trt_version) + check_dtypes(name, model)
            + check_topk(name, model) + check_dims(name, model) + check_int64_io(name, model))


def check_engine_dir(engine_dir, trt_version: tuple | None | str = "installed") -> list[Problem]:
    """Problems of every graph in the engine dir's manifest. trt_version: "installed" detects it."""
    root = Path(engine_dir)
    path = root / "manifest.json"
    if not path.is_file():
        raise EngineDirError(f"{root} has no manifest.json: expected an engine dir written by `cli.py export`")
    manifest = json.loads(path.read_text())
    if "engines" in manifest:
        raise EngineDirError(f"{root} is already built for TensorRT (its manifest lists engines); check the "
                             "exported ONNX engine dir it was built from instead")
    version = installed_trt_version() if trt_version == "installed" else trt_version
    problems = []
    for name, record in manifest["graphs"].items():
        graph_path = root / record["file"]
        if not graph_path.is_file():
            problems.append(Problem(name, "missing-graph", f"{record['file']} is missing; export the engine dir again"))
            continue
        try:
            model = onnx.load(str(graph_path), load_external_data=False)
        except Exception as e:  # onnx's message names the parse failure
            problems.append(Problem(name, "unreadable-graph", f"{record['file']} does not load ({e}); export again"))
            continue
        problems += check_graph(name, model, version)
    return problems


def failed(problems: list[Problem], strict: bool = False) -> bool:
    return any(p.kind == "error" or strict for p in problems)


def format_problems(problems: list[Problem], engine_dir) -> str:
    if not problems:
        return f"{engine_dir}: every graph passes the TensorRT checks"
    width = max(len(p.graph) for p in problems)
    rule_width = max(len(p.rule) for p in problems)
    lines = [f"{'graph':{width}s}  {'kind':7s}  {'rule':{rule_width}s}  message"]
    lines += [f"{p.graph:{width}s}  {p.kind:7s}  {p.rule:{rule_width}s}  {p.message}" for p in problems]
    errors = sum(p.kind == "error" for p in problems)
    lines.append(f"{errors} error(s), {len(problems) - errors} warning(s)")
    return "\n".join(lines)


def problems_json(problems: list[Problem]) -> str:
    return json.dumps([p.to_json() for p in problems])
