"""ToMe (Bolya et al. 2023) inside the ViT: merges similar tokens layer by layer up to LLaVA's feature layer so
that exactly `keep` patch tokens reach the LLM. Stage `vit.tome`: the raster index of each surviving token's
representative (the token it kept its place as), sorted; the LLM sees the tokens in that order."""
from dataclasses import dataclass, field

from export.graphs import model_facts, vision_feature_layer
from export.methods.plan import MethodPlan
from export.methods.pre_llm import check_count, pre_llm_plan
from export.methods.registry import register
from export.tome import ToMeVision, merge_schedule

STAGE = "vit.tome"


@dataclass(frozen=True)
class ToMeConfig:
    keep: int = field(default=64, metadata={
        "help": "patch tokens left at the feature layer; merges are spread evenly over the layers up to it"})


@register("tome", ToMeConfig, needs_clip=False,
          summary="ToMe: bipartite token merging in every ViT layer up to the feature layer, keep tokens out")
def build(ckpt, cfg: ToMeConfig) -> MethodPlan:
    n, layer = model_facts(ckpt)["num_patches"], vision_feature_layer(ckpt)
    check_count("--keep", cfg.keep, 1, n, f" (the image has {n} patches)")
    schedule = merge_schedule(n, cfg.keep, layer + 1)
    m = ckpt.llava.model
    module = ToMeVision(m.vision_tower, m.multi_modal_projector, layer, schedule, STAGE)
    return pre_llm_plan(ckpt, module, [(STAGE, cfg.keep)], cfg, cfg.keep)
