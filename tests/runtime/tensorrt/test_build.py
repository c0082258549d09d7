"""`cli.py build` and TensorRT plans. Without TensorRT or a GPU, build says what is missing and how to get it,
exits 2 and writes nothing (tested everywhere by hiding tensorrt); the GPU tests skip with the reason."""
import json
import re
import shutil
import subprocess
import sys
import types

import pytest

import cli
from engines.errors import EngineConfigError
from engines.tensorrt import availability
from engines.tensorrt.availability import TensorRTUnavailable, require_tensorrt
from engines.tensorrt.build import BuildOptions, config_options
from runtime.errors import ConfigError, EngineDirError
from runtime.load import open_engine_dir
from runtime.tensorrt.build import BuildConfig, build_engine_dir
from tests.conftest import (
    IMAGES,
    PROMPTS,
    ROOT,
    generate_with_logits,
    needs_tensorrt_gpu,
    past_types,
    token_mismatches,
)


@pytest.fixture
def no_tensorrt(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # `import tensorrt` raises ImportError


def listing(path):
    return sorted(p.name for p in path.iterdir())


def test_build_without_tensorrt_exits_2_says_how_to_get_it_and_writes_nothing(none_dir, tmp_path, capsys, no_tensorrt):
    code = cli.main(["build", str(none_dir), "--precision", "fp16", "--out", str(tmp_path / "built")])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("error: TensorRT is not installed in this Python")
    assert "pip install tensorrt" in err and "--provider cpu" in err
    assert listing(tmp_path) == []
    assert cli.main(["build", str(none_dir), "--precision", "fp32"]) == 2  # default --out: <dir>.trt beside it
    assert [n for n in listing(none_dir.parent) if f"{none_dir.name}.trt" in n] == []


def test_on_jetson_the_message_points_to_jetpack_not_pip(no_tensorrt, monkeypatch):
    monkeypatch.setattr(availability.platform, "machine", lambda: "aarch64")
    with pytest.raises(TensorRTUnavailable) as e:
        require_tensorrt()
    assert "JetPack" in str(e.value) and "do not pip install tensorrt" in str(e.value)
    assert "`pip install tensorrt`" not in str(e.value)


def test_tensorrt_without_a_gpu_says_so(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", types.SimpleNamespace(__version__="10.14.1"))
    from polygraphy import cuda
    def no_cuda():
        raise OSError("libcudart.so: cannot open shared object file")
    monkeypatch.setattr(cuda, "wrapper", no_cuda)
    with pytest.raises(TensorRTUnavailable, match="finds no NVIDIA GPU.*libcudart"):
        require_tensorrt()


def test_bad_build_arguments_exit_2_before_anything_is_written(none_dir, tmp_path, capsys):
    out = tmp_path / "built"
    build = ["build", str(none_dir), "--precision", "fp16", "--out", str(out)]
    assert cli.main(build + ["--workspace", "0"]) == 2
    assert "--workspace" in capsys.readouterr().err
    assert cli.main(build + ["--max-batch", "0"]) == 2
    assert "--max-batch" in capsys.readouterr().err
    out.mkdir()
    assert cli.main(build) == 2
    assert "already exists" in capsys.readouterr().err
    assert listing(tmp_path) == ["built"] and listing(out) == []


def test_precision_options_per_tensorrt_major():
    assert config_options("fp16", 10, False) == BuildOptions({"fp16": True, "precision_constraints": "obey"}, True)
    assert config_options("bf16", 10, False) == BuildOptions({"bf16": True, "precision_constraints": "obey"}, True)
    assert config_options("fp32", 10, False) == BuildOptions()
    assert config_options("int8", 10, True) == BuildOptions({"int8": True})
    assert config_options("fp8", 11, True) == BuildOptions()  # strongly typed: Q/DQ decide
    assert config_options("fp32", 11, False) == BuildOptions()
    with pytest.raises(EngineConfigError, match="strongly typed.*export again with --dtype fp16.*--precision fp32"):
        config_options("fp16", 11, False)


def test_graphs_exported_in_fp16_build_as_their_types_say_on_every_tensorrt():
    assert config_options("fp16", 10, False, "fp16") == BuildOptions(strongly_typed=True)  # no flags, no pinning
    assert config_options("fp16", 11, False, "fp16") == BuildOptions()  # 11's networks are strongly typed anyway
    with pytest.raises(EngineConfigError, match="exported --dtype fp16.*build --precision fp16, or export again "
                                                "with --dtype fp32"):
        config_options("fp32", 11, False, "fp16")
    with pytest.raises(EngineConfigError, match="needs graphs with Q/DQ"):
        config_options("int8", 10, False)
    with pytest.raises(ConfigError, match="one of fp32, fp16, bf16, int8, fp8"):
        BuildConfig(precision="fp4")


def built_dir_without_tensorrt(none_dir, tmp_path):
    """What `build` writes, minus the plans: enough for the runtime to pick the TensorRT path."""
    built = tmp_path / "built"
    shutil.copytree(none_dir / "tokenizer", built / "tokenizer")
    manifest = json.loads((none_dir / "manifest.json").read_text())
    manifest["files"] = {k: v for k, v in manifest["files"].items() if k.startswith("tokenizer/")}
    manifest["engines"] = {g: {"file": f"{g}.plan", "precision": "fp16", "profiles": []} for g in manifest["graphs"]}
    manifest["built_from"] = str(none_dir)
    (built / "manifest.json").write_text(json.dumps(manifest))
    return built


def test_runtime_opens_a_built_dir_with_tensorrt_and_refuses_onnx_providers(none_dir, tmp_path, no_tensorrt):
    built = built_dir_without_tensorrt(none_dir, tmp_path)
    with pytest.raises(TensorRTUnavailable, match="TensorRT is not installed"):
        open_engine_dir(built)
    with pytest.raises(EngineDirError, match=re.escape(f"--provider cpu run the ONNX dir it was built from ({none_dir})")):
        open_engine_dir(built, "cpu")
    with pytest.raises(EngineDirError, match="already a TensorRT engine dir"):
        build_engine_dir(built, tmp_path / "again")


def test_the_runtime_and_tensorrt_modules_import_without_torch():
    code = ("import sys, runtime.load, engines.tensorrt.runner, runtime.tensorrt.build, runtime.tensorrt.check; "
            "assert 'torch' not in sys.modules and 'tensorrt' not in sys.modules, sorted(sys.modules)")
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)


@pytest.mark.gpu
@needs_tensorrt_gpu
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_built_plans_run_and_match_onnx_runtime(none_dir, tmp_path, precision):
    import tensorrt
    if precision == "fp16" and int(tensorrt.__version__.split(".")[0]) >= 11:
        with pytest.raises(EngineConfigError, match="strongly typed"):
            build_engine_dir(none_dir, tmp_path / "built", BuildConfig(precision=precision, max_batch=2))
        return
    out = build_engine_dir(none_dir, tmp_path / "built", BuildConfig(precision=precision, max_batch=2),
                           progress=lambda m: None)
    manifest = json.loads((out / "manifest.json").read_text())
    assert set(manifest["engines"]) == set(manifest["graphs"])
    plans = manifest["engines"].values()
    assert all((out / e["file"]).stat().st_size > 0 and e["precision"] == precision for e in plans)
    assert not list(out.glob("*.onnx*")) and manifest["versions"]["tensorrt"] == tensorrt.__version__
    from runtime.request import Request
    requests = [Request(IMAGES / "chelsea.jpg", PROMPTS[1]), Request(IMAGES / "coffee.jpg", PROMPTS[2])]
    want, want_logits, _ = generate_with_logits(open_engine_dir(none_dir, "cpu"), requests, 6)
    got, got_logits, recorders = generate_with_logits(open_engine_dir(out), requests, 6)
    assert all(len(g.token_ids) == 6 for g in got)
    feeds = recorders[manifest["pipeline"]["segments"][-1]["decoder"]].feeds
    # fresh host buffers at prefill; after it, the KV caches never left the GPU (a quiet DeviceView)
    assert past_types(feeds) == [{"ndarray"}] + [{"CacheView"}] * 5
    assert got[0].kv_cache_bytes == want[0].kv_cache_bytes
    # fp16 may flip a near tie and nothing else; fp32 must give the very same tokens
    assert token_mismatches(want, want_logits, got, got_logits) == [None, None]
    if precision == "fp32":
        assert [g.token_ids for g in got] == [w.token_ids for w in want]


@pytest.mark.gpu
@needs_tensorrt_gpu
def test_an_fp16_export_builds_strongly_typed_and_matches_its_onnx_runtime_run(exported, tmp_path):
    """The TensorRT 11 path (and 10's strongly typed one): precision from the graph, nothing to choose."""
    fp16_dir = exported("none", dtype="fp16")
    out = build_engine_dir(fp16_dir, tmp_path / "built", BuildConfig(max_batch=2), progress=lambda m: None)
    manifest = json.loads((out / "manifest.json").read_text())
    assert {e["precision"] for e in manifest["engines"].values()} == {"fp16"}
    from runtime.request import Request
    requests = [Request(IMAGES / "chelsea.jpg", PROMPTS[1]), Request(IMAGES / "coffee.jpg", PROMPTS[2])]
    want, want_logits, _ = generate_with_logits(open_engine_dir(fp16_dir, "cpu"), requests, 6)
    got, got_logits, _ = generate_with_logits(open_engine_dir(out), requests, 6)
    assert token_mismatches(want, want_logits, got, got_logits) == [None, None]
    with pytest.raises(EngineConfigError, match="exported --dtype fp16"):
        build_engine_dir(fp16_dir, tmp_path / "other", BuildConfig(precision="fp32"))


def test_the_step_logits_the_tensorrt_test_compares_are_the_ones_tokens_came_from(none_dir):
    """Runs here on ONNX Runtime: what the TensorRT test reads as each step's logits gives the greedy tokens."""
    from runtime.request import Request
    requests = [Request(IMAGES / "chelsea.jpg", PROMPTS[1]), Request(IMAGES / "coffee.jpg", PROMPTS[2])]
    results, logits, _ = generate_with_logits(open_engine_dir(none_dir, "cpu"), requests, 6)
    assert [[int(step.argmax()) for step in request] for request in logits] == [r.token_ids for r in results]
    assert [len(r.token_ids) for r in results] == [6, 6]
