"""Pool: average-pool the feature-layer patch grid to g x g before the projector. It merges, it selects
nothing, so it has no kept-index stage."""
from dataclasses import dataclass, field
from math import isqrt

import torch
from torch import nn

from export.methods.pre_llm import feature_layer_schedule, selector_plan
from export.methods.registry import Method, register
from export.models.facts import model_facts
from runtime.errors import ConfigError


@dataclass(frozen=True)
class PoolConfig:
    keep: int = field(default=64, metadata={"help": "tokens out: g*g where g divides the patch grid side"})


def pool_grid(patches: torch.Tensor, side: int, g: int) -> torch.Tensor:
    """[B, side*side, C] -> [B, g*g, C]: the mean of each (side/g)^2 block of the patch grid, raster order."""
    s, c = side // g, patches.shape[-1]
    return patches.reshape(-1, g, s, g, s, c).mean(dim=(2, 4)).reshape(-1, g * g, c)


class PoolSelect(nn.Module):
    uses_signals = False

    def __init__(self, side: int, g: int):
        super().__init__()
        self.side, self.g = side, g

    def forward(self, hidden, cls_attn, keys):
        return pool_grid(hidden[:, 1:], self.side, self.g), {}


def pool_side(keep, side: int) -> int:
    """g with g*g == keep and g dividing the grid side, or a ConfigError listing the counts that work."""
    allowed = [g * g for g in range(1, side + 1) if side % g == 0]
    if isinstance(keep, bool) or not isinstance(keep, int) or keep not in allowed:
        raise ConfigError(f"--keep for pool must be g*g with g dividing the {side}x{side} patch grid, one of "
                          f"{', '.join(map(str, allowed))}; got {keep!r}")
    return isqrt(keep)


@register
class Pool(Method):
    name, title, config_type = "pool", "pool", PoolConfig
    summary = "average-pools the feature-layer patch grid to g x g (keep = g*g) before the projector"

    def schedule(self, cfg, dims):
        pool_side(cfg.keep, dims["image_size"] // dims["patch_size"])
        return feature_layer_schedule(dims, [], cfg.keep, None)

    def build(self, ckpt, cfg):
        dims = model_facts(ckpt)
        side = dims["image_size"] // dims["patch_size"]
        return selector_plan(ckpt, PoolSelect(side, pool_side(cfg.keep, side)), self.schedule(cfg, dims))
