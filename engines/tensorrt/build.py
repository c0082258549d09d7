"""ONNX graph -> TensorRT plan, polygraphy style: NetworkFromOnnxPath -> CreateConfig -> EngineBytesFromNetwork.

Precision follows the graph. An fp16/bf16 graph (export --dtype) is built strongly typed, exactly as its types
say, on every TensorRT: its fp32 islands (norms, softmax, pruning scores) are casts in the graph itself. An fp32
graph, by TensorRT major version:
- 10.x (weakly typed; JetPack's): fp16/bf16 builder flags, with LayerNorm, softmax and reductions pinned
  to fp32 under obey_precision_constraints; int8/fp8 flags over Q/DQ graphs.
- 11.x (strongly typed only: the fp16/bf16/int8 flags and precision constraints are gone): fp32, or
  int8/fp8 from Q/DQ graphs; an fp16 plan needs an fp16 graph (export --dtype fp16).
INT4 weight-only graphs (int4 DequantizeLinear into MatMul, `calibrate --int4-format qdq`) need no flag on either:
the parser takes int4 Q/DQ since 10.0, and the plan computes in the graph's dtype.
"""
from dataclasses import dataclass, field
from pathlib import Path

import onnx

from engines.errors import EngineConfigError, EngineError

PRECISIONS = ("fp32", "fp16", "bf16", "int8", "fp8")
FP32_LAYER_TYPES = ("NORMALIZATION", "SOFTMAX", "REDUCE")  # LayerNorm, softmax, RMSNorm's mean of squares
QDQ_OPS = {"QuantizeLinear", "DequantizeLinear"}


class EngineBuildError(EngineError):
    """TensorRT refused a graph while parsing or building it."""


def check_precision(precision: str):
    if precision not in PRECISIONS:
        raise EngineConfigError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")


@dataclass(frozen=True)
class BuildOptions:
    config: dict = field(default_factory=dict)  # CreateConfig keyword arguments
    pin_norms: bool = False  # weakly typed fp16/bf16: keep norms, softmax and reductions in fp32
    strongly_typed: bool = False  # build the graph's own types (TensorRT 11 networks always are)


def config_options(precision: str, trt_major: int, quantized: bool, graph_dtype: str = "fp32") -> BuildOptions:
    """How to build `precision` from graphs of `graph_dtype` on a TensorRT major."""
    check_precision(precision)
    if graph_dtype != "fp32":
        if precision != graph_dtype:
            raise EngineConfigError(f"these graphs were exported --dtype {graph_dtype} and TensorRT builds them as their "
                                    f"types say: build --precision {graph_dtype}, or export again with --dtype "
                                    f"{precision if precision in ('fp32', 'fp16', 'bf16') else 'fp32'} first")
        return BuildOptions(strongly_typed=trt_major < 11)
    if precision in ("int8", "fp8") and not quantized:
        raise EngineConfigError(f"--precision {precision} needs graphs with Q/DQ nodes (TensorRT takes explicit "
                                "quantization only) and this engine dir has none: quantize it first (`cli.py "
                                "calibrate` writes INT8 Q/DQ graphs), or build fp16/fp32")
    if trt_major >= 11:
        if precision in ("fp16", "bf16"):
            raise EngineConfigError(f"TensorRT {trt_major}.x builds strongly typed networks only (it removed the "
                                    f"fp16/bf16 builder flags) and these graphs are fp32: export again with --dtype "
                                    f"{precision} for a {precision} plan, or build --precision fp32")
        return BuildOptions()  # strong typing: the graph's own types (and Q/DQ) decide
    if precision in ("fp16", "bf16"):
        return BuildOptions({precision: True, "precision_constraints": "obey"}, pin_norms=True)
    return BuildOptions({precision: True} if precision != "fp32" else {})


def keep_norms_in_fp32(network):
    """PostprocessNetwork step: LayerNorm, softmax and reductions (RMSNorm's mean of squares overflows fp16
    above |x| ~ 256) compute and emit fp32; with obey_precision_constraints TensorRT must honour it."""
    import tensorrt as trt
    types = {getattr(trt.LayerType, t) for t in FP32_LAYER_TYPES if hasattr(trt.LayerType, t)}
    floats = {trt.float32, trt.float16, getattr(trt, "bfloat16", trt.float16)}
    for layer in network:
        if layer.type in types and all(layer.get_output(i).dtype in floats for i in range(layer.num_outputs)):
            layer.precision = trt.float32
            for i in range(layer.num_outputs):
                layer.set_output_type(i, trt.float32)


def plan_loader(onnx_path, profiles: list[dict], options: BuildOptions, workspace_mb: int, timing_cache):
    """Loader chain ONNX file -> serialized plan, composed lazily (nothing runs until it is called).
    profiles: per optimization profile, {input name: (min shape, opt shape, max shape)}."""
    import tensorrt as trt
    from polygraphy.backend.trt import (
        CreateConfig,
        EngineBytesFromNetwork,
        NetworkFromOnnxPath,
        PostprocessNetwork,
        Profile,
    )
    network = NetworkFromOnnxPath(str(onnx_path), strongly_typed=options.strongly_typed or None)
    if options.pin_norms:
        network = PostprocessNetwork(network, keep_norms_in_fp32, "keep norms in fp32")
    trt_profiles = []
    for profile in profiles:
        trt_profiles.append(Profile())
        for name, (low, opt, high) in profile.items():
            trt_profiles[-1].add(name, low, opt, high)
    config = CreateConfig(profiles=trt_profiles, load_timing_cache=str(timing_cache),
                          memory_pool_limits={trt.MemoryPoolType.WORKSPACE: workspace_mb << 20}, **options.config)
    return EngineBytesFromNetwork(network, config, save_timing_cache=str(timing_cache))


def build_plan(onnx_path: Path, profiles: list[dict], options: BuildOptions, workspace_mb: int,
               timing_cache: Path) -> bytes:
    """The plan's bytes, or an EngineBuildError that names the graph and where to look."""
    from polygraphy.exception import PolygraphyException
    try:
        return plan_loader(onnx_path, profiles, options, workspace_mb, timing_cache)()
    except PolygraphyException as e:
        raise EngineBuildError(f"TensorRT could not build {Path(onnx_path).name}: {e}. TensorRT's log above names the "
                               "layer; `cli.py check` lists what it refuses, and a larger --workspace helps when "
                               "tactics ran out of memory") from e


def has_qdq(onnx_path) -> bool:
    """Whether the graph carries Q/DQ nodes (TensorRT takes int8/fp8 only from them); weights are not read."""
    model = onnx.load(str(onnx_path), load_external_data=False)
    return any(node.op_type in QDQ_OPS for node in model.graph.node)
