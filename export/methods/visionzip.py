"""VisionZip (Yang et al. 2025): dominant tokens (CLS + top patches by head-summed CLS attention at the feature
layer) plus contextual tokens that merge the rest into evenly spaced targets by key similarity; before the LLM.
Stages: `vit.dominant` (the dominant patches) and `vit.contextual` (the targets); an empty one is left out."""
from dataclasses import dataclass, field

from torch import nn

from export.graphs import model_facts
from export.methods.plan import MethodPlan
from export.methods.pre_llm import check_count, selector_plan
from export.methods.registry import register
from export.vision_select import visionzip_select

DOMINANT, CONTEXTUAL = "vit.dominant", "vit.contextual"


@dataclass(frozen=True)
class VisionZipConfig:
    dominant: int = field(default=54, metadata={"help": "dominant tokens, the CLS included"})
    contextual: int = field(default=10, metadata={"help": "contextual tokens merged from the rest"})


class VisionZipSelect(nn.Module):
    uses_signals = True

    def __init__(self, dominant: int, contextual: int):
        super().__init__()
        self.dominant, self.contextual = dominant, contextual

    def forward(self, hidden, cls_attn, keys):
        tokens, dominant, targets = visionzip_select(hidden, cls_attn.sum(dim=1), keys, self.dominant, self.contextual)
        return tokens, {name: idx for name, idx in ((DOMINANT, dominant), (CONTEXTUAL, targets)) if idx is not None}


@register("visionzip", VisionZipConfig, needs_clip=False,
          summary="VisionZip: CLS + dominant patches by attention, plus contextual tokens merged by key similarity")
def build(ckpt, cfg: VisionZipConfig) -> MethodPlan:
    n = model_facts(ckpt)["num_patches"]
    check_count("--dominant", cfg.dominant, 1, n + 1, f" (the CLS plus up to {n} patches)")
    rest = n + 1 - cfg.dominant
    check_count("--contextual", cfg.contextual, 0, rest, f" (with --dominant {cfg.dominant}, {rest} tokens remain to merge)")
    stages = [(s, k) for s, k in ((DOMINANT, cfg.dominant - 1), (CONTEXTUAL, cfg.contextual)) if k]
    return selector_plan(ckpt, VisionZipSelect(cfg.dominant, cfg.contextual), stages, cfg, cfg.dominant + cfg.contextual)
