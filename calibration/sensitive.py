"""Which nodes of a graph stay fp32, and why: the pruning-score path (everything that flows only into TopK or
into score outputs), normalisation (LayerNorm ops and the decomposed RMSNorm pattern), softmax, the LM head
(the MatMul nearest to `logits`), activation-by-activation MatMuls, and user patterns (--keep-fp32)."""
from collections import defaultdict, deque
from fnmatch import fnmatchcase

import onnx

# Outputs that only feed pruning decisions at runtime: kept indices, the CLS vectors for CLIP relevance.
SCORE_OUTPUTS = ["kept", "kept.*", "kept_count", "cls_joint", "cls_llm"]
NORM_OPS = {"LayerNormalization", "SimplifiedLayerNormalization", "SkipLayerNormalization", "RMSNormalization",
            "SkipSimplifiedLayerNormalization", "GroupNormalization", "InstanceNormalization", "BatchNormalization"}
SOFTMAX_OPS = {"Softmax", "LogSoftmax"}
GEMM_OPS = {"MatMul", "Gemm"}
RMS_STATS = {"Add", "Sqrt", "Reciprocal", "Div", "Cast"}


def _consumers(graph: onnx.GraphProto) -> dict[str, list]:
    out = defaultdict(list)
    for node in graph.node:
        for name in node.input:
            out[name].append(node)
    return out


def _is_score_output(name: str) -> bool:
    return any(fnmatchcase(name, p) for p in SCORE_OUTPUTS)


def score_path(graph: onnx.GraphProto) -> set[str]:
    """Nodes whose every output flows only into TopK or score outputs (and reaches one). Nodes are stored in
    topological order, so walking them backwards sees every consumer before its producer."""
    consumers, outputs = _consumers(graph), {o.name for o in graph.output}
    score = set()
    for node in reversed(graph.node):
        if node.op_type == "TopK":
            score.add(node.name)
            continue
        only, reaches = True, False
        for t in node.output:
            if t in outputs:
                only, reaches = only and _is_score_output(t), reaches or _is_score_output(t)
            for c in consumers.get(t, []):
                only, reaches = only and c.name in score, reaches or c.name in score
        if only and reaches:
            score.add(node.name)
    return score


def lm_head(graph: onnx.GraphProto) -> set[str]:
    """The MatMul/Gemm nodes nearest to the `logits` output, walking producers backwards."""
    producer = {t: n for n in graph.node for t in n.output}
    if "logits" not in {o.name for o in graph.output}:
        return set()
    queue, seen = deque([("logits", 0)]), set()
    found, depth_found = set(), None
    while queue:
        tensor, depth = queue.popleft()
        node = producer.get(tensor)
        if node is None or node.name in seen or (depth_found is not None and depth > depth_found):
            continue
        seen.add(node.name)
        if node.op_type in GEMM_OPS:
            found.add(node.name)
            depth_found = depth
            continue
        queue.extend((i, depth + 1) for i in node.input if i)
    return found


def norm_and_softmax(graph: onnx.GraphProto) -> dict[str, str]:
    """LayerNorm-family and softmax ops, plus RMSNorm written out: Pow(x, 2) | Mul(x, x) -> ReduceMean -> Add(eps)
    -> Sqrt -> Reciprocal | Div -> Mul(x, .) -> Mul(weight, .)."""
    consumers, producer = _consumers(graph), {t: n for n in graph.node for t in n.output}
    constants = constant_names(graph)
    only = lambda n: consumers.get(n.output[0], [None])[0] if len(consumers.get(n.output[0], [])) == 1 else None
    found = {}
    for node in graph.node:
        if node.op_type in NORM_OPS:
            found[node.name] = "norm"
        elif node.op_type in SOFTMAX_OPS:
            found[node.name] = "softmax"
        elif node.op_type == "ReduceMean":
            square = producer.get(node.input[0])
            squares = square is not None and (square.op_type == "Pow" or (square.op_type == "Mul"
                                                                          and square.input[0] == square.input[1]))
            if not squares:
                continue
            chain, nxt = [square, node], only(node)
            while nxt is not None and nxt.op_type in RMS_STATS:  # Add(eps), Sqrt, Reciprocal / Div, Cast
                chain.append(nxt)
                nxt = only(nxt)
            if nxt is not None and nxt.op_type == "Mul":  # x * rsqrt(...)
                chain.append(nxt)
                nxt = only(nxt)
                while nxt is not None and nxt.op_type == "Cast":
                    chain.append(nxt)
                    nxt = only(nxt)
                if nxt is not None and nxt.op_type == "Mul" and any(i in constants for i in nxt.input):
                    chain.append(nxt)  # * weight
            found.update({n.name: "rmsnorm" for n in chain})
    return found


def constant_names(graph: onnx.GraphProto) -> set[str]:
    return {i.name for i in graph.initializer} | {t for n in graph.node if n.op_type == "Constant" for t in n.output}


def activation_matmuls(graph: onnx.GraphProto) -> set[str]:
    """MatMuls of two activations (attention scores and mixing): per-tensor int8 on both sides costs accuracy and
    gains little; TensorRT and ORT's own LLM recipes quantize weight GEMMs only."""
    constants = constant_names(graph)
    return {n.name for n in graph.node if n.op_type == "MatMul" and n.input[1] not in constants}


def user_patterns(graph: onnx.GraphProto, graph_name: str, patterns) -> set[str]:
    """fnmatch patterns against a node's name, its op type, or `graph/node`."""
    return {n.name for n in graph.node
            if any(fnmatchcase(n.name, p) or fnmatchcase(n.op_type, p) or fnmatchcase(f"{graph_name}/{n.name}", p)
                   for p in patterns)}


def fp32_nodes(graph: onnx.GraphProto, graph_name: str, patterns=()) -> dict[str, str]:
    """{node name: reason} for every node that must stay fp32; where rules overlap, the first one names the reason."""
    reasons = {}
    rules = [("score_path", score_path(graph)), ("lm_head", lm_head(graph)),
             ("user", user_patterns(graph, graph_name, patterns)), ("activation_matmul", activation_matmuls(graph))]
    for reason, names in rules:
        for name in names:
            reasons.setdefault(name, reason)
    for name, reason in norm_and_softmax(graph).items():
        reasons.setdefault(name, reason)
    return reasons
