"""`cli.py build`: an exported engine dir -> a TensorRT engine dir, one .plan per graph.

The new dir holds the same manifest (the graph I/O contract, plus `engines: {graph: {file, precision,
profiles}}`), the tokenizer files and the plans, written through the staged engine-dir write. Plans are tied to
the GPU and TensorRT version that built them.
"""
import dataclasses
import shutil
from dataclasses import dataclass
from pathlib import Path

from engines.tensorrt.availability import require_tensorrt
from engines.tensorrt.build import PRECISIONS, build_plan, config_options, has_qdq
from engines.tensorrt.check import format_problems
from engines.tensorrt.version import version_of
from runtime.cache import cache_root
from runtime.engine_dir import check_destination, staged_engine_dir
from runtime.errors import ConfigError, EngineDirError
from runtime.manifest import Manifest, PlanRecord, load_manifest, save_manifest
from runtime.tensorrt.check import check_engine_dir
from runtime.tensorrt.profiles import ProfileConfig, manifest_profiles


@dataclass(frozen=True)
class BuildConfig:
    precision: str | None = None  # None: the graphs' own dtype (export --dtype)
    workspace_mb: int = 4096
    max_batch: int = 4
    timing_cache: Path | None = None  # default: one file per TensorRT version in the prunevlm cache dir
    force: bool = False

    def __post_init__(self):
        if self.precision is not None and self.precision not in PRECISIONS:
            raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.workspace_mb < 1:
            raise ConfigError(f"--workspace is TensorRT's scratch memory in MiB and must be at least 1, got "
                              f"{self.workspace_mb}")


def default_out(src) -> Path:
    src = Path(src)
    return src.parent / f"{src.name}.trt"


def default_timing_cache(trt_version: str) -> Path:
    """Shared by every build on this host: tactic timings measured once are reused (per TensorRT version)."""
    return cache_root() / f"tensorrt-{trt_version}.timing-cache"


def build_engine_dir(src, out=None, cfg: BuildConfig = BuildConfig(), progress=print) -> Path:
    """Builds one plan per graph of the exported dir `src` into a new engine dir `out` (default: <src>.trt)."""
    manifest = load_manifest(src)
    if manifest.engines is not None:
        raise EngineDirError(f"{src} is already a TensorRT engine dir; build from the exported ONNX dir instead")
    if (manifest.quantization or {}).get("format") == "MatMulNBits":
        raise ConfigError(f"{src} holds int4 MatMulNBits graphs, an ONNX Runtime operator TensorRT does not have: "
                          "calibrate the source dir again with --precision int4 --int4-format qdq (int4 "
                          "DequantizeLinear + MatMul, which TensorRT reads), then build that")
    out = Path(out) if out else default_out(src)
    check_destination(out, cfg.force)
    profiles = manifest_profiles(manifest, ProfileConfig(max_batch=cfg.max_batch))
    trt = require_tensorrt()
    quantized = cfg.precision in ("int8", "fp8") and any(has_qdq(manifest.graph_file(g)) for g in manifest.graphs)
    precision = cfg.precision or manifest.dtype
    options = config_options(precision, version_of(trt)[0], quantized, manifest.dtype)
    errors = [p for p in check_engine_dir(src, version_of(trt)) if p.kind == "error"]
    if errors:
        raise EngineDirError(f"{src} has graphs TensorRT will refuse:\n{format_problems(errors, src)}")
    cache = cfg.timing_cache or default_timing_cache(trt.__version__)
    cache.parent.mkdir(parents=True, exist_ok=True)
    with staged_engine_dir(out, cfg.force) as tmp:
        built = _without_graphs(manifest, tmp)
        built.engines = {}
        for i, (name, graph_profiles) in enumerate(profiles.items(), 1):
            progress(f"[build] {i}/{len(profiles)} {name}: {precision}, {len(graph_profiles[0])} dynamic inputs, "
                     f"{len(graph_profiles)} profile{'s' if len(graph_profiles) > 1 else ''}")
            plan = f"{name}.plan"
            (tmp / plan).write_bytes(build_plan(manifest.graph_file(name), graph_profiles, options, cfg.workspace_mb,
                                                cache))
            shapes = [{k: {"min": list(v[0]), "opt": list(v[1]), "max": list(v[2])} for k, v in profile.items()}
                      for profile in graph_profiles]
            built.engines[name] = PlanRecord(plan, precision, shapes)
        built.versions = {**built.versions, "tensorrt": trt.__version__}
        built.built_from = str(Path(src).resolve())
        save_manifest(built, tmp)
    progress(f"[build] wrote {out}")
    return out


def _without_graphs(manifest: Manifest, dest: Path) -> Manifest:
    """Copies tokenizers and every other listed file except the ONNX graphs; returns the manifest to complete."""
    graph_files = {f for record in manifest.graphs.values() for f in (record.file, record.data) if f}
    for rel in manifest.files:
        if rel not in graph_files:
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(manifest.path(rel), dest / rel)
    return dataclasses.replace(manifest, files={}, root=dest)
