"""A graph to export: a torch module behind an int32 boundary, with its input/output names and a symbolic dim
name per input axis."""
import inspect
from dataclasses import dataclass, field

import torch
from torch import nn


class Int32Boundary(nn.Module):
    """Integer inputs come in as int32 and integer outputs leave as int32 (ids, positions, masks, kept indices
    and counts all fit), so TensorRT casts nothing per call; inside, torch's indexing wants int64."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, *args):
        out = self.inner(*(_widen(a) for a in args))
        if isinstance(out, torch.Tensor):
            return _narrow(out)
        return {k: _narrow(v) for k, v in out.items()}


def int32_boundary(inner: nn.Module) -> Int32Boundary:
    """Int32Boundary around `inner`, whose forward shows inner's signature: torch.export matches dynamic shapes
    and input names to parameters by that signature."""
    signature = inspect.signature(inner.forward)
    self_param = inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)

    def forward(self, *args):
        return Int32Boundary.forward(self, *args)
    forward.__signature__ = signature.replace(parameters=[self_param, *signature.parameters.values()])
    return type(f"Int32{type(inner).__name__}", (Int32Boundary,), {"forward": forward})(inner)


def _widen(x):
    if isinstance(x, list):
        return [_widen(t) for t in x]
    return x.long() if isinstance(x, torch.Tensor) and x.dtype == torch.int32 else x


def _narrow(x: torch.Tensor) -> torch.Tensor:
    return x.int() if x.dtype == torch.int64 else x


@dataclass
class GraphDef:
    module: nn.Module
    input_names: list[str]
    output_names: list[str]
    dims: dict[str, dict[int, str]]
    nested: list = field(default_factory=list)  # input structure where the module takes lists (None: left out)

    def __post_init__(self):
        if not isinstance(self.module, Int32Boundary):
            self.module = int32_boundary(self.module)
