"""KV caches kept on the GPU between TensorRT calls: the buffer rotation everywhere (host arrays stand in for
device memory), the device copies where a GPU is (no TensorRT needed, only the CUDA runtime)."""
import numpy as np
import pytest

from engines.tensorrt.availability import cuda_device_problem
from engines.tensorrt.device_kv import AlternatingBuffers, CacheView, DeviceKV
from engines.tensorrt.runner import TensorrtRunner


def host_buffers(released):
    return AlternatingBuffers(lambda n: np.zeros(n, np.uint8), released.append)


def test_what_a_call_returned_survives_the_next_call_and_is_reused_by_the_one_after():
    released = []
    buffers = host_buffers(released)
    got = []
    for _ in range(3):
        buffers.next_call()
        got.append(buffers.take("present.0.key", 100))
    assert got[0] is not got[1] and got[2] is got[0]
    assert [b.nbytes for b in got] == [125, 125, 125] and released == []


def test_growth_reallocates_with_headroom_not_at_every_step():
    released = []
    buffers = host_buffers(released)
    sizes = []
    for step in range(12):  # a cache that gains 4 bytes per decode step
        buffers.next_call()
        sizes.append(buffers.take("present.0.key", 100 + 4 * step).nbytes)
    # even steps use one buffer, odd steps the other; each is 1.25x the first need it did not fit
    assert sizes == [125, 130, 125, 130, 125, 130, 125, 130, 165, 170, 165, 170]
    assert [r.nbytes for r in released] == [125, 130]
    buffers.release_all()
    assert [r.nbytes for r in released] == [125, 130, 165, 170] and buffers.slots == {}


def test_outputs_have_their_own_buffers_and_empty_outputs_get_a_byte():
    buffers = host_buffers([])
    buffers.next_call()
    key, value, empty = buffers.take("present.0.key", 8), buffers.take("present.0.value", 8), buffers.take("x", 0)
    assert key is not value and empty.nbytes == 1


def test_a_kept_cache_passes_polygraphys_input_check_without_a_warning_per_read(capsys):
    from polygraphy import cuda, util
    from polygraphy.backend.base.util import check_inputs
    from polygraphy.common import TensorMetadata
    from polygraphy.datatype import DataType
    from polygraphy.exception import PolygraphyException
    view = CacheView(0, (1, 32, 7, 128), np.dtype(np.float32))  # address 0: nothing is read from it here
    check_inputs({"past": view}, TensorMetadata().add("past", DataType.FLOAT32, (-1, 32, -1, 128)))
    with pytest.raises(PolygraphyException, match="unexpected dtype"):
        check_inputs({"past": view}, TensorMetadata().add("past", DataType.FLOAT16, (-1, 32, -1, 128)))
    assert "In the future" not in capsys.readouterr().out
    with pytest.warns(DeprecationWarning):  # the plain view warns on every read
        util.array.dtype(cuda.DeviceView(0, (1,), np.dtype(np.float32)))
    assert "In the future" in capsys.readouterr().out


class PolygraphyRunner:
    """What TensorrtRunner sees of polygraphy's TrtRunner: infer returns views of the buffers it reuses."""

    def __init__(self, outputs):
        self.outputs = outputs

    def infer(self, feed, copy_outputs_to_host):
        assert copy_outputs_to_host is False
        return self.outputs


class HostOutput:
    def __init__(self, array):
        self.array = array

    def numpy(self):
        return self.array


class RecordingKV:
    def __init__(self):
        self.calls, self.kept = 0, []

    def next_call(self):
        self.calls += 1

    def keep(self, name, view, dtype):
        self.kept.append((name, view.ptr, dtype))
        return "copy"


def cuda_view(ptr, shape):
    from polygraphy import cuda
    return cuda.DeviceView(ptr, shape, np.dtype(np.float32))  # never read here


def runner_for(inputs, outputs):
    """A TensorrtRunner over a plan with these inputs, whose polygraphy runner returns `outputs`."""
    runner = TensorrtRunner(load_engine=None, name="graph")
    runner.runner = PolygraphyRunner(outputs)
    runner.use_signature({"inputs": [(n, np.float32, [-1]) for n in inputs],
                          "outputs": [(n, np.float32, [-1]) for n in outputs]})
    return runner


def test_a_prefill_segment_hands_out_its_own_buffers_without_a_copy():
    logits = np.arange(6, dtype=np.float32)
    runner = runner_for(["prefix_embeds"], {"present.0.key": cuda_view(4096, (1, 2, 5, 4)), "logits": HostOutput(logits)})
    assert runner.kv is None  # decode reads these before the next request's prefill overwrites them
    out = runner.infer({"prefix_embeds": np.zeros(3, np.float32)})
    cache = out["present.0.key"]
    from polygraphy.datatype import DataType
    assert type(cache) is CacheView and (cache.ptr, cache.shape, cache.dtype) == (4096, (1, 2, 5, 4), DataType.FLOAT32)
    np.testing.assert_array_equal(out["logits"], logits)


def test_decode_copies_its_caches_because_it_is_fed_them_back():
    runner = runner_for(["inputs_embeds", "past_key_values.0.key"], {"present.0.key": cuda_view(8192, (1, 2, 6, 4))})
    assert isinstance(runner.kv, DeviceKV)
    runner.kv = RecordingKV()
    out = runner.infer({"inputs_embeds": np.zeros(3, np.float32), "past_key_values.0.key": np.zeros(3, np.float32)})
    runner.infer({"inputs_embeds": np.zeros(3, np.float32), "past_key_values.0.key": out["present.0.key"]})
    assert out == {"present.0.key": "copy"} and runner.kv.calls == 2
    assert runner.kv.kept == [("present.0.key", 8192, np.float32)] * 2


GPU_PROBLEM = cuda_device_problem()


@pytest.mark.gpu
@pytest.mark.skipif(GPU_PROBLEM is not None, reason=f"needs an NVIDIA GPU and the CUDA runtime: {GPU_PROBLEM}")
def test_kept_caches_outlive_the_runner_buffer_they_were_copied_from():
    """polygraphy overwrites its output buffer on every call; what DeviceKV kept must not change with it."""
    from polygraphy import cuda

    from engines.tensorrt.device_kv import DeviceKV
    kv = DeviceKV()
    runner_output = cuda.DeviceArray.raw((0,))
    steps, kept = [np.arange(12 + 4 * t, dtype=np.float32).reshape(1, 1, -1, 4) * (t + 1) for t in range(4)], []
    try:
        for t, host in enumerate(steps):
            runner_output.resize((host.nbytes,)).copy_from(host.view(np.uint8).ravel())
            kv.next_call()
            kept.append(kv.keep("present.0.key", runner_output.view(host.shape, np.float32), np.dtype(np.float32)))
            np.testing.assert_array_equal(kept[-1].numpy(), host)
            if t:  # the previous step's cache (this step's past) is intact though the runner buffer moved on
                np.testing.assert_array_equal(kept[-2].numpy(), steps[t - 1])
                assert kept[-1].ptr != kept[-2].ptr
        assert kept[0].shape == (1, 1, 3, 4) and kept[-1].shape == (1, 1, 6, 4)
    finally:
        kv.free()
        runner_output.free()


@pytest.mark.skipif(GPU_PROBLEM is None, reason="this host has a GPU")
def test_the_copy_benchmark_says_it_needs_a_gpu():
    from benchmarks import kv_copy_gpu as kv_copy_benchmark
    with pytest.raises(SystemExit, match="needs an NVIDIA GPU and the CUDA runtime"):
        kv_copy_benchmark.main(["--runs", "1"])
