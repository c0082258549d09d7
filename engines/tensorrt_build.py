"""`cli.py build`: an exported engine dir -> a TensorRT engine dir, one .plan per graph.

The new dir holds manifest.json (the same graph I/O contract, plus `engines: {graph: {file, precision,
profiles}}`), the tokenizer files and the plans; it is written to a temp dir and renamed at the end,
so a failed build leaves nothing. Plans are tied to the GPU and TensorRT version that built them.
Precision, by TensorRT major version:
- 10.x (weakly typed; JetPack's): fp16/bf16 builder flags, with LayerNorm, softmax and reductions pinned
  to fp32 under obey_precision_constraints; int8/fp8 flags over Q/DQ graphs.
- 11.x (strongly typed only: the fp16/bf16/int8 flags and precision constraints are gone): fp32, or
  int8/fp8 from Q/DQ graphs; fp16/bf16 need graphs converted to that type first.
"""
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import onnx

from engines.tensorrt_check import check_engine_dir, format_problems
from engines.tensorrt_engine import require_tensorrt
from engines.tensorrt_profiles import ProfileConfig, manifest_profiles
from runtime.errors import ConfigError, EngineDirError, PruneDeployError
from runtime.manifest import MANIFEST, file_record, load_manifest

PRECISIONS = ("fp32", "fp16", "bf16", "int8", "fp8")
FP32_LAYER_TYPES = ("NORMALIZATION", "SOFTMAX", "REDUCE")  # LayerNorm, softmax, RMSNorm's mean of squares
QDQ_OPS = {"QuantizeLinear", "DequantizeLinear"}


class EngineBuildError(PruneDeployError):
    """TensorRT refused a graph while parsing or building it."""


@dataclass(frozen=True)
class BuildConfig:
    precision: str = "fp16"
    workspace_mb: int = 4096
    max_batch: int = 4
    timing_cache: Path | None = None  # default: one file per TensorRT version in the prunevlm cache dir

    def __post_init__(self):
        if self.precision not in PRECISIONS:
            raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.workspace_mb < 1:
            raise ConfigError(f"--workspace is TensorRT's scratch memory in MiB and must be at least 1, got "
                              f"{self.workspace_mb}")


def default_out(src) -> Path:
    src = Path(src)
    return src.parent / f"{src.name}.trt"


def default_timing_cache(trt_version: str) -> Path:
    """Shared by every build on this host: tactic timings measured once are reused (per TensorRT version)."""
    root = Path(os.environ.get("PRUNEVLM_CACHE") or Path.home() / ".cache" / "prunevlm")
    return root / f"tensorrt-{trt_version}.timing-cache"


def major_version(trt) -> int:
    return int(trt.__version__.split(".")[0])


def config_options(precision: str, trt_major: int, quantized: bool) -> tuple[dict, bool]:
    """(CreateConfig keyword arguments, whether to pin norms to fp32) for a precision on a TensorRT major."""
    if precision not in PRECISIONS:
        raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision in ("int8", "fp8") and not quantized:
        raise ConfigError(f"--precision {precision} needs graphs with Q/DQ nodes (TensorRT takes explicit quantization "
                          "only) and this engine dir has none: quantize it first (calibration/quantize.py writes INT8 "
                          "Q/DQ graphs), or build fp16/fp32")
    if trt_major >= 11:
        if precision in ("fp16", "bf16"):
            raise ConfigError(f"TensorRT {trt_major}.x builds strongly typed networks only (it removed the fp16/bf16 "
                              "builder flags), so --precision fp16/bf16 needs graphs already converted to that type; "
                              "build --precision fp32, or use TensorRT 10.x (JetPack's), or convert the graphs first "
                              "(ModelOpt AutoCast)")
        return {}, False  # strong typing: the graph's own types (and Q/DQ) decide
    if precision in ("fp16", "bf16"):
        return {precision: True, "precision_constraints": "obey"}, True
    return ({precision: True} if precision != "fp32" else {}), False


def keep_norms_in_fp32(network):
    """PostprocessNetwork step: LayerNorm, softmax and reductions (RMSNorm's mean of squares overflows fp16
    above |x| ~ 256) compute and emit fp32; with obey_precision_constraints TensorRT must honour it."""
    import tensorrt as trt
    types = {getattr(trt.LayerType, t) for t in FP32_LAYER_TYPES if hasattr(trt.LayerType, t)}
    floats = {trt.float32, trt.float16, getattr(trt, "bfloat16", trt.float16)}
    for layer in network:
        if layer.type in types and all(layer.get_output(i).dtype in floats for i in range(layer.num_outputs)):
            layer.precision = trt.float32
            for i in range(layer.num_outputs):
                layer.set_output_type(i, trt.float32)


def plan_loader(onnx_path, profile: dict, options: dict, pin_norms: bool, workspace_mb: int, timing_cache):
    """Loader chain ONNX file -> serialized plan, composed lazily (nothing runs until it is called)."""
    import tensorrt as trt
    from polygraphy.backend.trt import (CreateConfig, EngineBytesFromNetwork, NetworkFromOnnxPath, PostprocessNetwork,
                                        Profile)
    network = NetworkFromOnnxPath(str(onnx_path))
    if pin_norms:
        network = PostprocessNetwork(network, keep_norms_in_fp32, "keep norms in fp32")
    trt_profile = Profile()
    for name, (low, opt, high) in profile.items():
        trt_profile.add(name, low, opt, high)
    config = CreateConfig(profiles=[trt_profile], load_timing_cache=str(timing_cache),
                          memory_pool_limits={trt.MemoryPoolType.WORKSPACE: workspace_mb << 20}, **options)
    return EngineBytesFromNetwork(network, config, save_timing_cache=str(timing_cache))


def is_quantized(manifest) -> bool:
    """Whether any graph carries Q/DQ nodes (calibration writes them; TensorRT takes int8/fp8 only from them)."""
    for name in manifest["graphs"]:
        model = onnx.load(str(manifest.graph_file(name)), load_external_data=False)
        if any(node.op_type in QDQ_OPS for node in model.graph.node):
            return True
    return False


def build_engine_dir(src, out=None, cfg: BuildConfig = BuildConfig(), progress=print) -> Path:
    """Builds one plan per graph of the exported dir `src` into a new engine dir `out` (default: <src>.trt)."""
    manifest = load_manifest(src)
    if "engines" in manifest.data:
        raise EngineDirError(f"{src} is already a TensorRT engine dir; build from the exported ONNX dir instead")
    out = Path(out) if out else default_out(src)
    if out.exists():
        raise EngineDirError(f"{out} already exists; remove it or choose another --out")
    profile_cfg = ProfileConfig(max_batch=cfg.max_batch)
    trt = require_tensorrt()
    quantized = cfg.precision in ("int8", "fp8") and is_quantized(manifest)
    options, pin_norms = config_options(cfg.precision, major_version(trt), quantized)
    version = tuple(int(p) for p in trt.__version__.split(".")[:3] if p.isdigit())
    errors = [p for p in check_engine_dir(src, version) if p.kind == "error"]
    if errors:
        raise EngineDirError(f"{src} has graphs TensorRT will refuse:\n{format_problems(errors, src)}")
    profiles = manifest_profiles(manifest.data, profile_cfg)
    cache = cfg.timing_cache or default_timing_cache(trt.__version__)
    cache.parent.mkdir(parents=True, exist_ok=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        data = _copy_non_graph_files(manifest, tmp)
        data["engines"] = {}
        for i, (name, profile) in enumerate(profiles.items(), 1):
            progress(f"[build] {i}/{len(profiles)} {name}: {cfg.precision}, {len(profile)} dynamic inputs")
            data["engines"][name] = _build_plan(manifest, name, profile, options, pin_norms, cfg, cache, tmp)
            data["files"][data["engines"][name]["file"]] = file_record(tmp / data["engines"][name]["file"])
        data["versions"] = {**data.get("versions", {}), "tensorrt": trt.__version__}
        data["built_from"] = str(Path(src).resolve())
        (tmp / MANIFEST).write_text(json.dumps(data, indent=1))
        os.chmod(tmp, 0o755)  # mkdtemp makes it owner-only
        os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    progress(f"[build] wrote {out}")
    return out


def _copy_non_graph_files(manifest, dest: Path) -> dict:
    """Copies tokenizers and every other listed file except the ONNX graphs; returns the new manifest data."""
    graph_files = {rec[k] for rec in manifest["graphs"].values() for k in ("file", "data") if rec.get(k)}
    data = json.loads(json.dumps(manifest.data))
    data["files"] = {}
    for rel, record in manifest["files"].items():
        if rel in graph_files:
            continue
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(manifest.path(rel), dest / rel)
        data["files"][rel] = record
    return data


def _build_plan(manifest, name, profile, options, pin_norms, cfg: BuildConfig, cache: Path, dest: Path) -> dict:
    from polygraphy.exception import PolygraphyException
    plan = f"{name}.plan"
    try:
        (dest / plan).write_bytes(plan_loader(manifest.graph_file(name), profile, options, pin_norms,
                                              cfg.workspace_mb, cache)())
    except PolygraphyException as e:
        raise EngineBuildError(f"TensorRT could not build graph {name} ({manifest['graphs'][name]['file']}): {e}. "
                               "TensorRT's log above names the layer; `cli.py check` lists what it refuses, and a "
                               "larger --workspace helps when tactics ran out of memory") from e
    shapes = {k: {"min": list(v[0]), "opt": list(v[1]), "max": list(v[2])} for k, v in profile.items()}
    return {"file": plan, "precision": cfg.precision, "profiles": [shapes]}
