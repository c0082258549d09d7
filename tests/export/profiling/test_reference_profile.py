"""The GPU reference profile's model geometry and report, checked on the CPU (meta tensors for the 7B)."""
import pytest
import torch
from PIL import Image

from export.models.facts import model_facts
from export.profiling import reference_profile
from export.profiling.flops import flops_report
from export.profiling.reference_profile import plot, random_checkpoint, run, table


def test_7b_geometry_is_llava_1_5_7b_to_the_parameter():
    ckpt = random_checkpoint("llava-1.5-7b", "meta", torch.float16)  # shapes only, no memory
    assert sum(p.numel() for p in ckpt.llava.parameters()) == 7_063_427_072  # llava-hf/llava-1.5-7b-hf
    # openai/clip-vit-large-patch14-336 has 427,944,193; ours differs only by the tiny tokenizer's 1024-row
    # text embedding instead of 49408 rows of 768
    assert sum(p.numel() for p in ckpt.clip.parameters()) == 427_944_193 - (49408 - 1024) * 768
    facts = model_facts(ckpt)
    assert {k: facts[k] for k in ("llm_hidden", "llm_layers", "llm_heads", "head_dim", "llm_intermediate",
                                  "vit_hidden", "vit_layers", "num_patches", "feature_layer", "vocab_size")} == {
        "llm_hidden": 4096, "llm_layers": 32, "llm_heads": 32, "head_dim": 128, "llm_intermediate": 11008,
        "vit_hidden": 1024, "vit_layers": 24, "num_patches": 576, "feature_layer": 22, "vocab_size": 32064}


def test_tiny_geometry_report_counts_tokens_and_flops_like_an_export(ivtp_dir):
    report = run("tiny", "cpu", "float32", ["none", "ivtp"], runs=1, max_new_tokens=2, progress=lambda m: None)
    none, ivtp = report["methods"]["none"], report["methods"]["ivtp"]
    assert (none["visual_tokens_final"], ivtp["visual_tokens_final"]) == (576, 64)
    assert ivtp["text_tokens"] == none["text_tokens"]
    exported = flops_report(str(ivtp_dir), "ivtp", ivtp["text_tokens"])["total_tflops"]
    assert ivtp["tflops"] == pytest.approx(exported, rel=1e-9)
    # KV caches: 32 layers x 2 x hidden 64 x 4 bytes per token, over each segment's own token count
    assert none["kv_cache_bytes"] == 32 * 2 * 64 * 4 * (576 + none["text_tokens"])
    rows = table(report)
    assert any(r.startswith("| ivtp | 64 | ") for r in rows)
    assert report["hf_baseline"]["prefill_ms"] > 0 and report["device"] == "cpu"


def test_a_failing_method_is_reported_and_the_others_still_run(monkeypatch):
    real = reference_profile.profile_method

    def flaky(name, *args):
        if name == "fastv":
            raise FloatingPointError("overflow in layer 2")
        return real(name, *args)
    monkeypatch.setattr(reference_profile, "profile_method", flaky)
    report = run("tiny", "cpu", "float32", ["fastv", "topk"], runs=1, max_new_tokens=2, progress=lambda m: None)
    assert report["methods"]["fastv"] == {"method": "fastv", "error": "FloatingPointError: overflow in layer 2"}
    assert report["methods"]["topk"]["visual_tokens_final"] == 64
    rows = table(report)
    assert "| fastv | failed: FloatingPointError: overflow in layer 2 | | | | |" in rows
    assert any("against `topk`" in r for r in rows)


def test_table_and_plot_show_gpu_busy_time_ratios_when_measured(tmp_path):
    method = lambda name, prefill, kernel: {"method": name, "visual_tokens_final": 64, "tflops": 1.0, "prefill_ms": prefill,
                                            "decode_ms_per_token": 10.0, "kv_cache_bytes": 2**20,
                                            "prefill_kernel_ms": kernel, "decode_kernel_ms_per_token": 4.0}
    report = {"measured": "now", "geometry": "llava-1.5-7b", "device": "NVIDIA H100", "dtype": "float16", "torch": "2.11", "runs": 5,
              "max_new_tokens": 16, "hf_baseline": {"prefill_ms": 80.0, "decode_ms_per_token": 20.0},
              "methods": {"none": method("none", 50.0, 40.0), "ivtp": method("ivtp", 60.0, 8.0)}}
    rows = table(report)
    assert "| ivtp | 8.0 (0.200) | 4.00 (1.000) |" in rows
    assert "| ivtp | 64 | 1.000 (1.000) | 60.0 (1.200) | 10.00 (1.000) | 1.0 |" in rows
    assert rows[-1].endswith("prefill 0.625, decode 0.500.")
    plot(report, tmp_path / "ratios.png")
    with Image.open(tmp_path / "ratios.png") as png:
        assert png.format == "PNG" and png.width > png.height
