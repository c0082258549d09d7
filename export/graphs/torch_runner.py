"""Runs a GraphDef's torch module behind the same infer(feed) -> dict interface as the engines, so the
runtime can stitch the PyTorch oracle exactly as it stitches engines (and record real feeds for export).

On a GPU (device="cuda", dtype=torch.float16) the KV caches stay on the device: `present.*` come back as
torch tensors, which the generator only hands back as the next step's `past_key_values.*`. Everything the
generator reads (logits, kept indices, hidden states) comes back as float32 / int numpy, as from an engine; KV
caches on the host come back in their own dtype.
"""
import numpy as np
import torch

from engines.kv_names import KV_PREFIX
from export.graphs.graph import GraphDef


class TorchRunner:
    def __init__(self, name: str, graph: GraphDef, record: bool = False, device=None, dtype=None):
        self.name, self.graph, self.record = name, graph, record
        self.device, self.dtype = torch.device(device or "cpu"), dtype
        self.kv_on_device = device is not None  # only a placed runner returns torch tensors
        if device is not None:
            graph.module.to(self.device)  # weights are placed by the caller; this moves built buffers (RoPE)
        self.feeds = []  # with record: every feed it was given, for export samples and validation

    def infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self.record:
            self.feeds.append(feed)
        with torch.no_grad():
            out = self.graph.module(*module_args(self.graph, feed, self.device, self.dtype))
        return outputs_by_name(self.graph, out, self.kv_on_device)


def module_args(graph: GraphDef, feed: dict, device=None, dtype=None) -> tuple:
    def tensor(n):
        value = feed[n]
        t = value if isinstance(value, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(value))
        t = t.to(device) if device is not None else t
        return t.to(dtype) if dtype is not None and t.is_floating_point() else t

    structure = graph.nested or graph.input_names
    arg = lambda n: None if n is None else tensor(n)  # None: an optional input this graph does not take
    return tuple([tensor(n) for n in item] if isinstance(item, list) else arg(item) for item in structure)


def outputs_by_name(graph: GraphDef, out, kv_on_device: bool = False) -> dict:
    if isinstance(out, torch.Tensor):
        out = {graph.output_names[0]: out}
    if list(out) != graph.output_names:
        raise RuntimeError(f"module outputs {list(out)} differ from the graph's output names {graph.output_names}")
    return {k: (v if kv_on_device else _host(v, keep_dtype=True)) if k.startswith(KV_PREFIX) else _host(v)
            for k, v in out.items()}


def _host(t: torch.Tensor, keep_dtype: bool = False) -> np.ndarray:
    """As numpy; floats in fp32 but for KV caches (keep_dtype), which only go back in as the next step's past, in
    their own dtype (half the memory at fp16: an export at LLaVA-7B's widths records them)."""
    t = t.detach().cpu()
    widen = t.is_floating_point() and t.dtype != torch.float32 and not (keep_dtype and t.dtype == torch.float16)
    return (t.float() if widen else t).numpy()
