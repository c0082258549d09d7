"""The runners of an engine dir, one per graph: ONNX Runtime sessions over its graphs, or TensorRT runners over
the plans `cli.py build` made. Each is opened and its I/O checked against the manifest's record of its graph."""
from engines.errors import EngineError
from engines.onnxruntime_runner import OnnxrtRunner, SessionFromOnnx
from engines.signature import signature_problems
from engines.tensorrt.availability import require_tensorrt
from engines.tensorrt.runner import TensorrtRunner, engine_from_plan
from runtime.errors import EngineDirError
from runtime.manifest import GraphRecord, Manifest

REBUILD = "A plan runs only with the TensorRT version and GPU it was built on: build it again here (`cli.py build`)."


def open_onnxruntime(manifest: Manifest, providers: list[str] | None = None,
                     kv_device: str | None = "auto", threads: int = 0) -> dict[str, OnnxrtRunner]:
    """kv_device: see OnnxrtRunner ("auto": KV caches stay on the GPU when the sessions run there); threads: intra-op
    threads per session (0: ONNX Runtime's default, one per physical core)."""
    q = manifest.quantization or {}
    runners, quantized = {}, set(q.get("graphs", []))
    for name, record in manifest.graphs.items():
        loader = SessionFromOnnx(manifest.graph_file(name), providers, threads,
                                 qdq=q["precision"] if name in quantized else None)
        runner = OnnxrtRunner(loader, name, kv_device)
        check_engine(name, record, runner, record.file, "Export the engine dir again.")
        runners[name] = runner
    return runners


def open_tensorrt(manifest: Manifest) -> dict[str, TensorrtRunner]:
    require_tensorrt()
    runners = {}
    for name, record in manifest.graphs.items():
        plan = manifest.engines[name]
        runner = TensorrtRunner(engine_from_plan(manifest.path(plan.file)), name)
        check_engine(name, record, runner, plan.file, REBUILD)
        runners[name] = runner
    return runners


def check_engine(name: str, record: GraphRecord, runner, file: str, fix: str):
    """The engine loads and its I/O is what the manifest records; else an EngineDirError naming each difference."""
    try:
        signature = runner.io_signature()
    except EngineError:
        raise
    except Exception as e:  # the provider's own message says what is wrong with the file
        raise EngineDirError(f"graph {name} ({file}) does not load: {e}. {fix}") from e
    problems = signature_problems(record.signature(), signature)
    if problems:
        raise EngineDirError(f"graph {name} ({file}) does not match the manifest: " + "; ".join(problems)
                             + ". The engine file was replaced or the manifest edited: export again.")
