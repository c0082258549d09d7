"""Selection helpers every pruning method traces into its graph: sorts and top-k with a constant k (what
TensorRT's TopK takes), and gathers of the chosen tokens."""
import torch


def sort_last(x: torch.Tensor, descending: bool = False):
    """torch.sort over the last axis as a TopK whose k is a constant: torch.sort exports k read off a shape,
    which TensorRT's parser refuses. The axis must be static at trace time. Returns (values, indices)."""
    n = x.shape[-1]
    if not isinstance(n, int):
        raise TypeError(f"sort_last needs a static last axis to fix TopK's k, got the symbolic size {n}")
    return torch.topk(x, n, dim=-1, largest=descending, sorted=True)


def select_top_k(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Indices [B, k] of the k highest scores (compared in fp32), sorted ascending (raster order)."""
    return sort_last(torch.topk(scores.float(), k, dim=-1).indices).values


def gather_tokens(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """x [B, N, C], index [B, K] -> [B, K, C]"""
    return torch.gather(x, 1, index[..., None].expand(-1, -1, x.shape[-1]))
