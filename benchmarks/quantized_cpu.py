"""Every precision `cli.py calibrate` writes, on one embedded model and method, with the fidelity report of each
against its source dir (ONNX Runtime CPU): logit cosine, greedy agreement, kept-token overlap per stage, latency
ratios (end to end, prefill, decode per token) and engine dir bytes.

    python -m benchmarks.quantized_cpu [--model bench] [--method ivtp] [--out out/quantized] [--write-benchmarks]

The fp32 and fp16 exports are made once under --out and reused; each precision is calibrated again.
"""
import argparse
import json
import sys
import time
from pathlib import Path

from benchmarks.scale_check import dir_bytes, publish_section
from calibration.calibrate import CalibrationConfig, calibrate

SECTION = "## Quantization on CPU"
# (label, source dtype, calibrate options)
RUNS = [("int8 minmax", "fp32", {"precision": "int8"}),
        ("int4 rtn", "fp32", {"precision": "int4"}),
        ("int4 gptq", "fp32", {"precision": "int4", "algorithm": "gptq"}),
        ("int4 rtn", "fp16", {"precision": "int4"}),
        ("fp8", "fp32", {"precision": "fp8"})]


def export(model: str, method: str, dtype: str, out: Path) -> Path:
    from export.pipeline import ExportConfig
    from export.pipeline import export as export_engine_dir
    path = out / f"{model}-{method}-{dtype}"
    if not (path / "manifest.json").is_file():
        export_engine_dir(ExportConfig(method=method, model=model, out=path, force=True, dtype=dtype))
    return path


def measure(args) -> dict:
    results = {"date": time.strftime("%Y-%m-%d", time.gmtime()), "model": args.model, "method": args.method,
               "runs": []}
    for label, dtype, options in RUNS:
        src = export(args.model, args.method, dtype, args.out)
        dst = args.out / f"{src.name}-{label.replace(' ', '-')}"
        print(f"[quantized] {label} from {dtype}", file=sys.stderr, flush=True)
        start = time.perf_counter()
        report = calibrate(CalibrationConfig(src, dst, held_out=args.held_out, max_new_tokens=args.max_new_tokens,
                                             latency_runs=args.latency_runs, force=True, **options))
        results["runs"].append({"label": label, "source": dtype, "seconds": round(time.perf_counter() - start, 1),
                                "summary": report["summary"], "bytes": dir_bytes(dst), "source_bytes": dir_bytes(src)})
        (args.out / "quantized_cpu.json").write_text(json.dumps(results, indent=1))  # what is done so far
    return results


def section(r: dict) -> list[str]:
    runs = r["runs"]
    stages = list(runs[0]["summary"]["kept_overlap"])
    # the first stage, the ViT's last and the LLM's last
    shown = list(dict.fromkeys(stages[:1] + [s for s in stages if s.startswith("vit.")][-1:] + stages[-1:]))
    lines = [SECTION, "", f"Measured {r['date']} by `python -m benchmarks.quantized_cpu --model {r['model']} --method "
             f"{r['method']}`: each precision against the dir it was made from, on {runs[0]['summary']['requests']} "
             "held-out requests, ONNX Runtime CPU on a shared 2-core machine (latency: medians of "
             "interleaved runs). The ViT prunes, so it stays in its source dtype by default; the LM head always does.", "",
             "| precision | from | logit cosine mean / min | greedy agreement | " + " | ".join(
                 f"kept {s}" for s in shown) + " | latency total | prefill | decode/token | dir MB (source) |",
             "|---|---|---|---|" + "---|" * len(shown) + "---|---|---|---|"]
    for run in runs:
        s, lat = run["summary"], run["summary"]["latency"]
        lines.append(f"| {run['label']} | {run['source']} | {s['logit_cosine_mean']:.4f} / {s['logit_cosine_min']:.4f} | "
                     f"{s['agreement_overall']:.0%} | " + " | ".join(f"{s['kept_overlap'][k]:.3f}" for k in shown)
                     + f" | {lat['ratio']:.2f} | {lat['prefill_ratio']:.2f} | {lat['decode_ratio']:.2f} | "
                     f"{run['bytes'] / 1e6:.0f} ({run['source_bytes'] / 1e6:.0f}) |")
    return lines + [""]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="bench")
    p.add_argument("--method", default="ivtp")
    p.add_argument("--out", type=Path, default=Path("out/quantized"))
    p.add_argument("--held-out", type=int, default=3)
    p.add_argument("--max-new-tokens", type=int, default=8)
    p.add_argument("--latency-runs", type=int, default=5)
    p.add_argument("--from-json", type=Path, help="measure nothing: the section of an earlier run's results")
    p.add_argument("--write-benchmarks", action="store_true")
    args = p.parse_args(argv)
    if args.from_json:
        results = json.loads(args.from_json.read_text())
    else:
        args.out.mkdir(parents=True, exist_ok=True)
        results = measure(args)
    lines = section(results)
    return publish_section(SECTION, lines, args.write_benchmarks)


if __name__ == "__main__":
    sys.exit(main())
