"""Pruners that decide at the last layer of a prefill segment from that layer's attention: FastV (top-k by the
last prompt token's attention) and ATP (thresholds, a count that depends on the input).

A pruner gets the layer's post-RoPE q, k (already repeated over KV groups) and the additive mask, and returns
(order [B, K], count [B] or None): the visual tokens to carry on, as indices into the current visual block.
"""
import torch
from torch import nn

from export.atp import keep_order, redundant_score, spatial_score_table, to_raster
from export.rollout import select_top_k


class SegmentView:
    """Where the blocks sit in a segment's sequence, and which entries are real."""

    def __init__(self, n_pre, n_vis, suffix_mask, visual_mask, visual_positions):
        self.n_pre, self.n_vis, self.suffix_mask, self.visual_mask = n_pre, n_vis, suffix_mask, visual_mask
        self.visual_positions = visual_positions

    @property
    def visual(self):
        return slice(self.n_pre, self.n_pre + self.n_vis)


def attention_rows(q_rows, k, bias_rows, scale):
    """Head-averaged softmax probabilities of a few query rows: q_rows [B,H,R,D], bias_rows [B,1,R,N] -> [B,R,N]."""
    scores = torch.matmul(q_rows, k.transpose(-1, -2)) * scale + bias_rows
    return torch.softmax(scores, dim=-1).mean(1)


class FastVPruner(nn.Module):
    """FastV: attention of the last prompt token over the visual tokens, heads averaged; top `keep`, ascending."""

    def __init__(self, keep: int):
        super().__init__()
        self.keep = keep

    def forward(self, q, k, bias, scale, view: SegmentView):
        last = view.n_pre + view.n_vis + view.suffix_mask.sum(-1) - 1  # [B] index of the last real token
        q_last = torch.gather(q, 2, last[:, None, None, None].expand(-1, q.shape[1], 1, q.shape[-1]))
        bias_last = torch.gather(bias, 2, last[:, None, None, None].expand(-1, 1, 1, bias.shape[-1]))
        row = attention_rows(q_last, k, bias_last, scale)[:, 0, view.visual]
        return select_top_k(row, self.keep), None


class AtpPruner(nn.Module):
    """ATP module: S_self = mean over visual keys of the visual tokens' attention logits, S_cross = mean over
    the real text tokens of their attention probabilities on each visual token, S_redundant their mean (after
    normalising, see export/atp.py), S_spatial from the token's raster index; thresholds come from the
    `thresholds` input (calibrated constants) or from trained heads."""
    variable_count = True  # the graph reports kept_count per request

    def __init__(self, grid: int, heads: nn.Module | None = None):
        super().__init__()
        self.n_patches, self.heads = grid * grid, heads
        self.register_buffer("spatial", spatial_score_table(grid), persistent=False)

    def signals(self, q, k, bias, scale, view: SegmentView):
        """(S_self, S_cross, S_spatial, raster ids, valid), each [B, V]."""
        valid = view.visual_mask > 0
        vis = view.visual
        w = valid.to(k.dtype)[:, None, :, None]
        k_mean = (k[:, :, vis] * w).sum(2, keepdim=True) / torch.clamp(w.sum(2, keepdim=True), min=1.0)
        s_self = (torch.matmul(q[:, :, vis], k_mean.transpose(-1, -2))[..., 0] * scale).mean(1)
        text = slice(view.n_pre + view.n_vis, None)
        probs = attention_rows(q[:, :, text], k, bias[:, :, text], scale)[:, :, vis]  # [B, T, V]
        t_mask = view.suffix_mask.to(probs.dtype)
        s_cross = (probs * t_mask[..., None]).sum(1) / torch.clamp(t_mask.sum(-1, keepdim=True), min=1.0)
        raster = view.visual_positions - view.n_pre  # ATP keeps original positions, so this is the raster index
        return s_self, s_cross, self.spatial[raster], raster, valid

    def forward(self, q, k, bias, scale, view: SegmentView, thresholds=None):
        s_self, s_cross, s_spatial, raster, valid = self.signals(q, k, bias, scale, view)
        s_self, s_cross, s_red = redundant_score(s_self, s_cross, valid)
        if self.heads is not None:
            thresholds = self.heads(to_raster(s_self, raster, valid, self.n_patches),
                                    to_raster(s_cross, raster, valid, self.n_patches))
        return keep_order(s_red, s_spatial, thresholds, valid)
