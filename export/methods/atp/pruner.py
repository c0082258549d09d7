"""ATP's module at the end of a prefill segment (Sec. 3.3): S_self = mean over visual keys of the visual tokens'
attention logits, S_cross = mean over the real text tokens of their attention probabilities on each visual token,
S_redundant their mean (after normalising, see scores.py), S_spatial from the token's raster index; thresholds
from the `thresholds` input (calibrated constants) or from trained heads. The kept count depends on the input."""
import torch
from torch import nn

from export.methods.atp.scores import keep_order, redundant_score, spatial_score_table, to_raster
from export.modules.pruning import LayerTap, LlmPruner, SegmentView, attention_rows
from runtime import io_names as io


class AtpPruner(LlmPruner):
    kept_names = tuple(io.KEPT_OUT + io.KEPT_COUNT_OUT)  # the count differs per request

    def __init__(self, grid: int, heads: nn.Module | None = None):
        super().__init__()
        self.n_patches, self.heads = grid * grid, heads
        self.input_names = () if heads is not None else tuple(io.THRESHOLDS_IN)
        self.register_buffer("spatial", spatial_score_table(grid), persistent=False)

    def signals(self, q, k, bias, scale, view: SegmentView):
        """(S_self, S_cross, S_spatial, raster ids, valid), each [B, V], in fp32."""
        q, k, valid = q.float(), k.float(), view.visual_mask > 0
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

    def decide(self, taps: dict[int, LayerTap], view: SegmentView, inputs: list):
        (tap,) = taps.values()
        order, count = self(tap.q, tap.k_all, tap.bias, tap.scale, view, inputs[0] if inputs else None)
        return {"kept": order, "kept_count": count}
