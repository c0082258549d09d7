"""The protocol of a pruning method inside the decoder: a prefill segment shows its pruner every layer it runs
(`observe`), then asks it at the segment's end which visual tokens go on (`decide`). IVTP, FastV and ATP each
implement it in their own file; a new in-LLM method is one more.
"""
from dataclasses import dataclass

import torch
from torch import nn

from export.modules.layers import repeat_kv


class SegmentView:
    """Where the blocks sit in a segment's sequence, and which entries are real."""

    def __init__(self, n_pre, n_vis, suffix_mask, visual_mask, visual_positions):
        self.n_pre, self.n_vis, self.suffix_mask, self.visual_mask = n_pre, n_vis, suffix_mask, visual_mask
        self.visual_positions = visual_positions

    @property
    def visual(self):
        return slice(self.n_pre, self.n_pre + self.n_vis)


@dataclass
class LayerAttention:
    """One decoder layer's attention over the segment's sequence, as its pruner sees it."""
    q: torch.Tensor  # [B, heads, N, D], RoPE applied
    k: torch.Tensor  # [B, kv_heads, N, D], RoPE applied
    v: torch.Tensor  # [B, kv_heads, N, D]
    v_flat: torch.Tensor  # [B, N, kv_heads * D]
    probs: torch.Tensor | None  # [B, heads, N, N] where the pruner asked for them (wants_probs), else None
    bias: torch.Tensor  # [B, 1, N, N] additive mask: causal and key padding
    scale: float
    n_rep: int  # query heads per KV head

    @property
    def k_all(self) -> torch.Tensor:
        """Keys repeated over the query heads: [B, heads, N, D]."""
        return repeat_kv(self.k, self.n_rep)


def attention_rows(q_rows, k, bias_rows, scale):
    """Head-averaged softmax probabilities (fp32) of a few query rows: q_rows [B,H,R,D], bias_rows [B,1,R,N] -> [B,R,N]."""
    scores = torch.matmul(q_rows.float(), k.float().transpose(-1, -2)) * scale + bias_rows.float()
    return torch.softmax(scores, dim=-1).mean(1)


class LlmPruner(nn.Module):
    """Base class. A pruner's graph inputs (besides the segment's own) and outputs are declared by name; the
    segment passes the inputs to `begin` in that order and emits `decide`'s outputs under those names."""
    input_names: tuple[str, ...] = ()  # e.g. IVTP's pseudo_cls, pseudo_cls_position; ATP's thresholds
    kept_names: tuple[str, ...] = ("kept",)  # "kept" [B, V'] first; ATP adds "kept_count" [B]
    carry_names: tuple[str, ...] = ()  # outputs the next segment takes back as inputs (IVTP's pseudo_cls_hidden)

    def wants_probs(self, layer: int) -> bool:
        """Whether `observe` needs that layer's attention probabilities."""
        return False

    def begin(self, lm, view: SegmentView, inputs: list) -> dict:
        """The state `observe` carries through the layers, from this pruner's inputs."""
        return {}

    def observe(self, state: dict, index: int, layer, attention: LayerAttention) -> dict:
        return state

    def decide(self, state: dict, attention: LayerAttention, view: SegmentView) -> tuple[dict, dict]:
        """After the segment's last layer (whose attention is given): ({kept_names: tensors}, {carry_names: tensors});
        "kept" orders the visual block's tokens, those that go on first."""
        raise NotImplementedError
