"""VisPruner (Zhang et al. 2025): important patches by CLS attention at the feature layer, plus diverse ones
left by upstream's iterative duplicate removal on the rest; pruned before the LLM.

Two stages: `vit.important` and `vit.diverse` (disjoint; a stage with no tokens is left out). The LLM gets
their union in raster order. One deviation from upstream: surviving candidates keep their relative order
between rounds instead of being re-sorted by score, which makes the result chaotic in float noise
(see drop_duplicates)."""
from dataclasses import dataclass, field

import torch
from torch import nn

from export.methods.pre_llm import check_keep, feature_layer_schedule, selector_plan
from export.methods.registry import Method, register
from export.models.facts import model_facts
from export.modules.layers import vector_norm
from export.modules.select import gather_tokens, sort_last
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


def vispruner_select(cls_attn: torch.Tensor, features: torch.Tensor, n_important: int, n_diverse: int,
                     max_drop: int = 8):
    """VisPruner. cls_attn [B, N] (CLS row, heads averaged), features [B, N, C] (pre-projector).
    Returns (important [B, n_important], diverse [B, n_diverse]), each sorted ascending; None for an empty set."""
    order = sort_last(cls_attn, descending=True).indices
    important = sort_last(order[:, :n_important]).values if n_important else None
    if not n_diverse:
        return important, None
    normed = features.float() / vector_norm(features)[..., None]
    diverse = drop_duplicates(normed, order[:, n_important:], n_diverse, max_drop)
    return important, sort_last(diverse).values


def drop_duplicates(normed: torch.Tensor, order: torch.Tensor, n_keep: int, max_drop: int = 8,
                    by_score: bool = False) -> torch.Tensor:
    """Upstream VisPruner's loop: while more than n_keep candidates remain, split the order into a = [0::2] and
    b = [1::2], score each a by its best cosine to b, drop the r = min(max_drop, R - n_keep) highest-scoring a
    (all of a when r exceeds it, as upstream's slicing does); new order = surviving a, then b. An odd R just
    gives a one more member (upstream crashes there). Returns the n_keep survivors [B, n_keep].

    Upstream orders the surviving a by descending score (`by_score=True`). That re-sorts ~R/2 close cosines
    every round and the next split depends on the whole permutation, so float noise of 1e-7 between torch and
    ONNX Runtime changes the result on most images. By default the survivors keep their previous relative
    order: only the top-r cut itself is decided by the scores."""
    while order.shape[1] > n_keep:
        r = min(max_drop, order.shape[1] - n_keep)
        a, b = order[:, 0::2], order[:, 1::2]
        if r >= a.shape[1]:
            order = b
            continue
        sim = torch.matmul(gather_tokens(normed, a), gather_tokens(normed, b).transpose(1, 2))
        survivors = sort_last(sim.max(dim=-1).values, descending=True).indices[:, r:]
        if not by_score:
            survivors = sort_last(survivors).values
        order = torch.cat([torch.gather(a, 1, survivors), b], dim=1)
    return order


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


@register
class VisPruner(Method):
    name, title, config_type = "vispruner", "VisPruner", VisPrunerConfig
    summary = "VisPruner: important patches by CLS attention plus diverse ones by duplicate removal, before the LLM"

    def schedule(self, cfg, dims):
        check_keep(cfg.keep, dims)
        n_imp, n_div = split_counts(cfg.keep, cfg.important_ratio)
        stages = [(s, k) for s, k in ((IMPORTANT, n_imp), (DIVERSE, n_div)) if k]
        return feature_layer_schedule(dims, stages, cfg.keep, [s for s, _ in stages])

    def build(self, ckpt, cfg):
        schedule = self.schedule(cfg, model_facts(ckpt))  # checks the counts
        return selector_plan(ckpt, VisPrunerSelect(*split_counts(cfg.keep, cfg.important_ratio)), schedule)
