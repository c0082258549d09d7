"""LLaMA decoder graphs over KV-cache buffers that the runtime owns: per segment (layers cut at the pruning points)
one `DecoderLayers` graph serving prefill and decode alike, a `PrefillSegment` only where a segment prunes, and the
LM head on its own. Each weight is in one graph.

Caches are [B, Hkv, capacity, D] buffers, written in place (ONNX ScatterND at `write_index`), so a decode step
rewrites one slot, not the whole cache; `attention_mask` [B, N, capacity] says which slots each new token sees.
A prefill segment takes the sequence as three blocks (prefix | visual | suffix) so that every length is a symbolic
dim of its own and the visual block can shrink from one segment to the next.
"""
import torch
import torch.nn.functional as F
from torch import nn

from export.modules.layers import (
    additive_mask,
    kv_slots,
    kv_write,
    llama_attend,
    llama_finish,
    llama_project,
    llama_qkv,
    pack_qkv,
    repeat_kv,
    rms_norm,
    rope_cos_sin,
    rope_tables,
    rotary,
)
from export.modules.pruning import LayerAttention, LlmPruner, SegmentView
from export.modules.select import gather_tokens


def causal_window(n_new: int, n_keys: int, device) -> torch.Tensor:
    """[n_new, n_keys] bool: new token q (placed after n_keys - n_new cached ones) sees keys <= itself."""
    q = torch.arange(n_new, device=device)[:, None] + (n_keys - n_new)
    return torch.arange(n_keys, device=device)[None] <= q


class LanguageModelParts(nn.Module):
    """The HF language model pieces the graphs borrow: layers (q, k, v packed into one matrix each), final norm,
    LM head, RoPE frequencies and tables."""

    def __init__(self, language_model, lm_head):
        super().__init__()
        self.layers, self.norm, self.lm_head = language_model.layers, language_model.norm, lm_head
        self.qkv = nn.ParameterList([pack_qkv(layer.self_attn) for layer in self.layers])
        inv_freq = language_model.rotary_emb.inv_freq
        self.register_buffer("inv_freq", inv_freq.clone(), persistent=False)
        cos, sin = rope_tables(inv_freq, language_model.config.max_position_embeddings, lm_head.weight.dtype)
        self.register_buffer("cos_table", cos, persistent=False)
        self.register_buffer("sin_table", sin, persistent=False)


class PrefillSegment(nn.Module):
    """Decoder layers [first, last] over the prompt, for a segment that prunes at its end: it shows its `pruner`
    (export/modules/pruning.py) every layer and hands on only the visual tokens it decides to keep. Its caches go
    into the runtime's buffers from slot 0, as DecoderLayers would write them; decode then runs DecoderLayers.
    `visual_mask` marks the real tokens of a visual block padded to the longest in the batch (ATP's per-request
    counts)."""

    def __init__(self, lm: LanguageModelParts, first: int, last: int, pruner: LlmPruner):
        super().__init__()
        self.lm, self.first, self.last, self.pruner = lm, first, last, pruner

    def forward(self, prefix, visual, suffix, visual_positions, suffix_positions, suffix_mask, past: list,
                visual_mask=None, pruner_inputs=None):
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
        state = pruner.begin(self.lm, view, pruner_inputs or [])
        slots, outputs = None, {}
        for j, i in enumerate(range(self.first, self.last + 1)):
            layer = self.lm.layers[i]
            q, k, v, v_flat = llama_qkv(layer, self.lm.qkv[i], x, cos, sin)
            out, probs = llama_attend(layer, q, k, v, bias, need_probs=pruner.wants_probs(i))
            if slots is None:
                slots = kv_slots(torch.zeros(batch, dtype=torch.long, device=x.device), k)
            outputs[f"present.{i}.key"] = kv_write(past[2 * j], k, slots)
            outputs[f"present.{i}.value"] = kv_write(past[2 * j + 1], v, slots)
            attention = LayerAttention(q, k, v, v_flat, probs, bias, layer.self_attn.scaling,
                                       layer.self_attn.num_key_value_groups)
            state = pruner.observe(state, i, layer, attention)
            x = llama_finish(layer, x, out)
        kept, carry = pruner.decide(state, attention, view)
        hidden = dict(prefix_hidden=x[:, :n_pre], visual_hidden=gather_tokens(x[:, n_pre:n_sys_vis], kept["kept"]),
                      suffix_hidden=x[:, n_sys_vis:])
        return {**kept, **hidden, **carry, **outputs}


class DecoderLayers(nn.Module):
    """Decoder layers [first, last] for N new tokens against their segment's cache buffers: the whole prompt at
    prefill (a segment that does not prune), one token per decode step. Norms, RoPE and attention are single ops
    where the opset has them (RMSNormalization, RotaryEmbedding, Attention at 23)."""

    def __init__(self, lm: LanguageModelParts, first: int, last: int):
        super().__init__()
        self.lm, self.first, self.last = lm, first, last

    def forward(self, hidden_in, position_ids, attention_mask, write_index, past: list):
        """attention_mask [B, N, capacity] bool: the slots each new token sees (itself included, once written)."""
        x, mask, tables = hidden_in, attention_mask[:, None], (self.lm.cos_table, self.lm.sin_table)
        slots, outputs = None, {}
        for j, i in enumerate(range(self.first, self.last + 1)):
            layer = self.lm.layers[i]
            attn = layer.self_attn
            q, k, v, _ = llama_project(layer, self.lm.qkv[i], x)
            q, k = rotary(q, position_ids, self.lm.inv_freq, tables), rotary(k, position_ids, self.lm.inv_freq, tables)
            slots = kv_slots(write_index, k) if slots is None else slots
            keys, values = kv_write(past[2 * j], k, slots), kv_write(past[2 * j + 1], v, slots)
            n_rep = attn.num_key_value_groups
            out = F.scaled_dot_product_attention(q, repeat_kv(keys, n_rep), repeat_kv(values, n_rep), attn_mask=mask,
                                                 scale=attn.scaling)
            x = llama_finish(layer, x, out)
            outputs[f"present.{i}.key"], outputs[f"present.{i}.value"] = keys, values
        return {"hidden_out": x, **outputs}


class LogitsHead(nn.Module):
    """Final norm and LM head over each request's last hidden state: logits [B, V] in fp32, whatever the weights'
    dtype."""

    def __init__(self, lm: LanguageModelParts):
        super().__init__()
        self.norm, self.lm_head = lm.norm, lm.lm_head

    def forward(self, hidden_last):
        return self.lm_head(rms_norm(self.norm, hidden_last)).float()


class Embed(nn.Module):
    """The token embedding table, as its own graph (prefill's text blocks, then each generated token)."""

    def __init__(self, table: nn.Embedding):
        super().__init__()
        self.table = table

    def forward(self, input_ids):
        return self.table(input_ids)
