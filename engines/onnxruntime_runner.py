"""ONNX Runtime engines, polygraphy style: a lazy loader (`SessionFromOnnx`) and a runner with
activate / infer / deactivate that checks its feed against the graph before running it."""
import numpy as np

from engines.errors import EngineInputError
from engines.kv_names import KV_PREFIX, in_place_pairs

ORT_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(int64)": np.int64,
             "tensor(int32)": np.int32, "tensor(bool)": np.bool_}
PREFERRED_PROVIDERS = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
PROVIDERS = {"cpu": ["CPUExecutionProvider"], "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
             "tensorrt": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]}


def pick_providers(requested: list[str] | None = None) -> list[str]:
    import onnxruntime as ort
    available = ort.get_available_providers()
    if requested:
        missing = [p for p in requested if p not in available]
        if missing:
            raise EngineInputError(f"execution providers {missing} are not available here (available: {available}); "
                                   "install onnxruntime-gpu on a GPU host or choose --provider cpu")
        return requested
    return [p for p in PREFERRED_PROVIDERS if p in available]


class SessionFromOnnx:
    """Loader: calling it builds an InferenceSession for the graph at `path`.

    `initializers` ({name: contiguous numpy array}) are used in place of the graph's own weights, without a copy:
    ONNX Runtime reads them where they are (export validates each graph on the memory torch already holds). It
    copies them as soon as it optimizes the graph (fusions, constant folding of fp16 casts, prepacking), so such a
    session runs unoptimized."""

    def __init__(self, path, providers: list[str] | None = None, threads: int = 0, qdq: str | None = None,
                 initializers: dict | None = None):
        """qdq: the precision of the graph's quantization (int8, int4, fp8), if it has any."""
        self.path, self.providers, self.threads, self.qdq = str(path), providers, threads, qdq
        self.initializers = initializers or {}

    def __call__(self):
        import onnxruntime as ort
        options = ort.SessionOptions()
        options.log_severity_level = 3
        if self.initializers:
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
            options.add_session_config_entry("session.disable_prepacking", "1")
            self.values = {name: ort.OrtValue.ortvalue_from_numpy(a) for name, a in self.initializers.items()}
            for name, value in self.values.items():  # the session reads this memory for its life
                options.add_initializer(name, value)
        # A pipeline runs many sessions in turn; threads left spinning after one run steal the cores the
        # next session needs (seen: vision 42 ms alone, 137 ms in the pipeline on 2 cores).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        if self.threads:
            options.intra_op_num_threads = self.threads
        # A QDQ graph gives each consumer of an activation its own Q/DQ pair; ORT's common-subexpression pass
        # would merge them back, and a shared Q blocks the int8 MatMul fusion (q/k/v, gate/up stay float
        # MatMuls over dequantized weights: 64 of 224 GEMMs fused in the bench decode graph, 224 without it).
        disabled = ["CommonSubexpressionElimination"] if self.qdq else []
        if self.qdq == "fp8":
            # The CPU's Q/DQ fusions are integer kernels, and they take e4m3 pairs for int8 ones (the session is
            # refused): dequantize each weight and activation, then run float MatMuls.
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        return ort.InferenceSession(self.path, options, providers=pick_providers(self.providers),
                                    disabled_optimizers=disabled)


def kv_device_for(providers: list[str]) -> str | None:
    """Where a session's KV caches should stay between calls: on the GPU when it runs on CUDA or TensorRT."""
    return "cuda" if providers and providers[0] in ("TensorrtExecutionProvider", "CUDAExecutionProvider") else None


class OnnxrtRunner:
    """kv_device: "auto" keeps `present.*` outputs on the GPU as OrtValues when the session runs there (fed
    back as the next step's past through IOBinding, never copied to the host); a device name forces it
    ("cpu" exercises the same path without a GPU); None returns numpy for every output.

    A present output that is its past input's buffer (kv_names.in_place_pairs) is bound to that very buffer, so
    ONNX Runtime writes the new slots in place: a numpy cache is wrapped without a copy and comes back as the same
    array, an OrtValue comes back as itself."""

    def __init__(self, load_session, name: str = "", kv_device: str | None = "auto"):
        self.load_session, self.name, self.session, self.kv_device = load_session, name, None, kv_device
        self.in_place = {}

    def activate(self):
        if self.session is None:
            self.session = self.load_session()
            if self.kv_device == "auto":
                self.kv_device = kv_device_for(self.session.get_providers())
            self.in_place = in_place_pairs([a.name for a in self.session.get_inputs()],
                                           [o.name for o in self.session.get_outputs()])
        return self

    def deactivate(self):
        self.session = None

    def __enter__(self):
        return self.activate()

    def __exit__(self, *exc):
        self.deactivate()

    def io_signature(self) -> dict:
        """{"inputs"|"outputs": [(name, numpy dtype, shape with dim names or ints)]}"""
        self.activate()
        def sig(args):
            return [(a.name, ORT_TYPES.get(a.type, a.type), list(a.shape)) for a in args]
        return {"inputs": sig(self.session.get_inputs()), "outputs": sig(self.session.get_outputs())}

    def infer(self, feed: dict) -> dict:
        """feed: numpy arrays, or OrtValues (KV caches this kind of runner returned)."""
        self.activate()
        self._check(feed)
        names = [o.name for o in self.session.get_outputs()]
        if self.kv_device is None and not self.in_place:
            return dict(zip(names, self.session.run(names, feed)))
        return self._infer_bound(feed, names)

    def _infer_bound(self, feed: dict, names: list[str]) -> dict:
        """IOBinding: OrtValue inputs are used where they are, in-place caches are bound as their own outputs, other
        `present.*` are allocated by ORT on kv_device (fresh each call, so a cache stays valid while the generator
        holds it), other outputs come to numpy."""
        import onnxruntime as ort
        binding = self.session.io_binding()
        buffers = set(self.in_place.values())
        host, values = {}, {}  # both kept alive until the run
        for name, value in feed.items():
            if isinstance(value, ort.OrtValue):
                values[name] = value
            elif name in buffers:
                host[name] = np.ascontiguousarray(value)
                on_cpu = self.kv_device in (None, "cpu")  # a CPU OrtValue over numpy shares its memory
                values[name] = (ort.OrtValue.ortvalue_from_numpy(host[name]) if on_cpu else
                                ort.OrtValue.ortvalue_from_numpy(host[name], self.kv_device, 0))
            else:
                host[name] = np.ascontiguousarray(value)
                binding.bind_cpu_input(name, host[name])
                continue
            binding.bind_ortvalue_input(name, values[name])
        for name in names:
            past = self.in_place.get(name)
            if past is not None:
                binding.bind_ortvalue_output(name, values[past])
            else:
                binding.bind_output(name, self.kv_device if self.kv_device and name.startswith(KV_PREFIX) else "cpu")
        self.session.run_with_iobinding(binding)
        results = {}
        for name, value in zip(names, binding.get_outputs()):
            past = self.in_place.get(name)
            if past is None:
                results[name] = value if self.kv_device and name.startswith(KV_PREFIX) else value.numpy()
            elif self.kv_device is None and past in host:  # numpy stays numpy: the fed buffer, written in place
                results[name] = host[past]
            else:  # the OrtValue fed or made here: it holds (and keeps alive) the memory written
                results[name] = values[past]
        return results

    def _check(self, feed):
        expected = {a.name: a for a in self.session.get_inputs()}
        missing, extra = sorted(set(expected) - set(feed)), sorted(set(feed) - set(expected))
        if missing or extra:
            raise EngineInputError(f"graph {self.name}: missing inputs {missing}, unexpected inputs {extra}")
        for name, arg in expected.items():
            (value_dtype, shape), dtype = dtype_and_shape(feed[name]), ORT_TYPES.get(arg.type)
            if dtype is not None and value_dtype != dtype:
                raise EngineInputError(f"graph {self.name}: input {name} must be {np.dtype(dtype)}, got {value_dtype}")
            if len(shape) != len(arg.shape) or any(isinstance(d, int) and d != s for d, s in zip(arg.shape, shape)):
                raise EngineInputError(f"graph {self.name}: input {name} has shape {shape}, the graph accepts {arg.shape}")


def dtype_and_shape(value) -> tuple[np.dtype, list[int]]:
    """Of a numpy array or an OrtValue."""
    if hasattr(value, "data_type"):  # OrtValue
        return np.dtype(ORT_TYPES.get(value.data_type(), object)), list(value.shape())
    return value.dtype, list(value.shape)
