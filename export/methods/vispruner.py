"""VisPruner (Zhang et al. 2025): important patches by CLS attention at the feature layer, plus diverse ones
left by upstream's iterative duplicate removal on the rest; pruned before the LLM.

Two stages: `vit.important` and `vit.diverse` (disjoint; a stage with no tokens is left out). The LLM gets
their union in raster order. One deviation from upstream: surviving candidates keep their relative order
between rounds instead of being re-sorted by score, which makes the result chaotic in float noise
(see vision_select.drop_duplicates)."""
from dataclasses import dataclass, field

import torch
from torch import nn

from export.graphs import model_facts
from export.methods.plan import MethodPlan
from export.methods.pre_llm import check_count, selector_plan
from export.methods.registry import register
from export.rollout import gather_tokens, sort_last
from export.vision_select import vispruner_select
from runtime.errors import ConfigError

IMPORTANT, DIVERSE = "vit.important", "vit.diverse"


@dataclass(frozen=True)
class VisPrunerConfig:
    keep: int = field(default=64, metadata={"help": "visual tokens into the LLM: important + diverse"})
    important_ratio: float | None = field(default=None, metadata={
        "help": "share of --keep chosen by attention, in [0, 1]; default 0.75 at keep 64, else 0.5 (the paper's)"})


def split_counts(keep: int, ratio: float | None) -> tuple[int, int]:
    """(important, diverse) counts: int(keep * ratio) and the rest."""
    ratio = (0.75 if keep == 64 else 0.5) if ratio is None else ratio
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0.0 <= ratio <= 1.0:
        raise ConfigError(f"--important-ratio must be in [0, 1], got {ratio!r}")
    important = int(keep * ratio)
    return important, keep - important


class VisPrunerSelect(nn.Module):
    uses_signals = True

    def __init__(self, n_important: int, n_diverse: int):
        super().__init__()
        self.n_important, self.n_diverse = n_important, n_diverse

    def forward(self, hidden, cls_attn, keys):
        patches = hidden[:, 1:]
        important, diverse = vispruner_select(cls_attn.mean(dim=1), patches, self.n_important, self.n_diverse)
        stages = {name: idx for name, idx in ((IMPORTANT, important), (DIVERSE, diverse)) if idx is not None}
        union = sort_last(torch.cat(list(stages.values()), dim=1)).values
        return gather_tokens(patches, union), stages


@register("vispruner", VisPrunerConfig, needs_clip=False,
          summary="VisPruner: important patches by CLS attention plus diverse ones by duplicate removal, before the LLM")
def build(ckpt, cfg: VisPrunerConfig) -> MethodPlan:
    n = model_facts(ckpt)["num_patches"]
    check_count("--keep", cfg.keep, 1, n, f" (the image has {n} patches)")
    n_imp, n_div = split_counts(cfg.keep, cfg.important_ratio)
    stages = [(s, k) for s, k in ((IMPORTANT, n_imp), (DIVERSE, n_div)) if k]
    return selector_plan(ckpt, VisPrunerSelect(n_imp, n_div), stages, cfg, cfg.keep)
