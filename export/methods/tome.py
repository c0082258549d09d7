"""ToMe (Bolya et al. 2023) inside the ViT: merges similar tokens layer by layer up to LLaVA's feature layer so
that exactly `keep` patch tokens reach the LLM, as the authors code it for ViTs with a class token: bipartite
soft matching on head-averaged keys between attention and MLP, size-weighted averages, and proportional attention
(log size added to the logits). Merges are one-hot matmuls and gathers: exportable.

Stage `vit.tome`: the raster index of each surviving token's representative (the token it kept its place as),
sorted; the LLM sees the tokens in that order. They are merges, so no raster id names what reached the LLM.
"""
from dataclasses import dataclass, field

import torch
from torch import nn

from export.graphs.graph import GraphDef
from export.graphs.parts import BATCH
from export.methods.none import unpruned_plan
from export.methods.pre_llm import check_keep, feature_layer_schedule
from export.methods.registry import Method, register
from export.models.facts import model_facts
from export.modules.layers import attend, layer_norm, merge_heads, split_heads, vector_norm
from export.modules.select import gather_tokens, sort_last
from runtime import io_names as io
from runtime.errors import ConfigError

STAGE = "vit.tome"


@dataclass(frozen=True)
class ToMeConfig:
    keep: int = field(default=64, metadata={
        "help": "patch tokens left at the feature layer; merges are spread evenly over the layers up to it"})


def _feasible(n_patches: int, schedule: list[int]) -> bool:
    tokens = n_patches + 1  # the CLS is protected: at most (tokens - 1) // 2 merges per layer
    for r in schedule:
        if r > (tokens - 1) // 2:
            return False
        tokens -= r
    return True


def merge_schedule(n_patches: int, keep: int, n_layers: int) -> list[int]:
    """Merges per layer, spread evenly with the remainder front-loaded, leaving exactly `keep` patches."""
    def even(k):
        total = n_patches - k
        return [total // n_layers + (1 if i < total % n_layers else 0) for i in range(n_layers)]
    if 1 <= keep <= n_patches and _feasible(n_patches, even(keep)):
        return even(keep)
    lowest = next(k for k in range(1, n_patches + 1) if _feasible(n_patches, even(k)))
    raise ConfigError(f"--keep for tome must be in {lowest}..{n_patches}: ToMe merges at most half of the unprotected "
                      f"tokens per layer and spreads the merges evenly over {n_layers} layers, got {keep}")


def bipartite_merge(x, size, ids, metric, r: int):
    """One ToMe merge. x [B, T, C], size [B, T, 1], ids [B, T] (raster id of each token's representative),
    metric [B, T, D]; token 0 is the CLS and never merges. a = [0::2], b = [1::2]; the r a-tokens with the best
    cosine edge merge into their b partner by size-weighted average. Output order: unmerged a (original order),
    then b. Returns (x, size, ids) with T - r tokens."""
    metric = metric.float() / vector_norm(metric)[..., None]  # cosines in fp32: they decide the merges
    scores = torch.matmul(metric[:, 0::2], metric[:, 1::2].transpose(1, 2))
    n_a, n_b = scores.shape[1], scores.shape[2]
    is_cls = (torch.arange(n_a, device=x.device) == 0)[:, None]
    node_max, node_idx = scores.masked_fill(is_cls, float("-inf")).max(dim=-1)
    edges = sort_last(node_max, descending=True).indices
    unmerged = sort_last(edges[:, r:]).values
    src = edges[:, :r]
    into = (torch.gather(node_idx, 1, src)[..., None] == torch.arange(n_b, device=x.device)).to(x.dtype)  # [B,r,n_b]

    def merge(t):
        a, b = t[:, 0::2], t[:, 1::2]
        return torch.cat([gather_tokens(a, unmerged), b + torch.matmul(into.transpose(1, 2), gather_tokens(a, src))], 1)

    weighted, size = merge(x * size), merge(size)
    ids = torch.cat([torch.gather(ids[:, 0::2], 1, unmerged), ids[:, 1::2]], dim=1)
    return weighted / size, size, ids


def tome_layer(layer, x, size, ids, r: int):
    """One CLIPEncoderLayer with proportional attention and a merge of r tokens before the MLP."""
    attn = layer.self_attn
    h = layer_norm(layer.layer_norm1, x)
    q, k, v = (split_heads(p(h), attn.head_dim) for p in (attn.q_proj, attn.k_proj, attn.v_proj))
    # proportional attention: log size of each key; the query axis is spelt out (ONNX Attention wants it)
    bias = size.log()[:, None, None, :, 0].expand(-1, -1, x.shape[1], -1)
    o, _ = attend(q, k, v, attn.scale, bias)
    x = x + attn.out_proj(merge_heads(o))
    if r:
        x, size, ids = bipartite_merge(x, size, ids, k.mean(dim=1), r)
    return x + layer.mlp(layer_norm(layer.layer_norm2, x)), size, ids


class ToMeVision(nn.Module):
    """pixel_values -> ToMe over layers 0..feature_layer -> {image_features, kept.<stage>}: the surviving patch
    tokens (CLS dropped) in raster order of their representatives, through LLaVA's projector."""

    def __init__(self, vision_tower, projector, feature_layer: int, schedule: list[int], stage: str):
        super().__init__()
        self.tower, self.projector = vision_tower, projector
        self.feature_layer, self.schedule, self.stage = feature_layer, list(schedule), stage

    def forward(self, pixel_values: torch.Tensor):
        tower = self.tower
        x = layer_norm(tower.pre_layrnorm, tower.embeddings(pixel_values))
        size = torch.ones_like(x[..., :1])
        ids = torch.arange(x.shape[1], device=x.device).expand(x.shape[0], x.shape[1])  # 0 is the CLS
        for layer, r in zip(tower.encoder.layers[:self.feature_layer + 1], self.schedule):
            x, size, ids = tome_layer(layer, x, size, ids, r)
        patch_ids = ids[:, 1:] - 1
        order = sort_last(patch_ids).indices
        tokens = gather_tokens(x[:, 1:], order)
        return {"image_features": self.projector(tokens), io.kept_name(self.stage): torch.gather(patch_ids, 1, order)}


@register
class ToMe(Method):
    name, title, config_type = "tome", "ToMe", ToMeConfig
    summary = "ToMe: bipartite token merging in every ViT layer up to the feature layer, keep tokens out"

    def schedule(self, cfg, dims):
        check_keep(cfg.keep, dims)
        merge_schedule(dims["num_patches"], cfg.keep, dims["feature_layer"] + 1)  # refuses a count ToMe cannot reach
        return feature_layer_schedule(dims, [(STAGE, cfg.keep)], cfg.keep, None)

    def build(self, ckpt, cfg):
        dims = model_facts(ckpt)
        plan = unpruned_plan(ckpt, self.schedule(cfg, dims))
        m, layer = ckpt.llava.model, dims["feature_layer"]
        module = ToMeVision(m.vision_tower, m.multi_modal_projector, layer,
                            merge_schedule(dims["num_patches"], cfg.keep, layer + 1), STAGE)
        plan.graphs["vision"] = GraphDef(module, io.VISION_IN, io.VISION_OUT + [io.kept_name(STAGE)],
                                         {"pixel_values": BATCH})
        return plan
