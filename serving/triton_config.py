"""config.pbtxt of the repository's models, written as text and read back with Triton's own schema
(tritonclient's model_config_pb2), plus the checks the schema cannot make: decoupled only on the Python model,
every engine model's tensors exactly the manifest's record of its graph."""
import numpy as np

from runtime.errors import PruneDeployError
from runtime.manifest import GraphRecord
from serving.triton_io import INPUTS, OUTPUTS, TensorSpec

TRITON_TYPES = {"float32": "TYPE_FP32", "float16": "TYPE_FP16", "bfloat16": "TYPE_BF16", "float64": "TYPE_FP64",
                "int64": "TYPE_INT64", "int32": "TYPE_INT32", "int16": "TYPE_INT16", "int8": "TYPE_INT8",
                "uint8": "TYPE_UINT8", "bool": "TYPE_BOOL", "bytes": "TYPE_STRING"}
PLATFORMS = {"onnx": ("onnxruntime_onnx", "model.onnx"), "plan": ("tensorrt_plan", "model.plan")}


class RepoError(PruneDeployError):
    """A model repository that cannot be written as asked, or one whose configs are wrong."""


def triton_type(dtype: str) -> str:
    if dtype not in TRITON_TYPES:
        raise RepoError(f"dtype {dtype!r} has no Triton data type (known: {sorted(TRITON_TYPES)})")
    return TRITON_TYPES[dtype]


def _dims(shape) -> list[int]:
    return [d if isinstance(d, int) else -1 for d in shape]  # symbolic dims are variable: -1


def _tensor(name: str, dtype: str, shape, optional: bool = False) -> str:
    dims = ", ".join(map(str, _dims(shape)))
    return f'  {{ name: "{name}" data_type: {triton_type(dtype)} dims: [ {dims} ]{" optional: true" if optional else ""} }}'


def _tensors(kind: str, rows: list[str]) -> str:
    return f"{kind} [\n" + ",\n".join(rows) + "\n]\n"


def engine_config(name: str, record: GraphRecord, kind: str, instances: int) -> str:
    """One graph as a Triton model. max_batch_size 0: our graphs carry their own batch axis, which Triton must
    pass through rather than add."""
    platform = PLATFORMS[kind][0]
    return (f'name: "{name}"\nplatform: "{platform}"\nmax_batch_size: 0\n'
            + _tensors("input", [_tensor(t.name, t.dtype, t.shape) for t in record.inputs])
            + _tensors("output", [_tensor(t.name, t.dtype, t.shape) for t in record.outputs])
            + f"instance_group [ {{ kind: KIND_GPU count: {instances} }} ]\n")


def _spec_dtype(spec: TensorSpec) -> str:
    return "bytes" if spec.dtype is bytes else np.dtype(spec.dtype).name


def python_config(name: str, parameters: dict, kind: str, instances: int) -> str:
    """The orchestrating model: decoupled (a response per token), serving/triton_io.py's tensors."""
    params = ",\n".join(f'  {{ key: "{k}" value: {{ string_value: "{v}" }} }}' for k, v in parameters.items())
    return (f'name: "{name}"\nbackend: "python"\nmax_batch_size: 0\nmodel_transaction_policy {{ decoupled: true }}\n'
            + _tensors("input", [_tensor(s.name, _spec_dtype(s), s.shape, s.optional) for s in INPUTS])
            + _tensors("output", [_tensor(s.name, _spec_dtype(s), s.shape) for s in OUTPUTS])
            + f"instance_group [ {{ kind: {kind} count: {instances} }} ]\n"
            + f"parameters [\n{params}\n]\n")


def parse_config(text: str, where: str = "config.pbtxt"):
    """Triton's ModelConfig of the text; RepoError if the schema refuses it (an unknown field, enum or syntax)."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2 as mc
    try:
        return text_format.Parse(text, mc.ModelConfig())
    except text_format.ParseError as e:
        raise RepoError(f"{where} does not parse as a Triton model config: {e}") from e


def engine_problems(config, record: GraphRecord, graph: str) -> list[str]:
    """What in an engine model's config differs from the manifest's record of its graph."""
    from tritonclient.grpc import model_config_pb2 as mc
    problems = [f"engine model {config.name} is decoupled; only the Python model streams"] \
        if config.model_transaction_policy.decoupled else []
    for kind, tensors in (("input", record.inputs), ("output", record.outputs)):
        got = [(t.name, mc.DataType.Name(t.data_type), list(t.dims)) for t in getattr(config, kind)]
        want = [(t.name, triton_type(t.dtype), _dims(t.shape)) for t in tensors]
        if got != want:
            problems.append(f"engine model {config.name}'s {kind}s {got} are not graph {graph}'s {want}")
    return problems


def python_problems(config) -> list[str]:
    problems = [] if config.model_transaction_policy.decoupled else \
        [f"Python model {config.name} is not decoupled: it streams a response per token"]
    names = [t.name for t in config.input], [t.name for t in config.output]
    if names != ([s.name for s in INPUTS], [s.name for s in OUTPUTS]):
        problems.append(f"Python model {config.name}'s tensors {names} are not serving/triton_io.py's")
    return problems
