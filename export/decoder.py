"""LLaMA decoder segments cut at the pruning points, and the KV-cached decode step.

A prefill segment takes the sequence as three blocks (prefix | visual | suffix) so that every length is a
symbolic dim of its own and the visual block can shrink from one segment to the next. Pruning segments
also carry IVTP's pseudo-CLS: a query that attends to prefix + visual + itself, is never attended to,
and is never cached.
"""
import torch
from torch import nn

from export.layers import additive_mask, llama_attend, llama_finish, llama_qkv, repeat_kv, rope_cos_sin
from export.llm_pruners import SegmentView
from export.rollout import gather_tokens, group_cls_row, select_top_k


def causal_window(n_new: int, n_keys: int, device) -> torch.Tensor:
    """[n_new, n_keys] bool: new token q (placed after n_keys - n_new cached ones) sees keys <= itself."""
    q = torch.arange(n_new, device=device)[:, None] + (n_keys - n_new)
    return torch.arange(n_keys, device=device)[None] <= q


class LanguageModelParts(nn.Module):
    """The HF language model pieces a segment borrows: layers, final norm, LM head, RoPE frequencies."""

    def __init__(self, language_model, lm_head):
        super().__init__()
        self.layers, self.norm, self.lm_head = language_model.layers, language_model.norm, lm_head
        self.register_buffer("inv_freq", language_model.rotary_emb.inv_freq.clone(), persistent=False)

    def logits_at(self, x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """Logits [B, V] of the hidden state at position index[b] of each row."""
        last = torch.gather(x, 1, index[:, None, None].expand(-1, 1, x.shape[-1]))[:, 0]
        return self.lm_head(self.norm(last))


class PrefillSegment(nn.Module):
    """Decoder layers [first, last] over the prompt. With `keep`, prunes the visual block after `last` by
    GTP (rollout or fusion over the last `group` layers) of the pseudo-CLS row; with `pruner`, by a rule read
    from the last layer's attention (FastV, ATP); with `head`, ends with the logits. `visual_mask` marks the
    real tokens of a visual block padded to the longest in the batch (after ATP's per-request counts)."""

    def __init__(self, lm: LanguageModelParts, first: int, last: int, keep: int | None = None,
                 group: int = 3, head: bool = False, pruner: nn.Module | None = None, fusion: str = "rollout"):
        super().__init__()
        self.lm, self.first, self.last, self.keep, self.head, self.pruner = lm, first, last, keep, head, pruner
        self.fusion = fusion
        self.rollout_layers = set(range(max(first, last - group + 1), last + 1)) if keep else set()

    def forward(self, prefix, visual, suffix, visual_positions, suffix_positions, suffix_mask,
                pseudo_cls=None, pseudo_cls_position=None, visual_mask=None, thresholds=None):
        batch, n_pre, n_vis = prefix.shape[0], prefix.shape[1], visual.shape[1]
        n_sys_vis = n_pre + n_vis
        x = torch.cat([prefix, visual, suffix], dim=1)
        pre_pos = torch.arange(n_pre, device=x.device).expand(batch, n_pre)
        cos, sin = rope_cos_sin(self.lm.inv_freq, torch.cat([pre_pos, visual_positions, suffix_positions], 1))
        if visual_mask is None:
            visual_mask = torch.ones(batch, n_vis, dtype=suffix_mask.dtype, device=x.device)
        valid = torch.cat([torch.ones(batch, n_pre, dtype=torch.bool, device=x.device), visual_mask > 0,
                           suffix_mask > 0], 1)
        bias = additive_mask(causal_window(x.shape[1], x.shape[1], x.device), valid)
        if pseudo_cls is not None:
            p_cos, p_sin = rope_cos_sin(self.lm.inv_freq, pseudo_cls_position)
        presents, block_attns, v_norm, order, count = [], [], None, None, None
        for i in range(self.first, self.last + 1):
            layer = self.lm.layers[i]
            need = i in self.rollout_layers
            q, k, v, v_flat = llama_qkv(layer, x, cos, sin)
            out, probs = llama_attend(layer, q, k, v, bias, need_probs=need)
            presents += [k, v]
            if self.pruner is not None and i == self.last:
                view = SegmentView(n_pre, n_vis, suffix_mask, visual_mask, visual_positions)
                n_rep = layer.self_attn.num_key_value_groups
                extra = {} if thresholds is None else {"thresholds": thresholds}
                order, count = self.pruner(q, repeat_kv(k, n_rep), bias, layer.self_attn.scaling, view, **extra)
            if pseudo_cls is not None:
                pq, pk, pv, _ = llama_qkv(layer, pseudo_cls, p_cos, p_sin)
                keys, values = torch.cat([k[:, :, :n_sys_vis], pk], 2), torch.cat([v[:, :, :n_sys_vis], pv], 2)
                p_out, p_probs = llama_attend(layer, pq, keys, values, None, need_probs=need)
                pseudo_cls = llama_finish(layer, pseudo_cls, p_out)
                if need:
                    block_attns.append(self._cls_block(probs.mean(1), p_probs.mean(1)[:, 0], n_pre, n_vis))
            x = llama_finish(layer, x, out)
            v_norm = v_flat.norm(dim=-1)
        outputs = {}
        if self.keep is not None:
            cls_row = group_cls_row(block_attns, self.fusion)
            score = cls_row[:, 1:] * v_norm[:, n_pre:n_sys_vis]
            order = select_top_k(score, self.keep)
        if order is not None:
            outputs["kept"] = order
            if count is not None:
                outputs["kept_count"] = count
            visual_out = gather_tokens(x[:, n_pre:n_sys_vis], order)
        else:
            visual_out = x[:, n_pre:n_sys_vis]
        if self.head:
            outputs["logits"] = self.lm.logits_at(x[:, n_sys_vis:], suffix_mask.sum(-1) - 1)
        else:
            outputs.update(prefix_hidden=x[:, :n_pre], visual_hidden=visual_out, suffix_hidden=x[:, n_sys_vis:])
            if pseudo_cls is not None:
                outputs["pseudo_cls_hidden"] = pseudo_cls
        for j, i in enumerate(range(self.first, self.last + 1)):
            outputs[f"present.{i}.key"], outputs[f"present.{i}.value"] = presents[2 * j], presents[2 * j + 1]
        return outputs

    @staticmethod
    def _cls_block(attn, p_row, n_pre, n_vis):
        """Attention over the block [pseudo-CLS, visual...]: [B, 1+V, 1+V]. Visual rows never see the
        pseudo-CLS (it comes after them), so their first column is zero."""
        vis = attn[:, n_pre:n_pre + n_vis, n_pre:n_pre + n_vis]
        top = torch.cat([p_row[:, -1:], p_row[:, n_pre:n_pre + n_vis]], 1)[:, None]
        rest = torch.cat([torch.zeros_like(vis[:, :, :1]), vis], 2)
        return torch.cat([top, rest], 1)


class DecodeStep(nn.Module):
    """All decoder layers for new tokens against per-segment KV caches (each segment has its own length
    and its own key-padding mask, since pruning left each with a different visual set)."""

    def __init__(self, lm: LanguageModelParts, segment_of_layer: list[int]):
        super().__init__()
        self.lm, self.segment_of_layer = lm, segment_of_layer

    def forward(self, inputs_embeds, position_ids, past_masks: list, past: list):
        """past_masks[s]: [B, past_seq.s], 0 where segment s cached padding. New tokens are all valid."""
        x = inputs_embeds
        batch, n_new = x.shape[0], x.shape[1]
        cos, sin = rope_cos_sin(self.lm.inv_freq, position_ids)
        new_valid = torch.ones(batch, n_new, dtype=torch.bool, device=x.device)
        biases = [additive_mask(causal_window(n_new, m.shape[1] + n_new, x.device), torch.cat([m > 0, new_valid], 1))
                  for m in past_masks]
        outputs = {}
        for i, layer in enumerate(self.lm.layers):
            q, k, v, _ = llama_qkv(layer, x, cos, sin)
            k, v = torch.cat([past[2 * i], k], 2), torch.cat([past[2 * i + 1], v], 2)
            out, _ = llama_attend(layer, q, k, v, biases[self.segment_of_layer[i]])
            x = llama_finish(layer, x, out)
            outputs[f"present.{i}.key"], outputs[f"present.{i}.value"] = k, v
        last = torch.full((x.shape[0],), x.shape[1] - 1, dtype=torch.long, device=x.device)
        return {"logits": self.lm.logits_at(x, last), **outputs}
