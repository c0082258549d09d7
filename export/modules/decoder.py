"""LLaMA decoder graphs over KV-cache buffers that the runtime owns: per segment (layers cut at the pruning points)
one `DecoderLayers` graph serving prefill and decode alike, and the LM head on its own. Each weight is in one
graph: where a segment prunes, its weight-free prune graph (export/modules/pruning.py) reads the queries the
decoder graph hands out and the keys it wrote.

Caches are [B, Hkv, capacity, D] buffers, written in place (ONNX ScatterND at `write_index`), so a decode step
rewrites one slot, not the whole cache; `attention_mask` [B, N, capacity] says which slots each new token sees.
"""
import torch
import torch.nn.functional as F
from torch import nn

from export.modules.layers import (
    kv_slots,
    kv_write,
    llama_finish,
    llama_project,
    pack_qkv,
    repeat_kv,
    rms_norm,
    rope_tables,
    rotary,
)
from runtime import io_names as io


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


class DecoderLayers(nn.Module):
    """Decoder layers [first, last] for N new tokens against their segment's cache buffers: the whole prompt at
    prefill, one token per decode step. Norms, RoPE and attention are single ops where the opset has them
    (RMSNormalization, RotaryEmbedding, Attention at 23). `taps`: layers whose queries (RoPE applied) it also
    outputs as q.<layer>, for the segment's prune graph."""

    def __init__(self, lm: LanguageModelParts, first: int, last: int, taps: list[int] = ()):
        super().__init__()
        self.lm, self.first, self.last, self.taps = lm, first, last, set(taps)

    def forward(self, hidden_in, position_ids, attention_mask, write_index, past: list):
        """attention_mask [B, N, capacity] bool: the slots each new token sees (itself included, once written)."""
        x, mask, tables = hidden_in, attention_mask[:, None], (self.lm.cos_table, self.lm.sin_table)
        slots, outputs, queries = None, {}, {}
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
            if i in self.taps:
                queries[io.query_tap(i)] = q
        return {"hidden_out": x, **outputs, **queries}


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
