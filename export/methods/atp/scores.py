"""ATP-LLaVA's Spatial Augmented Pruning (Sec. 3.3): redundant and spatial scores, thresholds (calibrated
constants or trained heads), and the hard keep decision whose count depends on the input.

Scores are per visual token of the current (possibly already pruned, padded) visual block. One deviation
from the paper, for a reason: S_self is made of attention logits and S_cross of probabilities, whose
scales differ by orders of magnitude, so each is min-max normalised over the request's valid visual tokens
before they are averaged; a sigmoid threshold in (0, 1) can then reach S_redundant, and the best token always
scores 1, so a threshold below 1 never empties an image.
"""
import torch
from torch import nn

SPATIAL_STRIDES = (2, 3, 4, 6)  # uniform grids with sampling rates 1/4, 1/9, 1/16, 1/36


def spatial_score_table(grid: int, strides=SPATIAL_STRIDES, scale: float = 1.0) -> torch.Tensor:
    """Eq. 5 per raster index: 1 - R^s * lambda for tokens on the grid sampled at rate R^s = 1/stride^2, the
    highest over the grids a token lies on (coarser grids score higher), 0 for tokens on no grid."""
    rows, cols = torch.meshgrid(torch.arange(grid), torch.arange(grid), indexing="ij")
    score = torch.zeros(grid, grid)
    for s in strides:
        on_grid = (rows % s == 0) & (cols % s == 0)
        score = torch.where(on_grid, torch.clamp(score, min=1.0 - scale / s**2), score)
    return score.flatten()


def masked_minmax(x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """x [B, V] scaled to [0, 1] over the valid entries of each row (0 where invalid)."""
    big = torch.finfo(x.dtype).max
    lo = torch.where(valid, x, big).amin(-1, keepdim=True)
    hi = torch.where(valid, x, -big).amax(-1, keepdim=True)
    return torch.where(valid, (x - lo) / torch.clamp(hi - lo, min=1e-12), 0.0)


def redundant_score(s_self: torch.Tensor, s_cross: torch.Tensor, valid: torch.Tensor):
    """(S_self, S_cross normalised, S_redundant = their mean), each [B, V]."""
    s_self, s_cross = masked_minmax(s_self, valid), masked_minmax(s_cross, valid)
    return s_self, s_cross, 0.5 * (s_self + s_cross)


def to_raster(x: torch.Tensor, raster_ids: torch.Tensor, valid: torch.Tensor, n_patches: int) -> torch.Tensor:
    """x [B, V] placed at its tokens' raster indices in a [B, n_patches] vector (0 for pruned or padding),
    so that a fixed-size head can read a variable-length token set."""
    onehot = (raster_ids[..., None] == torch.arange(n_patches, device=x.device)) & valid[..., None]
    return torch.einsum("bv,bvn->bn", x, onehot.to(x.dtype))


class ThresholdHeads(nn.Module):
    """Eqs. 6-8: z = Linear(cat(S_self, S_cross)); theta_r = sigmoid(Linear_r(z)), theta_s = sigmoid(Linear_s(z))."""

    def __init__(self, n_patches: int, hidden: int = 64):
        super().__init__()
        self.n_patches = n_patches
        self.trunk = nn.Linear(2 * n_patches, hidden)
        self.redundant, self.spatial = nn.Linear(hidden, 1), nn.Linear(hidden, 1)

    def forward(self, s_self_raster: torch.Tensor, s_cross_raster: torch.Tensor) -> torch.Tensor:
        """[B, N] each -> thresholds [B, 2] (theta_r, theta_s)."""
        z = self.trunk(torch.cat([s_self_raster, s_cross_raster], -1))
        return torch.sigmoid(torch.cat([self.redundant(z), self.spatial(z)], -1))


def soft_mask(s_red, s_spatial, thresholds, temperature: float):
    """Eqs. 9-11, for training: max(sigmoid((S_r - theta_r) T), sigmoid((S_s - theta_s) T))."""
    m_r = torch.sigmoid((s_red - thresholds[:, :1]) * temperature)
    m_s = torch.sigmoid((s_spatial - thresholds[:, 1:]) * temperature)
    return torch.maximum(m_r, m_s)


def keep_order(s_red, s_spatial, thresholds, valid):
    """Inference: keep token n if S_r > theta_r or S_s > theta_s. Returns (order [B, V]: kept tokens first in
    their current order, then the rest; count [B] of kept tokens)."""
    keep = ((s_red > thresholds[:, :1]) | (s_spatial > thresholds[:, 1:])) & valid
    # Each token's place is counted, not sorted: a sort over the visual axis needs TopK with k = V, which
    # varies per batch here, and TensorRT wants k constant. The scatter is an exact permutation.
    kept = keep.long()
    count = kept.sum(-1)
    position = torch.arange(s_red.shape[1], device=s_red.device).expand_as(s_red)
    kept_before = kept.cumsum(-1) - kept
    place = torch.where(keep, kept_before, count[:, None] + position - kept_before)
    return torch.zeros_like(place).scatter(-1, place, position), count


def atp_loss(masks: list[torch.Tensor], layers: list[int], n_patches: int) -> torch.Tensor:
    """Eq. 12: sum over pruning points of (tokens kept / 576) * layer index, batch-averaged: deeper layers
    and more tokens cost more."""
    return sum(m.sum(-1) / n_patches * layer for m, layer in zip(masks, layers)).mean()


def mean_layer_count(counts: list[torch.Tensor], points: list[int], n_layers: int, n_patches: int) -> torch.Tensor:
    """[B] visual tokens per decoder layer averaged over all n_layers, the paper's "average token count" (Tables
    1-2: kept [126, 88, 20] after layers 3, 13, 23 of 32 is (4*576 + 10*126 + 10*88 + 8*20) / 32 = 144), from
    the counts [B] kept at each point: layers up to the first point see all n_patches tokens."""
    spans = [b - a for a, b in zip(points, list(points[1:]) + [n_layers - 1])]
    return ((points[0] + 1) * n_patches + sum(c * s for c, s in zip(counts, spans))) / n_layers


def target_loss(masks: list[torch.Tensor], target: float, points: list[int] | None = None,
                n_layers: int | None = None) -> torch.Tensor:
    """Eq. 13: |N - target|, N the batch mean of the kept count averaged over all n_layers decoder layers when
    points and n_layers are given (the paper's convention, see mean_layer_count), else over the pruning points."""
    if points is not None:
        counts = [m.sum(-1) for m in masks]
        return (mean_layer_count(counts, points, n_layers, masks[0].shape[-1]).mean() - target).abs()
    return (torch.stack([m.sum(-1) for m in masks]).mean() - target).abs()
