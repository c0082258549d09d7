"""ATP (export/atp.py) scores and losses on hand-made cases, the heads file, and a short training run on tiny."""
import pytest
import torch
from safetensors.torch import load_file, safe_open, save_file

from export.methods.atp.heads import INIT_THETA_R, INIT_THETA_S, load_heads, new_heads, save_heads
from export.methods.atp.scores import (
    atp_loss,
    keep_order,
    mean_layer_count,
    soft_mask,
    spatial_score_table,
    target_loss,
)
from runtime.errors import ConfigError


def test_spatial_score_table_at_known_grid_positions():
    table = spatial_score_table(24).view(24, 24)
    assert table[0, 0] == pytest.approx(1 - 1 / 36)    # on every grid: the coarsest (stride 6) wins
    assert table[12, 18] == pytest.approx(1 - 1 / 36)  # strides 2, 3, 6
    assert table[4, 8] == pytest.approx(1 - 1 / 16)    # strides 2, 4
    assert table[3, 9] == pytest.approx(1 - 1 / 9)     # stride 3 only
    assert table[2, 10] == pytest.approx(1 - 1 / 4)    # stride 2 only
    assert table[1, 0] == 0 and table[5, 7] == 0       # on no grid
    assert int((table > 0).sum()) == 144 + 64 - 16     # stride-2 and stride-3 grids (4 and 6 lie inside them)
    assert int((table > 0.95).sum()) == 16             # the stride-6 grid alone
    assert spatial_score_table(24, scale=3.0).view(24, 24)[2, 10] == pytest.approx(1 - 3 / 4)  # lambda_sample


def test_keep_order_on_a_hand_made_case():
    s_red = torch.tensor([[0.9, 0.1, 0.5, 0.2, 0.8], [0.9, 0.1, 0.5, 0.2, 0.8]])
    s_spatial = torch.tensor([[0.0, 0.97, 0.0, 0.0, 0.0]]).expand(2, -1)
    valid = torch.tensor([[True, True, True, True, False]] * 2)  # token 4 is padding: never kept
    thresholds = torch.tensor([[0.45, 0.95], [0.85, 0.99]])
    order, count = keep_order(s_red, s_spatial, thresholds, valid)
    assert count.tolist() == [3, 1]
    assert order.tolist() == [[0, 1, 2, 3, 4], [0, 1, 2, 3, 4]]  # kept first in their order, then the rest
    # reversed: s_red [0.8 (padding), 0.1, 0.5, 0.2, 0.9]; row 0 keeps 1 (spatial), 2 and 4; row 1 keeps only 4
    order, count = keep_order(s_red.flip(-1), s_spatial, thresholds, valid.flip(-1))
    assert count.tolist() == [3, 1]
    assert order.tolist() == [[1, 2, 4, 0, 3], [4, 0, 1, 2, 3]]


def test_atp_and_target_losses_on_hand_made_masks():
    masks = [torch.tensor([[1.0, 1.0, 0.5, 0.0], [1.0, 0.0, 0.0, 0.0]]),   # sums 2.5, 1
             torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.5, 0.0, 0.0, 0.0]])]   # sums 1, 0.5
    # Eq. 12 with 4 patches, layers 4 and 14: row 0 2.5/4*4 + 1/4*14 = 6, row 1 1/4*4 + 0.5/4*14 = 2.75
    assert float(atp_loss(masks, [4, 14], 4)) == pytest.approx((6.0 + 2.75) / 2)
    assert float(target_loss(masks, 1.0)) == pytest.approx(0.25)  # mean over points and batch: 5 / 4
    # over all 20 layers, points 3 and 13: 4 layers see all 4 tokens, 10 see mask 0, 6 see mask 1
    # row 0 (16 + 25 + 6) / 20 = 2.35, row 1 (16 + 10 + 3) / 20 = 1.45, mean 1.9
    assert float(target_loss(masks, 2.0, [3, 13], 20)) == pytest.approx(0.1)
    paper = [torch.tensor([126.0]), torch.tensor([88.0]), torch.tensor([20.0])]  # Table 2, "144*" tokens
    assert float(mean_layer_count(paper, [3, 13, 23], 32, 576)) == pytest.approx(143.875)


def test_soft_masks_approach_the_hard_rule_as_temperature_grows():
    from export.methods.atp.training import log_soft_mask
    gen = torch.Generator().manual_seed(0)
    s_spatial = spatial_score_table(24)[None]
    s_red = torch.rand(1, 576, generator=gen)
    s_red = torch.where((s_red - 0.4).abs() < 0.01, s_red + 0.02, s_red)  # no token right on the threshold
    thresholds = torch.tensor([[0.4, 0.95]])
    hard = ((s_red > 0.4) | (s_spatial > 0.95)).float()
    errors = [float((soft_mask(s_red, s_spatial, thresholds, t) - hard).abs().max()) for t in (10, 100, 1000, 10000)]
    assert errors == sorted(errors, reverse=True) and errors[0] > 0.1 and errors[-1] < 1e-6
    for t in (10.0, 1000.0):  # the training forward's log-space mask is the same mask
        torch.testing.assert_close(log_soft_mask(s_red, s_spatial, thresholds, t).exp(),
                                   soft_mask(s_red, s_spatial, thresholds, t))


def _perturbed_heads(points, n_patches=16, hidden=8):
    heads = {p: new_heads(n_patches, hidden) for p in points}
    with torch.no_grad():
        for h in heads.values():
            for w in h.parameters():
                w.add_(torch.randn_like(w) * 0.3)
    return heads


def test_new_heads_start_at_the_initial_thresholds():
    theta = new_heads(16, 8)(torch.rand(3, 16), torch.rand(3, 16))
    torch.testing.assert_close(theta, torch.tensor([[INIT_THETA_R, INIT_THETA_S]] * 3))


def test_heads_file_round_trip_and_checks(tmp_path):
    torch.manual_seed(0)
    heads, path = _perturbed_heads([3, 5]), tmp_path / "heads.safetensors"
    save_heads(path, heads, {"keep": 144})
    with safe_open(str(path), framework="pt") as f:
        meta, keys = f.metadata(), set(f.keys())
    assert meta["points"] == "3,5" and meta["n_patches"] == "16" and meta["hidden"] == "8" and meta["keep"] == "144"
    assert "point3.trunk.weight" in keys and "point5.spatial.bias" in keys
    loaded = load_heads(path, n_patches=16)
    assert sorted(loaded) == [3, 5]
    s_self, s_cross = torch.rand(4, 16), torch.rand(4, 16)
    for p in heads:
        assert torch.equal(loaded[p](s_self, s_cross), heads[p](s_self, s_cross).detach())
    with pytest.raises(ConfigError, match=r"trained for 16 visual tokens \(4x4 patches\), but this model has 576"):
        load_heads(path, n_patches=576)
    tensors = load_file(str(path))
    del tensors["point5.trunk.bias"]
    broken = tmp_path / "broken.safetensors"
    save_file(tensors, str(broken), metadata=meta)
    with pytest.raises(ConfigError, match=r"lacks the tensors \['point5.trunk.bias'\] for pruning point 5"):
        load_heads(broken)
    save_file(load_file(str(path)), str(broken), metadata={"keep": "144"})
    with pytest.raises(ConfigError, match="lacks the metadata"):
        load_heads(broken)
    with pytest.raises(ConfigError, match="does not exist"):
        load_heads(tmp_path / "absent.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ConfigError, match="not a safetensors file"):
        load_heads(tmp_path / "junk.safetensors")


@pytest.fixture(scope="module")
def ckpt(tiny):
    from export.models.checkpoint import load_checkpoint
    return load_checkpoint("tiny", None, False)


@pytest.fixture(scope="module")
def examples(ckpt):
    from export.methods.atp.examples import prepare_examples
    from runtime.shipped import atp_training_requests as builtin_requests
    requests = builtin_requests()
    return prepare_examples(ckpt, [requests[0], requests[1]], new_tokens=2)


def test_unpruned_masked_forward_is_the_hf_model(ckpt, examples):
    from export.graphs.parts import language_model
    from export.methods.atp.pruner import AtpPruner
    from export.methods.atp.training import masked_forward
    ex = examples[0]
    with torch.no_grad():
        out = masked_forward(language_model(ckpt), AtpPruner(24), ex, None, 1.0)
        hidden = ckpt.llava.model.language_model(inputs_embeds=torch.cat([ex.prefix, ex.visual, ex.text], 1))
        start = ex.prefix.shape[1] + ex.visual.shape[1] + ex.n_prompt - 1
        hf = ckpt.llava.lm_head(hidden.last_hidden_state[:, start:])
    torch.testing.assert_close(out["logits"], hf, atol=1e-4, rtol=1e-4)
    assert out["logits"][0, 0].argmax() == ex.labels[0]  # the labels are the unpruned model's own greedy tokens


def test_first_point_keeps_what_the_inference_segment_keeps(ckpt, examples):
    """The training forward's hard rule at the first point equals the exported ATP segment's decision."""
    from export.graphs.parts import language_model, llm_graphs
    from export.methods.atp.pruner import AtpPruner
    from export.methods.atp.training import masked_forward
    torch.manual_seed(1)
    heads, ex, lm = {3: new_heads(576, 16)}, examples[1], language_model(ckpt)
    with torch.no_grad():  # thresholds that depend on the scores, near the initial ones
        heads[3].redundant.weight.normal_(std=0.1)
        heads[3].spatial.weight.normal_(std=0.1)
        train = masked_forward(lm, AtpPruner(24), ex, heads, 1e4)
        n_pre, n_suffix = ex.prefix.shape[1], ex.n_prompt
        cfg = ckpt.llava.config.text_config
        n = n_pre + 576 + n_suffix
        graphs = llm_graphs(lm, [(0, 3), (4, cfg.num_hidden_layers - 1)], {0: AtpPruner(24, heads[3])}, visual_mask=True)
        buffers = [torch.zeros(1, cfg.num_key_value_heads, n, cfg.hidden_size // cfg.num_attention_heads)] * 8
        mask = torch.ones(n, n, dtype=torch.bool).tril()[None]
        out = graphs["decoder.0"].module.inner(torch.cat([ex.prefix, ex.visual, ex.text[:, :n_suffix]], 1),
                                               torch.arange(n)[None], mask, torch.zeros(1, dtype=torch.long), buffers)
        seg = graphs["prune.0"].module.inner(mask, n_pre + torch.arange(576)[None], torch.ones(1, n_suffix, dtype=torch.long),
                                             [out["q.3"]], [out["present.3.key"]], None, torch.ones(1, 576, dtype=torch.long))
    count = int(seg["kept_count"][0])
    assert 0 < count < 576 and int(train["kept_hard"][0][0]) == count
    assert sorted(seg["kept"][0, :count].tolist()) == torch.nonzero(train["masks"][0][0] > 0.5)[:, 0].tolist()


def test_training_reduces_the_loss_and_moves_the_count_to_the_target(ckpt, examples, tmp_path):
    from export.methods.atp.training import evaluate_heads, train_threshold_heads
    target = 100.0  # mean tokens per layer; the initial heads give ~170 on these requests
    before = evaluate_heads(ckpt, {p: new_heads(576) for p in (3, 13, 23)}, examples, target=target)
    lines = []
    heads, history = train_threshold_heads(ckpt, (3, 13, 23), target, steps=3, batch=2, lr=0.1, examples=examples,
                                           progress=lines.append)
    after = evaluate_heads(ckpt, heads, examples, target=target)
    assert len(history) == 3 and len(lines) == 3 and "kept per point soft" in lines[0]
    assert set(history[0]) >= {"loss", "ntp", "atp", "target", "kept", "kept_hard", "layer_mean"}
    assert before["layer_mean"] > target + 50
    assert abs(after["layer_mean"] - target) < abs(before["layer_mean"] - target) - 30  # measured: 167 -> 123
    assert after["loss"] < before["loss"] - 4  # measured: 18.0 -> 9.2
    assert sum(after["kept"]) < sum(before["kept"])
    save_heads(tmp_path / "h.safetensors", heads, {"keep": target})
    again = evaluate_heads(ckpt, load_heads(tmp_path / "h.safetensors", n_patches=576), examples, target=target)
    assert again["loss"] == pytest.approx(after["loss"], rel=1e-6) and again["kept_hard"] == after["kept_hard"]


def test_bad_settings_raise_config_errors(ckpt):
    from export.methods.atp.training import train_threshold_heads
    with pytest.raises(ConfigError, match="increasing decoder layers in 0..30"):
        train_threshold_heads(ckpt, (13, 3), 144, examples=[])
    with pytest.raises(ConfigError, match="lies between 72 .* and 576"):
        train_threshold_heads(ckpt, (3, 13, 23), 50, examples=[])
    with pytest.raises(ConfigError, match="steps=0"):
        train_threshold_heads(ckpt, (3, 13, 23), 144, steps=0, examples=[])
