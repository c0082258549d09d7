"""--model llava-1.5-7b-random / -13b-random: llava-hf's files at the real geometry, built once into the cache.
The builds are checked here at the tiny layout under those names (the 7B one is ~16 GB)."""
import pytest

from export.models import real_geometry
from export.models.checkpoint import resolve_model_dirs
from export.models.llava_hf_layout import LLAVA_1_5_7B, TINY_LAYOUT
from runtime.errors import ConfigError


def test_the_names_carry_the_real_geometries_and_their_sizes():
    seven, thirteen = real_geometry.GEOMETRIES["llava-1.5-7b-random"], real_geometry.GEOMETRIES["llava-1.5-13b-random"]
    assert seven == LLAVA_1_5_7B
    assert (thirteen.llm_hidden, thirteen.llm_layers, thirteen.llm_intermediate, thirteen.vit_hidden) == (
        5120, 40, 13824, 1024)
    clip_bytes = real_geometry.checkpoint_bytes(seven) - 2 * 7_063_427_072  # LLaVA's 7.06 B parameters in fp16
    assert clip_bytes / 4 == pytest.approx(428e6, rel=1e-3)  # and OpenAI's CLIP ViT-L/14-336, ~428 M, in fp32


def test_a_name_is_built_once_into_the_cache_and_reused(monkeypatch, tmp_path):
    monkeypatch.setitem(real_geometry.GEOMETRIES, "llava-1.5-7b-random", TINY_LAYOUT)
    monkeypatch.setenv("PRUNEVLM_CACHE", str(tmp_path))
    model_dir, clip_dir = resolve_model_dirs("llava-1.5-7b-random", None)
    assert (model_dir / "model.safetensors.index.json").is_file() and (clip_dir / "pytorch_model.bin").is_file()
    assert [p.name for p in tmp_path.iterdir()] == [model_dir.parent.name]  # nothing else left behind
    stamp = (model_dir / "config.json").stat().st_mtime_ns
    assert resolve_model_dirs("llava-1.5-7b-random", None) == (model_dir, clip_dir)
    assert (model_dir / "config.json").stat().st_mtime_ns == stamp


def test_too_little_disk_is_said_before_anything_is_written(monkeypatch, tmp_path):
    monkeypatch.setenv("PRUNEVLM_CACHE", str(tmp_path))
    monkeypatch.setattr(real_geometry.shutil, "disk_usage", lambda p: type("U", (), {"free": 10**9})())
    with pytest.raises(ConfigError, match=r"needs 15\.8 GB and has 1\.0 GB free; .*PRUNEVLM_CACHE"):
        resolve_model_dirs("llava-1.5-7b-random", None)
    assert list(tmp_path.iterdir()) == []
