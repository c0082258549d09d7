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
from export.profiling.plots import profile_figure
from export.profiling.profile import OUTSIDE, SLOW_REFERENCE_DECODE, median_generation, slow_reference_note
from export.profiling.stacked_parts import MAX_NAMED, OTHER, VISIBLE, stacked_parts
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


def drawn_as(text: str, value: float) -> bool:
    """`text` holds `value` rounded to as many decimals as the text shows ("= 117.9 ms" or "4.14")."""
    number = text.strip("= ms")
    decimals = len(number.partition(".")[2])
    return number == f"{value:.{decimals}f}"


def test_the_plot_labels_every_bar_and_every_row_with_its_value(profiled):
    report, _ = profiled
    fig = profile_figure(report)
    parts_ax, prefill_ax, decode_ax = fig.axes
    rows = ["engines (ivtp)", "PyTorch reference", "HF baseline (unpruned)"]
    assert [t.get_text() for t in parts_ax.get_yticklabels()] == rows[:1]
    for ax, key in ((prefill_ax, "prefill_ms"), (decode_ax, "decode_ms_per_token")):
        assert [t.get_text() for t in ax.get_yticklabels()] == rows
        ends = [bar.get_x() + bar.get_width() for bar in ax.patches]  # a log axis' bars start at its floor
        assert ends == pytest.approx([report[k][key] for k in ("engines", "reference", "pytorch")])
    for ax in fig.axes:
        texts = [t.get_text() for t in ax.texts]
        for bar in ax.patches:
            value = bar.get_width() if ax is parts_ax else bar.get_x() + bar.get_width()
            assert any(drawn_as(t, value) for t in texts), (value, texts)
    widths = [bar.get_width() for bar in parts_ax.patches]
    assert abs(sum(widths) - report["engines"]["prefill_ms"]) < 0.01  # the stacked bar is the prefill printed
    assert any(drawn_as(t.get_text(), report["engines"]["prefill_ms"]) for t in parts_ax.texts)


def test_the_legend_names_only_parts_wide_enough_to_see_and_covers_no_bar(profiled):
    report, _ = profiled
    fig = profile_figure(report)
    fig.canvas.draw()
    parts_ax = fig.axes[0]
    legend = parts_ax.get_legend()
    entries = [t.get_text() for t in legend.get_texts()]
    widths = {c.get_label(): c.patches[0].get_width() for c in parts_ax.containers}
    assert 1 <= len(entries) <= 6
    assert all(widths[e] >= VISIBLE * report["engines"]["prefill_ms"] for e in entries)
    box = legend.get_window_extent()
    assert not any(box.overlaps(bar.get_window_extent()) for ax in fig.axes for bar in ax.patches)


def test_stacked_parts_group_what_is_too_narrow_to_see():
    breakdown = {"vision": 60.0, "embed": 0.1, "decoder.0": 5.0, "prune.0": 0.5, "decoder.1": 4.0, "decoder.2": 3.0,
                 "decoder.3": 2.5, "decoder.4": 14.0, "lm_head": 0.1, profile_module.OUTSIDE: 10.8, "decode": 50.0}
    parts = stacked_parts(breakdown)  # of 100 ms: 0.1, 0.5 and 0.1 are under 2%, 3.0 and 2.5 past the five widest
    assert [label for label, _ in parts] == ["vision", "decoder.0", "decoder.1", "decoder.4",
                                             "outside graphs (preprocess, glue)", f"{OTHER} (5 parts)"]
    assert len(parts) <= MAX_NAMED + 1 and sum(ms for _, ms in parts) == pytest.approx(100.0)
    assert dict(parts)[f"{OTHER} (5 parts)"] == pytest.approx(0.1 + 0.5 + 3.0 + 2.5 + 0.1)


def test_decode_axis_fits_the_decode_rows_and_shows_a_5_ms_bar_beside_600(profiled):
    report, _ = profiled
    for engines, reference in ((report["engines"]["decode_ms_per_token"], report["reference"]["decode_ms_per_token"]),
                               (5.0, 600.0)):
        changed = {**report, "engines": {**report["engines"], "decode_ms_per_token": engines},
                   "reference": {**report["reference"], "decode_ms_per_token": reference}}
        fig = profile_figure(changed)
        fig.canvas.draw()
        decode_ax = fig.axes[2]
        values = [engines, reference, report["pytorch"]["decode_ms_per_token"]]
        assert max(values) < decode_ax.get_xlim()[1] < 1.5 * max(values)
        axis = decode_ax.get_window_extent().width  # the engines' bar: linear axis, or log where it would be thin
        assert decode_ax.patches[0].get_window_extent().width > 0.04 * axis


def test_the_note_on_why_the_reference_decodes_slower_is_on_the_figure_only_where_it_is(profiled):
    report, _ = profiled
    hf = report["pytorch"]["decode_ms_per_token"]
    for reference, shown in ((2 * hf, True), (hf / 2, False)):
        fig = profile_figure({**report, "reference": {**report["reference"], "decode_ms_per_token": reference}})
        assert any(" ".join(t.get_text().split()) == SLOW_REFERENCE_DECODE for t in fig.texts) == shown


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
