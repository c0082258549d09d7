"""One call from an engine dir to a ready Generator (manifest checked, engines checked against it)."""
from runtime.engine_set import open_onnxruntime
from runtime.generator import Generator
from runtime.manifest import load_manifest

PROVIDERS = {"cpu": ["CPUExecutionProvider"], "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
             "tensorrt": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]}


def open_engine_dir(engine_dir, provider: str | None = None, verify_checksums: bool = True) -> Generator:
    """provider: cpu | cuda | tensorrt, or None for the best available (TensorRT, CUDA, then CPU)."""
    manifest = load_manifest(engine_dir, verify_checksums)
    return Generator(manifest, open_onnxruntime(manifest, PROVIDERS.get(provider) if provider else None))
