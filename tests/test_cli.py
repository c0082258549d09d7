"""The CLI as a user meets it: JSON output, batches, and bad input -> a clear error, exit 2, nothing written."""
import json
import shutil
import subprocess
import sys

import pytest
from PIL import Image

import cli
from runtime.request import Request
from runtime.sampling import SamplingParams
from tests.conftest import IMAGES, ROOT, read_manifest


def run_cli(capsys, *args):
    code = cli.main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def test_run_json_reports_text_tokens_stages_and_timings(capsys, ivtp_dir):
    code, out, _ = run_cli(capsys, "run", ivtp_dir, "--image", IMAGES / "coffee.jpg", "--prompt", "What is in the cup?",
                           "--max-new-tokens", 5, "--json")
    assert code == 0
    result = json.loads(out)
    assert set(result) >= {"text", "token_ids", "input_ids", "stages", "timings_ms"}
    assert len(result["token_ids"]) == 5 and isinstance(result["text"], str)
    manifest = read_manifest(ivtp_dir)
    assert result["input_ids"].count(manifest["model"]["image_token_id"]) == 1
    names = [s["name"] for s in result["stages"]]
    assert names == [s["name"] for s in manifest["stages"]] and names[0].startswith("vit") and names[-1].startswith("llm")
    assert len(result["stages"][-1]["kept"]) == 64
    assert all(s["kept"] == sorted(s["kept"]) and max(s["kept"]) < 576 for s in result["stages"])
    assert {"vision", "decoder.0", "prune.0", "decode", "prefill_total", "decode_total", "total"} <= set(result["timings_ms"])


def test_requests_file_runs_as_a_batch_and_prints_a_list_in_order(capsys, ivtp_dir, tmp_path):
    lines = [{"image": str(IMAGES / "rocket.jpg"), "prompt": "What is launching?"},
             {"image": str(IMAGES / "chelsea.jpg"), "prompt": "Describe the cat's fur and the colour of its eyes."}]
    path = tmp_path / "requests.jsonl"
    path.write_text("\n".join(json.dumps(x) for x in lines))
    code, out, _ = run_cli(capsys, "run", ivtp_dir, "--requests", path, "--max-new-tokens", 4, "--json")
    assert code == 0
    batch = json.loads(out)
    for item, line in zip(batch, lines):
        code, single, _ = run_cli(capsys, "run", ivtp_dir, "--image", line["image"], "--prompt", line["prompt"],
                                  "--max-new-tokens", 4, "--json")
        single = json.loads(single)
        assert item["token_ids"] == single["token_ids"] and item["stages"] == single["stages"]


def test_sampling_flags_reach_the_generator_and_a_request_line_sets_its_own(capsys, ivtp_dir, ivtp_engines, tmp_path):
    image, prompt = IMAGES / "coffee.jpg", "What is in the cup?"
    flags = ["--temperature", 0.9, "--top-k", 40, "--top-p", 0.95, "--seed", 3, "--stop", "never", "--stop", "nor this"]
    code, out, err = run_cli(capsys, "run", ivtp_dir, "--image", image, "--prompt", prompt, "--max-new-tokens", 4,
                             *flags, "--json")
    assert code == 0, err
    want = ivtp_engines.generate([Request(image, prompt, SamplingParams(0.9, 0.95, 40, 3, ("never", "nor this")))], 4)[0]
    result = json.loads(out)
    assert result["token_ids"] == want.token_ids and len(want.token_ids) == 4 and result["finish_reason"] == "length"

    path = tmp_path / "requests.jsonl"
    path.write_text("\n".join(json.dumps(x) for x in [{"image": str(image), "prompt": prompt},
                                                      {"image": str(image), "prompt": prompt, "max_new_tokens": 2}]))
    code, out, err = run_cli(capsys, "run", ivtp_dir, "--requests", path, "--max-new-tokens", 4, *flags, "--json")
    assert code == 0, err
    batch = json.loads(out)
    assert [r["token_ids"] for r in batch] == [want.token_ids, want.token_ids[:2]]  # the same seed in each request


@pytest.mark.parametrize("args, words", [
    (["--temperature", -1], "temperature must be a finite number >= 0 (0 is greedy), got -1.0"),
    (["--top-p", 0], "top_p must be a number in (0, 1] (1 keeps every token), got 0.0"),
    (["--top-k", -2], "top_k must be an integer >= 0 (0 keeps every token), got -2"),
    (["--seed", -1], "seed must be an integer >= 0 (or left out for a random one), got -1"),
    (["--stop", ""], "stop must be a list of non-empty strings, got ['']"),
    (["--temperature", 0.7, "--compare-torch"], "--compare-torch compares greedy tokens with the PyTorch reference, "
     "but request 1 samples (temperature 0.7); drop --compare-torch or run with temperature 0"),
])
def test_bad_sampling_flags_exit_2_before_any_engine_loads(capsys, tmp_path, args, words):
    code, out, err = run_cli(capsys, "run", tmp_path / "no-engines", "--image", IMAGES / "coffee.jpg", "--prompt", "hi",
                             *args)
    assert code == 2 and out == "" and err == f"error: {words}\n"


def test_a_bad_sampling_key_in_a_request_line_names_the_file_and_line(capsys, tmp_path):
    path = tmp_path / "requests.jsonl"
    line = {"image": str(IMAGES / "coffee.jpg"), "prompt": "hi"}
    path.write_text(json.dumps(line) + "\n\n" + json.dumps({**line, "top_k": "many"}))
    code, _, err = run_cli(capsys, "run", tmp_path / "no-engines", "--requests", path)
    assert code == 2 and err == f"error: {path}:3: top_k must be an integer >= 0 (0 keeps every token), got 'many'\n"


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "1"])
def test_odd_but_valid_images_run(capsys, ivtp_dir, tmp_path, mode):
    path = tmp_path / f"odd_{mode}.png"
    Image.open(IMAGES / "chelsea.jpg").convert(mode).resize((97, 451)).save(path)
    code, out, err = run_cli(capsys, "run", ivtp_dir, "--image", path, "--prompt", "What is it?", "--max-new-tokens", 2, "--json")
    assert code == 0, err
    assert len(json.loads(out)["stages"][-1]["kept"]) == 64


def _bomb(path):
    Image.new("1", (20000, 20000)).save(path)  # 400 megapixels, a few KB on disk


@pytest.mark.parametrize("make, words", [
    (lambda p: None, "does not exist"),
    (lambda p: p.write_bytes(b"not an image at all"), "not"),
    (lambda p: p.write_bytes((IMAGES / "coffee.jpg").read_bytes()[:4000]), "truncated"),
    (_bomb, "too large"),
])
def test_bad_images_give_a_clear_error_and_exit_2(capsys, ivtp_dir, tmp_path, make, words):
    path = tmp_path / "bad.jpg"
    make(path)
    code, out, err = run_cli(capsys, "run", ivtp_dir, "--image", path, "--prompt", "What is it?")
    assert code == 2 and out == ""
    assert err.startswith("error: ") and str(path) in err and words in err.lower()


@pytest.mark.parametrize("prompt, words", [
    ("", "prompt is empty"), ("   \n", "prompt is empty"),
    ("word " * 5000, "positions, but the model has 4096"),
    ("look at <image> here", "already places the image"),
])
def test_bad_prompts_give_a_clear_error(capsys, ivtp_dir, prompt, words):
    code, out, err = run_cli(capsys, "run", ivtp_dir, "--image", IMAGES / "coffee.jpg", "--prompt", prompt)
    assert code == 2 and words in err


def test_missing_and_tampered_engine_files_are_named(capsys, ivtp_dir, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(ivtp_dir, broken)
    (broken / "prune.2.onnx").unlink()
    code, _, err = run_cli(capsys, "run", broken, "--image", IMAGES / "coffee.jpg", "--prompt", "hi")
    assert code == 2 and "missing prune.2.onnx" in err and "export it again" in err.lower()

    shutil.rmtree(broken)
    shutil.copytree(ivtp_dir, broken)
    data = bytearray((broken / "vision.onnx.data").read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, different weights
    (broken / "vision.onnx.data").write_bytes(bytes(data))
    code, _, err = run_cli(capsys, "verify", broken)
    assert code == 1 and "vision.onnx.data does not match its sha256" in err and "export it again" in err.lower()

    code, _, err = run_cli(capsys, "run", tmp_path / "nowhere", "--image", IMAGES / "coffee.jpg", "--prompt", "hi")
    assert code == 2 and "does not exist" in err


def test_verify_hashes_every_file_and_run_checks_only_sizes(capsys, ivtp_dir, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(ivtp_dir, copy)
    (copy / "notes.txt").write_text("mine")
    code, out, err = run_cli(capsys, "verify", copy)
    files = len(json.loads((copy / "manifest.json").read_text())["files"])
    assert code == 0 and f"all {files} files match their sha256" in out
    assert "notes.txt is not listed in the manifest" in err and err.count("[verify]") == files

    data = bytearray((copy / "embed.onnx.data").read_bytes())
    data[0] ^= 0xFF  # same size: `run` does not read every byte to notice (`verify` does, above)
    (copy / "embed.onnx.data").write_bytes(bytes(data))
    code, _, err = run_cli(capsys, "run", copy, "--image", IMAGES / "coffee.jpg", "--prompt", "hi", "--max-new-tokens", 1)
    assert code == 0, err


def test_impossible_keep_counts_fail_before_anything_is_written(capsys, tmp_path):
    out = tmp_path / "eng"
    code, _, err = run_cli(capsys, "export", "--method", "ivtp", "--model", "tiny", "--out", out, "--keep", 600)
    assert code == 2 and "--keep must be in 1..576" in err
    code, _, err = run_cli(capsys, "export", "--method", "ivtp", "--model", "tiny", "--out", out,
                           "--llm-keep", "100,110,90,64")
    assert code == 2 and "cannot keep 110 tokens when 100 are available" in err
    code, _, err = run_cli(capsys, "export", "--method", "none", "--model", "tiny", "--out", out, "--tau", 0.3)
    assert code == 2 and "--tau does not apply to method none" in err
    assert list(tmp_path.iterdir()) == []


def test_existing_out_needs_force_and_a_failed_export_leaves_nothing(capsys, tmp_path, monkeypatch):
    out = tmp_path / "eng"
    out.mkdir()
    code, _, err = run_cli(capsys, "export", "--method", "none", "--model", "tiny", "--out", out)
    assert code == 2 and "already exists; pass --force" in err
    out.rmdir()

    import export.pipeline as pipeline

    def broken_export(*args, **kwargs):
        raise pipeline.ConfigError("simulated failure half-way through the graphs")
    monkeypatch.setattr(pipeline, "export_graph", broken_export)
    code, _, err = run_cli(capsys, "export", "--method", "none", "--model", "tiny", "--out", out)
    assert code == 2 and "simulated failure" in err
    assert list(tmp_path.iterdir()) == []  # neither the dir nor a partial temp dir


def test_methods_lists_knobs_and_defaults(capsys):
    code, out, _ = run_cli(capsys, "methods")
    assert code == 0 and "ivtp" in out and "keep=64" in out and "tau=0.2" in out and "none" in out


def test_runtime_imports_neither_torch_nor_transformers():
    code = ("import sys, runtime.load, runtime.generator, runtime.requests_file, engines.onnxruntime_runner;"
            "bad = [m for m in ('torch', 'transformers', 'export') if m in sys.modules]; print(bad); sys.exit(bool(bad))")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
