"""TopK: the patches the CLS attends to most at LLaVA's feature layer (heads averaged), pruned before the LLM."""
from dataclasses import dataclass, field

from torch import nn

from export.graphs import model_facts
from export.methods.plan import MethodPlan
from export.methods.pre_llm import check_count, selector_plan
from export.methods.registry import register
from export.rollout import gather_tokens, select_top_k

STAGE = "vit.topk"


@dataclass(frozen=True)
class TopkConfig:
    keep: int = field(default=64, metadata={"help": "patches kept: the top-k by CLS attention at the feature layer"})


class TopkSelect(nn.Module):
    uses_signals = True

    def __init__(self, keep: int):
        super().__init__()
        self.keep = keep

    def forward(self, hidden, cls_attn, keys):
        kept = select_top_k(cls_attn.mean(dim=1), self.keep)
        return gather_tokens(hidden[:, 1:], kept), {STAGE: kept}


@register("topk", TopkConfig, needs_clip=False,
          summary="top-k patches by CLS attention at the feature layer, pruned before the LLM")
def build(ckpt, cfg: TopkConfig) -> MethodPlan:
    n = model_facts(ckpt)["num_patches"]
    check_count("--keep", cfg.keep, 1, n, f" (the image has {n} patches)")
    return selector_plan(ckpt, TopkSelect(cfg.keep), [(STAGE, cfg.keep)], cfg, cfg.keep)
