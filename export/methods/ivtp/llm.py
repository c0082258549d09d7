"""IVTP in the first W decoder layers: the pseudo-CLS (the mean of the instruction tokens CLIP finds relevant, or
the visual CLS) is an extra token at the end of the prompt. It sees the prefix, the visual tokens and itself; no
other token sees it, decode included (the runtime's mask). GTP rolls out the attention over [pseudo-CLS, visual]
in the segment's last `group` layers; each visual token scores that row times the norm of its value vector; the
top `keep` go on."""
import torch

from export.methods.ivtp.rollout import group_cls_row
from export.modules.layers import merge_heads, vector_norm
from export.modules.pruning import LayerTap, LlmPruner, SegmentView, attention_rows
from export.modules.select import select_top_k


def cls_block(tap: LayerTap, view: SegmentView) -> torch.Tensor:
    """Head-averaged attention over the block [pseudo-CLS, visual...]: [B, 1+V, 1+V]. Visual rows never see the
    pseudo-CLS (the mask), so their first column is zero."""
    vis = view.visual
    q_rows = torch.cat([tap.q[:, :, -1:], tap.q[:, :, vis]], 2)
    probs = attention_rows(q_rows, tap.k_all, torch.cat([tap.bias[:, :, -1:], tap.bias[:, :, vis]], 2), tap.scale)
    return torch.cat([probs[..., -1:], probs[..., vis]], 2)


class IvtpPruner(LlmPruner):
    reads_values = True

    def __init__(self, keep: int, rollout_layers: range, fusion: str = "rollout"):
        super().__init__()
        self.keep, self.rollout_layers, self.fusion = keep, list(rollout_layers), fusion

    def taps(self, first: int, last: int) -> list[int]:
        return self.rollout_layers

    def decide(self, taps: dict[int, LayerTap], view: SegmentView, inputs: list):
        cls_row = group_cls_row([cls_block(taps[i], view) for i in self.rollout_layers], self.fusion)
        values = taps[self.rollout_layers[-1]].v[:, :, view.visual]
        score = cls_row[:, 1:] * vector_norm(merge_heads(values))
        return {"kept": select_top_k(score, self.keep)}
