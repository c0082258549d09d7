"""ONNX Runtime engines, polygraphy style: a lazy loader (`SessionFromOnnx`) and a runner with
activate / infer / deactivate that checks its feed against the graph before running it."""
import numpy as np

from runtime.errors import PruneDeployError

ORT_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(int64)": np.int64,
             "tensor(int32)": np.int32, "tensor(bool)": np.bool_}
PREFERRED_PROVIDERS = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]


class EngineInputError(PruneDeployError):
    """A feed that does not fit the graph (names, dtypes, ranks or fixed dims), or a missing provider."""


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
    """Loader: calling it builds an InferenceSession for the graph at `path`."""

    def __init__(self, path, providers: list[str] | None = None, threads: int = 0, qdq: bool = False):
        self.path, self.providers, self.threads, self.qdq = str(path), providers, threads, qdq

    def __call__(self):
        import onnxruntime as ort
        options = ort.SessionOptions()
        options.log_severity_level = 3
        # A pipeline runs many sessions in turn; threads left spinning after one run steal the cores the
        # next session needs (seen: vision 42 ms alone, 137 ms in the pipeline on 2 cores).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        if self.threads:
            options.intra_op_num_threads = self.threads
        # A QDQ graph gives each consumer of an activation its own Q/DQ pair; ORT's common-subexpression pass
        # would merge them back, and a shared Q blocks the int8 MatMul fusion (q/k/v, gate/up stay float
        # MatMuls over dequantized weights: 64 of 224 GEMMs fused in the bench decode graph, 224 without it).
        disabled = ["CommonSubexpressionElimination"] if self.qdq else []
        return ort.InferenceSession(self.path, options, providers=pick_providers(self.providers),
                                    disabled_optimizers=disabled)


class OnnxrtRunner:
    def __init__(self, load_session, name: str = ""):
        self.load_session, self.name, self.session = load_session, name, None

    def activate(self):
        if self.session is None:
            self.session = self.load_session()
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

    def infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.activate()
        self._check(feed)
        names = [o.name for o in self.session.get_outputs()]
        return dict(zip(names, self.session.run(names, feed)))

    def _check(self, feed):
        expected = {a.name: a for a in self.session.get_inputs()}
        missing, extra = sorted(set(expected) - set(feed)), sorted(set(feed) - set(expected))
        if missing or extra:
            raise EngineInputError(f"graph {self.name}: missing inputs {missing}, unexpected inputs {extra}")
        for name, arg in expected.items():
            value, dtype = feed[name], ORT_TYPES.get(arg.type)
            if dtype is not None and value.dtype != dtype:
                raise EngineInputError(f"graph {self.name}: input {name} must be {np.dtype(dtype)}, got {value.dtype}")
            if len(value.shape) != len(arg.shape) or any(
                    isinstance(d, int) and d != s for d, s in zip(arg.shape, value.shape)):
                raise EngineInputError(f"graph {self.name}: input {name} has shape {list(value.shape)}, "
                                       f"the graph accepts {arg.shape}")
