"""`cli.py profile` and `cli.py visualize` on the tiny IVTP engines: fields, values derivable from the
manifest, and the pictures written. (Timings are only checked to exist and to add up: their size belongs in
benchmarks.)"""
import contextlib
import io
import json
from types import SimpleNamespace

import pytest
from PIL import Image

import cli
from export.profiling import profile as profile_module
from export.profiling.profile import OUTSIDE, SLOW_REFERENCE_DECODE, median_generation, slow_reference_note
from runtime import visualize
from tests.conftest import IMAGES, read_manifest


@pytest.fixture(scope="module")
def profiled(ivtp_dir, tmp_path_factory):
    """One `cli.py profile --json --plot` run, which the profile tests below read: its report and its PNG."""
    plot = tmp_path_factory.mktemp("profile") / "latency.png"
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = cli.main(["profile", str(ivtp_dir), "--runs", "1", "--max-new-tokens", "3", "--json", "--plot", str(plot)])
    assert code == 0
    return json.loads(out.getvalue()), plot


def expected_kv_bytes(manifest: dict, text_tokens: int) -> int:
    """Each segment caches prefix + text + the visual tokens it saw (before its own pruning), fp32 K and V, and a
    segment that prunes with IVTP's pseudo-CLS its slot too (written, never read)."""
    model, seen, total = manifest["model"], manifest["vision_tokens_out"], 0
    per_token_layer = 2 * model["kv_heads"] * model["head_dim"] * 4
    for seg in manifest["pipeline"]["segments"]:
        first, last = seg["layers"]
        total += (last - first + 1) * per_token_layer * (text_tokens + seen + int(seg["pseudo_cls"]))
        seen = seg["keep"] or seen
    return total


def test_profile_reports_medians_kv_bytes_tokens_and_flops(profiled, ivtp_dir):
    report, plot = profiled
    for section in ("engines", "pytorch", "reference"):
        assert report[section]["prefill_ms"] > 0 and report[section]["decode_ms_per_token"] > 0
    manifest = read_manifest(ivtp_dir)
    assert report["visual_tokens_final"] == 64
    assert report["kv_cache_bytes"] == expected_kv_bytes(manifest, report["text_tokens"])
    assert 0 < report["flops"]["pruned_tflops"] < report["flops"]["unpruned_tflops"]
    assert set(report["engines"]["breakdown_ms"]) >= {"vision", "text_encoder", "prune.0", "decoder.4", "lm_head", "decode",
                                                      OUTSIDE}
    assert Image.open(plot).size[0] > 600


def test_profile_breakdown_adds_up_to_the_prefill_it_prints(profiled, ivtp_dir, capsys, monkeypatch):
    report, _ = profiled
    engines = report["engines"]
    parts = {k: v for k, v in engines["breakdown_ms"].items() if k != "decode"}
    assert abs(sum(parts.values()) - engines["prefill_ms"]) < 0.01
    assert parts[OUTSIDE] > 0  # image preprocessing at least runs in no graph
    monkeypatch.setattr(profile_module, "profile", lambda *args: report)  # the same report, printed as a table
    assert cli.main(["profile", str(ivtp_dir)]) == 0
    line = next(t for t in capsys.readouterr().out.splitlines() if "engine prefill breakdown" in t)
    assert line.endswith(f"{OUTSIDE} {parts[OUTSIDE]:.1f} = {engines['prefill_ms']:.1f}; decode graphs "
                         f"{engines['breakdown_ms']['decode']:.1f} over all steps")


def test_prefill_and_its_parts_come_from_the_run_with_the_median_prefill():
    """Medians part by part would be vision 60 and decoder 30, 90 ms against a median prefill of 120."""
    warm_up = {"vision": 1.0, "decoder": 1.0, "prefill_total": 3.0}
    runs = iter([warm_up, {"vision": 60.0, "decoder": 20.0, "prefill_total": 100.0},
                 {"vision": 50.0, "decoder": 30.0, "prefill_total": 130.0},
                 {"vision": 70.0, "decoder": 40.0, "prefill_total": 120.0}])
    result = lambda: SimpleNamespace(token_ids=[0, 1, 2], timings_ms={**next(runs), "decode": 8.0, "decode_total": 9.0,
                                                                      "total": 0.0})
    generator = SimpleNamespace(generate=lambda requests, max_new_tokens: [result()])
    measured = median_generation(generator, None, 3, 3, lambda message: None, "fake")
    assert measured["prefill_ms"] == 120.0
    assert measured["breakdown_ms"] == {"vision": 70.0, "decoder": 40.0, OUTSIDE: 10.0, "decode": 8.0}
    assert measured["decode_ms_per_token"] == 4.5


def test_profile_prints_why_the_reference_decodes_slower_under_the_table(profiled, ivtp_dir, capsys, monkeypatch):
    report, _ = profiled
    hf = report["pytorch"]["decode_ms_per_token"]
    for reference, note in ((2 * hf, True), (hf / 2, False)):
        changed = {**report, "reference": {**report["reference"], "decode_ms_per_token": reference}}
        monkeypatch.setattr(profile_module, "profile", lambda *args: changed)
        assert cli.main(["profile", str(ivtp_dir)]) == 0
        lines = capsys.readouterr().out.splitlines()
        assert (f"  note: {SLOW_REFERENCE_DECODE}" in lines) == note
        if note:  # right under the three rows it explains
            assert lines.index(f"  note: {SLOW_REFERENCE_DECODE}") == 4 and "HF baseline" in lines[3]


def test_the_slow_reference_note_only_where_the_reference_decodes_slower():
    rows = lambda reference, hf: {"reference": {"decode_ms_per_token": reference}, "pytorch": {"decode_ms_per_token": hf}}
    assert slow_reference_note(rows(12.0, 10.0)) == SLOW_REFERENCE_DECODE
    assert slow_reference_note(rows(9.0, 10.0)) is None
    assert slow_reference_note({"pytorch_skipped": "no torch"}) is None


def test_visualize_draws_one_panel_per_stage_plus_the_input(capsys, ivtp_dir, tmp_path):
    out = tmp_path / "kept.png"
    code = cli.main(["visualize", str(ivtp_dir), "--image", str(IMAGES / "chelsea.jpg"),
                     "--prompt", "What colour is the cat?", "--out", str(out)])
    assert code == 0
    panels = 1 + len(read_manifest(ivtp_dir)["stages"])
    image = Image.open(out)
    assert image.size[0] == visualize.PAD + 4 * (336 + visualize.PAD)
    rows = -(-panels // 4)
    assert image.size[1] > rows * (336 + visualize.LABEL_H)


def test_visualize_refuses_a_path_that_is_not_png(capsys, ivtp_dir, tmp_path):
    code = cli.main(["visualize", str(ivtp_dir), "--image", str(IMAGES / "chelsea.jpg"), "--prompt", "Hi?",
                     "--out", str(tmp_path / "kept.jpg")])
    assert code == 2 and ".png" in capsys.readouterr().err
