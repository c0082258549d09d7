"""IVTP's prefill latency against `none`'s, next to its FLOPs ratio: does pruning's saving in FLOPs reach the clock?
Both engine dirs run in one process on ONNX Runtime CPU, interleaved, medians after a warm-up; the breakdown per
graph says where the rest goes. Writes the "IVTP prefill against its FLOPs" section of BENCHMARKS.md.

    python -m benchmarks.prefill_ratio [--model bench] [--runs 5] [--out out/prefill_ratio]
"""
import argparse
import statistics
import sys
import time
from pathlib import Path

from benchmarks.scale_check import write_benchmarks_section

ROOT = Path(__file__).resolve().parent.parent
SECTION = "## IVTP prefill against its FLOPs"
TOTALS = ("prefill_total", "decode_total", "total")


def measure(dirs: dict, runs: int) -> dict:
    from export.profiling.flops import flops_report
    from runtime.load import open_engine_dir
    from runtime.request import Request
    from runtime.shipped import EXPORT_SAMPLE
    generators = {m: open_engine_dir(d, "cpu") for m, d in dirs.items()}
    request = Request(EXPORT_SAMPLE.image, EXPORT_SAMPLE.prompt)
    samples = {m: [] for m in generators}
    for g in generators.values():
        g.generate([request], 1)  # warm-up
    for _ in range(runs):
        for m, g in generators.items():
            samples[m].append(g.generate([request], 1)[0].timings_ms)
    text = len(generators["none"].prompts.encode(request.prompt).input_ids)
    return {m: {"prefill_ms": statistics.median(t["prefill_total"] for t in s),
                "tflops": flops_report(str(dirs[m]), m, text)["total_tflops"],
                "graphs_ms": {k: statistics.median(t[k] for t in s) for k in s[0] if k not in TOTALS}}
            for m, s in samples.items()}


def section(result: dict, args, started: str) -> list[str]:
    none, ivtp = result["none"], result["ivtp"]
    latency, flops = ivtp["prefill_ms"] / none["prefill_ms"], ivtp["tflops"] / none["tflops"]
    rows = ["| graph | none ms | ivtp ms |", "|---|---|---|"]
    for g in dict.fromkeys([*none["graphs_ms"], *ivtp["graphs_ms"]]):
        cell = lambda r: f"{r['graphs_ms'][g]:.1f}" if g in r["graphs_ms"] else "-"  # noqa: E731
        rows.append(f"| {g} | {cell(none)} | {cell(ivtp)} |")
    return [SECTION, "",
            f"Measured {started} on the `{args.model}` model, ONNX Runtime CPU, medians of {args.runs} interleaved "
            f"prefills after a warm-up, by `python -m benchmarks.prefill_ratio`. The machine was shared, so read the "
            "ratios.", "",
            f"- prefill: `none` {none['prefill_ms']:.0f} ms, `ivtp` {ivtp['prefill_ms']:.0f} ms: latency ratio "
            f"**{latency:.3f}** against a FLOPs ratio of **{flops:.3f}** ({ivtp['tflops']:.4f} / "
            f"{none['tflops']:.4f} TFLOPs), **{latency / flops:.2f}x** (target <= 1.1x)", "",
            *rows, ""]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="bench")
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--out", type=Path, default=ROOT / "out" / "prefill_ratio")
    args = p.parse_args(argv)
    from export.pipeline import ExportConfig, export
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    dirs = {m: args.out / m for m in ("none", "ivtp")}
    for method, path in dirs.items():  # reused when present
        if not (path / "manifest.json").is_file():
            export(ExportConfig(method, args.model, path, force=True), lambda m: print(m, file=sys.stderr, flush=True))
    lines = section(measure(dirs, args.runs), args, started)
    return write_benchmarks_section(SECTION, lines)


if __name__ == "__main__":
    sys.exit(main())
