"""The paper's ablations as export options: weighted multi-layer fusion instead of rollout, layer-wise
groups and the no-instruction variant, each equal to its torch reference through the engines."""
import pytest

from export.methods.ivtp.schedule import IvtpConfig, resolve
from runtime.errors import ConfigError
from runtime.load import open_engine_dir
from runtime.request import Request
from tests.conftest import IMAGES, PROMPTS, read_manifest


def test_layer_wise_groups_prune_after_every_layer():
    vit, llm = resolve(IvtpConfig(group=1, keep=64), 576, 22, 32)
    assert sorted(vit) == list(range(23)) and sorted(llm) == list(range(12))
    assert list(llm.values())[-1] == 64


def test_an_unknown_fusion_is_refused_with_the_choices():
    with pytest.raises(ConfigError, match="--fusion must be one of rollout, weighted"):
        resolve(IvtpConfig(fusion="max"), 576, 22, 32)


def test_weighted_fusion_without_text_equals_its_reference(exported):
    from export.reference import reference_generator
    engine_dir = exported("ivtp", fusion="weighted", use_text=False, keep=32)
    manifest = read_manifest(engine_dir)
    assert "text_encoder" not in manifest["graphs"] and manifest["pipeline"]["text_encoder"] is None
    engines = open_engine_dir(engine_dir)
    reference = reference_generator(engines.m)
    requests = [Request(IMAGES / "chelsea.jpg", PROMPTS[1]), Request(IMAGES / "coffee.jpg", PROMPTS[2])]
    got, want = engines.generate(requests, max_new_tokens=8), reference.generate(requests, max_new_tokens=8)
    default = open_engine_dir(exported("ivtp")).generate(requests[:1], max_new_tokens=1)[0]
    for g, w in zip(got, want):
        assert g.stages == w.stages and g.token_ids == w.token_ids
        assert len(g.stages[-1]["kept"]) == 32 and g.relevant_tokens == []
    assert got[0].stages[0]["kept"] != default.stages[0]["kept"]  # fusion changes the ViT choice already
