"""The scale check's arithmetic and its BENCHMARKS.md section handling (the measurement itself takes hours)."""
import dataclasses
import json
from pathlib import Path

from benchmarks.scale_check import (
    SECTION,
    carry_section,
    last_error,
    method_knobs,
    replace_section,
    timed,
    weight_bytes,
)
from export.models.llava_hf_layout import LLAVA_1_5_7B


def test_the_decoder_layer_bytes_are_the_7b_geometry():
    wb = weight_bytes(dataclasses.replace(LLAVA_1_5_7B, llm_layers=4))
    assert wb["decoder_layer_fp32"] == 809_533_440
    assert wb["decoder_layer_fp16"] == 809_533_440 // 2
    full = weight_bytes(LLAVA_1_5_7B)
    assert full["llava_fp16"] == 2 * 7_063_427_072
    assert full["llava_fp16"] - wb["llava_fp16"] == 28 * wb["decoder_layer_fp16"]


def test_ivtp_prunes_in_all_but_the_last_layer_when_shallow():
    assert method_knobs("ivtp", 4) == ["--llm-layers", "3"]
    assert method_knobs("ivtp", 32) == [] and method_knobs("none", 4) == []


def test_the_section_is_replaced_in_place_appended_once_and_kept_by_a_full_rewrite():
    page = "# Benchmarks\n\ntable\n\n## Targets\n\n- a\n"
    once = replace_section(page, [SECTION, "", "old"])
    assert once.endswith(f"- a\n\n{SECTION}\n\nold\n")
    assert replace_section(once, [SECTION, "", "old"]) == once
    later = once + "\n## After\n\nx\n"
    assert replace_section(later, [SECTION, "", "new"]) == once.replace("old", "new") + "\n## After\n\nx\n"
    assert carry_section(later, page) == once  # methods_cpu's rewrite keeps it
    assert carry_section(page, page) == page


def test_a_failed_step_is_reported_with_its_exit_code_and_error_line(tmp_path: Path):
    r = timed(["python3", "-c", "import sys; print('working', file=sys.stderr); sys.exit('error: no room')"],
              tmp_path / "x.log", 60)
    assert r["exit_code"] == 1 and not r["timed_out"] and r["error"] == "error: no room"
    assert r["peak_rss_bytes"] > 0
    r = timed(["python3", "-c", "import time; time.sleep(30)"], tmp_path / "y.log", 1)
    assert r["timed_out"] and r["exit_code"] != 0 and r["error"] == "timed out after 1 s"
    assert last_error(tmp_path / "missing.log") is None


def test_fp16_and_fp32_runs_are_compared_token_by_token_and_stage_by_stage(tmp_path: Path):
    from benchmarks.scale_check import dtype_agreement
    entries = []
    for dtype, tokens, kept in (("fp16", [5, 6, 7, 1], [1, 2, 3, 9]), ("fp32", [5, 6, 8, 1], [1, 2, 3, 4])):
        log = tmp_path / f"run-{dtype}.log"
        log.with_suffix(".stdout").write_text("noise\n" + json.dumps({"token_ids": tokens, "stages": [
            {"name": "llm.l2", "kept": kept}]}) + "\n")
        entries.append({"dtype": dtype, "method": "ivtp", "run": {"exit_code": 0, "log": str(log)}})
    entries.append({"dtype": "fp16", "method": "none", "run": {"exit_code": 1}})  # failed: not compared
    lines = dtype_agreement(entries)
    assert "- `ivtp`: fp16 and fp32 give the same first 2 of 4 greedy tokens; fp16 keeps these shares of fp32's " \
           "tokens: llm.l2 0.750" in lines
    assert not any("`none`" in line for line in lines)
