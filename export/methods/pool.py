"""Pool: average-pool the feature-layer patch grid to g x g before the projector. It merges, it selects
nothing, so it has no kept-index stage."""
from dataclasses import dataclass, field
from math import isqrt

from torch import nn

from export.graphs import model_facts
from export.methods.plan import MethodPlan
from export.methods.pre_llm import selector_plan
from export.methods.registry import register
from export.vision_select import pool_grid
from runtime.errors import ConfigError


@dataclass(frozen=True)
class PoolConfig:
    keep: int = field(default=64, metadata={"help": "tokens out: g*g where g divides the patch grid side"})


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


@register("pool", PoolConfig, needs_clip=False,
          summary="average-pools the feature-layer patch grid to g x g (keep = g*g) before the projector")
def build(ckpt, cfg: PoolConfig) -> MethodPlan:
    facts = model_facts(ckpt)
    side = facts["image_size"] // facts["patch_size"]
    g = pool_side(cfg.keep, side)
    return selector_plan(ckpt, PoolSelect(side, g), [], cfg, cfg.keep)
