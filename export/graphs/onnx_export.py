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


def torch_held_weights(path: Path, module: torch.nn.Module) -> dict:
    """{initializer: the module's tensor} for each weight of the graph at `path` that the module holds as it stands
    in the graph (the exporter names initializers by their module paths): what a session can read (as numpy, no
    copy) in place of path.data. Weights torch holds otherwise (another shape or dtype, bf16, not contiguous) are
    left out."""
    import onnx
    tensors = {**dict(module.named_parameters(remove_duplicate=False)), **dict(module.named_buffers(remove_duplicate=False))}
    shared = {}
    for init in onnx.load(str(path), load_external_data=False).graph.initializer:
        t = tensors.get(init.name)
        if t is None or t.dtype == torch.bfloat16 or not t.is_contiguous() or t.device.type != "cpu":
            continue
        array = t.detach().numpy()
        if list(array.shape) == list(init.dims) and onnx.helper.np_dtype_to_tensor_dtype(array.dtype) == init.data_type:
            shared[init.name] = t
    return shared


def external_bytes_differ(path: Path, weights: dict) -> list[str]:
    """The initializers of `weights` whose bytes in the graph's external data are not the array's: a session that
    read `weights` in their place validated what the files hold only where this is empty. Read in 64 MiB pieces,
    so the check holds no second copy."""
    import onnx
    differ, piece = [], 64 << 20
    inits = {i.name: i for i in onnx.load(str(path), load_external_data=False).graph.initializer}
    for name, array in weights.items():
        info = {e.key: e.value for e in inits[name].external_data}
        if not info:  # stored inside the graph: too small to matter for memory, compared as it is
            differ += [] if onnx.numpy_helper.to_array(inits[name]).tobytes() == array.tobytes() else [name]
            continue
        flat, offset = memoryview(array.reshape(-1)).cast("B"), int(info.get("offset", 0))
        if int(info.get("length", flat.nbytes)) != flat.nbytes:
            differ.append(name)
            continue
        with open(path.parent / info["location"], "rb") as f:
            f.seek(offset)
            if any(f.read(min(piece, flat.nbytes - at)) != flat[at:at + piece] for at in range(0, flat.nbytes, piece)):
                differ.append(name)
    return differ
