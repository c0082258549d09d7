"""The peer benchmark's arithmetic (the benchmark itself needs onnxruntime-genai and minutes: not a test)."""
from types import SimpleNamespace

from benchmarks.peer_genai import SECTION, llm_prefill_ms, section
from benchmarks.scale_check import carry_section


def test_llm_prefill_counts_the_decoder_graphs_and_the_head_only():
    timings = {"vision": 100.0, "embed": 1.0, "text_encoder": 5.0, "prune.0": 20.0, "decoder.0": 3.0,
               "decoder.1": 30.0, "lm_head": 0.5, "decode": 400.0, "prefill_total": 160.0}
    assert llm_prefill_ms(timings) == 53.5


def test_the_section_states_ratios_against_the_peers_fp32_and_survives_a_methods_rewrite():
    result = {"sequence": 598, "disk": {"none": 2**20, "genai-fp32": 2**20},
              "rows": {"none": {"prefill_ms": 90.0, "decode_ms_per_token": 12.0},
                       "genai-fp32": {"prefill_ms": 100.0, "decode_ms_per_token": 16.0}}}
    lines = section(result, SimpleNamespace(model="bench", threads=2, new_tokens=16, runs=3), "2026-12-01")
    assert lines[0] == SECTION
    assert "| prunevlm none | 576 | 90 (0.90) | 12.0 (0.75) | 1 |" in lines
    assert "| onnxruntime-genai fp32 | 576 (as tokens) | 100 (1.00) | 16.0 (1.00) | 1 |" in lines
    page = "# Benchmarks\n\nnew table\n"
    old = page + "\n" + "\n".join(lines) + "\n"
    assert carry_section(old, page).endswith("\n".join(lines).rstrip("\n") + "\n")
