"""Runs a GraphDef's torch module behind the same infer(feed) -> dict interface as the engines, so the
runtime can stitch the PyTorch oracle exactly as it stitches engines (and record real feeds for export)."""
import numpy as np
import torch

from export.graphs import GraphDef


class TorchRunner:
    def __init__(self, name: str, graph: GraphDef):
        self.name, self.graph = name, graph
        self.feeds = []  # every feed it was given, for export samples and validation

    def infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.feeds.append(feed)
        with torch.no_grad():
            out = self.graph.module(*module_args(self.graph, feed))
        return outputs_by_name(self.graph, out)


def module_args(graph: GraphDef, feed: dict) -> tuple:
    tensor = lambda n: torch.from_numpy(np.ascontiguousarray(feed[n]))
    structure = graph.nested or graph.input_names
    arg = lambda n: None if n is None else tensor(n)  # None: an optional input this graph does not take
    return tuple([tensor(n) for n in item] if isinstance(item, list) else arg(item) for item in structure)


def outputs_by_name(graph: GraphDef, out) -> dict[str, np.ndarray]:
    if isinstance(out, torch.Tensor):
        out = {graph.output_names[0]: out}
    if list(out) != graph.output_names:
        raise RuntimeError(f"module outputs {list(out)} differ from the graph's output names {graph.output_names}")
    return {k: v.numpy() for k, v in out.items()}
