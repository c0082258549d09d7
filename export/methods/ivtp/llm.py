"""IVTP in the first W decoder layers: the pseudo-CLS (the mean of the instruction tokens CLIP finds relevant, or
the visual CLS) is an extra query after the visual block. It sees the prefix, the visual tokens and itself, is
never attended to and never cached. GTP rolls out the attention over [pseudo-CLS, visual] in the segment's last
`group` layers; each visual token scores that row times the norm of its value vector; the top `keep` go on."""
import torch

from export.methods.ivtp.rollout import group_cls_row
from export.modules.layers import llama_attend, llama_finish, llama_qkv, rope_cos_sin, vector_norm
from export.modules.pruning import LayerAttention, LlmPruner, SegmentView
from export.modules.select import select_top_k
from runtime import io_names as io


def cls_block(attn, p_row, n_pre, n_vis):
    """Attention over the block [pseudo-CLS, visual...]: [B, 1+V, 1+V]. Visual rows never see the pseudo-CLS (it
    comes after them), so their first column is zero."""
    vis = attn[:, n_pre:n_pre + n_vis, n_pre:n_pre + n_vis]
    top = torch.cat([p_row[:, -1:], p_row[:, n_pre:n_pre + n_vis]], 1)[:, None]
    rest = torch.cat([torch.zeros_like(vis[:, :, :1]), vis], 2)
    return torch.cat([top, rest], 1)


class IvtpPruner(LlmPruner):
    input_names = tuple(io.PSEUDO_CLS_IN)
    carry_names = tuple(io.PSEUDO_CLS_OUT)

    def __init__(self, keep: int, rollout_layers: range, fusion: str = "rollout"):
        super().__init__()
        self.keep, self.rollout_layers, self.fusion = keep, set(rollout_layers), fusion

    def wants_probs(self, layer: int) -> bool:
        return layer in self.rollout_layers

    def begin(self, lm, view: SegmentView, inputs: list) -> dict:
        pseudo_cls, position = inputs
        return {"hidden": pseudo_cls, "rope": rope_cos_sin(lm.inv_freq, position), "view": view, "block_attns": [],
                "qkv": lm.qkv}

    def observe(self, state: dict, index: int, layer, attention: LayerAttention) -> dict:
        """The pseudo-CLS through this layer, over the prefix, the visual block and itself; in a rollout layer,
        the attention over [pseudo-CLS, visual] for GTP."""
        view = state["view"]
        n_sys_vis = view.n_pre + view.n_vis
        pq, pk, pv, _ = llama_qkv(layer, state["qkv"][index], state["hidden"], *state["rope"])
        keys = torch.cat([attention.k[:, :, :n_sys_vis], pk], 2)
        values = torch.cat([attention.v[:, :, :n_sys_vis], pv], 2)
        rollout = attention.probs is not None
        p_out, p_probs = llama_attend(layer, pq, keys, values, None, need_probs=rollout)
        if rollout:
            state["block_attns"].append(cls_block(attention.probs.mean(1), p_probs.mean(1)[:, 0], view.n_pre, view.n_vis))
        state["hidden"] = llama_finish(layer, state["hidden"], p_out)
        return state

    def decide(self, state: dict, attention: LayerAttention, view: SegmentView):
        cls_row = group_cls_row(state["block_attns"], self.fusion)
        visual = slice(view.n_pre, view.n_pre + view.n_vis)
        score = cls_row[:, 1:] * vector_norm(attention.v_flat)[:, visual]
        return {"kept": select_top_k(score, self.keep)}, {"pseudo_cls_hidden": state["hidden"]}
