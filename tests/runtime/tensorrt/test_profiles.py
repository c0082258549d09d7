"""Optimization profiles: export records a (min, opt, max) range per symbolic dim of every graph; a build takes
them and sets the batch range; every dynamic input of a real manifest gets its (min, opt, max) shapes."""
import pytest

from export.graphs.dims import dim_range
from runtime.errors import ConfigError
from runtime.manifest import read_manifest
from runtime.tensorrt.profiles import ProfileConfig, manifest_profiles

MODEL = {"num_patches": 576, "max_positions": 4096, "clip_positions": 77}


def test_dim_ranges_follow_the_model_facts():
    assert dim_range("batch", MODEL) == (1, 1, 4)
    assert dim_range("visual_tokens", MODEL) == (1, 576, 576)
    assert dim_range("visual_tokens", {**MODEL, "num_patches": 256}) == (1, 256, 256)
    assert dim_range("prefix", MODEL) == (1, 8, 4096)
    assert dim_range("suffix", MODEL) == (1, 48, 4096)
    assert dim_range("seq", MODEL) == (1, 1, 4096)  # new tokens: a prompt at prefill, one per decode step
    assert dim_range("clip_tokens", MODEL) == (1, 32, 77)
    assert dim_range("capacity.3", MODEL) == (1, 576 + 8 + 48, 4096)
    assert dim_range("prefix", {**MODEL, "max_positions": 32}) == (1, 8, 32)
    assert dim_range("suffix", {**MODEL, "max_positions": 32}) == (1, 32, 32)


def test_unknown_dims_and_bad_batch_ranges_are_refused_with_the_fix():
    with pytest.raises(ConfigError, match="'s0'.*capacity.<n>"):
        dim_range("s0", MODEL)
    with pytest.raises(ConfigError, match="'capacity'.*capacity.<n>"):
        dim_range("capacity", MODEL)
    with pytest.raises(ConfigError, match="--max-batch"):
        ProfileConfig(max_batch=0)


def test_profiles_of_the_exported_none_dir(none_dir):
    profiles = manifest_profiles(read_manifest(none_dir), ProfileConfig(max_batch=2))
    assert set(profiles) == {"vision", "embed", "decoder.0", "lm_head"}
    assert profiles["vision"] == [{"pixel_values": ((1, 3, 336, 336), (1, 3, 336, 336), (2, 3, 336, 336))}]
    assert profiles["embed"] == [{"input_ids": ((1, 1), (1, 1), (2, 4096))}]
    decode, prefill = profiles["decoder.0"]  # best at one new token, then at a prompt
    assert decode["hidden_in"] == ((1, 1, 64), (1, 1, 64), (2, 4096, 64))
    assert prefill["hidden_in"] == ((1, 1, 64), (1, 632, 64), (2, 4096, 64))
    assert decode["attention_mask"] == ((1, 1, 1), (1, 1, 632), (2, 4096, 4096))
    assert prefill["attention_mask"] == ((1, 1, 1), (1, 632, 632), (2, 4096, 4096))
    assert decode["write_index"] == prefill["write_index"] == ((1,), (1,), (2,))
    assert decode["past_key_values.31.value"] == prefill["past_key_values.31.value"] == (
        (1, 4, 1, 16), (1, 4, 632, 16), (2, 4, 4096, 16))
    assert len(decode) == len(prefill) == 4 + 64
    assert profiles["lm_head"] == [{"hidden_last": ((1, 64), (1, 64), (2, 64))}]


def test_profiles_of_the_exported_ivtp_dir_cover_every_segment_cache_and_the_clip_text(ivtp_dir):
    manifest = read_manifest(ivtp_dir)
    profiles = manifest_profiles(manifest)
    assert set(profiles) == set(manifest.graphs)
    for name, record in manifest.graphs.items():
        dynamic = {t.name for t in record.inputs if any(isinstance(d, str) for d in t.shape)}
        assert all(set(p) == dynamic for p in profiles[name]), name
    for segment in manifest.pipeline.segments:
        assert [p["attention_mask"] for p in profiles[segment.decoder]] == [
            ((1, 1, 1), (1, 1, 632), (4, 4096, 4096)), ((1, 1, 1), (1, 632, 632), (4, 4096, 4096))]
        if segment.prune:
            (prune,) = profiles[segment.prune]  # it runs once per request, on the prompt
            assert prune[f"key.{segment.last}"] == ((1, 4, 1, 16), (1, 4, 632, 16), (4, 4, 4096, 16))
            assert prune[f"q.{segment.last}"] == ((1, 4, 1, 16), (1, 4, 632, 16), (4, 4, 4096, 16))
    (text,) = profiles[manifest.pipeline.text_encoder]
    assert text["input_ids"] == ((1, 1), (1, 32), (4, 77))
    assert manifest.graphs["text_encoder"].dims["clip_tokens"] == [1, 32, 77]  # CLIP's positions, from its config
