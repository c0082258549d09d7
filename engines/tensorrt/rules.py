"""What TensorRT 10's ONNX parser accepts, written out, and one rule function per thing it refuses.

Each rule reads one graph (an onnx.ModelProto loaded without its weights) and returns Problems. They
catch, on any machine, what would otherwise surface only as a parser error on a GPU host, minutes into
a build. The op list follows onnx-tensorrt's operators.md / op checkers for TensorRT 10.x.
"""
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

# ai.onnx ops the TensorRT 10 ONNX parser imports (onnx-tensorrt operators.md). Absent on purpose (the
# parser refuses them): BitShift, Bitwise*, Col2Im, Compress, ConvInteger, DFT, Det, DynamicQuantizeLinear,
# MatMulInteger, MaxRoiPool, MaxUnpool, Multinomial, Optional*, QLinear*, Sequence*, String*, TfIdfVectorizer,
# Unique, and the opset 23 ops other than Attention (RMSNormalization, RotaryEmbedding; see OPSET_23_FUSED).
SUPPORTED_OPS = frozenset("""
Abs Acos Acosh Add And ArgMax ArgMin Asin Asinh Atan Atanh Attention AveragePool BatchNormalization
BlackmanWindow Cast CastLike Ceil Celu Clip Concat Constant ConstantOfShape Conv ConvTranspose Cos Cosh CumSum
DeformConv DepthToSpace DequantizeLinear Div Dropout Einsum Elu Equal Erf Exp Expand EyeLike Flatten Floor
Gather GatherElements GatherND Gelu Gemm GlobalAveragePool GlobalLpPool GlobalMaxPool Greater GreaterOrEqual
GridSample GroupNormalization GRU HammingWindow HannWindow Hardmax HardSigmoid HardSwish Identity If
ImageScaler InstanceNormalization IsInf IsNaN LayerNormalization LeakyRelu Less LessOrEqual Log LogSoftmax
Loop LpNormalization LpPool LRN LSTM MatMul Max MaxPool Mean MeanVarianceNormalization Min Mish Mod Mul Neg
NonMaxSuppression NonZero Not OneHot Or Pad ParametricSoftplus Pow PRelu QuantizeLinear RandomNormal
RandomNormalLike RandomUniform RandomUniformLike Range Reciprocal ReduceL1 ReduceL2 ReduceLogSum
ReduceLogSumExp ReduceMax ReduceMean ReduceMin ReduceProd ReduceSum ReduceSumSquare Relu Reshape Resize
ReverseSequence RNN RoiAlign Round ScaledTanh Scan Scatter ScatterElements ScatterND Selu Shape Shrink
Sigmoid Sign Sin Sinh Size Slice Softmax Softplus Softsign SpaceToDepth Split Sqrt Squeeze STFT Sub Sum Tan
Tanh ThresholdedRelu Tile TopK Transpose Trilu Unsqueeze Upsample Where Xor
""".split())
# The parser imports the ONNX Attention op (opset 23) from TensorRT 10.14 on (onnx-tensorrt 10.14 GA), as one
# IAttention layer: Q, K, V and an optional mask in, one output out; past_key / past_value are refused.
ATTENTION_MIN_TRT = (10, 14)
# What an export at opset 23 fuses for ONNX Runtime and an export at opset 18 writes out for TensorRT.
OPSET_23_FUSED = frozenset({"RMSNormalization", "RotaryEmbedding"})
WRITTEN_OUT_ATTENTION = "export again with `cli.py export ... --opset 18`, which writes attention out (MatMul + Softmax + MatMul)"

TRT_DTYPES = {TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.BFLOAT16, TensorProto.INT8, TensorProto.UINT8,
              TensorProto.INT32, TensorProto.INT64, TensorProto.BOOL, TensorProto.FLOAT8E4M3FN, TensorProto.INT4,
              TensorProto.FLOAT4E2M1}
MAX_TOPK_K = 3840  # TensorRT's ITopKLayer limit on k
# TopK's k: the operators.md restriction is "K input must be an initializer"; the newest parsers also take a
# shape tensor, but a constant k builds on every TensorRT 10, JetPack's included.


@dataclass(frozen=True)
class Problem:
    graph: str
    rule: str
    message: str
    kind: str = "error"  # "error" fails the check; "warning" fails it only under --strict

    def to_json(self) -> dict:
        return {"graph": self.graph, "rule": self.rule, "kind": self.kind, "message": self.message}


def all_nodes(graph: onnx.GraphProto):
    """Every node, including those in If / Loop / Scan bodies."""
    for node in graph.node:
        yield node
        for attr in node.attribute:
            for sub in ([attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)):
                yield from all_nodes(sub)


def _dtype_name(elem_type: int) -> str:
    return TensorProto.DataType.Name(elem_type).lower()


def check_ops(name: str, model: onnx.ModelProto) -> list[Problem]:
    local = {(f.domain, f.name) for f in model.functions}
    nodes = list(all_nodes(model.graph)) + [n for f in model.functions for n in f.node]
    unsupported = sorted({n.op_type if n.domain in ("", "ai.onnx") else f"{n.domain}::{n.op_type}" for n in nodes
                          if (n.domain, n.op_type) not in local
                          and not (n.domain in ("", "ai.onnx") and n.op_type in SUPPORTED_OPS)})
    return [Problem(name, "unsupported-op", f"op {op} is not imported by TensorRT 10's ONNX parser; " + (
                    "export again with `cli.py export ... --opset 18`, which writes norms and RoPE out for TensorRT"
                    if op in OPSET_23_FUSED else "rewrite it with supported ops in the exporter (see onnx-tensorrt "
                    "docs/operators.md), or provide a TensorRT plugin of that name")) for op in unsupported]


def check_attention(name: str, model: onnx.ModelProto, trt_version: tuple | None) -> list[Problem]:
    nodes = [n for n in all_nodes(model.graph) if n.op_type == "Attention" and n.domain in ("", "ai.onnx")]
    problems = []
    bad = [n.name or n.output[0] for n in nodes
           if any(n.input[4:6]) or sum(1 for o in n.output if o) > 1]
    if bad:
        problems.append(Problem(name, "attention-io", f"{len(bad)} Attention node(s) (first: {bad[0]}) use past_key/"
                                "past_value inputs or extra outputs; TensorRT's Attention takes Q, K, V and a mask "
                                "and returns one output. Concatenate the KV cache outside the op, or "
                                f"{WRITTEN_OUT_ATTENTION}"))
    if nodes:
        need = ".".join(map(str, ATTENTION_MIN_TRT))
        if trt_version is None:
            problems.append(Problem(name, "attention-version", f"{len(nodes)} ONNX Attention node(s) need TensorRT >= "
                                    f"{need} to parse (JetPack 6 ships 10.3); on an older TensorRT, "
                                    f"{WRITTEN_OUT_ATTENTION}", "warning"))
        elif tuple(trt_version[:2]) < ATTENTION_MIN_TRT:
            problems.append(Problem(name, "attention-version", f"{len(nodes)} ONNX Attention node(s) need TensorRT >= "
                                    f"{need}, this host has {'.'.join(map(str, trt_version))}; upgrade TensorRT "
                                    f"or {WRITTEN_OUT_ATTENTION}"))
    return problems


def _typed_values(graph: onnx.GraphProto):
    yield from graph.input
    yield from graph.output
    yield from graph.value_info


def check_dtypes(name: str, model: onnx.ModelProto) -> list[Problem]:
    found = {}  # dtype -> first tensor name that has it
    def note(elem_type, where):
        if elem_type not in TRT_DTYPES and elem_type != TensorProto.UNDEFINED:
            found.setdefault(elem_type, where)
    for v in _typed_values(model.graph):
        note(v.type.tensor_type.elem_type, v.name)
    for init in model.graph.initializer:
        note(init.data_type, init.name)
    for node in all_nodes(model.graph):
        for attr in node.attribute:
            if node.op_type == "Cast" and attr.name == "to":
                note(attr.i, f"{node.name or node.output[0]} (Cast to)")
            elif attr.type == onnx.AttributeProto.TENSOR:
                note(attr.t.data_type, f"{node.name or node.output[0]} ({attr.name})")
    return [Problem(name, "dtype", f"tensor {where} is {_dtype_name(t)}, which TensorRT does not take (it takes float32, "
                    "float16, bfloat16, int8, uint8, int32, int64, bool, fp8/int4/fp4); cast it in the exporter "
                    "(float64 -> float32, unsigned/16-bit ints -> int32)") for t, where in sorted(found.items())]


def _constant_value(model: onnx.ModelProto, tensor: str):
    """The value of `tensor` if an initializer or a Constant node makes it, else None."""
    for init in model.graph.initializer:
        if init.name == tensor:
            return numpy_helper.to_array(init) if init.data_location != TensorProto.EXTERNAL else "external"
    for node in all_nodes(model.graph):
        if node.op_type == "Constant" and tensor in node.output:
            attr = node.attribute[0]
            if attr.type == onnx.AttributeProto.TENSOR:
                return numpy_helper.to_array(attr.t)
            return onnx.helper.get_attribute_value(attr)
    return None


def _reads_a_shape(model: onnx.ModelProto, tensor: str, depth: int = 8) -> bool:
    """Whether `tensor` is computed from a Shape op within `depth` producers."""
    producers = {out: node for node in model.graph.node for out in node.output}
    frontier = [tensor]
    for _ in range(depth):
        nodes = [producers[t] for t in frontier if t in producers]
        if any(n.op_type == "Shape" for n in nodes):
            return True
        frontier = [i for n in nodes for i in n.input if i]
    return False


def check_topk(name: str, model: onnx.ModelProto) -> list[Problem]:
    problems = []
    for node in all_nodes(model.graph):
        if node.op_type != "TopK" or len(node.input) < 2:
            continue
        label = node.name or node.output[0]
        k = _constant_value(model, node.input[1])
        if k is None:
            how = ("read off a tensor's shape (torch.sort / argsort export this way): sort with torch.topk(x, k=<int>, "
                   "largest=False) instead, or fold constants (polygraphy surgeon sanitize --fold-constants) when that "
                   "dim is static" if _reads_a_shape(model, node.input[1]) else
                   "computed at run time: export with a fixed keep count (a Python int, not a tensor)")
            problems.append(Problem(name, "topk-dynamic-k", f"TopK {label} takes k from the tensor {node.input[1]!r}, "
                                    f"but TensorRT needs k as a constant initializer; k is {how}"))
            continue
        k = None if isinstance(k, str) else int(np.max(k))  # weights kept outside the .onnx: value not read here
        if k is not None and k > MAX_TOPK_K:
            problems.append(Problem(name, "topk-k-too-large", f"TopK {label} has k={k}, TensorRT's TopK takes "
                                    f"k <= {MAX_TOPK_K}; keep fewer tokens or select in chunks"))
    return problems


def check_dims(name: str, model: onnx.ModelProto, ranged=None) -> list[Problem]:
    """Every dynamic input dim needs a name, and (given `ranged`, the dim names the engine dir records a
    (min, opt, max) range for) a range, or no optimization profile can cover it."""
    problems = []
    for v in model.graph.input:
        for axis, d in enumerate(v.type.tensor_type.shape.dim):
            if d.HasField("dim_value"):
                continue
            if not d.dim_param:
                problems.append(Problem(name, "unnamed-dim", f"input {v.name} axis {axis} is dynamic without a name, so "
                                        "no optimization profile can cover it; name it in the exporter's dynamic shapes "
                                        "(batch, seq, visual_tokens, ...) or fix it to a number"))
            elif ranged is not None and d.dim_param not in ranged:
                problems.append(Problem(name, "unknown-dim", f"input {v.name} axis {axis} is the dynamic dim "
                                        f"{d.dim_param!r}, for which the engine dir records no (min, opt, max) range; "
                                        f"it has ranges for {', '.join(sorted(ranged)) or 'none'}. Name it in the "
                                        "exporter's dynamic shapes as one of batch, visual_tokens, prefix, suffix, seq, "
                                        "clip_tokens, capacity.<n>, whose ranges export records"))
    return problems


def check_int64_io(name: str, model: onnx.ModelProto) -> list[Problem]:
    io = [v.name for v in list(model.graph.input) + list(model.graph.output)
          if v.type.tensor_type.elem_type == TensorProto.INT64]
    return [Problem(name, "int64-io", f"{len(io)} int64 graph input/output(s) ({', '.join(io[:4])}"
                    f"{', ...' if len(io) > 4 else ''}); TensorRT runs them, but int32 serves for ids, positions, masks "
                    "and indices and saves a cast per call: export them as int32", "warning")] if io else []
