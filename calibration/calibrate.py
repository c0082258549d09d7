"""calibrate(): engine dir -> quantized engine dir (graphs, manifest, report.json), on onnxruntime.quantization.

- int8: static Q/DQ (quantize_static) from feeds captured through the runtime, plus calibration caches; fp32 source.
- fp8: the same, in float8 e4m3 (the library's distribution calibrator, the only one it offers for floats); for
  TensorRT on GPUs with FP8, and run here on ONNX Runtime's CPU by dequantizing; fp32 source.
- int4: block-wise 4-bit weights only (calibration/weight_only.py): MatMulNBits for ONNX Runtime or int4 Q/DQ for
  TensorRT; fp16 or fp32 source, whose dtype the activations keep. RTN and HQQ need no data; GPTQ the captured feeds.

Every graph that has weight GEMMs is quantized (the CLIP text encoder, whose only output feeds pruning relevance,
and graphs without GEMMs are copied). Everything is written to a temp dir beside --out, the new dir is checked to
load and generate (the report does both), then renamed into place.
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
from calibration.quantize import FP8_METHODS, METHODS, quantize_graph
from calibration.report import compare, smoke_test
from calibration.weight_only import check_options, quantize_weights
from runtime.engine_dir import check_destination, staged_engine_dir
from runtime.errors import ConfigError
from runtime.manifest import load_manifest, save_manifest

PRECISIONS = ("int8", "int4", "fp8")
STATIC_METHODS = {"int8": METHODS, "fp8": FP8_METHODS}  # the first is the default
SOURCE_DTYPES = {"int8": ("fp32",), "fp8": ("fp32",), "int4": ("fp32", "fp16")}


@dataclass
class CalibrationConfig:
    engine_dir: Path
    out: Path
    data: Path | None = None  # folder of images + prompts.txt, or JSONL; None: the built-in set
    precision: str = "int8"
    method: str | None = None  # int8: minmax (default), percentile or entropy; fp8: distribution; int4: none
    # fnmatch patterns: node names, op types, `graph/node`, or whole graph names; None: default_keep_fp32()
    keep_fp32: tuple[str, ...] | None = None
    max_requests: int | None = None  # calibration requests used (the first ones)
    held_out: int = 3
    max_new_tokens: int = 4  # per request while capturing (decode feeds) and while comparing
    latency_runs: int = 3
    force: bool = False
    algorithm: str = "rtn"  # int4: rtn, gptq or hqq
    block_size: int = 128  # int4: input channels per scale
    int4_format: str = "matmulnbits"  # int4: matmulnbits (ONNX Runtime) or qdq (TensorRT)
    report: bool = True  # False: one generation checks the new dir instead (the report runs the source dir too)

    @property
    def calibration(self) -> str | None:
        """The calibrator of a static precision, its default if none was given."""
        return self.method or (STATIC_METHODS[self.precision][0] if self.precision in STATIC_METHODS else None)

    @property
    def needs_feeds(self) -> bool:
        return self.precision != "int4" or self.algorithm == "gptq"


def _check(cfg: CalibrationConfig):
    if cfg.precision not in PRECISIONS:
        raise ConfigError(f"--precision {cfg.precision} is not supported; choose one of {', '.join(PRECISIONS)}")
    if cfg.precision == "int4":
        if cfg.method is not None:
            raise ConfigError("--calibration names a calibrator of static int8/fp8 quantization; int4 is weight-only: "
                              "choose its --algorithm (rtn, gptq, hqq) instead")
        check_options(cfg.algorithm, cfg.int4_format, cfg.block_size)
    elif cfg.calibration not in STATIC_METHODS[cfg.precision]:
        raise ConfigError(f"--calibration {cfg.calibration} is not one of {', '.join(STATIC_METHODS[cfg.precision])} "
                          f"for {cfg.precision}")
    if cfg.max_new_tokens < 2:
        raise ConfigError(f"--max-new-tokens must be at least 2 so that decode steps are captured, got {cfg.max_new_tokens}")
    out, src = Path(cfg.out).resolve(), Path(cfg.engine_dir).resolve()
    if out == src:
        raise ConfigError("--out must differ from the source engine dir (it is read while the new one is written)")
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
                          "calibrate the engine dir it came from")
    if source.dtype not in SOURCE_DTYPES[cfg.precision]:
        allowed = " or ".join(SOURCE_DTYPES[cfg.precision])
        raise ConfigError(f"{cfg.engine_dir} was exported --dtype {source.dtype}; {cfg.precision} starts from {allowed} "
                          "graphs (its scales and its fidelity report are taken against them): export again with "
                          f"--dtype {SOURCE_DTYPES[cfg.precision][-1]}")
    data = load_calibration_set(cfg.data, cfg.max_requests, cfg.held_out)
    if cfg.keep_fp32 is None:
        cfg = replace(cfg, keep_fp32=default_keep_fp32(source))
        if cfg.keep_fp32:
            progress(f"[calibrate] keeping {','.join(cfg.keep_fp32)} {source.dtype}: it makes pruning decisions "
                     "(pass --keep-fp32 '' to quantize it too)")
    names = graphs_to_quantize(source, cfg.keep_fp32)
    feeds = {}
    if cfg.needs_feeds:
        progress(f"[calibrate] capturing feeds: {len(data.calibration)} requests from {data.source}, "
                 f"{cfg.max_new_tokens} tokens each")
        feeds = capture_feeds(cfg.engine_dir, data.calibration, cfg.max_new_tokens, progress=progress)
    out = Path(cfg.out).resolve()
    with staged_engine_dir(out, cfg.force) as tmp:
        results = _quantize_all(source, names, feeds, tmp, cfg, progress)
        manifest = save_manifest(_manifest(source, results, data, feeds, cfg), tmp)
        if cfg.report:
            progress(f"[calibrate] comparing {source.dtype} and {cfg.precision} on {len(data.held_out)} held-out requests")
            report = compare(cfg.engine_dir, tmp, data.held_out, cfg.max_new_tokens, cfg.latency_runs, progress)
        else:
            progress(f"[calibrate] no report (--no-report): one generation checks that {out.name} loads and runs")
            report = smoke_test(tmp, data.held_out[0], cfg.max_new_tokens)
        report["calibration"] = {**manifest.quantization, "seconds": round(time.perf_counter() - t0, 1)}
        (tmp / "report.json").write_text(json.dumps(report, indent=1))  # beside the manifest, not listed in it
    progress(f"[calibrate] wrote {out} in {time.perf_counter() - t0:.1f}s")
    return report


def _quantize_all(source, names, feeds, tmp: Path, cfg, progress) -> list:
    results, scratch = [], tmp / ".scratch"
    (tmp / "calibration").mkdir()
    for k, name in enumerate(names, 1):
        start = time.perf_counter()
        dst = tmp / source.graphs[name].file
        if cfg.precision == "int4":
            r = quantize_weights(source.graph_file(name), dst, name, feeds.get(name), cfg.algorithm, cfg.int4_format,
                                 cfg.block_size, cfg.keep_fp32)
            if not r.quantized_nodes:  # e.g. the LM head's graph: copied as it is, below
                for f in (dst, dst.with_name(dst.name + ".data")):
                    f.unlink(missing_ok=True)
                progress(f"[calibrate] {k}/{len(names)} {name}: no MatMul weight to quantize, copied")
                continue
        else:
            r = quantize_graph(source.graph_file(name), dst, name, feeds[name], scratch, cfg.calibration,
                               cfg.keep_fp32, cfg.precision)
        if cfg.precision == "int8":
            write_trt_cache(tmp / "calibration" / f"{name}.cache", r, cfg.calibration)
        results.append(r)
        fed = f", {len(feeds[name])} feeds" if name in feeds else ""
        progress(f"[calibrate] {k}/{len(names)} {name}: {r.quantized_nodes} GEMMs {cfg.precision}, {len(r.excluded)} "
                 f"kept {source.dtype}{fed}, {time.perf_counter() - start:.1f}s")
    shutil.rmtree(scratch, ignore_errors=True)
    if cfg.precision != "int4":
        write_ranges(tmp / "calibration" / "ranges.json", results, cfg.calibration)
    written = {str(f.relative_to(tmp)) for f in tmp.rglob("*") if f.is_file()}
    for rel in source.files:  # tokenizers and untouched graphs
        if rel not in written:
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source.root / rel, tmp / rel)
    if not any((tmp / "calibration").iterdir()):
        (tmp / "calibration").rmdir()
    return results


def _manifest(source, results, data, feeds, cfg):
    common = {"precision": cfg.precision, "graphs": [r.name for r in results],
              "excluded": [{"graph": r.name, "node": n, "reason": why} for r in results
                           for n, why in sorted(r.excluded.items())],
              "keep_fp32": list(cfg.keep_fp32), "from": str(Path(cfg.engine_dir).resolve())}
    captured = {"requests": len(data.calibration), "source": data.source, "max_new_tokens": cfg.max_new_tokens,
                "feeds": {r.name: len(feeds[r.name]) for r in results if r.name in feeds}}
    if cfg.precision == "int4":
        how = {"algorithm": cfg.algorithm, "format": "QDQ" if cfg.int4_format == "qdq" else "MatMulNBits",
               "block_size": cfg.block_size, "symmetric": cfg.algorithm != "hqq", "op_types": ["MatMul"],
               "weights_only": True, "calibration": captured if feeds else None}
    else:
        how = {"method": cfg.calibration, "format": "QDQ", "per_channel": cfg.precision == "int8", "symmetric": True,
               "op_types": ["MatMul", "Gemm", "Conv"],
               "calibration": {**captured, "held_out": len(data.held_out), "ranges": "calibration/ranges.json",
                               **({"tensorrt_caches": {r.name: f"calibration/{r.name}.cache" for r in results}}
                                  if cfg.precision == "int8" else {})}}
    return replace(source, quantization={**common, **how}, files={})
