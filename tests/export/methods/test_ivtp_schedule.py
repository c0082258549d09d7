"""IVTP keep schedules: defaults, and clear errors for impossible counts."""
import pytest

from export.methods.ivtp.schedule import IvtpConfig, group_tops, resolve
from runtime.errors import ConfigError


def test_groups_of_three_over_the_vit_feature_layers_and_first_12_llm_layers():
    assert group_tops(23, 3) == [2, 5, 8, 11, 14, 17, 20, 22]
    assert group_tops(12, 3) == [2, 5, 8, 11]


def test_default_schedule_ends_at_keep_and_never_grows():
    vit, llm = resolve(IvtpConfig(), 576, 22, 32)
    counts = list(vit.values()) + list(llm.values())
    assert counts == sorted(counts, reverse=True) and counts[-1] == 64
    assert list(llm) == [2, 5, 8, 11] and list(vit)[-1] == 22


@pytest.mark.parametrize("cfg, words", [
    (IvtpConfig(keep=600), "--keep must be in 1..576"),
    (IvtpConfig(keep=0), "--keep must be in 1..576"),
    (IvtpConfig(vit_keep=(500, 400)), "--vit-keep needs 8 counts"),
    (IvtpConfig(vit_keep=(500, 400, 300, 200, 150, 120, 100, 90), llm_keep=(80, 120, 60, 40)),
     "cannot keep 120 tokens when 80 are available"),
    (IvtpConfig(vit_keep=(500, 400, 300, 200, 150, 120, 100, 90), llm_keep=(95, 90, 80, 70)),
     "cannot keep 95 tokens when 90 are available"),
    (IvtpConfig(tau=1.5), "--tau is a cosine threshold in [-1, 1]"),
    (IvtpConfig(llm_layers=40), "--llm-layers must be in 1..31"),
    (IvtpConfig(llm_layers=32), "at least one of the decoder's 32 layers must follow the last pruning point"),
])
def test_impossible_schedules_are_refused_with_the_reason(cfg, words):
    with pytest.raises(ConfigError, match=words.replace("[", r"\[").replace("]", r"\]").replace(".", r"\.")):
        resolve(cfg, 576, 22, 32)


def test_default_pruning_depth_is_the_papers_12_layers_or_the_same_share_of_a_shallow_decoder():
    from export.methods.ivtp.schedule import default_llm_layers
    assert [default_llm_layers(n, 3) for n in (2, 4, 6, 8, 12, 16, 32, 40)] == [1, 3, 3, 3, 6, 12, 12, 12]
    vit, llm = resolve(IvtpConfig(), 576, 4, 6)  # the demo model: 6 decoder layers, features from ViT layer 4
    assert list(vit) == [2, 4] and list(llm) == [2] and llm[2] == 64
