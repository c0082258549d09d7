"""torch.onnx.export (dynamo) with named symbolic dims, flattened I/O names, weights beside the graph."""
import contextlib
import io
import logging
import warnings
from pathlib import Path

import onnx_ir as ir
import torch
from torch.export import Dim

from export.graphs.graph import GraphDef
from export.modules.layers import exporting_at

OPSET = 23  # gives ONNX's Attention, RMSNormalization and RotaryEmbedding ops
# torch's exporter writes opsets 18..23; below 23 attention, norms and RoPE are written out (MatMul + Softmax + MatMul ...), which
# TensorRT parsers older than 10.14 (JetPack's 10.3 among them) need
OPSETS = range(18, 24)
OPTIMIZE = False


def _dynamic_shapes(graph: GraphDef):
    """Builds torch.export dynamic_shapes mirroring the (possibly nested) positional inputs."""
    dims: dict[str, Dim] = {}

    def dim(name):
        return dims.setdefault(name, Dim(name.replace(".", "_"), min=1))

    def shapes_for(name):
        if name is None:  # an optional input left out of this graph
            return None
        return {axis: dim(d) for axis, d in graph.dims.get(name, {}).items()} or None

    structure = graph.nested or graph.input_names
    return tuple([shapes_for(n) for n in item] if isinstance(item, list) else shapes_for(item) for item in structure)


def export_graph(graph: GraphDef, sample: tuple, path: Path, opset: int = OPSET):
    """Exports graph.module, traced on the positional `sample`, to path (+ path.data for the weights)."""
    # The exporter warns on every call that torchvision's ops are not registered; we use none of them.
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), exporting_at(opset):
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            graph.module, sample, dynamic_shapes=_dynamic_shapes(graph), dynamo=True,
            opset_version=opset, input_names=graph.input_names, output_names=graph.output_names,
            optimize=OPTIMIZE, verbose=False)
    _name_dims(program.model, graph)
    # Saved from the exporter's IR, each weight streamed from its torch tensor to path.data: building the
    # ModelProto first (program.model_proto) would hold a second copy of every weight in memory.
    program.save(str(path), external_data=True)
    data = Path(f"{path}.data")
    if data.exists() and data.stat().st_size == 0:  # a graph without weights (a prune graph)
        data.unlink()


def _name_dims(model: ir.Model, graph: GraphDef):
    """Input dims get the names the manifest promises (exporter names can be s0, s1, ...)."""
    for value in model.graph.inputs:
        names = graph.dims.get(value.name, {})
        if names:
            value.shape = ir.Shape([ir.SymbolicDim(names[a]) if a in names else d for a, d in enumerate(value.shape)])
