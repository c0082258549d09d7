"""VisionZip (Yang et al. 2025): dominant tokens (CLS + top patches by head-summed CLS attention at the feature
layer) plus contextual tokens that merge the rest into evenly spaced targets by key similarity; before the LLM.
Stages: `vit.dominant` (the dominant patches) and `vit.contextual` (the targets); an empty one is left out."""
from dataclasses import dataclass, field

import torch
from torch import nn

from export.methods.pre_llm import check_count, feature_layer_schedule, selector_plan
from export.methods.registry import Method, register
from export.models.facts import model_facts
from export.modules.layers import vector_norm
from export.modules.select import gather_tokens, select_top_k

DOMINANT, CONTEXTUAL = "vit.dominant", "vit.contextual"


@dataclass(frozen=True)
class VisionZipConfig:
    dominant: int = field(default=54, metadata={"help": "dominant tokens, the CLS included"})
    contextual: int = field(default=10, metadata={"help": "contextual tokens merged from the rest"})


def visionzip_select(hidden: torch.Tensor, cls_attn_sum: torch.Tensor, keys: torch.Tensor, n_dominant: int,
                     n_contextual: int):
    """VisionZip. hidden [B, 1+N, C] and keys [B, 1+N, D] (heads averaged) with the CLS first; cls_attn_sum [B, N]
    (CLS row over the patches, heads summed). Returns (tokens [B, n_dominant + n_contextual, C] = CLS, dominant
    patches in raster order, contextual tokens in target order; dominant patch indices [B, n_dominant-1];
    contextual target indices [B, n_contextual]); an empty index set is None."""
    n = cls_attn_sum.shape[1]
    patches = hidden[:, 1:]
    dominant = select_top_k(cls_attn_sum, n_dominant - 1) if n_dominant > 1 else None
    tokens = [hidden[:, :1]] + ([gather_tokens(patches, dominant)] if dominant is not None else [])
    if not n_contextual:
        return torch.cat(tokens, dim=1), dominant, None
    arange = torch.arange(n, device=hidden.device)
    rank = arange.to(hidden.dtype).expand(hidden.shape[0], n)
    if dominant is not None:  # dominant patches sort after every other: the rest come first, in raster order
        rank = rank + n * (dominant[:, :, None] == arange).to(hidden.dtype).sum(dim=1)
    rest_count = n - (n_dominant - 1)
    rest = torch.topk(rank, rest_count, dim=-1, largest=False).indices  # ascending raster order
    step = max(1, rest_count // n_contextual)
    targets = rest[:, ::step][:, :n_contextual]
    positions = torch.arange(rest_count, device=hidden.device)
    is_member = (positions % step != 0) | (positions >= step * n_contextual)  # not one of the targets
    k = keys[:, 1:].float() / vector_norm(keys[:, 1:])[..., None]
    sim = torch.matmul(gather_tokens(k, rest), gather_tokens(k, targets).transpose(1, 2))  # [B, R, n_ctx]
    slot = torch.arange(n_contextual, device=hidden.device)
    assign = (sim.argmax(dim=-1)[..., None] == slot) & is_member[None, :, None]
    assign = assign.to(hidden.dtype)
    counts = assign.sum(dim=1)[..., None].clamp(min=1.0)
    merged = torch.matmul(assign.transpose(1, 2), gather_tokens(patches, rest)) / counts
    tokens.append(gather_tokens(patches, targets) + merged)
    return torch.cat(tokens, dim=1), dominant, targets


class VisionZipSelect(nn.Module):
    uses_signals = True

    def __init__(self, dominant: int, contextual: int):
        super().__init__()
        self.dominant, self.contextual = dominant, contextual

    def forward(self, hidden, cls_attn, keys):
        tokens, dominant, targets = visionzip_select(hidden, cls_attn.sum(dim=1), keys, self.dominant, self.contextual)
        return tokens, {name: idx for name, idx in ((DOMINANT, dominant), (CONTEXTUAL, targets)) if idx is not None}


@register
class VisionZip(Method):
    name, title, config_type = "visionzip", "VisionZip", VisionZipConfig
    summary = "VisionZip: CLS + dominant patches by attention, plus contextual tokens merged by key similarity"

    def schedule(self, cfg, dims):
        n = dims["num_patches"]
        check_count("--dominant", cfg.dominant, 1, n + 1, f" (the CLS plus up to {n} patches)")
        rest = n + 1 - cfg.dominant
        check_count("--contextual", cfg.contextual, 0, rest,
                    f" (with --dominant {cfg.dominant}, {rest} tokens remain to merge)")
        stages = [(s, k) for s, k in ((DOMINANT, cfg.dominant - 1), (CONTEXTUAL, cfg.contextual)) if k]
        return feature_layer_schedule(dims, stages, cfg.dominant + cfg.contextual, None)

    def build(self, ckpt, cfg):
        return selector_plan(ckpt, VisionZipSelect(cfg.dominant, cfg.contextual), self.schedule(cfg, model_facts(ckpt)))
