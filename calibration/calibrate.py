"""calibrate(): fp32 engine dir -> int8 engine dir (QDQ graphs, calibration caches, manifest) + report.json.

Captures feeds through the runtime, quantizes every graph that has weight GEMMs (the CLIP text encoder, whose only
output feeds pruning relevance, and graphs without GEMMs are copied), writes everything to a temp dir beside
--out, checks that the new dir loads and generates (the report does both), then renames it into place.
"""
import json
import shutil
import sys
import time
from dataclasses import dataclass, replace
from fnmatch import fnmatchcase
from pathlib import Path

from calibration.cache import write_ranges, write_trt_cache
from calibration.capture import capture_feeds
from calibration.data import load_calibration_set
from calibration.quantize import METHODS, quantize_graph
from calibration.report import compare
from runtime.engine_dir import check_destination, staged_engine_dir
from runtime.errors import ConfigError
from runtime.manifest import load_manifest, save_manifest

PRECISIONS = ("int8",)


@dataclass
class CalibrationConfig:
    engine_dir: Path
    out: Path
    data: Path | None = None  # folder of images + prompts.txt, or JSONL; None: the built-in set
    precision: str = "int8"
    method: str = "minmax"
    # fnmatch patterns: node names, op types, `graph/node`, or whole graph names; None: default_keep_fp32()
    keep_fp32: tuple[str, ...] | None = None
    max_requests: int | None = None  # calibration requests used (the first ones)
    held_out: int = 3
    max_new_tokens: int = 4  # per request while capturing (decode feeds) and while comparing
    latency_runs: int = 3
    force: bool = False


def _check(cfg: CalibrationConfig):
    if cfg.precision not in PRECISIONS:
        raise ConfigError(f"--precision {cfg.precision} is not supported; choose one of {', '.join(PRECISIONS)}")
    if cfg.method not in METHODS:
        raise ConfigError(f"--calibration {cfg.method} is not one of {', '.join(METHODS)}")
    if cfg.max_new_tokens < 2:
        raise ConfigError(f"--max-new-tokens must be at least 2 so that decode steps are captured, got {cfg.max_new_tokens}")
    out, src = Path(cfg.out).resolve(), Path(cfg.engine_dir).resolve()
    if out == src:
        raise ConfigError("--out must differ from the fp32 engine dir (it is read while the int8 one is written)")
    check_destination(out, cfg.force)


def default_keep_fp32(manifest) -> tuple[str, ...]:
    """The vision graph when it makes pruning decisions: int8 noise on near-tied ViT scores swaps kept tokens at
    every stage after it (tiny IVTP: logit cosine 0.83 quantized, 0.99 kept fp32), and the ViT is only 2.4% of
    LLaVA-1.5-7B's FLOPs. Nothing otherwise."""
    prunes_in_vit = any(s.where == "vision" for s in manifest.stages)
    return (manifest.pipeline.vision,) if prunes_in_vit else ()


def graphs_to_quantize(manifest, keep_fp32) -> list[str]:
    """Every graph but the CLIP text encoder (pruning relevance only), the token embedding (a Gather), graphs
    without weights (prune graphs: pruning decisions only) and graphs named in --keep-fp32."""
    skip = {manifest.pipeline.text_encoder, manifest.pipeline.embed} | {n for n, r in manifest.graphs.items() if not r.data}
    names = [n for n in manifest.graphs if n not in skip and not any(fnmatchcase(n, p) for p in keep_fp32)]
    if not names:
        raise ConfigError(f"--keep-fp32 {','.join(keep_fp32)} leaves no graph to quantize in {manifest.root}")
    return names


def calibrate(cfg: CalibrationConfig, progress=lambda m: print(m, file=sys.stderr, flush=True)) -> dict:
    _check(cfg)
    t0 = time.perf_counter()
    source = load_manifest(cfg.engine_dir)
    if source.quantization is not None:
        raise ConfigError(f"{cfg.engine_dir} is already quantized ({source.quantization['precision']}); "
                          "calibrate the fp32 engine dir it came from")
    if source.dtype != "fp32":
        raise ConfigError(f"{cfg.engine_dir} was exported --dtype {source.dtype}; INT8 calibration starts from fp32 "
                          "graphs (its scales and its fidelity report are taken against them): export again with "
                          "--dtype fp32")
    data = load_calibration_set(cfg.data, cfg.max_requests, cfg.held_out)
    if cfg.keep_fp32 is None:
        cfg = replace(cfg, keep_fp32=default_keep_fp32(source))
        if cfg.keep_fp32:
            progress(f"[calibrate] keeping {','.join(cfg.keep_fp32)} fp32: it makes pruning decisions "
                     "(pass --keep-fp32 '' to quantize it too)")
    names = graphs_to_quantize(source, cfg.keep_fp32)
    progress(f"[calibrate] capturing feeds: {len(data.calibration)} requests from {data.source}, "
             f"{cfg.max_new_tokens} tokens each")
    feeds = capture_feeds(cfg.engine_dir, data.calibration, cfg.max_new_tokens, progress=progress)
    out = Path(cfg.out).resolve()
    with staged_engine_dir(out, cfg.force) as tmp:
        results = _quantize_all(source, names, feeds, tmp, cfg, progress)
        manifest = save_manifest(_manifest(source, results, data, feeds, cfg), tmp)
        progress(f"[calibrate] comparing fp32 and int8 on {len(data.held_out)} held-out requests")
        report = compare(cfg.engine_dir, tmp, data.held_out, cfg.max_new_tokens, cfg.latency_runs, progress)
        report["calibration"] = {**manifest.quantization, "seconds": round(time.perf_counter() - t0, 1)}
        (tmp / "report.json").write_text(json.dumps(report, indent=1))  # beside the manifest, not listed in it
    progress(f"[calibrate] wrote {out} in {time.perf_counter() - t0:.1f}s")
    return report


def _quantize_all(source, names, feeds, tmp: Path, cfg, progress) -> list:
    results, scratch = [], tmp / ".scratch"
    (tmp / "calibration").mkdir()
    for k, name in enumerate(names, 1):
        start = time.perf_counter()
        r = quantize_graph(source.graph_file(name), tmp / source.graphs[name].file, name, feeds[name],
                           scratch, cfg.method, cfg.keep_fp32)
        write_trt_cache(tmp / "calibration" / f"{name}.cache", r, cfg.method)
        results.append(r)
        progress(f"[calibrate] {k}/{len(names)} {name}: {r.quantized_nodes} GEMMs int8, {len(r.excluded)} kept fp32, "
                 f"{len(feeds[name])} feeds, {time.perf_counter() - start:.1f}s")
    shutil.rmtree(scratch, ignore_errors=True)
    write_ranges(tmp / "calibration" / "ranges.json", results, cfg.method)
    written = {str(f.relative_to(tmp)) for f in tmp.rglob("*") if f.is_file()}
    for rel in source.files:  # tokenizers and untouched graphs
        if rel not in written:
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source.root / rel, tmp / rel)
    return results


def _manifest(source, results, data, feeds, cfg):
    return replace(source, quantization={
        "precision": cfg.precision, "method": cfg.method, "format": "QDQ", "per_channel": True, "symmetric": True,
        "op_types": ["MatMul", "Gemm", "Conv"], "graphs": [r.name for r in results],
        "excluded": [{"graph": r.name, "node": n, "reason": why} for r in results for n, why in sorted(r.excluded.items())],
        "keep_fp32": list(cfg.keep_fp32),
        "calibration": {"requests": len(data.calibration), "source": data.source, "held_out": len(data.held_out),
                        "max_new_tokens": cfg.max_new_tokens, "feeds": {r.name: len(feeds[r.name]) for r in results},
                        "ranges": "calibration/ranges.json",
                        "tensorrt_caches": {r.name: f"calibration/{r.name}.cache" for r in results}},
        "from": str(Path(cfg.engine_dir).resolve()),
    }, files={})
