"""The selection rules of the methods that prune in the vision tower, on hand-made inputs whose answer is worked
out by hand in the comments. Fast: no checkpoint, no export (engines vs reference: test_engines_match_reference)."""
import math
from types import SimpleNamespace

import pytest
import torch
from transformers import CLIPVisionConfig, LlavaConfig
from transformers.models.clip.modeling_clip import CLIPEncoderLayer

from export.methods.pool import pool_grid, pool_side
from export.methods.random_subset import random_patches
from export.methods.registry import get_method
from export.methods.tome import bipartite_merge, merge_schedule, tome_layer
from export.methods.topk import TopkSelect
from export.methods.visionzip import VisionZipSelect, visionzip_select
from export.methods.vispruner import drop_duplicates, split_counts, vispruner_select
from export.modules.layers import clip_layer
from runtime.errors import ConfigError


def unit(degrees: dict[int, float], n: int) -> torch.Tensor:
    """[1, n, 2] unit vectors at the given angles: cosines are cos(angle differences), easy to read off."""
    return torch.tensor([[math.cos(math.radians(degrees[i])), math.sin(math.radians(degrees[i]))]
                         for i in range(n)])[None]


# ------------------------------------------------------------------ topk
def test_topk_keeps_the_top_cls_attention_sorted_and_gathers_those_patches():
    per_head = torch.tensor([[[.1, .5, .0, .3, .2, .9, .0, .4],
                              [.3, .1, .0, .3, .0, .5, .2, .0]]])  # mean: .2 .3 0 .3 .1 .7 .1 .2
    hidden = torch.arange(9.0)[None, :, None].expand(1, 9, 3)  # token t holds t; patch p is token p + 1
    tokens, kept = TopkSelect(3)(hidden, per_head, None)
    assert kept["vit.topk"].tolist() == [[1, 3, 5]]
    assert tokens[0, :, 0].tolist() == [2.0, 4.0, 6.0]


# ------------------------------------------------------------------ VisPruner
# 12 patches; attention ranks them 1 6 3 | 11 10 9 8 0 7 5 4 2. Features are unit vectors at these angles.
VP_ANGLES = {11: 3, 10: 0, 9: 95, 8: 85, 0: 200, 7: 178, 5: 330, 4: 265, 2: 250, 1: 30, 6: 60, 3: 120}
VP_RANK = [1, 6, 3, 11, 10, 9, 8, 0, 7, 5, 4, 2]


def vp_inputs():
    attn = torch.zeros(1, 12)
    for rank, i in enumerate(VP_RANK):
        attn[0, i] = 1.0 - 0.05 * rank
    return attn, 3.0 * unit(VP_ANGLES, 12)  # scaled: the loop must normalise


def test_vispruner_important_and_diverse_by_hand_with_odd_candidate_counts():
    # keep 6 at ratio 0.5: 3 important = top 3 by attention {1, 6, 3}; 3 diverse from R = 9 candidates
    # [11 10 9 8 0 7 5 4 2] (odd: a has 5 members), dropping at most 2 per round:
    # R=9 a=[11 9 0 5 2] b=[10 8 7 4]: best cos 11:.999 9:.985 0:.927 5:.866 2:.966 -> drop 11, 9
    #     -> [0 5 2 | 10 8 7 4]
    # R=7 a=[0 2 8 4] b=[5 10 7]: 0:.927 2:.309 8:.087 4:.423 -> drop 0, 4 -> [2 8 | 5 10 7]
    # R=5 a=[2 5 7] b=[8 10] (odd again): 2:-.342 5:.866 7:-.052 -> drop 5, 7 -> [2 | 8 10] = 3 left
    attn, features = vp_inputs()
    important, diverse = vispruner_select(attn, features, 3, 3, max_drop=2)
    assert important.tolist() == [[1, 3, 6]]
    assert diverse.tolist() == [[2, 8, 10]]


def test_upstream_survivor_order_gives_its_own_answer_on_the_same_case():
    # by_score: survivors re-sorted by descending cos. After round 1 the order is [2 0 5 | 10 8 7 4]:
    # R=7 a=[2 5 8 4] b=[0 10 7]: 2:.643 5:.866 8:.087 4:.423 -> drop 5, 2 -> [4 8 | 0 10 7]
    # R=5 a=[4 0 7] b=[8 10]: 4:-.087 0:-.423 7:-.052 -> drop 7, 4 -> [0 | 8 10]
    attn, features = vp_inputs()
    normed = features / features.norm(dim=-1, keepdim=True)
    candidates = torch.tensor([VP_RANK[3:]])
    assert sorted(drop_duplicates(normed, candidates, 3, max_drop=2, by_score=True)[0].tolist()) == [0, 8, 10]


def test_vispruner_drops_all_of_a_when_r_exceeds_it():
    # upstream's r = 8: R=9 -> r = min(8, 6) = 6 > |a| = 5: a goes, [10 8 7 4] is left;
    # R=4 r=1 a=[10 7] b=[8 4]: 10:.087 7:.052 -> drop 10 -> [7 8 4]
    attn, features = vp_inputs()
    _, diverse = vispruner_select(attn, features, 3, 3)
    assert diverse.tolist() == [[4, 7, 8]]


def test_vispruner_counts_and_empty_sets():
    assert split_counts(64, None) == (48, 16) and split_counts(128, None) == (64, 64)
    assert split_counts(10, 0.25) == (2, 8)
    attn, features = vp_inputs()
    important, diverse = vispruner_select(attn, features, 4, 0)
    assert important.tolist() == [[1, 3, 6, 11]] and diverse is None
    important, diverse = vispruner_select(attn, features, 0, 12)
    assert important is None and diverse.tolist() == [list(range(12))]


# ------------------------------------------------------------------ VisionZip
def test_visionzip_dominant_targets_and_merged_values_by_hand():
    # 8 patches. Attention (summed over 2 heads) puts patches 5 and 2 on top: dominant = CLS + {2, 5}.
    # The rest in raster order [0 1 3 4 6 7]: R = 6, 2 contextual -> step 3 -> targets at 0 and 3: patches 0, 4.
    # Keys: 0 -> (1,0), 4 -> (0,1); members 1 (1,.1) and 7 (1,.5) join 0; 3 (.2,1) and 6 (.1,1) join 4.
    per_head = torch.tensor([[[.1, .1, .4, .1, .0, .5, .1, .1],
                              [.0, .0, .3, .0, .1, .3, .0, .0]]])
    hidden = torch.tensor([[[-1.0, -1.0]] + [[p, 10.0 * p] for p in range(8)]])
    keys = torch.tensor([[[9.0, 9.0], [1, 0], [1, .1], [1, 0], [.2, 1], [0, 1], [1, 0], [.1, 1], [1, .5]]])
    tokens, kept = VisionZipSelect(3, 2)(hidden, per_head, keys)
    assert kept["vit.dominant"].tolist() == [[2, 5]] and kept["vit.contextual"].tolist() == [[0, 4]]
    want = [[-1, -1], [2, 20], [5, 50],
            [0 + (1 + 7) / 2, 0 + (10 + 70) / 2],  # target 0 + mean of 1 and 7
            [4 + (3 + 6) / 2, 40 + (30 + 60) / 2]]  # target 4 + mean of 3 and 6
    assert torch.allclose(tokens, torch.tensor([want]))


def test_visionzip_target_without_members_stays_itself():
    # 3 contextual from the 6 -> step 2 -> targets 0, 3, 6; every member's key points at target 0.
    hidden = torch.tensor([[[-1.0, -1.0]] + [[p, 10.0 * p] for p in range(8)]])
    keys = torch.tensor([[[0.0, 1.0]] + [[1.0, 0.0]] * 8])
    keys[0, 1 + 3], keys[0, 1 + 6] = torch.tensor([0.0, 1.0]), torch.tensor([-1.0, 0.5])
    attn = torch.tensor([[.1, .1, .4, .1, .0, .5, .1, .1]])
    tokens, dominant, targets = visionzip_select(hidden, attn, keys, 3, 3)
    assert dominant.tolist() == [[2, 5]] and targets.tolist() == [[0, 3, 6]]
    assert tokens[0, 3].tolist() == [0 + (1 + 4 + 7) / 3, 0 + (10 + 40 + 70) / 3]
    assert tokens[0, 4].tolist() == [3, 30] and tokens[0, 5].tolist() == [6, 60]


# ------------------------------------------------------------------ ToMe
def test_bipartite_merge_by_hand():
    # tokens 0..6, 0 the CLS. a = [0 2 4 6], b = [1 3 5]. The CLS's metric equals token 1's: it would merge
    # first if it were not protected. Best edges: 6->5 (cos 1), 4->3 (cos .98), 2->1 (cos .8).
    angles = {0: 0, 1: 0, 2: 37, 3: 90, 4: 101, 5: 180, 6: 180}
    metric = unit(angles, 7)
    x = torch.tensor([[[float(t), 10.0 * t] for t in range(7)]])
    size = torch.tensor([[[1.0], [2.0], [1.0], [1.0], [1.0], [1.0], [3.0]]])
    ids = torch.arange(7)[None]
    out, out_size, out_ids = bipartite_merge(x, size, ids, metric, r=1)
    # 6 (size 3) merges into 5 (size 1); unmerged a keep their order [0 2 4], then b [1 3 5]
    assert out_ids.tolist() == [[0, 2, 4, 1, 3, 5]]
    assert out_size[0, :, 0].tolist() == [1, 1, 1, 2, 1, 4]
    assert torch.allclose(out[0, 5], torch.tensor([(5 * 1 + 6 * 3) / 4, (50 * 1 + 60 * 3) / 4]))
    assert torch.equal(out[0, :5], x[0, [0, 2, 4, 1, 3]])
    # r=2: 6->5 and 4->3 merge; 2 stays; the unmerged a keep their original order (CLS first)
    out, out_size, out_ids = bipartite_merge(x, size, ids, metric, r=2)
    assert out_ids.tolist() == [[0, 2, 1, 3, 5]] and out_size[0, :, 0].tolist() == [1, 1, 2, 2, 4]
    assert torch.allclose(out[0, 3], torch.tensor([3.5, 35.0]))
    # r=3 (the most a 7-token layer allows): everything but the CLS in a merges; 2 joins 1 (size 2)
    out, out_size, out_ids = bipartite_merge(x, size, ids, metric, r=3)
    assert out_ids.tolist() == [[0, 1, 3, 5]] and out_size[0, :, 0].tolist() == [1, 3, 2, 4]
    assert torch.allclose(out[0, 1], torch.tensor([(1 * 2 + 2 * 1) / 3, (10 * 2 + 20 * 1) / 3]))


def small_clip_layer():
    torch.manual_seed(0)
    config = CLIPVisionConfig(hidden_size=8, intermediate_size=16, num_attention_heads=2)
    return CLIPEncoderLayer(config).eval()


def test_proportional_attention_equals_duplicating_the_key():
    # a token of size 2 is attended to as if it were there twice
    layer, x = small_clip_layer(), torch.randn(1, 3, 8)
    with torch.no_grad():
        merged, _, _ = tome_layer(layer, x, torch.tensor([[[1.0], [2.0], [1.0]]]), torch.arange(3)[None], r=0)
        twice, _, _ = clip_layer(layer, x[:, [0, 1, 1, 2]])
        plain, _, _ = tome_layer(layer, x, torch.ones(1, 3, 1), torch.arange(3)[None], r=0)
        reference, _, _ = clip_layer(layer, x)
    assert torch.allclose(merged, twice[:, [0, 1, 3]], atol=1e-5)
    assert torch.allclose(plain, reference, atol=1e-5)


def test_tome_schedule_spreads_evenly_and_checks_feasibility():
    schedule = merge_schedule(576, 64, 23)
    assert schedule == [23] * 6 + [22] * 17 and sum(schedule) == 512
    assert merge_schedule(576, 576, 23) == [0] * 23
    assert merge_schedule(12, 4, 2) == [4, 4]  # 13 tokens: 6 mergeable, then 9 tokens: 4 mergeable
    # keep 3 would need [5, 4]: after 5 merges 8 tokens are left, of which only 3 can merge
    with pytest.raises(ConfigError, match=r"--keep for tome must be in 4\.\.12.*got 3"):
        merge_schedule(12, 3, 2)
    with pytest.raises(ConfigError, match=r"--keep for tome must be in 24\.\.576.*got 1"):
        merge_schedule(576, 1, 23)


# ------------------------------------------------------------------ pool, random
def test_pool_averages_each_block_of_the_grid():
    patches = torch.arange(16.0 * 2).reshape(1, 16, 2)  # 4x4 grid, channel c of patch p is 2p + c
    pooled = pool_grid(patches, side=4, g=2)
    grid = patches.reshape(4, 4, 2)
    want = [grid[i:i + 2, j:j + 2].reshape(4, 2).mean(0).tolist() for i in (0, 2) for j in (0, 2)]
    assert pooled[0].tolist() == want
    assert pooled[0, :, 0].tolist() == [5.0, 9.0, 21.0, 25.0]  # mean of 2p over {0,1,4,5}, {2,3,6,7}, ...
    assert pool_side(64, 24) == 8 and pool_side(576, 24) == 24 and pool_side(1, 24) == 1


def test_random_subset_is_fixed_by_the_seed():
    a, b, c = random_patches(576, 64, 0), random_patches(576, 64, 0), random_patches(576, 64, 1)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.tolist() == sorted(set(a.tolist())) and len(a) == 64 and 0 <= a.min() and a.max() < 576


# ------------------------------------------------------------------ impossible counts
@pytest.fixture(scope="module")
def geometry_only():
    """A checkpoint stand-in with LLaVA-1.5's geometry and no weights: enough for every count check."""
    config = LlavaConfig(vision_config={"model_type": "clip_vision_model", "image_size": 336, "patch_size": 14,
                                        "num_hidden_layers": 24}, text_config={"model_type": "llama"})
    return SimpleNamespace(llava=SimpleNamespace(config=config))


@pytest.mark.parametrize("method, knobs, message", [
    ("topk", {"keep": 577}, r"--keep must be an integer in 1\.\.576 .*got 577"),
    ("topk", {"keep": 0}, r"--keep must be an integer in 1\.\.576 .*got 0"),
    ("random", {"keep": 600}, r"--keep must be an integer in 1\.\.576 .*got 600"),
    ("random", {"seed": -1}, r"--seed must be an integer in 0\.\..*got -1"),
    ("pool", {"keep": 50}, r"--keep for pool must be g\*g .*24x24.* 1, 4, 9, 16, 36, 64, 144, 576; got 50"),
    ("pool", {"keep": 25}, r"one of 1, 4, 9, 16, 36, 64, 144, 576; got 25"),  # a square, but 5 does not divide 24
    ("vispruner", {"keep": 0}, r"--keep must be an integer in 1\.\.576 .*got 0"),
    ("vispruner", {"important_ratio": 1.5}, r"--important-ratio must be in \[0, 1\], got 1\.5"),
    ("visionzip", {"dominant": 0}, r"--dominant must be an integer in 1\.\.577 .*got 0"),
    ("visionzip", {"dominant": 570, "contextual": 10}, r"--contextual must be an integer in 0\.\.7 .*got 10"),
    ("tome", {"keep": 10}, r"--keep for tome must be in 24\.\.576.*got 10"),
    ("tome", {"keep": 577}, r"--keep must be an integer in 1\.\.576 .*got 577"),
])
def test_impossible_counts_raise_config_errors_naming_the_flag(geometry_only, method, knobs, message):
    entry = get_method(method)
    with pytest.raises(ConfigError, match=message):
        entry.build(geometry_only, entry.config_type(**knobs))
