"""TopK: the patches the CLS attends to most at LLaVA's feature layer (heads averaged), pruned before the LLM."""
from dataclasses import dataclass, field

from torch import nn

from export.methods.pre_llm import check_keep, feature_layer_schedule, selector_plan
from export.methods.registry import Method, register
from export.models.facts import model_facts
from export.modules.select import gather_tokens, select_top_k

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


@register
class Topk(Method):
    name, title, config_type = "topk", "topk", TopkConfig
    summary = "top-k patches by CLS attention at the feature layer, pruned before the LLM"

    def schedule(self, cfg, dims):
        check_keep(cfg.keep, dims)
        return feature_layer_schedule(dims, [(STAGE, cfg.keep)], cfg.keep, [STAGE])

    def build(self, ckpt, cfg):
        return selector_plan(ckpt, TopkSelect(cfg.keep), self.schedule(cfg, model_facts(ckpt)))
