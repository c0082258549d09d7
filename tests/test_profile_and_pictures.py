"""`cli.py profile` and `cli.py visualize` on the tiny IVTP engines: fields, values derivable from the
manifest, and the pictures written. (Timings are only checked to exist: they belong in benchmarks.)"""
import json

from PIL import Image

import cli
from runtime import visualize
from tests.conftest import IMAGES, read_manifest


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


def test_profile_reports_medians_kv_bytes_tokens_and_flops(capsys, ivtp_dir, tmp_path):
    plot = tmp_path / "latency.png"
    code = cli.main(["profile", str(ivtp_dir), "--runs", "1", "--max-new-tokens", "3", "--json", "--plot", str(plot)])
    report = json.loads(capsys.readouterr().out)
    assert code == 0
    for section in ("engines", "pytorch", "reference"):
        assert report[section]["prefill_ms"] > 0 and report[section]["decode_ms_per_token"] > 0
    manifest = read_manifest(ivtp_dir)
    assert report["visual_tokens_final"] == 64
    assert report["kv_cache_bytes"] == expected_kv_bytes(manifest, report["text_tokens"])
    assert 0 < report["flops"]["pruned_tflops"] < report["flops"]["unpruned_tflops"]
    assert set(report["engines"]["breakdown_ms"]) >= {"vision", "text_encoder", "prune.0", "decoder.4", "lm_head", "decode"}
    assert Image.open(plot).size[0] > 600


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
