"""TensorRT engines at run time, polygraphy style: a lazy loader (`engine_from_plan`: EngineFromBytes over
a .plan) and a runner with OnnxrtRunner's infer(feed) -> dict contract. Building is in tensorrt_build.py.

tensorrt and polygraphy.backend.trt are imported inside functions only: this module imports anywhere,
and says what is missing (TensorRT, a GPU) and how to get it when a TensorRT path is taken.
"""
import platform

import numpy as np

from engines.onnxruntime_engine import EngineInputError
from runtime.io_names import KV_PREFIX, PAST_PREFIX
from runtime.errors import EngineDirError, PruneDeployError


class TensorRTUnavailable(PruneDeployError):
    """TensorRT does not import here, or there is no NVIDIA GPU for it."""


def install_hint() -> str:
    if platform.machine() in ("aarch64", "arm64"):
        return ("On Jetson, TensorRT comes with JetPack (`sudo apt install nvidia-jetpack`, or python3-libnvinfer): use "
                "the system Python or a venv made with --system-site-packages; do not pip install tensorrt there.")
    return ("On an x86-64 host with an NVIDIA GPU and driver: `pip install tensorrt` (or this project's "
            "`pip install -e '.[gpu]'`).")


def import_tensorrt():
    try:
        import tensorrt
    except ImportError as e:
        raise TensorRTUnavailable(f"TensorRT is not installed in this Python ({e}). {install_hint()} Without a GPU, "
                                  "run the ONNX engine dir with ONNX Runtime instead (`cli.py run DIR --provider cpu`)."
                                  ) from e
    return tensorrt


def cuda_device_problem() -> str | None:
    """Why the CUDA runtime (through polygraphy's wrapper) offers no GPU here, or None when it offers one."""
    import ctypes
    try:
        from polygraphy import cuda
        count = ctypes.c_int(0)
        status = cuda.wrapper().handle.cudaGetDeviceCount(ctypes.byref(count))
    except Exception as e:  # no libcudart, or polygraphy refusing to load it
        return f"the CUDA runtime does not load: {e}"
    return None if status == 0 and count.value > 0 else f"CUDA status {status}, {count.value} device(s)"


def require_gpu():
    """TensorRT needs a GPU to build or load a plan."""
    problem = cuda_device_problem()
    if problem:
        raise TensorRTUnavailable(f"TensorRT imports but finds no NVIDIA GPU ({problem}). TensorRT engines build and "
                                  "run only on a host with an NVIDIA GPU and its driver (`nvidia-smi` lists it); without "
                                  "one, run the ONNX engine dir with ONNX Runtime (`cli.py run DIR --provider cpu`).")


def require_tensorrt():
    trt = import_tensorrt()
    require_gpu()
    return trt


def engine_from_plan(path):
    """Loader: calling it deserializes the .plan at `path` into an ICudaEngine."""
    from polygraphy.backend.common import BytesFromPath
    from polygraphy.backend.trt import EngineFromBytes
    return EngineFromBytes(BytesFromPath(str(path)))


class TensorrtRunner:
    """polygraphy's TrtRunner (dynamic shapes: it sets each input shape per call) behind OnnxrtRunner's
    contract: activate / infer(feed) -> {name: output} / deactivate.

    KV caches stay on the GPU: `present.*` come back as polygraphy DeviceViews, which the generator feeds back
    unchanged as `past_key_values.*`. Every other output (logits, kept indices, hidden states) is copied to host
    numpy, as from ONNX Runtime.
    - A runner that reads past caches (decode) is fed its own last outputs, so it keeps copies (DeviceKV), valid
      through its next call.
    - Any other runner (a prefill segment) returns views of polygraphy's own buffers, valid until its next
      call: decode reads them at its first step, long before the next request's prefill.
    """

    def __init__(self, load_engine, name: str = ""):
        self.load_engine, self.name, self.runner, self.input_names = load_engine, name, None, set()
        self.kv, self.output_dtypes = None, {}

    def activate(self):
        if self.runner is None:
            require_tensorrt()
            from polygraphy.backend.trt import TrtRunner
            self.runner = TrtRunner(self.load_engine, name=self.name or None)
            self.runner.activate()
            self.use_signature(self.io_signature())
        return self

    def use_signature(self, signature: dict):
        """Input names and output dtypes from the plan; KV copies only where the plan reads past caches."""
        from engines.device_kv import DeviceKV
        self.input_names = {name for name, _, _ in signature["inputs"]}
        self.output_dtypes = {name: np.dtype(dtype) for name, dtype, _ in signature["outputs"]}
        self.kv = DeviceKV() if any(name.startswith(PAST_PREFIX) for name in self.input_names) else None

    def deactivate(self):
        if self.runner is not None:
            if self.kv is not None:
                self.kv.free()
            self.runner.deactivate()
            self.runner = None

    def __enter__(self):
        return self.activate()

    def __exit__(self, *exc):
        self.deactivate()

    def io_signature(self) -> dict:
        """{"inputs"|"outputs": [(name, numpy dtype, shape with -1 for dynamic dims)]}"""
        import tensorrt as trt
        engine = self.activate().runner.engine
        sig = {"inputs": [], "outputs": []}
        for i in range(engine.num_io_tensors):
            name = engine.get_tensor_name(i)
            kind = "inputs" if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT else "outputs"
            sig[kind].append((name, trt.nptype(engine.get_tensor_dtype(name)), list(engine.get_tensor_shape(name))))
        return sig

    def infer(self, feed: dict) -> dict:
        """feed: numpy arrays, or DeviceViews (KV caches a TensorrtRunner returned), which stay on the GPU."""
        from polygraphy.exception import PolygraphyException
        self.activate()
        missing, extra = sorted(self.input_names - set(feed)), sorted(set(feed) - self.input_names)
        if missing or extra:
            raise EngineInputError(f"graph {self.name}: missing inputs {missing}, unexpected inputs {extra}")
        feed = {k: np.ascontiguousarray(v) if isinstance(v, np.ndarray) else v for k, v in feed.items()}  # slices are views
        try:
            outputs = self.runner.infer(feed, copy_outputs_to_host=False)
        except PolygraphyException as e:  # shapes outside the plan's profile, wrong dtypes
            raise EngineInputError(f"graph {self.name}: {e}. Shapes must lie within the profile the plan was built "
                                   "with (manifest engines.<graph>.profiles); rebuild with a larger range if needed") from e
        if self.kv is not None:
            self.kv.next_call()
        return {name: self.cache(name, view) if name.startswith(KV_PREFIX) else view.numpy()
                for name, view in outputs.items()}

    def cache(self, name: str, view):
        """A `present.*` output as the generator carries it: a quiet view, copied only by a decode runner."""
        from engines.device_kv import CacheView
        dtype = self.output_dtypes[name]
        return self.kv.keep(name, view, dtype) if self.kv is not None else CacheView(view.ptr, tuple(view.shape), dtype)


def open_tensorrt(manifest) -> dict[str, TensorrtRunner]:
    """Runners for every graph of a built engine dir, each checked against the manifest's I/O record."""
    from runtime.engine_set import check_signature
    require_tensorrt()
    runners = {}
    for name, record in manifest["graphs"].items():
        plan = manifest["engines"].get(name)
        if plan is None:
            raise EngineDirError(f"graph {name} has no TensorRT plan in the manifest's engines; build the dir again")
        runner = TensorrtRunner(engine_from_plan(manifest.path(plan["file"])), name)
        try:
            signature = runner.io_signature()
        except Exception as e:  # plans are tied to the GPU and TensorRT version that built them
            raise EngineDirError(f"plan {plan['file']} for graph {name} does not load: {e}. A plan runs only with the "
                                 "TensorRT version and GPU it was built on: build it again here (`cli.py build`)") from e
        check_signature(name, record, signature)
        runners[name] = runner
    return runners
