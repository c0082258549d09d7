"""`cli.py check DIR`: would TensorRT's parser take every graph of an exported engine dir? Runs without TensorRT
(engines/tensorrt/check.py's rules, graphs read without their weights), with the dim ranges from the
manifest."""
from engines.tensorrt.check import check_onnx_file
from engines.tensorrt.rules import Problem
from engines.tensorrt.version import installed_version
from runtime.errors import EngineDirError
from runtime.manifest import read_manifest


def check_engine_dir(engine_dir, trt_version: tuple | None | str = "installed") -> list[Problem]:
    """Problems of every graph in the engine dir's manifest. trt_version: "installed" detects it."""
    manifest = read_manifest(engine_dir)
    if manifest.engines is not None:
        raise EngineDirError(f"{engine_dir} is already built for TensorRT (its manifest lists engines); check the "
                             "exported ONNX engine dir it was built from instead")
    version = installed_version() if trt_version == "installed" else trt_version
    ranged = {d for record in manifest.graphs.values() for d in record.dims}  # dim names mean the same in every graph
    problems = [p for name in manifest.graphs for p in check_onnx_file(name, manifest.graph_file(name), version, ranged)]
    return problems + precision_notes(manifest.dtype, version)


def precision_notes(dtype: str, version: tuple | None) -> list[Problem]:
    """TensorRT 11 builds only what a graph's types say: from fp32 graphs, fp32 plans (or int8/fp8 via Q/DQ)."""
    if dtype != "fp32" or version is None or version[0] < 11:
        return []
    return [Problem("*", "strongly-typed", f"TensorRT {version[0]}.x builds these fp32 graphs as fp32 plans only (no "
                    "fp16/bf16 builder flags): export again with --dtype fp16 for fp16 plans", kind="warning")]
