"""Makes an exported graph quantizable: Constant nodes and transposed weights become initializers (the dynamo
exporter writes `linear` as MatMul(x, Transpose(W)), which the quantizer would treat as two activations), every
node gets a name (exclusions are by name), and the nodes to keep in higher precision are worked out on the
result."""
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from calibration.sensitive import fp32_nodes


def fold_weight_transposes(model: onnx.ModelProto) -> int:
    """Transpose(initializer) -> a transposed initializer, so that the quantizer sees MatMul weights as constants
    (the dynamo exporter writes `linear` as MatMul(x, Transpose(W))). Returns how many were folded. An original
    goes as soon as its last Transpose is folded, so a 7B segment is held once, not twice."""
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    uses = Counter(i for n in graph.node for i in n.input) + Counter(o.name for o in graph.output)
    keep, folded = [], 0
    for node in graph.node:
        if node.op_type == "Transpose" and node.input[0] in inits:
            perm = next((list(a.ints) for a in node.attribute if a.name == "perm"), None)
            array = numpy_helper.to_array(inits[node.input[0]])
            graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(array.transpose(perm)), node.output[0]))
            del array
            folded += 1
            uses[node.input[0]] -= 1
            if uses[node.input[0]] == 0:
                graph.initializer.remove(inits.pop(node.input[0]))
        else:
            keep.append(node)
    del graph.node[:]
    graph.node.extend(keep)
    return folded


def _constant_value(attr) -> onnx.TensorProto | None:
    values = {"value_ints": (lambda a: np.array(a.ints, np.int64)), "value_int": (lambda a: np.array(a.i, np.int64)),
              "value_floats": (lambda a: np.array(a.floats, np.float32)), "value_float": (lambda a: np.array(a.f, np.float32))}
    if attr.name == "value":
        tensor = onnx.TensorProto()
        tensor.CopyFrom(attr.t)
        return tensor
    return numpy_helper.from_array(values[attr.name](attr)) if attr.name in values else None


def constants_to_initializers(model: onnx.ModelProto) -> int:
    """Constant nodes -> initializers: a quarter of the exported nodes, and ORT's quantizer rewrites the node
    list once per quantized tensor, so fewer nodes is proportionally faster. Returns how many were moved."""
    graph, keep, moved = model.graph, [], 0
    outputs = {o.name for o in graph.output}
    for node in graph.node:
        tensor = None
        if node.op_type == "Constant" and len(node.attribute) == 1 and node.output[0] not in outputs:
            tensor = _constant_value(node.attribute[0])
        if tensor is None:
            keep.append(node)
            continue
        tensor.name = node.output[0]
        graph.initializer.append(tensor)
        moved += 1
    del graph.node[:]
    graph.node.extend(keep)
    return moved


def name_nodes(model: onnx.ModelProto):
    """nodes_to_exclude works by name: give unnamed nodes one."""
    for k, node in enumerate(model.graph.node):
        if not node.name:
            node.name = f"{node.op_type}_{k}"


def prepared_model(src: Path, name: str, keep_fp32=()) -> tuple[onnx.ModelProto, dict[str, str]]:
    """The folded graph, weights loaded, and {node: reason} of the nodes that keep their precision."""
    model = onnx.load(str(src))
    constants_to_initializers(model)
    fold_weight_transposes(model)
    name_nodes(model)
    return model, fp32_nodes(model.graph, name, keep_fp32)


def prepare(src: Path, dst: Path, name: str, keep_fp32=()) -> dict[str, str]:
    """Writes the folded graph to dst (+ dst.data) and returns {node: reason} of the nodes kept fp32."""
    model, reasons = prepared_model(src, name, keep_fp32)
    onnx.save(model, str(dst), save_as_external_data=True, all_tensors_to_one_file=True, location=dst.name + ".data")
    return reasons
