"""Group-wise attention rollout (IVTP Eq. 3), CLS row only, and the weighted fusion alternative.

R = N_top ... N_2 A_1 with N = rownorm(A + I). Only the CLS row of R is needed, so it is computed
from the top down as vector-matrix products: no identity matrix, no N x N products.
"""
import torch


def rollout_cls_row(attns: list[torch.Tensor]) -> torch.Tensor:
    """attns: head-averaged probs [B, N, N] of one group, bottom layer first, the CLS at index 0.
    Returns the CLS row of the rollout [B, N]."""
    row = None
    for depth, a in enumerate(reversed(attns)):
        if depth == len(attns) - 1:  # the group's first layer enters raw (Eq. 3)
            return a[:, 0] if row is None else torch.bmm(row[:, None], a)[:, 0]
        # rows of (A + I) re-normalised: v @ rownorm(A + I) = (v / r) @ A + v / r
        r = a.sum(dim=-1) + 1.0
        if row is None:  # CLS row of rownorm(A + I): the identity adds 1 at the CLS column
            row = a[:, 0] / r[:, :1]
            row = torch.cat([row[:, :1] + 1.0 / r[:, :1], row[:, 1:]], dim=1)
        else:
            scaled = row / r
            row = torch.bmm(scaled[:, None], a)[:, 0] + scaled
    raise ValueError("rollout needs at least one attention map")


def fused_cls_row(attns: list[torch.Tensor]) -> torch.Tensor:
    """Weighted multi-layer fusion (the IVTP write-up's alternative to rollout): sum_l w_l A_l[cls], with
    weights growing with depth (w_l proportional to l = 1..n), since later layers see more context."""
    weights = [l / (len(attns) * (len(attns) + 1) / 2) for l in range(1, len(attns) + 1)]
    return sum(w * a[:, 0] for w, a in zip(weights, attns))


FUSIONS = {"rollout": rollout_cls_row, "weighted": fused_cls_row}


def group_cls_row(attns: list[torch.Tensor], fusion: str = "rollout") -> torch.Tensor:
    return FUSIONS[fusion](attns)
