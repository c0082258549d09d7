"""Transformer layers written out, weights borrowed from the Hugging Face modules.

Explicit code (no HF attention dispatch, no cache objects) exports cleanly to ONNX and lets pruning
read attention probabilities and value norms where it needs them. The maths is HF's, op for op.

Weights and matmuls run in the checkpoint's dtype; norms, softmax probabilities and everything pruning scores
with are computed in fp32 (explicit casts, no-ops at fp32), so that kept indices do not hang on fp16 rounding.
"""
import contextlib
import contextvars

import torch
import torch.nn.functional as F

NEG_INF = torch.finfo(torch.float32).min
_EXPORT_OPSET = contextvars.ContextVar("export_opset", default=None)


@contextlib.contextmanager
def exporting_at(opset: int):
    """Tells the layers which ONNX opset an export writes: at 23 and above they emit ONNX's fused RotaryEmbedding."""
    token = _EXPORT_OPSET.set(opset)
    try:
        yield
    finally:
        _EXPORT_OPSET.reset(token)


def _fused_onnx_ops() -> bool:
    opset = _EXPORT_OPSET.get()
    return opset is not None and opset >= 23 and torch.onnx.is_in_onnx_export()


def split_heads(x: torch.Tensor, head_dim: int) -> torch.Tensor:
    """[B, N, H*D] -> [B, H, N, D]"""
    b, n, _ = x.shape
    return x.view(b, n, -1, head_dim).transpose(1, 2)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """[B, H, N, D] -> [B, N, H*D]"""
    b, h, n, d = x.shape
    return x.transpose(1, 2).reshape(b, n, h * d)


def attend(q, k, v, scale: float, bias=None, need_probs: bool = False):
    """Softmax attention. `bias` is additive (0 / NEG_INF). Returns (output [B,H,Nq,D], fp32 probs or None)."""
    if not need_probs:
        if bias is not None and bias.dtype != q.dtype:  # fp16 / bf16: fp32's min would overflow
            bias = bias.clamp(min=torch.finfo(q.dtype).min).to(q.dtype)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=scale), None
    scores = torch.matmul(q.float(), k.float().transpose(-1, -2)) * scale
    if bias is not None:
        scores = scores + bias.float()
    probs = torch.softmax(scores, dim=-1)
    return torch.matmul(probs.to(v.dtype), v), probs


def layer_norm(norm: torch.nn.LayerNorm, x: torch.Tensor) -> torch.Tensor:
    """A LayerNorm computed in fp32 and returned in x's dtype (LlamaRMSNorm does the same by itself)."""
    weight, bias = norm.weight.float(), norm.bias.float() if norm.bias is not None else None
    return F.layer_norm(x.float(), norm.normalized_shape, weight, bias, norm.eps).to(x.dtype)


def vector_norm(x: torch.Tensor) -> torch.Tensor:
    """L2 norm over the last axis, in fp32: value norms and cosines feed pruning scores."""
    return x.float().norm(dim=-1)


# ---------------------------------------------------------------- CLIP (pre-LN, biases, quick_gelu)
def clip_layer(layer, x: torch.Tensor, bias=None, need_probs: bool = False):
    """One CLIPEncoderLayer. Returns (x, head-averaged probs [B,N,N] or None, value norms [B,N])."""
    attn = layer.self_attn
    h = layer_norm(layer.layer_norm1, x)
    q = split_heads(attn.q_proj(h), attn.head_dim)
    k = split_heads(attn.k_proj(h), attn.head_dim)
    v_flat = attn.v_proj(h)
    o, probs = attend(q, k, split_heads(v_flat, attn.head_dim), attn.scale, bias, need_probs)
    x = x + attn.out_proj(merge_heads(o))
    x = x + layer.mlp(layer_norm(layer.layer_norm2, x))
    mean_probs = probs.mean(dim=1) if probs is not None else None
    return x, mean_probs, vector_norm(v_flat)


def clip_layer_cls_only(layer, x: torch.Tensor) -> torch.Tensor:
    """The CLS output of a CLIP layer (keys/values over all tokens, query of token 0 only): [B, C]."""
    attn = layer.self_attn
    h = layer_norm(layer.layer_norm1, x)
    q = split_heads(attn.q_proj(h[:, :1]), attn.head_dim)
    k = split_heads(attn.k_proj(h), attn.head_dim)
    v = split_heads(attn.v_proj(h), attn.head_dim)
    o, _ = attend(q, k, v, attn.scale)
    cls = x[:, :1] + attn.out_proj(merge_heads(o))
    cls = cls + layer.mlp(layer_norm(layer.layer_norm2, cls))
    return cls[:, 0]


# ---------------------------------------------------------------- LLaMA (RMSNorm, RoPE, SwiGLU)
def rope_cos_sin(inv_freq: torch.Tensor, positions: torch.Tensor):
    """HF LlamaRotaryEmbedding for integer positions [B, N] -> cos, sin [B, 1, N, D]."""
    freqs = positions[..., None].float() * inv_freq
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos()[:, None], emb.sin()[:, None]


def rope_tables(inv_freq: torch.Tensor, max_positions: int, dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin [max_positions, D/2] for ONNX's RotaryEmbedding: computed in fp32, as HF does, stored in `dtype`."""
    freqs = torch.arange(max_positions, dtype=torch.float32)[:, None] * inv_freq.float()[None]
    return freqs.cos().to(dtype), freqs.sin().to(dtype)


def rotary(x, positions, inv_freq, tables):
    """RoPE on x [B, H, N, D] at integer positions [B, N]: one RotaryEmbedding op in an export at opset >= 23,
    HF's arithmetic otherwise (the same numbers: HF also rounds cos and sin to x's dtype)."""
    if _fused_onnx_ops():
        return torch.onnx.ops.rotary_embedding(x, tables[0], tables[1], positions)
    return apply_rope(x, *rope_cos_sin(inv_freq, positions))


def rotate_half(x):
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def apply_rope(x, cos, sin):
    """cos/sin are computed in fp32 (as HF does) and applied in x's dtype."""
    return x * cos.to(x.dtype) + rotate_half(x) * sin.to(x.dtype)


def repeat_kv(x: torch.Tensor, n_rep: int) -> torch.Tensor:
    return x if n_rep == 1 else x.repeat_interleave(n_rep, dim=1)


def rms_norm(norm, x: torch.Tensor) -> torch.Tensor:
    """LlamaRMSNorm as one normalisation (ONNX RMSNormalization at opset >= 23, not a chain of small ops), in fp32
    and rounded to x's dtype once (HF rounds before the weight's product too: a difference of an ulp at fp16)."""
    return F.rms_norm(x.float(), (x.shape[-1],), norm.weight.float(), norm.variance_epsilon).to(x.dtype)


def kv_slots(write_index: torch.Tensor, update: torch.Tensor) -> torch.Tensor:
    """[B, Hkv, N, 3] (request, head, slot) for N new tokens written at slots write_index[b] + 0..N-1 of caches
    shaped like update [B, Hkv, N, D]: the same for every layer, so a graph builds it once."""
    b, h, n = update.shape[:3]
    rows = torch.arange(b, device=update.device)[:, None, None].expand(b, h, n)
    heads = torch.arange(h, device=update.device)[None, :, None].expand(b, h, n)
    slots = (write_index[:, None] + torch.arange(n, device=update.device)[None])[:, None, :].expand(b, h, n)
    return torch.stack([rows, heads, slots], -1)


def kv_write(cache: torch.Tensor, update: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
    """cache [B, Hkv, C, D] with update [B, Hkv, N, D] written at kv_slots' `slots`. One ONNX ScatterND, which ONNX
    Runtime runs in place when the caller binds the output to the cache's own buffer; torch returns a new tensor
    and leaves the caller's cache as it was."""
    if torch.onnx.is_in_onnx_export():
        return torch.onnx.ops.symbolic("ScatterND", (cache, slots, update), {}, dtype=cache.dtype, shape=cache.shape,
                                       version=18)
    return cache.index_put(tuple(slots.unbind(-1)), update)


def pack_qkv(attn) -> torch.nn.Parameter:
    """q, k and v projection weights as one [(H + 2 Hkv) * D, hidden] matrix (one matmul, not three). The three
    projections are left as views into it, so the weights are still held once."""
    projections = (attn.q_proj, attn.k_proj, attn.v_proj)
    if any(p.bias is not None for p in projections):
        raise NotImplementedError("q/k/v projections with biases (LLaMA has none)")
    packed = torch.nn.Parameter(torch.cat([p.weight.detach() for p in projections]), requires_grad=False)
    start = 0
    for p in projections:
        rows = p.weight.shape[0]
        p.weight = torch.nn.Parameter(packed[start:start + rows], requires_grad=False)
        start += rows
    return packed


def llama_project(layer, qkv: torch.Tensor, x):
    """Normed input and packed projections of one LlamaDecoderLayer: q [B, H, N, D], k and v [B, Hkv, N, D] (no
    RoPE yet), v flat [B, N, Hkv * D]."""
    attn = layer.self_attn
    q_width, kv_width = attn.q_proj.weight.shape[0], attn.k_proj.weight.shape[0]
    packed = F.linear(rms_norm(layer.input_layernorm, x), qkv)
    q, k = packed[..., :q_width], packed[..., q_width:q_width + kv_width]
    v_flat = packed[..., q_width + kv_width:]
    return split_heads(q, attn.head_dim), split_heads(k, attn.head_dim), split_heads(v_flat, attn.head_dim), v_flat


def llama_qkv(layer, qkv: torch.Tensor, x, cos, sin):
    """q, k (RoPE applied), v as [B, heads, N, D], plus v flat [B, N, Hkv * D]; `qkv` is pack_qkv's matrix."""
    q, k, v, v_flat = llama_project(layer, qkv, x)
    return apply_rope(q, cos, sin), apply_rope(k, cos, sin), v, v_flat


def llama_finish(layer, x, attn_out):
    """Output projection, residual and MLP of one LlamaDecoderLayer."""
    x = x + layer.self_attn.o_proj(merge_heads(attn_out))
    return x + layer.mlp(rms_norm(layer.post_attention_layernorm, x))


def llama_attend(layer, q, k, v, bias, need_probs=False):
    attn = layer.self_attn
    n_rep = attn.num_key_value_groups
    return attend(q, repeat_kv(k, n_rep), repeat_kv(v, n_rep), attn.scaling, bias, need_probs)


def additive_mask(causal: torch.Tensor, key_valid: torch.Tensor) -> torch.Tensor:
    """causal [Nq, Nk] bool, key_valid [B, Nk] bool -> additive bias [B, 1, Nq, Nk]."""
    allowed = causal[None, None] & key_valid[:, None, None, :]
    return torch.where(allowed, 0.0, NEG_INF)
