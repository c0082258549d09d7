"""GTP rollout: the top-down CLS-row shortcut equals IVTP Eq. 3 computed with full matrices."""
import torch

from export.methods.ivtp.rollout import rollout_cls_row
from export.modules.select import select_top_k


def full_rollout(attns):
    """Eq. 3 literally: R = A_1, then R = rownorm(A_l + I) @ R."""
    r = attns[0]
    for a in attns[1:]:
        m = a + torch.eye(a.shape[-1])
        r = (m / m.sum(-1, keepdim=True)) @ r
    return r


def random_attn(b, n, seed, causal=False):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(b, n, n, generator=g, dtype=torch.float64) * 3
    if causal:  # rows that do not sum to 1 over the block, as in the LLM
        logits = logits.masked_fill(torch.ones(n, n).triu(1).bool(), float("-inf"))
    return torch.softmax(logits, -1) * (0.5 if causal else 1.0)


def test_cls_row_matches_full_product_for_groups_of_one_to_four():
    for depth in (1, 2, 3, 4):
        attns = [random_attn(2, 9, seed) for seed in range(depth)]
        expected = full_rollout(attns)[:, 0]
        got = rollout_cls_row(attns)
        assert torch.allclose(got, expected, atol=1e-12), depth


def test_cls_row_matches_for_rows_that_do_not_sum_to_one():
    attns = [random_attn(1, 7, seed, causal=True) for seed in range(3)]
    assert torch.allclose(rollout_cls_row(attns), full_rollout(attns)[:, 0], atol=1e-12)


def test_identity_term_makes_vit_renormalisation_one_half():
    # Rows of softmax sum to 1, so rownorm(A + I) = (A + I) / 2: the CLS row of a 2-layer group
    a1, a2 = random_attn(1, 5, 1), random_attn(1, 5, 2)
    expected = 0.5 * (a2[:, 0] @ a1[0] + a1[:, 0])
    assert torch.allclose(rollout_cls_row([a1, a2]), expected, atol=1e-12)


def test_select_top_k_returns_raster_order():
    scores = torch.tensor([[0.1, 0.9, 0.3, 0.8, 0.05, 0.7]])
    assert select_top_k(scores, 3).tolist() == [[1, 3, 5]]


def test_weighted_fusion_weights_deeper_layers_more_and_sums_cls_rows():
    from export.methods.ivtp.rollout import group_cls_row
    attns = [torch.zeros(1, 3, 3) for _ in range(3)]
    for layer, a in enumerate(attns):
        a[0, 0, layer] = 1.0  # layer l's CLS attends only to token l
    assert torch.allclose(group_cls_row(attns, "weighted"), torch.tensor([[1 / 6, 2 / 6, 3 / 6]]))


def test_layer_wise_scoring_is_the_raw_cls_row_of_one_layer():
    from export.methods.ivtp.rollout import group_cls_row
    a = random_attn(2, 7, seed=5)
    assert torch.equal(group_cls_row([a], "rollout"), a[:, 0])
    assert torch.allclose(group_cls_row([a], "weighted"), a[:, 0])
