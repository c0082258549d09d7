"""Torch's weights dropped once every graph that holds them is validated: export validates the graphs one after
another, so the largest meets only the weights still to come, not the whole model (LLaVA-7B's last IVTP segment,
20 decoder layers, is validated without the ViT, the embedding and the 12 layers before it)."""
import torch
from torch import nn


def storage(t: torch.Tensor) -> int:
    return t.untyped_storage().data_ptr()


class WeightRelease:
    """`uses`: per graph, in validation order, the torch tensors its initializers are (export/graphs/onnx_export.py's
    torch_held_weights). `done(graph)` drops each tensor no later graph uses, from every module in `modules`."""

    def __init__(self, uses: dict[str, dict[str, torch.Tensor]], modules: list[nn.Module]):
        self.last = {}
        for graph, tensors in uses.items():
            for t in tensors.values():
                self.last[storage(t)] = graph
        self.modules = modules

    def done(self, graph: str) -> int:
        """Drops what `graph` was the last to use; returns the bytes dropped."""
        gone = {s for s, g in self.last.items() if g == graph}
        sizes, seen = {}, set()  # bytes per storage, counted once however many views share it (packed q/k/v)
        for module in (m for root in self.modules for m in root.modules()):
            if id(module) in seen:
                continue
            seen.add(id(module))
            for table in (module._parameters, module._buffers):
                for name, t in table.items():
                    if t is not None and t.numel() and storage(t) in gone:
                        sizes[storage(t)] = t.untyped_storage().nbytes()
                        t.data = torch.empty(0, dtype=t.dtype)
        for s in gone:
            del self.last[s]
        return sum(sizes.values())
