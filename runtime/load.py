"""One call from an engine dir to a ready Generator (manifest checked, engines checked against it)."""
from runtime.engine_set import open_onnxruntime
from runtime.errors import EngineDirError
from runtime.generator import Generator
from runtime.manifest import load_manifest

PROVIDERS = {"cpu": ["CPUExecutionProvider"], "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
             "tensorrt": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]}


def open_engine_dir(engine_dir, provider: str | None = None, verify_checksums: bool = True) -> Generator:
    """provider: cpu | cuda | tensorrt, or None for the best available (TensorRT, CUDA, then CPU).
    A dir built by `cli.py build` (manifest lists `engines`) runs its TensorRT plans natively instead."""
    manifest = load_manifest(engine_dir, verify_checksums)
    if "engines" in manifest.data:
        if provider not in (None, "tensorrt"):
            raise EngineDirError(f"{engine_dir} holds TensorRT plans (made by `cli.py build`), which run on TensorRT "
                                 f"only; for --provider {provider} run the ONNX dir it was built from "
                                 f"({manifest.data.get('built_from', 'its source')})")
        from engines.tensorrt_engine import open_tensorrt  # lazy: tensorrt is imported only where plans run
        return Generator(manifest, open_tensorrt(manifest))
    return Generator(manifest, open_onnxruntime(manifest, PROVIDERS.get(provider) if provider else None))
