"""CLIP vision tower up to LLaVA's feature layer, then an optional selector, then LLaVA's projector: the vision
graph of the methods that do not prune inside the ViT, and of those that prune between it and the LLM (topk,
random, pool, VisPruner, VisionZip).

Used both as the PyTorch oracle and as the module traced into the `vision` graph.
"""
import torch
from torch import nn

from export.modules.layers import clip_layer, layer_norm, split_heads
from runtime import io_names as io


def feature_signals(layer, x: torch.Tensor):
    """What selectors read from the feature layer, fed its input x [B, 1+N, C]: the CLS row of the softmax
    attention per head over the patches [B, H, N], and the keys averaged over heads [B, 1+N, D], both fp32."""
    attn = layer.self_attn
    h = layer_norm(layer.layer_norm1, x)
    k = split_heads(attn.k_proj(h), attn.head_dim).float()
    q_cls = split_heads(attn.q_proj(h[:, :1]), attn.head_dim).float()
    probs = torch.softmax(torch.matmul(q_cls, k.transpose(-1, -2)) * attn.scale, dim=-1)
    return probs[:, :, 0, 1:], k.mean(dim=1)


class FeatureVision(nn.Module):
    """pixel_values [B,3,H,W] -> {image_features [B, K, llm_hidden], kept.<stage> [B, k] per stage}.

    `selector(hidden, cls_attn, keys) -> (tokens [B, K, C], {stage: indices})` takes the feature layer's output
    (CLS first) and its signals (see feature_signals; None unless selector.uses_signals). Without a selector
    every patch goes on, in raster order: LLaVA's own vision path.
    """

    def __init__(self, vision_tower, projector, feature_layer: int, selector: nn.Module | None = None):
        super().__init__()
        self.tower, self.projector, self.selector = vision_tower, projector, selector
        self.feature_layer = feature_layer

    def forward(self, pixel_values: torch.Tensor):
        tower = self.tower
        x = layer_norm(tower.pre_layrnorm, tower.embeddings(pixel_values))
        for layer in tower.encoder.layers[:self.feature_layer]:
            x, _, _ = clip_layer(layer, x)
        top = tower.encoder.layers[self.feature_layer]
        uses_signals = self.selector is not None and self.selector.uses_signals
        cls_attn, keys = feature_signals(top, x) if uses_signals else (None, None)
        x, _, _ = clip_layer(top, x)
        tokens, kept = self.selector(x, cls_attn, keys) if self.selector is not None else (x[:, 1:], {})
        return {"image_features": self.projector(tokens), **{io.kept_name(s): v for s, v in kept.items()}}
