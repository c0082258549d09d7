"""Random: a seeded random subset of patches, drawn once at export and the same for every image. Per-image
randomness would differ between torch and each engine backend, so the kept indices could not be checked."""
from dataclasses import dataclass, field

import torch
from torch import nn

from export.methods.pre_llm import check_count, check_keep, feature_layer_schedule, selector_plan
from export.methods.registry import Method, register
from export.models.facts import model_facts
from export.modules.select import gather_tokens

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


@register
class RandomSubset(Method):
    name, title, config_type = "random", "random", RandomConfig
    summary = "a seeded random subset of patches, fixed at export (the same for every image)"

    def schedule(self, cfg, dims):
        check_keep(cfg.keep, dims)
        check_count("--seed", cfg.seed, 0, 2**63 - 1)
        return feature_layer_schedule(dims, [(STAGE, cfg.keep)], cfg.keep, [STAGE])

    def build(self, ckpt, cfg):
        dims = model_facts(ckpt)
        schedule = self.schedule(cfg, dims)  # checks the counts before the draw
        return selector_plan(ckpt, RandomSelect(random_patches(dims["num_patches"], cfg.keep, cfg.seed)), schedule)
