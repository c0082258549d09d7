"""Pruning inside the decoder, without a second copy of its layers. A segment that prunes runs its decoder graph
over the prompt like any other, with one addition: that graph also hands out the queries of the layers its pruner
reads (`LlmPruner.taps`). Then the segment's `prune` graph (`PruneSegment`, no decoder weights) recomputes, from
those queries and the keys the decoder just wrote into the cache buffers, the attention rows the pruner needs,
and decides which visual tokens go on. IVTP, FastV and ATP each implement a pruner in their own file; a new in-LLM
method is one more.
"""
from dataclasses import dataclass

import torch
from torch import nn

from export.modules.layers import NEG_INF, repeat_kv


class SegmentView:
    """Where the blocks sit in a segment's prompt (prefix | visual | suffix, then IVTP's pseudo-CLS), which entries
    are real, and the prompt's additive attention mask."""

    def __init__(self, n_pre, n_vis, suffix_mask, visual_mask, visual_positions, bias=None):
        self.n_pre, self.n_vis, self.suffix_mask, self.visual_mask = n_pre, n_vis, suffix_mask, visual_mask
        self.visual_positions, self.bias = visual_positions, bias  # bias [B, 1, N, N]: 0 where a row sees a key

    @property
    def visual(self):
        return slice(self.n_pre, self.n_pre + self.n_vis)


@dataclass
class LayerTap:
    """What the prune graph sees of one decoder layer the pruner reads, over the segment's N prompt tokens."""
    q: torch.Tensor  # [B, heads, N, D], RoPE applied
    k: torch.Tensor  # [B, kv_heads, N, D], RoPE applied: the cache's first N slots
    v: torch.Tensor | None  # [B, kv_heads, N, D] where the pruner reads values (reads_values), else None
    bias: torch.Tensor  # [B, 1, N, N] additive mask
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
    prune graph passes the inputs to `decide` in that order and emits its outputs under those names."""
    input_names: tuple[str, ...] = ()  # e.g. ATP's thresholds
    kept_names: tuple[str, ...] = ("kept",)  # "kept" [B, V'] first; ATP adds "kept_count" [B]
    reads_values: bool = False  # whether `decide` reads the values of the segment's last layer

    def taps(self, first: int, last: int) -> list[int]:
        """The layers of segment [first, last] whose attention `decide` reads (default: the last one)."""
        return [last]

    def decide(self, taps: dict[int, LayerTap], view: SegmentView, inputs: list) -> dict:
        """{kept_names: tensors}; "kept" orders the visual block's tokens, those that go on first."""
        raise NotImplementedError


def tap_layers(pruner: LlmPruner, first: int, last: int) -> list[int]:
    """The layers of segment [first, last] its pruner reads, ascending: the decoder graph's q.<l> outputs, the prune
    graph's inputs and the manifest's Segment.taps, in that one order."""
    return sorted(pruner.taps(first, last))


class PruneSegment(nn.Module):
    """The prune graph of a segment: the attention mask the decoder graph ran the prompt with, the visual
    positions and suffix mask (which give the blocks' lengths), the taps' queries and cached keys (and the last
    layer's cached values where the pruner reads them) -> the pruner's decision. `pseudo_cls`: the prompt ends
    with IVTP's pseudo-CLS token, after the suffix."""

    def __init__(self, pruner: LlmPruner, layers: list[int], scale: float, n_rep: int, pseudo_cls: bool):
        super().__init__()
        self.pruner, self.layers, self.scale, self.n_rep, self.pseudo_cls = pruner, layers, scale, n_rep, pseudo_cls

    def forward(self, attention_mask, visual_positions, suffix_mask, queries: list, keys: list, values=None,
                visual_mask=None, pruner_inputs=None):
        n = queries[0].shape[2]
        n_vis = visual_positions.shape[1]
        n_pre = n - n_vis - suffix_mask.shape[1] - int(self.pseudo_cls)
        bias = torch.where(attention_mask[:, None, :, :n], 0.0, NEG_INF)
        if visual_mask is None:
            visual_mask = torch.ones_like(visual_positions)
        view = SegmentView(n_pre, n_vis, suffix_mask, visual_mask, visual_positions, bias)
        last_values = values[0][:, :, :n] if values else None
        taps = {i: LayerTap(q, k[:, :, :n], last_values if i == self.layers[-1] else None, bias, self.scale, self.n_rep)
                for i, q, k in zip(self.layers, queries, keys)}
        return self.pruner.decide(taps, view, pruner_inputs or [])
