"""An exported graph run by ONNX Runtime in consecutive pieces, for validation in bounded memory.

ONNX Runtime's CPU provider has no fp16 MatMul: it casts each fp16 weight to fp32 inside the run, and since those
casts depend on nothing but the weight, it runs them all first. So one run of a 20-layer fp16 decoder graph holds
twice the graph's weights in fp32 at once (16 GB at LLaVA-7B's widths). Run piece by piece, the graph holds at
most one piece's casts. The pieces are the graph's own nodes, in the graph's own order, with its own weights (read
where torch holds them, fed as inputs so nothing is copied), cut where the weights add up to `budget` bytes. The
one difference from a whole run: a tensor crossing a cut is rounded to the graph's dtype there, where the whole
run may have kept it in fp32 between two cast nodes (measured at LLaVA-7B's widths: 0.016 on hidden states of
magnitude ~10, within the fp16 tolerance).
"""
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx


@dataclass
class Piece:
    model: onnx.ModelProto
    inputs: list[str]  # activations from the feed or earlier pieces, then weights
    outputs: list[str]  # what later pieces or the graph's outputs need
    session: object = None


def _types(model: onnx.ModelProto) -> dict[str, onnx.TypeProto]:
    inferred = onnx.shape_inference.infer_shapes(model)
    g = inferred.graph
    return {v.name: v.type for v in [*g.input, *g.output, *g.value_info]}


def _value_info(name: str, types: dict) -> onnx.ValueInfoProto:
    if name not in types:
        raise ValueError(f"no type for tensor {name!r}: the graph cannot be cut there")
    return onnx.helper.make_value_info(name, types[name])


def split_graph(path: Path, budget: int) -> tuple[list[Piece], dict, list[str]]:
    """Cuts the graph at `path` into pieces of at most `budget` bytes of initializers (a node needing more is a
    piece of its own). Returns the pieces, the graph's initializers (protos, for those torch may not hold) and its
    output names."""
    model = onnx.load(str(path), load_external_data=False)
    g = model.graph
    if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for n in g.node for a in n.attribute):
        raise ValueError(f"{path.name} has control flow; it runs whole")
    inits = {i.name: i for i in g.initializer}
    size = {name: int(np.prod(i.dims)) * onnx.helper.tensor_dtype_to_np_dtype(i.data_type).itemsize
            for name, i in inits.items()}
    groups, current, held = [], [], set()
    for node in g.node:
        new = {t for t in node.input if t in inits} - held
        if current and sum(size[t] for t in held | new) > budget:
            groups.append(current)
            current, held = [], set()
            new = {t for t in node.input if t in inits}
        current.append(node)
        held |= new
    groups.append(current)
    types = _types(model)
    graph_outputs = [o.name for o in g.output]
    pieces = []
    for k, nodes in enumerate(groups):
        produced = {t for n in nodes for t in n.output if t}
        consumed = list(dict.fromkeys(t for n in nodes for t in n.input if t))
        later = {t for n in (x for grp in groups[k + 1:] for x in grp) for t in n.input} | set(graph_outputs)
        activations = [t for t in consumed if t not in produced and t not in inits]
        weights = [t for t in consumed if t in inits]
        outputs = [t for n in nodes for t in n.output if t and t in later]
        piece_graph = onnx.helper.make_graph(nodes, f"{g.name}.{k}", [_value_info(t, types) for t in activations + weights],
                                             [_value_info(t, types) for t in outputs])
        piece = onnx.helper.make_model(piece_graph, opset_imports=model.opset_import, ir_version=model.ir_version)
        pieces.append(Piece(piece, activations + weights, outputs))
    return pieces, inits, graph_outputs


class ChunkedOnnxRunner:
    """infer(feed) -> {graph output: numpy}, like OnnxrtRunner's unbound path, running the graph piece by piece.
    `weights`: {initializer: numpy array} held elsewhere (torch's tensors); the graph's other initializers are
    loaded from its files."""

    def __init__(self, path: Path, weights: dict, budget: int):
        import onnxruntime as ort
        self.path = Path(path)
        self.pieces, inits, self.outputs = split_graph(self.path, budget)
        self.weights = dict(weights)
        for name, init in inits.items():
            if name not in self.weights:
                self.weights[name] = onnx.numpy_helper.to_array(init, base_dir=str(self.path.parent))
        # per piece, the tensors still needed after it: by later pieces, or as the graph's outputs
        self.needed_later = [set().union(*(p.inputs for p in self.pieces[k + 1:])) | set(self.outputs)
                             for k in range(len(self.pieces))]
        options = ort.SessionOptions()
        options.log_severity_level = 3
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        options.enable_cpu_mem_arena = False  # a piece's fp32 casts go back once it has run
        for piece in self.pieces:
            piece.session = ort.InferenceSession(piece.model.SerializeToString(), options,
                                                 providers=["CPUExecutionProvider"])

    def infer(self, feed: dict) -> dict:
        live = dict(feed)
        for piece, later in zip(self.pieces, self.needed_later):
            args = {t: live[t] if t in live else self.weights[t] for t in piece.inputs}
            live.update(zip(piece.outputs, piece.session.run(piece.outputs, args)))
            live = {t: v for t, v in live.items() if t in later}
        return {name: live[name] for name in self.outputs}

