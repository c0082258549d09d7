"""Selection maths for methods that prune between the ViT and the LLM: pure tensor functions, traced into the
vision graph. Counts are static, so every loop unrolls at trace time; no data-dependent Python control flow.

Patch indices are in the 0..N-1 raster numbering (CLS excluded) throughout.
"""
import torch

from export.rollout import gather_tokens, select_top_k, sort_last


def pool_grid(patches: torch.Tensor, side: int, g: int) -> torch.Tensor:
    """[B, side*side, C] -> [B, g*g, C]: the mean of each (side/g)^2 block of the patch grid, raster order."""
    s, c = side // g, patches.shape[-1]
    return patches.reshape(-1, g, s, g, s, c).mean(dim=(2, 4)).reshape(-1, g * g, c)


def vispruner_select(cls_attn: torch.Tensor, features: torch.Tensor, n_important: int, n_diverse: int,
                     max_drop: int = 8):
    """VisPruner. cls_attn [B, N] (CLS row, heads averaged), features [B, N, C] (pre-projector).
    Returns (important [B, n_important], diverse [B, n_diverse]), each sorted ascending; None for an empty set."""
    order = sort_last(cls_attn, descending=True).indices
    important = sort_last(order[:, :n_important]).values if n_important else None
    if not n_diverse:
        return important, None
    normed = features / features.norm(dim=-1, keepdim=True)
    diverse = drop_duplicates(normed, order[:, n_important:], n_diverse, max_drop)
    return important, sort_last(diverse).values


def drop_duplicates(normed: torch.Tensor, order: torch.Tensor, n_keep: int, max_drop: int = 8,
                    by_score: bool = False) -> torch.Tensor:
    """Upstream VisPruner's loop: while more than n_keep candidates remain, split the order into a = [0::2] and
    b = [1::2], score each a by its best cosine to b, drop the r = min(max_drop, R - n_keep) highest-scoring a
    (all of a when r exceeds it, as upstream's slicing does); new order = surviving a, then b. An odd R just
    gives a one more member (upstream crashes there). Returns the n_keep survivors [B, n_keep].

    Upstream orders the surviving a by descending score (`by_score=True`). That re-sorts ~R/2 close cosines
    every round and the next split depends on the whole permutation, so float noise of 1e-7 between torch and
    ONNX Runtime changes the result on most images. By default the survivors keep their previous relative
    order: only the top-r cut itself is decided by the scores."""
    while order.shape[1] > n_keep:
        r = min(max_drop, order.shape[1] - n_keep)
        a, b = order[:, 0::2], order[:, 1::2]
        if r >= a.shape[1]:
            order = b
            continue
        sim = torch.matmul(gather_tokens(normed, a), gather_tokens(normed, b).transpose(1, 2))
        survivors = sort_last(sim.max(dim=-1).values, descending=True).indices[:, r:]
        if not by_score:
            survivors = sort_last(survivors).values
        order = torch.cat([torch.gather(a, 1, survivors), b], dim=1)
    return order


def visionzip_select(hidden: torch.Tensor, cls_attn_sum: torch.Tensor, keys: torch.Tensor, n_dominant: int,
                     n_contextual: int):
    """VisionZip. hidden [B, 1+N, C] and keys [B, 1+N, D] (heads averaged) with the CLS first; cls_attn_sum [B, N]
    (CLS row over the patches, heads summed). Returns (tokens [B, n_dominant + n_contextual, C] = CLS, dominant
    patches in raster order, contextual tokens in target order; dominant patch indices [B, n_dominant-1];
    contextual target indices [B, n_contextual]); an empty index set is None."""
    n = cls_attn_sum.shape[1]
    patches = hidden[:, 1:]
    dominant = select_top_k(cls_attn_sum, n_dominant - 1) if n_dominant > 1 else None
    tokens = [hidden[:, :1]] + ([gather_tokens(patches, dominant)] if dominant is not None else [])
    if not n_contextual:
        return torch.cat(tokens, dim=1), dominant, None
    arange = torch.arange(n, device=hidden.device)
    rank = arange.to(hidden.dtype).expand(hidden.shape[0], n)
    if dominant is not None:  # dominant patches sort after every other: the rest come first, in raster order
        rank = rank + n * (dominant[:, :, None] == arange).to(hidden.dtype).sum(dim=1)
    rest_count = n - (n_dominant - 1)
    rest = torch.topk(rank, rest_count, dim=-1, largest=False).indices  # ascending raster order
    step = max(1, rest_count // n_contextual)
    targets = rest[:, ::step][:, :n_contextual]
    positions = torch.arange(rest_count, device=hidden.device)
    is_member = (positions % step != 0) | (positions >= step * n_contextual)  # not one of the targets
    k = keys[:, 1:] / keys[:, 1:].norm(dim=-1, keepdim=True)
    sim = torch.matmul(gather_tokens(k, rest), gather_tokens(k, targets).transpose(1, 2))  # [B, R, n_ctx]
    slot = torch.arange(n_contextual, device=hidden.device)
    assign = (sim.argmax(dim=-1)[..., None] == slot) & is_member[None, :, None]
    assign = assign.to(hidden.dtype)
    counts = assign.sum(dim=1)[..., None].clamp(min=1.0)
    merged = torch.matmul(assign.transpose(1, 2), gather_tokens(patches, rest)) / counts
    tokens.append(gather_tokens(patches, targets) + merged)
    return torch.cat(tokens, dim=1), dominant, targets
