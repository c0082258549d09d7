"""Export validates each graph on the weights torch already holds (no second copy), checks that the files hold
those bytes, runs large fp16 graphs in pieces, and drops torch's weights once no graph left needs them."""
import numpy as np
import onnx
import pytest
import torch

from engines.onnxruntime_runner import OnnxrtRunner, SessionFromOnnx
from export.graphs.chunked import ChunkedOnnxRunner, split_graph
from export.graphs.onnx_export import external_bytes_differ, torch_held_weights
from export.graphs.release import WeightRelease
from export.methods.registry import get_method
from export.models.checkpoint import load_checkpoint
from runtime.prefill import decoder_feed


@pytest.fixture(scope="module")
def decoder(none_dir):
    """The tiny `none` export's decoder graph, its torch module (rebuilt from the same checkpoint) and a prompt feed."""
    plan = get_method("none").build(load_checkpoint("tiny", None, False), get_method("none").config_type())
    path, graph = none_dir / "decoder.0.onnx", plan.graphs["decoder.0"]
    inputs = {i.name: i for i in onnx.load(str(path), load_external_data=False).graph.input}
    kv, d = (inputs["past_key_values.0.key"].type.tensor_type.shape.dim[k].dim_value for k in (1, 3))
    n, capacity, h = 9, 12, inputs["hidden_in"].type.tensor_type.shape.dim[2].dim_value
    buffers = {name: np.zeros((1, kv, capacity, d), np.float32) for name in inputs if name.startswith("past")}
    rng = np.random.default_rng(0)
    feed = decoder_feed(rng.standard_normal((1, n, h)).astype(np.float32), np.arange(n, dtype=np.int32)[None],
                        np.ones((1, n), bool), capacity, buffers)
    return path, graph, feed


def test_every_weight_of_a_decoder_graph_is_read_where_torch_holds_it(decoder):
    path, graph, feed = decoder
    weights = torch_held_weights(path, graph.module)
    initializers = onnx.load(str(path), load_external_data=False).graph.initializer
    assert set(weights) == {i.name for i in initializers} and len(weights) > 10
    shared = {k: t.detach().numpy() for k, t in weights.items()}
    assert external_bytes_differ(path, shared) == []
    assert all(np.shares_memory(shared[k], t.detach().numpy()) for k, t in weights.items())  # views, no copies
    whole = OnnxrtRunner(SessionFromOnnx(path, ["CPUExecutionProvider"]), "decoder.0", kv_device=None).infer(dict(feed))
    on_torch = OnnxrtRunner(SessionFromOnnx(path, ["CPUExecutionProvider"], initializers=shared), "decoder.0",
                            kv_device=None).infer(dict(feed))
    assert max(float(np.abs(whole[k] - on_torch[k]).max()) for k in whole) < 1e-5


def test_a_weight_file_that_differs_from_torch_is_named(decoder, tmp_path):
    path, graph, _ = decoder
    copy = tmp_path / path.name
    copy.write_bytes(path.read_bytes())
    data = bytearray((path.parent / f"{path.name}.data").read_bytes())
    weights = {k: t.detach().numpy() for k, t in torch_held_weights(path, graph.module).items()}
    init = next(i for i in onnx.load(str(path), load_external_data=False).graph.initializer
                if i.name.endswith("down_proj.weight"))
    offset = int({e.key: e.value for e in init.external_data}["offset"])
    data[offset + 5] ^= 0xFF
    (tmp_path / f"{path.name}.data").write_bytes(bytes(data))
    assert external_bytes_differ(copy, weights) == [init.name]


def test_a_graph_run_in_pieces_gives_the_whole_runs_outputs(decoder):
    path, graph, feed = decoder
    weights = {k: t.detach().numpy() for k, t in torch_held_weights(path, graph.module).items()}
    budget = 600_000  # bytes of weights per piece: about one tiny decoder layer
    pieces, _, _ = split_graph(path, budget)
    sizes = [sum(weights[t].nbytes for t in p.inputs if t in weights) for p in pieces]
    assert len(pieces) >= 3 and max(sizes) <= budget
    whole = OnnxrtRunner(SessionFromOnnx(path, ["CPUExecutionProvider"]), "decoder.0", kv_device=None).infer(dict(feed))
    chunked = ChunkedOnnxRunner(path, weights, budget).infer(dict(feed))
    assert list(chunked) == list(whole)
    assert max(float(np.abs(whole[k] - chunked[k]).max()) for k in whole) < 1e-5  # fp32: nothing rounds at a cut


def test_weights_go_once_the_last_graph_holding_them_is_validated():
    shared, own = torch.nn.Linear(4, 4), torch.nn.Linear(4, 2)
    release = WeightRelease({"a": {"w": shared.weight, "b": own.weight}, "b": {"w": shared.weight}}, [shared, own])
    assert release.done("a") == 4 * 2 * 4  # own.weight's bytes
    assert own.weight.numel() == 0 and shared.weight.shape == (4, 4)  # "b" still needs it
    assert release.done("b") == 4 * 4 * 4 and shared.weight.numel() == 0 and shared.bias.shape == (4,)


def test_views_of_one_storage_are_dropped_together_and_counted_once():
    packed = torch.nn.Parameter(torch.zeros(6, 4))
    view = torch.nn.Linear(4, 2, bias=False)
    view.weight = torch.nn.Parameter(packed[2:4])  # as pack_qkv leaves q, k and v projections
    holder = torch.nn.Module()
    holder.packed = packed
    release = WeightRelease({"g": {"qkv": packed}}, [holder, view])
    assert release.done("g") == 6 * 4 * 4 and view.weight.numel() == 0 and holder.packed.numel() == 0
