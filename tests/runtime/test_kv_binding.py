"""ONNX Runtime on a GPU keeps KV caches as OrtValues between steps (IOBinding), never copied to the host.
The same path runs here with OrtValues on the CPU: tokens, kept indices and cache size must not change."""
import numpy as np
import onnxruntime as ort
import pytest

from calibration.capture import record
from engines.onnxruntime_runner import ORT_TYPES, EngineInputError, kv_device_for
from runtime.generator import Generator
from runtime.request import Request
from runtime.runners import open_onnxruntime
from tests.conftest import IMAGES, PROMPTS, past_types


def test_sessions_on_cuda_or_tensorrt_keep_kv_on_the_gpu_and_cpu_sessions_return_numpy():
    assert kv_device_for(["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]) == "cuda"
    assert kv_device_for(["CUDAExecutionProvider", "CPUExecutionProvider"]) == "cuda"
    assert kv_device_for(["CPUExecutionProvider"]) is None


def test_bound_kv_caches_give_the_same_tokens_kept_indices_and_cache_size(ivtp_engines):
    manifest, decode = ivtp_engines.m, ivtp_engines.pipe.decode
    requests = [Request(IMAGES / "chelsea.jpg", PROMPTS[1]), Request(IMAGES / "coffee.jpg", PROMPTS[2])]
    plain = open_onnxruntime(manifest, ["CPUExecutionProvider"])
    assert {r.kv_device for r in plain.values()} == {None}
    plain_generator = Generator(manifest, plain)
    plain_feeds = record(plain_generator)[decode].feeds
    want = plain_generator.generate(requests, max_new_tokens=5)
    bound_generator = Generator(manifest, open_onnxruntime(manifest, ["CPUExecutionProvider"], kv_device="cpu"))
    bound_feeds = record(bound_generator)[decode].feeds
    got = bound_generator.generate(requests, max_new_tokens=5)
    assert past_types(plain_feeds) == [{"ndarray"}] * 4 and past_types(bound_feeds) == [{"OrtValue"}] * 4
    assert [g.token_ids for g in got] == [w.token_ids for w in want]
    assert [g.stages for g in got] == [w.stages for w in want]
    assert got[0].kv_cache_bytes == want[0].kv_cache_bytes > 0


def test_an_ort_value_of_the_wrong_dtype_is_refused_by_name(ivtp_engines):
    runner = open_onnxruntime(ivtp_engines.m, ["CPUExecutionProvider"], kv_device="cpu")[ivtp_engines.pipe.decode]
    feed = {a.name: np.zeros([1 if isinstance(d, str) else d for d in a.shape], ORT_TYPES[a.type])
            for a in runner.activate().session.get_inputs()}
    feed["past_key_values.0.key"] = ort.OrtValue.ortvalue_from_numpy(np.zeros((1, 2, 3, 4), np.int32))
    with pytest.raises(EngineInputError, match="input past_key_values.0.key must be float32, got int32"):
        runner.infer(feed)
