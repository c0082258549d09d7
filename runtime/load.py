"""One call from an engine dir to a ready Generator: the manifest checked, each engine opened and checked."""
from engines.onnxruntime_runner import PROVIDERS
from runtime.errors import EngineDirError
from runtime.generator import Generator
from runtime.manifest import load_manifest
from runtime.runners import open_onnxruntime, open_tensorrt


def open_engine_dir(engine_dir, provider: str | None = None, kv_device: str | None = "auto") -> Generator:
    """provider: cpu | cuda | tensorrt, or None for the best available (TensorRT, CUDA, then CPU). kv_device: where
    ONNX Runtime keeps the KV caches ("auto": on the GPU the sessions run on; None: host numpy, as in-flight
    batching needs).
    A dir built by `cli.py build` (the manifest lists `engines`) runs its TensorRT plans natively instead."""
    manifest = load_manifest(engine_dir)
    if manifest.engines is not None:
        if provider not in (None, "tensorrt"):
            raise EngineDirError(f"{engine_dir} holds TensorRT plans (made by `cli.py build`), which run on TensorRT "
                                 f"only; for --provider {provider} run the ONNX dir it was built from "
                                 f"({manifest.built_from or 'its source'})")
        return Generator(manifest, open_tensorrt(manifest))
    return Generator(manifest, open_onnxruntime(manifest, PROVIDERS.get(provider) if provider else None, kv_device))
