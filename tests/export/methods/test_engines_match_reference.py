"""Every registered method, exported with its defaults on the tiny model: the engines give the kept indices
per stage and the greedy tokens of the method's torch reference, single and batched; and TensorRT's parser
would take every graph. A new method file is covered here without touching this test."""
import pytest

from export.methods.registry import all_methods
from runtime.load import open_engine_dir
from runtime.request import Request
from runtime.tensorrt.check import check_engine_dir
from tests.conftest import IMAGES, PROMPTS

COVERED_ELSEWHERE = {"none", "ivtp"}  # test_end_to_end.py checks them against HF and the IVTP reference
METHODS = sorted(set(all_methods()) - COVERED_ELSEWHERE)
REQUESTS = [Request(IMAGES / "astronaut.jpg", PROMPTS[0]), Request(IMAGES / "chelsea.jpg", PROMPTS[1]),
            Request(IMAGES / "coffee.jpg", PROMPTS[2]), Request(IMAGES / "rocket.jpg", "Rocket?")]
NEW_TOKENS = 8


@pytest.mark.parametrize("method", METHODS)
def test_engines_equal_the_torch_reference_single_and_batched(exported, method):
    from export.reference import reference_generator
    engines = open_engine_dir(exported(method))
    reference = reference_generator(engines.m)
    want = reference.generate(REQUESTS, max_new_tokens=NEW_TOKENS)
    batch = engines.generate(REQUESTS, max_new_tokens=NEW_TOKENS)
    stages = engines.m.stages
    for request, w, b in zip(REQUESTS, want, batch):
        alone = engines.generate([request], max_new_tokens=NEW_TOKENS)[0]
        assert [s["name"] for s in alone.stages] == [s.name for s in stages]
        for got, spec in zip(alone.stages, stages):
            assert got["kept"] == sorted(got["kept"]) and len(set(got["kept"])) == len(got["kept"])
            assert all(0 <= i < engines.m.model["num_patches"] for i in got["kept"])
            if spec.keep is not None:  # None: the count depends on the input (ATP)
                assert len(got["kept"]) == spec.keep, got["name"]
        assert alone.stages == w.stages == b.stages
        assert alone.token_ids == w.token_ids == b.token_ids


@pytest.mark.parametrize("method", METHODS)
def test_every_graph_passes_the_tensorrt_check(exported, method):
    """Clean for TensorRT 10.14 (the first to parse ONNX Attention), warnings included: every TopK has a
    constant k, every dynamic dim a profile range, and integer I/O is int32. All it finds are the norms and RoPE
    that opset 23 fuses for ONNX Runtime, each with its fix (tests/runtime/tensorrt/test_check.py exports
    --opset 18 and checks that clean)."""
    problems = check_engine_dir(exported(method), trt_version=(10, 14))
    assert problems and {(p.rule, p.message.split()[1]) for p in problems} <= {
        ("unsupported-op", "RMSNormalization"), ("unsupported-op", "RotaryEmbedding")}
    assert all("--opset 18" in p.message for p in problems)
