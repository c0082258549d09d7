"""The prefill-ratio benchmark's arithmetic (the benchmark itself exports and times the bench model: not a test)."""
from types import SimpleNamespace

from benchmarks.prefill_ratio import SECTION, section


def test_the_section_states_latency_over_flops_and_the_graphs_of_each():
    result = {"none": {"prefill_ms": 2000.0, "tflops": 0.2, "graphs_ms": {"vision": 150.0, "decoder.0": 1840.0}},
              "ivtp": {"prefill_ms": 420.0, "tflops": 0.04, "graphs_ms": {"vision": 120.0, "prune.0": 4.0}}}
    lines = section(result, SimpleNamespace(model="bench", runs=5), "2026-12-01 21:00 UTC")
    assert lines[0] == SECTION
    assert any("latency ratio **0.210** against a FLOPs ratio of **0.200**" in line and "**1.05x**" in line
               for line in lines)
    assert "| vision | 150.0 | 120.0 |" in lines and "| decoder.0 | 1840.0 | - |" in lines and "| prune.0 | - | 4.0 |" in lines
