"""Random: a seeded random subset of patches, drawn once at export and the same for every image. Per-image
randomness would differ between torch and each engine backend, so the kept indices could not be checked."""
from dataclasses import dataclass, field

import torch
from torch import nn

from export.graphs import model_facts
from export.methods.plan import MethodPlan
from export.methods.pre_llm import check_count, selector_plan
from export.methods.registry import register
from export.rollout import gather_tokens

STAGE = "vit.random"


@dataclass(frozen=True)
class RandomConfig:
    keep: int = field(default=64, metadata={"help": "patches kept, drawn at random once at export"})
    seed: int = field(default=0, metadata={"help": "seed of the draw (torch.Generator); the same subset for every image"})


def random_patches(n_patches: int, keep: int, seed: int) -> torch.Tensor:
    """`keep` distinct patch indices in 0..n_patches-1, sorted ascending, fixed by the seed."""
    draw = torch.randperm(n_patches, generator=torch.Generator().manual_seed(seed))
    return torch.sort(draw[:keep]).values


class RandomSelect(nn.Module):
    uses_signals = False

    def __init__(self, kept: torch.Tensor):
        super().__init__()
        self.register_buffer("kept", kept, persistent=False)

    def forward(self, hidden, cls_attn, keys):
        kept = self.kept.expand(hidden.shape[0], -1)
        return gather_tokens(hidden[:, 1:], kept), {STAGE: kept}


@register("random", RandomConfig, needs_clip=False,
          summary="a seeded random subset of patches, fixed at export (the same for every image)")
def build(ckpt, cfg: RandomConfig) -> MethodPlan:
    n = model_facts(ckpt)["num_patches"]
    check_count("--keep", cfg.keep, 1, n, f" (the image has {n} patches)")
    check_count("--seed", cfg.seed, 0, 2**63 - 1)
    return selector_plan(ckpt, RandomSelect(random_patches(n, cfg.keep, cfg.seed)), [(STAGE, cfg.keep)], cfg, cfg.keep)
