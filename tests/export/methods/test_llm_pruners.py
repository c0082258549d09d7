"""FastV's and ATP's decisions on hand-made queries and keys whose answer is known."""
import torch

from export.methods.atp.pruner import AtpPruner
from export.methods.fastv import FastVPruner
from export.modules.decoder import causal_window
from export.modules.layers import additive_mask
from export.modules.pruning import SegmentView

N_PRE, N_VIS, N_SUF = 2, 6, 3


def _inputs(visual_logits_last, suffix_mask):
    """q/k with one active dimension: the logit of query i on key j is q_i * k_j. Every query is 1 except
    suffix rows, which carry the row's scale; visual keys carry the wanted logits, other keys 0."""
    batch, n = len(visual_logits_last), N_PRE + N_VIS + N_SUF
    q = torch.ones(batch, 2, n, 1)
    k = torch.zeros(batch, 2, n, 1)
    k[:, :, N_PRE:N_PRE + N_VIS, 0] = torch.tensor(visual_logits_last)[:, None, :]
    valid = torch.cat([torch.ones(batch, N_PRE + N_VIS, dtype=torch.bool), suffix_mask > 0], 1)
    bias = additive_mask(causal_window(n, n, "cpu"), valid)
    positions = torch.arange(N_PRE, N_PRE + N_VIS).expand(batch, N_VIS)
    return q, k, bias, SegmentView(N_PRE, N_VIS, suffix_mask, torch.ones(batch, N_VIS, dtype=torch.long), positions)


def test_fastv_keeps_the_visual_tokens_the_last_real_prompt_token_attends_to_most():
    logits = [[0.1, 3.0, 0.5, 2.0, -1.0, 1.5], [2.5, 0.0, 0.2, 0.3, 4.0, 1.0]]
    suffix_mask = torch.tensor([[1, 1, 1], [1, 1, 0]])  # request 1 is padded: its last real token is suffix[1]
    q, k, bias, view = _inputs(logits, suffix_mask)
    q[1, :, N_PRE + N_VIS + 2] = -5.0  # the padding row would pick other tokens; it must not be read
    kept, count = FastVPruner(3)(q, k, bias, 1.0, view)
    assert kept.tolist() == [[1, 3, 5], [0, 4, 5]]  # top 3 by logit, then sorted ascending
    assert count is None


def test_fastv_averages_heads_before_choosing():
    q, k, bias, view = _inputs([[0.0, 1.0, 0.0, 0.0, 0.0, 0.0]], torch.tensor([[1, 1, 1]]))
    k[0, 1, N_PRE + 4] = 3.0  # head 1 alone prefers token 4 strongly; averaged over heads 4 still beats 1
    kept, _ = FastVPruner(1)(q, k, bias, 1.0, view)
    assert kept.tolist() == [[4]]


def test_atp_signals_self_logits_and_cross_attention_by_hand():
    logits = [[0.0, 1.0, 2.0, 3.0, 4.0, 5.0]]
    q, k, bias, view = _inputs(logits, torch.tensor([[1, 1, 0]]))
    q[:, :, N_PRE:N_PRE + N_VIS, 0] = torch.arange(1.0, 7.0)  # visual query i scales its logits by i+1
    pruner = AtpPruner(grid=24)
    s_self, s_cross, s_spatial, raster, valid = pruner.signals(q, k, bias, 0.5, view)
    mean_key = sum(logits[0]) / N_VIS
    assert torch.allclose(s_self[0], 0.5 * torch.arange(1.0, 7.0) * mean_key)
    # text rows (queries 1) attend over prefix (logit 0), all visual keys, and text keys (logit 0) causally
    probs = []
    for t in range(2):  # the two real text tokens
        scores = torch.tensor([0.0] * N_PRE + [0.5 * x for x in logits[0]] + [0.0] * (t + 1))
        probs.append(torch.softmax(scores, 0)[N_PRE:N_PRE + N_VIS])
    assert torch.allclose(s_cross[0], (probs[0] + probs[1]) / 2, atol=1e-6)
    assert raster.tolist() == [list(range(N_VIS))]
    assert s_spatial[0, 0] > 0.97 and s_spatial[0, 1] == 0.0 and abs(s_spatial[0, 2] - 0.75) < 1e-6
