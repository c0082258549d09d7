"""Loading checkpoint dirs laid out as llava-hf/llava-1.5-7b-hf and openai/clip-vit-large-patch14-336 are on the
hub: every tensor lands in its parameter, the special tokens come from where those configs keep them, and a
dir with a weight that would stay randomly initialized is refused."""
import json
import math
import shutil

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from export.models.checkpoint import load_checkpoint
from export.models.facts import manifest_facts
from export.models.llava_hf_layout import (
    LLAVA_1_5_7B,
    TINY_LAYOUT,
    llava_hf_config,
    llava_hf_keys,
    openai_clip_config,
    openai_clip_keys,
    transformers_name,
)
from runtime.errors import ConfigError


@pytest.fixture(scope="module")
def ckpt(llava_hf):
    return load_checkpoint(str(llava_hf.model_dir), str(llava_hf.clip_dir), need_clip=True)


def llava_tensors(model_dir) -> dict:
    out = {}
    for shard in sorted(model_dir.glob("model-*.safetensors")):
        out.update(load_file(shard))
    return out


def test_the_files_are_laid_out_as_on_the_hub(llava_hf):
    m, c = llava_hf.model_dir, llava_hf.clip_dir
    config = json.loads((m / "config.json").read_text())
    assert (config["image_token_index"], config["pad_token_id"], config["vocab_size"]) == (32000, 32001, 32064)
    assert "pad_token_id" not in config["text_config"] and "image_token_index" not in config["text_config"]
    index = json.loads((m / "model.safetensors.index.json").read_text())["weight_map"]
    assert sorted(set(index.values())) == [f"model-0000{i}-of-00003.safetensors" for i in (1, 2, 3)]
    assert not (m / "model.safetensors").exists()
    tensors = llava_tensors(m)
    assert set(tensors) == set(index) == set(llava_hf_keys(TINY_LAYOUT))
    assert {k.split(".")[0] for k in tensors} == {"vision_tower", "multi_modal_projector", "language_model"}
    assert {t.dtype for t in tensors.values()} == {torch.float16}
    assert tensors["language_model.model.embed_tokens.weight"].shape == (32064, 64)
    assert tensors["language_model.lm_head.weight"].shape == (32064, 64)
    assert sorted(p.name for p in c.iterdir() if "model" in p.name) == ["pytorch_model.bin"]  # no safetensors


def test_every_parameter_equals_its_tensor_in_the_files(ckpt, llava_hf):
    tensors = llava_tensors(llava_hf.model_dir)
    state = ckpt.llava.state_dict()
    assert set(state) == {transformers_name(k) for k in tensors}
    assert all(torch.equal(state[transformers_name(k)], v.float()) for k, v in tensors.items())
    # A few by the module path the exporter uses, not by name.
    m = ckpt.llava.model
    picks = {"vision_tower.vision_model.embeddings.patch_embedding.weight": m.vision_tower.embeddings.patch_embedding.weight,
             "vision_tower.vision_model.encoder.layers.2.self_attn.q_proj.bias":
                 m.vision_tower.encoder.layers[2].self_attn.q_proj.bias,
             "vision_tower.vision_model.pre_layrnorm.weight": m.vision_tower.pre_layrnorm.weight,
             "multi_modal_projector.linear_1.weight": m.multi_modal_projector.linear_1.weight,
             "multi_modal_projector.linear_2.bias": m.multi_modal_projector.linear_2.bias,
             "language_model.model.embed_tokens.weight": m.language_model.embed_tokens.weight,
             "language_model.model.layers.1.self_attn.k_proj.weight": m.language_model.layers[1].self_attn.k_proj.weight,
             "language_model.model.layers.0.input_layernorm.weight": m.language_model.layers[0].input_layernorm.weight,
             "language_model.model.norm.weight": m.language_model.norm.weight,
             "language_model.lm_head.weight": ckpt.llava.lm_head.weight}
    for name, param in picks.items():
        assert param.dtype == torch.float32
        assert torch.equal(param, tensors[name].float()), name
    # Norms are drawn near 1, not at it: one left at transformers' init would not pass for loaded.
    assert not torch.equal(m.language_model.norm.weight, torch.ones_like(m.language_model.norm.weight))


def test_facts_read_the_top_level_pad_and_image_tokens(ckpt):
    facts = manifest_facts(ckpt)
    assert (facts["image_token_id"], facts["pad_token_id"], facts["eos_token_id"]) == (32000, 32001, 2)
    assert (facts["vocab_size"], facts["clip_positions"], facts["num_patches"], facts["feature_layer"]) == (32064, 77,
                                                                                                          576, 2)
    assert ckpt.llava.config.text_config.pad_token_id is None  # what facts read before: pad would have been eos


def test_eos_falls_back_to_text_config_without_generation_config(llava_hf, tmp_path):
    from export.models.facts import special_tokens
    model_dir = shutil.copytree(llava_hf.model_dir, tmp_path / "llava")
    (model_dir / "generation_config.json").unlink()
    got = load_checkpoint(str(model_dir), None, need_clip=False)
    assert got.llava.generation_config.eos_token_id is None
    assert special_tokens(got) == {"eos_token_id": 2, "pad_token_id": 32001}


def test_clip_loads_from_pytorch_model_bin_alone(ckpt, llava_hf):
    saved = torch.load(llava_hf.clip_dir / "pytorch_model.bin", weights_only=True)
    state = ckpt.clip.state_dict()
    assert set(saved) - set(state) == {"text_model.embeddings.position_ids", "vision_model.embeddings.position_ids"}
    assert set(state) <= set(saved)
    assert all(torch.equal(state[k], saved[k]) for k in state)
    assert ckpt.clip.text_model.embeddings.token_embedding.weight.shape == (49408, 32)
    assert ckpt.clip.logit_scale.item() == pytest.approx(math.log(100))
    # The hub's config says eos_token_id 2 in text_config, but its text_config_dict rebuilds text_config from
    # CLIPTextConfig's defaults: the loaded model has the real eos.
    assert ckpt.clip.config.text_config.eos_token_id == 49407
    # LLaVA's tower is CLIP's, stored in fp16.
    clip_vision, llava_vision = ckpt.clip.vision_model.state_dict(), ckpt.llava.model.vision_tower.state_dict()
    assert clip_vision.keys() == llava_vision.keys()
    assert all(torch.equal(clip_vision[k].half().float(), llava_vision[k]) for k in clip_vision)


def _edit_shard(model_dir, key, edit):
    """Rewrite the shard holding `key` and the index with edit(tensors, weight_map)."""
    index_path = model_dir / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    shard = index["weight_map"][key]
    tensors = load_file(model_dir / shard)
    edit(tensors, index["weight_map"])
    save_file(tensors, model_dir / shard, metadata={"format": "pt"})
    index_path.write_text(json.dumps(index))
    return shard


KEY = "language_model.model.layers.1.mlp.up_proj.weight"
RENAMED = KEY.replace("up_proj", "upproj")


def _rename(tensors, weight_map):
    tensors[RENAMED], weight_map[RENAMED] = tensors.pop(KEY), weight_map.pop(KEY)


def _drop(tensors, weight_map):
    del tensors[KEY], weight_map[KEY]


def _shrink(tensors, weight_map):
    tensors[KEY] = tensors[KEY][:-1].clone()


@pytest.mark.parametrize("edit, says", [
    (_rename, [f"not in the files:\n    model.language_model.layers.1.mlp.up_proj.weight (in llava-hf's files: {KEY})",
               f"in the files but matching no weight (a renamed one?):\n    {RENAMED} in {{shard}}"]),
    (_drop, [f"not in the files:\n    model.language_model.layers.1.mlp.up_proj.weight (in llava-hf's files: {KEY})"]),
    (_shrink, ["shape differs from the config's:\n    model.language_model.layers.1.mlp.up_proj.weight: (127, 64) in "
               "the files, (128, 64) in the model"]),
], ids=["renamed", "missing", "reshaped"])
def test_a_weight_left_uninitialized_is_refused(llava_hf, tmp_path, edit, says):
    model_dir = shutil.copytree(llava_hf.model_dir, tmp_path / "llava")
    shard = _edit_shard(model_dir, KEY, edit)
    with pytest.raises(ConfigError) as err:
        load_checkpoint(str(model_dir), None, need_clip=False)
    message = str(err.value)
    assert message.startswith(f"LlavaForConditionalGeneration checkpoint {model_dir}: 1 weight(s) would be left "
                              "randomly initialized (read from model-00001-of-00003.safetensors, "
                              "model-00002-of-00003.safetensors, model-00003-of-00003.safetensors)")
    for line in says:
        assert line.format(shard=shard) in message
    assert "Fix: the tensors must be named as llava-hf/llava-1.5-7b-hf's files name them" in message


def test_a_clip_weight_missing_from_pytorch_model_bin_is_refused(llava_hf, tmp_path):
    clip_dir = shutil.copytree(llava_hf.clip_dir, tmp_path / "clip")
    state = torch.load(clip_dir / "pytorch_model.bin", weights_only=True)
    state["text_projection.kernel"] = state.pop("text_projection.weight")
    torch.save(state, clip_dir / "pytorch_model.bin")
    with pytest.raises(ConfigError) as err:
        load_checkpoint(str(llava_hf.model_dir), str(clip_dir), need_clip=True)
    message = str(err.value)
    assert f"CLIPModel checkpoint {clip_dir}: 1 weight(s) would be left randomly initialized (read from " \
           "pytorch_model.bin)" in message
    assert "not in the files:\n    text_projection.weight\n" in message
    assert "matching no weight (a renamed one?):\n    text_projection.kernel in pytorch_model.bin" in message
    assert "openai/clip-vit-large-patch14-336's files name them" in message


def test_a_dir_without_weights_is_refused(llava_hf, tmp_path):
    model_dir = tmp_path / "llava"
    model_dir.mkdir()
    for name in ("config.json", "tokenizer.json"):
        shutil.copy(llava_hf.model_dir / name, model_dir)
    with pytest.raises(ConfigError, match="no weights in .*model.safetensors, model.safetensors.index.json, "
                                          "pytorch_model.bin"):
        load_checkpoint(str(model_dir), None, need_clip=False)


def test_the_shards_hold_what_the_index_says(llava_hf):
    index = json.loads((llava_hf.model_dir / "model.safetensors.index.json").read_text())
    total = 0
    for shard in sorted(set(index["weight_map"].values())):
        with safe_open(llava_hf.model_dir / shard, framework="pt") as f:
            assert set(f.keys()) == {k for k, s in index["weight_map"].items() if s == shard}
            total += sum(f.get_tensor(k).numel() * 2 for k in f.keys())
    assert index["metadata"]["total_size"] == total


def test_an_image_token_the_tokenizer_lacks_is_refused(ckpt, llava_hf, tmp_path, monkeypatch):
    from export.methods.registry import get_method
    from export.pipeline import ExportConfig, base_manifest
    plan = get_method("none").build(ckpt, None)
    cfg = ExportConfig("none", str(llava_hf.model_dir), tmp_path / "out")
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    assert base_manifest(cfg, ckpt, plan, tmp_path / "a").image_token == "<image>"
    monkeypatch.setattr(ckpt.llava.config, "image_token_index", 40000)
    with pytest.raises(ConfigError, match="image_token_index 40000 is not a token of .*tokenizer.json"):
        base_manifest(cfg, ckpt, plan, tmp_path / "b")


@pytest.mark.parametrize("geometry", [TINY_LAYOUT, LLAVA_1_5_7B], ids=["tiny", "7b"])
def test_the_key_tables_are_transformers_models_at_any_geometry(geometry):
    """Every parameter, with its shape, of the models transformers builds from the hand-written configs (on the
    meta device: no memory, the 7B too), and nothing else."""
    from transformers import CLIPConfig, CLIPModel, LlavaConfig, LlavaForConditionalGeneration
    with torch.device("meta"):
        llava = LlavaForConditionalGeneration(LlavaConfig.from_dict(llava_hf_config(geometry, 32000, 32001)))
        clip = CLIPModel(CLIPConfig.from_dict(openai_clip_config(geometry, 49408)))
    want = {transformers_name(k): s for k, s in llava_hf_keys(geometry).items()}
    assert {k: tuple(v.shape) for k, v in llava.state_dict().items()} == want
    want = {k: s for k, s in openai_clip_keys(geometry, 49408).items() if not k.endswith("position_ids")}
    assert {k: tuple(v.shape) for k, v in clip.state_dict().items()} == want
    if geometry == LLAVA_1_5_7B:
        assert sum(math.prod(s) for s in llava_hf_keys(geometry).values()) == 7_063_427_072
