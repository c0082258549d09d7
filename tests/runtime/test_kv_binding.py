"""KV caches are buffers that the decoder graphs write in place: ONNX Runtime is bound to the buffer it is fed
(numpy on the CPU, wrapped without a copy; OrtValues where it keeps them, as on a GPU). The OrtValue path runs
here on the CPU: tokens, kept indices and cache size must not change."""
import numpy as np
import onnxruntime as ort
import pytest

from calibration.capture import record
from engines.kv_names import in_place_pairs
from engines.onnxruntime_runner import ORT_TYPES, EngineInputError, kv_device_for
from runtime.generator import Generator
from runtime.request import Request
from runtime.runners import open_onnxruntime
from tests.conftest import IMAGES, PROMPTS, past_types


def test_sessions_on_cuda_or_tensorrt_keep_kv_on_the_gpu_and_cpu_sessions_return_numpy():
    assert kv_device_for(["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]) == "cuda"
    assert kv_device_for(["CUDAExecutionProvider", "CPUExecutionProvider"]) == "cuda"
    assert kv_device_for(["CPUExecutionProvider"]) is None


def test_a_present_output_is_its_past_inputs_buffer_by_name():
    inputs = ["hidden_in", "past_key_values.3.key", "past_key_values.3.value"]
    outputs = ["hidden_out", "present.3.key", "present.3.value", "present.4.key"]
    assert in_place_pairs(inputs, outputs) == {"present.3.key": "past_key_values.3.key",
                                               "present.3.value": "past_key_values.3.value"}


def test_a_decode_step_writes_its_slot_into_the_fed_numpy_buffer_and_nothing_else(ivtp_engines):
    decoder = ivtp_engines.pipe.segments[-1].decoder
    generator = Generator(ivtp_engines.m, open_onnxruntime(ivtp_engines.m, ["CPUExecutionProvider"]))
    recorders = record(generator)
    generator.generate([Request(IMAGES / "chelsea.jpg", PROMPTS[1])], max_new_tokens=3)
    step = {k: v.copy() for k, v in recorders[decoder].feeds[-1].items()}  # the second decode step, as it was fed
    runner = open_onnxruntime(ivtp_engines.m, ["CPUExecutionProvider"])[decoder]
    slot = int(step["write_index"][0])
    name = next(k for k in step if k.startswith("past_key_values."))
    before = step[name].copy()
    out = runner.infer(step)
    present = out["present." + name[len("past_key_values."):]]
    assert present is step[name]  # the same array, written in place
    assert np.array_equal(np.delete(present, slot, axis=2), np.delete(before, slot, axis=2))
    assert np.abs(present[:, :, slot]).max() > 0 and np.abs(before[:, :, slot]).max() == 0


def test_bound_kv_caches_give_the_same_tokens_kept_indices_and_cache_size(ivtp_engines):
    manifest, decoder = ivtp_engines.m, ivtp_engines.pipe.segments[-1].decoder
    requests = [Request(IMAGES / "chelsea.jpg", PROMPTS[1]), Request(IMAGES / "coffee.jpg", PROMPTS[2])]
    plain = open_onnxruntime(manifest, ["CPUExecutionProvider"])
    assert {r.kv_device for r in plain.values()} == {None}
    plain_generator = Generator(manifest, plain)
    plain_feeds = record(plain_generator)[decoder].feeds
    want = plain_generator.generate(requests, max_new_tokens=5)
    bound_generator = Generator(manifest, open_onnxruntime(manifest, ["CPUExecutionProvider"], kv_device="cpu"))
    bound_feeds = record(bound_generator)[decoder].feeds
    got = bound_generator.generate(requests, max_new_tokens=5)
    # the prefill is fed fresh numpy buffers; the 4 decode steps what the runner returned
    assert past_types(plain_feeds) == [{"ndarray"}] * 5 and past_types(bound_feeds) == [{"ndarray"}] + [{"OrtValue"}] * 4
    assert [g.token_ids for g in got] == [w.token_ids for w in want]
    assert [g.stages for g in got] == [w.stages for w in want]
    assert got[0].kv_cache_bytes == want[0].kv_cache_bytes > 0


def test_an_ort_value_of_the_wrong_dtype_is_refused_by_name(ivtp_engines):
    runner = open_onnxruntime(ivtp_engines.m, ["CPUExecutionProvider"], kv_device="cpu")[ivtp_engines.pipe.segments[0].decoder]
    feed = {a.name: np.zeros([1 if isinstance(d, str) else d for d in a.shape], ORT_TYPES[a.type])
            for a in runner.activate().session.get_inputs()}
    name = next(k for k in feed if k.startswith("past_key_values."))
    feed[name] = ort.OrtValue.ortvalue_from_numpy(np.zeros((1, 2, 3, 4), np.int32))
    with pytest.raises(EngineInputError, match=f"input {name} must be float32, got int32"):
        runner.infer(feed)
