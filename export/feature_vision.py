"""CLIP vision tower up to LLaVA's feature layer, then a selector, then LLaVA's projector: the vision graph of
methods that prune between the ViT and the LLM (topk, random, pool, VisPruner, VisionZip).

Used both as the PyTorch oracle and as the module traced into the `vision` graph.
"""
import torch
from torch import nn

from export.layers import clip_layer, split_heads
from runtime import io_names as io


def feature_signals(layer, x: torch.Tensor):
    """What selectors read from the feature layer, fed its input x [B, 1+N, C]: the CLS row of the softmax
    attention per head over the patches [B, H, N], and the keys averaged over heads [B, 1+N, D]."""
    attn = layer.self_attn
    h = layer.layer_norm1(x)
    k = split_heads(attn.k_proj(h), attn.head_dim)
    q_cls = split_heads(attn.q_proj(h[:, :1]), attn.head_dim)
    probs = torch.softmax(torch.matmul(q_cls, k.transpose(-1, -2)) * attn.scale, dim=-1)
    return probs[:, :, 0, 1:], k.mean(dim=1)


class FeatureVision(nn.Module):
    """pixel_values [B,3,H,W] -> {image_features [B, K, llm_hidden], kept.<stage> [B, k] per stage}.

    `selector(hidden, cls_attn, keys) -> (tokens [B, K, C], {stage: indices})` takes the feature layer's output
    (CLS first) and its signals (see feature_signals; None unless selector.uses_signals).
    """

    def __init__(self, vision_tower, projector, feature_layer: int, selector: nn.Module):
        super().__init__()
        self.tower, self.projector, self.selector = vision_tower, projector, selector
        self.feature_layer = feature_layer

    def forward(self, pixel_values: torch.Tensor):
        tower = self.tower
        x = tower.pre_layrnorm(tower.embeddings(pixel_values))
        for layer in tower.encoder.layers[:self.feature_layer]:
            x, _, _ = clip_layer(layer, x)
        top = tower.encoder.layers[self.feature_layer]
        cls_attn, keys = feature_signals(top, x) if self.selector.uses_signals else (None, None)
        x, _, _ = clip_layer(top, x)
        tokens, kept = self.selector(x, cls_attn, keys)
        return {"image_features": self.projector(tokens), **{io.kept_name(s): v for s, v in kept.items()}}
