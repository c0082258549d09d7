"""LLaMA decoder segments cut at the pruning points, and the KV-cached decode step.

A prefill segment takes the sequence as three blocks (prefix | visual | suffix) so that every length is a
symbolic dim of its own and the visual block can shrink from one segment to the next.
"""
import torch
from torch import nn

from export.modules.layers import additive_mask, llama_attend, llama_finish, llama_qkv, rope_cos_sin
from export.modules.pruning import LayerAttention, LlmPruner, SegmentView
from export.modules.select import gather_tokens


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
        """Logits [B, V] (fp32, whatever the weights' dtype) of the hidden state at position index[b] of each row."""
        last = torch.gather(x, 1, index[:, None, None].expand(-1, 1, x.shape[-1]))[:, 0]
        return self.lm_head(self.norm(last)).float()


class PrefillSegment(nn.Module):
    """Decoder layers [first, last] over the prompt. With a `pruner` (export/modules/pruning.py) it shows it every
    layer and hands on only the visual tokens it decides to keep; with `head` it ends with the logits.
    `visual_mask` marks the real tokens of a visual block padded to the longest in the batch (after ATP's
    per-request counts)."""

    def __init__(self, lm: LanguageModelParts, first: int, last: int, head: bool = False,
                 pruner: LlmPruner | None = None):
        super().__init__()
        self.lm, self.first, self.last, self.head, self.pruner = lm, first, last, head, pruner

    def forward(self, prefix, visual, suffix, visual_positions, suffix_positions, suffix_mask, visual_mask=None,
                pruner_inputs=None):
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
        view = SegmentView(n_pre, n_vis, suffix_mask, visual_mask, visual_positions)
        pruner = self.pruner
        state = pruner.begin(self.lm, view, pruner_inputs or []) if pruner is not None else None
        presents = []
        for i in range(self.first, self.last + 1):
            layer = self.lm.layers[i]
            q, k, v, v_flat = llama_qkv(layer, x, cos, sin)
            out, probs = llama_attend(layer, q, k, v, bias, need_probs=pruner is not None and pruner.wants_probs(i))
            presents += [k, v]
            attention = LayerAttention(q, k, v, v_flat, probs, bias, layer.self_attn.scaling,
                                       layer.self_attn.num_key_value_groups)
            if pruner is not None:
                state = pruner.observe(state, i, layer, attention)
            x = llama_finish(layer, x, out)
        outputs, carry, visual_out = {}, {}, x[:, n_pre:n_sys_vis]
        if pruner is not None:
            kept, carry = pruner.decide(state, attention, view)
            outputs.update(kept)
            visual_out = gather_tokens(visual_out, kept["kept"])
        if self.head:
            outputs["logits"] = self.lm.logits_at(x[:, n_sys_vis:], suffix_mask.sum(-1) - 1)
        else:
            outputs.update(prefix_hidden=x[:, :n_pre], visual_hidden=visual_out, suffix_hidden=x[:, n_sys_vis:], **carry)
        for j, i in enumerate(range(self.first, self.last + 1)):
            outputs[f"present.{i}.key"], outputs[f"present.{i}.value"] = presents[2 * j], presents[2 * j + 1]
        return outputs


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


class Embed(nn.Module):
    """The token embedding table, as its own graph (prefill's text blocks, then each generated token)."""

    def __init__(self, table: nn.Embedding):
        super().__init__()
        self.table = table

    def forward(self, input_ids):
        return self.table(input_ids)
