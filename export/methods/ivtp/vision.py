"""IVTP's vision graph: the CLIP tower with group-wise token pruning (GTP), LLaVA's projector, and the visual CLS
in CLIP's joint space and in the LLM's (for the instruction relevance and the pseudo-CLS fallback)."""
import torch
from torch import nn

from export.methods.ivtp.rollout import group_cls_row
from export.modules.layers import clip_layer, clip_layer_cls_only, layer_norm
from export.modules.select import gather_tokens, select_top_k


class PrunedVision(nn.Module):
    """pixel_values [B,3,H,W] -> {image_features, kept.<stage> per pruning point, cls_joint, cls_llm}.

    `prune_after` maps a layer index to (patches kept after it, stage name): the top layer of a GTP group
    of `group` layers. Kept indices use the original 0..N-1 raster numbering. Without `visual_projection`
    the visual CLS outputs are left out (methods that need no CLS).
    """

    def __init__(self, vision_tower, projector, visual_projection, feature_layer: int,
                 prune_after: dict[int, tuple[int, str]], group: int, fusion: str = "rollout"):
        super().__init__()
        self.tower, self.projector, self.visual_projection = vision_tower, projector, visual_projection
        self.feature_layer = feature_layer
        self.prune_after, self.fusion = dict(prune_after), fusion
        # layers whose attention a pruning point rolls out: the group ending at each point
        self.rollout_layers = {l for top in prune_after for l in range(max(0, top - group + 1), top + 1)}

    def forward(self, pixel_values: torch.Tensor):
        tower = self.tower
        x = layer_norm(tower.pre_layrnorm, tower.embeddings(pixel_values))
        batch, n_patches = x.shape[0], x.shape[1] - 1
        ids = torch.arange(n_patches, device=x.device).expand(batch, n_patches)  # original raster numbering
        group_attns, outputs = [], {}
        for i in range(self.feature_layer + 1):
            keep, stage = self.prune_after.get(i, (None, None))
            x, attn, v_norm = clip_layer(tower.encoder.layers[i], x, need_probs=i in self.rollout_layers)
            if attn is not None:
                group_attns.append(attn)
            if keep is not None:
                cls_row = group_cls_row(group_attns, self.fusion)
                score = cls_row[:, 1:] * v_norm[:, 1:]  # CLS itself excluded; normalising would not change the order
                kept = select_top_k(score, keep)
                ids = torch.gather(ids, 1, kept)
                outputs[f"kept.{stage}"] = ids
                x = torch.cat([x[:, :1], gather_tokens(x[:, 1:], kept)], dim=1)
                group_attns = []
        outputs = {"image_features": self.projector(x[:, 1:]), **outputs}
        if self.visual_projection is None:
            return outputs
        # CLIP's image embedding needs the last layer, but only the CLS query of it.
        cls = x
        for layer in tower.encoder.layers[self.feature_layer + 1:-1]:
            cls, _, _ = clip_layer(layer, cls)
        cls_last = clip_layer_cls_only(tower.encoder.layers[-1], cls)
        outputs["cls_joint"] = self.visual_projection(layer_norm(tower.post_layernorm, cls_last)).float()
        outputs["cls_llm"] = self.projector(x[:, 0])  # IVTP's fallback pseudo-CLS, in the LLM space
        return outputs
