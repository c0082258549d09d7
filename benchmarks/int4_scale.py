"""INT4 at LLaVA-1.5-7B's geometry on this machine's CPU: the fp16 IVTP export, `cli.py calibrate --precision int4`
(RTN, MatMulNBits, no data) and `cli.py run` on the result, each in its own process under /usr/bin/time -v.

    python -m benchmarks.int4_scale [--layers 32] [--cache /tmp/scale] [--source DIR] [--run-source]
        [--block-size 128] [--write-benchmarks] [--from-json RUN.json ...]

The real 32 layers by default: the fp16 dir (14.4 GB) needs about 27 GiB on ONNX Runtime's CPU provider, so it is
exported and quantized but not run; the INT4 dir is run. `--layers 4 --run-source` also runs the fp16 dir, for
the decode-per-token ratio on the same machine. --source takes an fp16 IVTP export made before.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

from benchmarks.scale_check import (
    GEOMETRIES,
    GIB,
    REAL_LAYERS,
    build_pair,
    dir_bytes,
    export_step,
    publish_section,
    python,
    run_step,
    timed,
)

SECTION = "## INT4 at 7B geometry"


def calibrate_step(src: Path, out: Path, block_size: int, logs: Path, timeout_s: float) -> dict:
    cmd = [python(), "cli.py", "calibrate", str(src), "--out", str(out), "--precision", "int4", "--block-size",
           str(block_size), "--no-report", "--force", "--json"]
    r = timed(cmd, logs / f"calibrate-int4-{out.name}.log", timeout_s)
    stdout = r.pop("stdout")
    if r["exit_code"] == 0:
        r["report"] = json.loads(stdout.strip().splitlines()[-1])["calibration"]
    return r


def graph_bytes(out: Path) -> dict:
    """Bytes per graph (its .onnx and .onnx.data), from the manifest's file list."""
    files = json.loads((out / "manifest.json").read_text())["files"]
    per = {}
    for rel, record in files.items():
        if rel.endswith((".onnx", ".onnx.data")):
            name = rel.split(".onnx")[0]
            per[name] = per.get(name, 0) + record["bytes"]
    return per


def measure(args) -> dict:
    logs = args.cache / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    g = dataclasses.replace(GEOMETRIES["llava-1.5-7b"], llm_layers=args.layers)
    results = {"date": time.strftime("%Y-%m-%d", time.gmtime()), "layers": args.layers, "block_size": args.block_size}
    src = args.source
    if src is None:
        pair, _ = build_pair(args.cache, "llava-1.5-7b", g, args.timeout)
        src = args.cache / "engines" / f"ivtp-fp16-{args.layers}-layers"
        print(f"[int4] exporting ivtp fp16 at {args.layers} layers", file=sys.stderr, flush=True)
        results["export"] = export_step(pair, "ivtp", "fp16", args.layers, src, logs, args.timeout)
        if results["export"]["exit_code"] != 0:
            return results
    results["source_bytes"] = dir_bytes(src)
    out = args.cache / "engines" / f"ivtp-int4-{args.layers}-layers"
    print(f"[int4] quantizing {src}", file=sys.stderr, flush=True)
    results["calibrate"] = calibrate_step(src, out, args.block_size, logs, args.timeout)
    if results["calibrate"]["exit_code"] != 0:
        return results
    results["int4_bytes"], results["int4_graph_bytes"] = dir_bytes(out), graph_bytes(out)
    results["source_graph_bytes"] = graph_bytes(src)
    print("[int4] running the int4 dir", file=sys.stderr, flush=True)
    results["run_int4"] = run_step(out, logs, f"int4-{args.layers}", args.max_new_tokens, args.timeout)
    if args.run_source:
        print("[int4] running the fp16 dir", file=sys.stderr, flush=True)
        results["run_fp16"] = run_step(src, logs, f"fp16-{args.layers}", args.max_new_tokens, args.timeout)
    return results


def section(runs: list[dict]) -> list[str]:
    """One table per run (e.g. the real 32 layers, and 4 layers where the fp16 source also runs)."""
    lines = [SECTION, "", f"Measured {runs[0]['date']} by `python -m benchmarks.int4_scale` on this 2-core CPU "
             "machine (shared with other jobs; read ratios): the random-weight llava-hf pair at LLaVA-1.5-7B's widths, "
             "IVTP exported fp16, then `calibrate --precision int4` (RTN, symmetric, MatMulNBits; the ViT, which "
             "prunes, and the LM head stay fp16), then `cli.py run` (ONNX Runtime CPU, 8 new tokens).", ""]
    for r in runs:
        lines += run_table(r)
    return lines


def run_table(r: dict) -> list[str]:
    cal, run = r.get("calibrate") or {}, r.get("run_int4") or {}
    gb = lambda n: f"{n / 1e9:.2f} GB"  # noqa: E731
    lines = [f"**{r['layers']} decoder layers**, block {r['block_size']} (`--layers {r['layers']}"
             f"{' --run-source' if 'run_fp16' in r else ''}`):", ""]
    if cal.get("exit_code") != 0:
        return lines + [f"calibrate failed: {cal.get('error')}", ""]
    lines += ["| | fp16 source | INT4 |", "|---|---|---|",
              f"| engine dir | {gb(r['source_bytes'])} | {gb(r['int4_bytes'])} |",
              f"| calibrate: wall, peak RSS | | {cal['wall_s'] / 60:.1f} min, {cal.get('peak_rss_bytes', 0) / GIB:.2f} GiB |"]
    runs = [("run_fp16", "fp16 source"), ("run_int4", "INT4")]
    if run.get("exit_code") == 0:
        cells = {k: r.get(k) or {} for k, _ in runs}
        row = lambda label, f: "| " + label + " | " + " | ".join(  # noqa: E731
            f(cells[k]) if cells[k].get("exit_code") == 0 else ("not run" if not cells[k] else "failed") for k, _ in runs) + " |"
        lines += [row("run: peak RSS", lambda c: f"{c['peak_rss_bytes'] / GIB:.2f} GiB"),
                  row("prefill", lambda c: f"{c['prefill_ms'] / 1e3:.1f} s"),
                  row("decode per token", lambda c: f"{c['decode_ms_per_token']:.0f} ms"),
                  row("visual tokens at the last stage", lambda c: ", ".join(f"{k} ({n})" for n, k in c["stages"][-1:]))]
    else:
        lines.append(f"| run | | failed: {run.get('error')} |")
    big = sorted(r["int4_graph_bytes"].items(), key=lambda kv: -kv[1])[:4]
    lines += ["", "Largest graphs of the INT4 dir: " + ", ".join(
        f"{name} {gb(n)} (fp16 {gb(r['source_graph_bytes'].get(name, 0))})" for name, n in big) + "."]
    lines.append("Calibrate's peak comes while the largest segment is quantized: the library's quantizer holds that "
                 "graph's fp16 weights whole, beside their int4 form.")
    if "run_fp16" not in r and r["layers"] == REAL_LAYERS:
        lines.append("The fp16 source is not run here: on ONNX Runtime's CPU provider it needs about 27 GiB.")
    return lines + [""]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--layers", type=int, default=REAL_LAYERS)
    p.add_argument("--cache", type=Path, default=Path("/tmp/scale"))
    p.add_argument("--source", type=Path, help="an fp16 IVTP export at this geometry, made before")
    p.add_argument("--run-source", action="store_true", help="also run the fp16 dir (fits at a few layers)")
    p.add_argument("--block-size", type=int, default=128)
    p.add_argument("--max-new-tokens", type=int, default=8)
    p.add_argument("--timeout", type=float, default=60 * 60, help="seconds per step")
    p.add_argument("--json", type=Path, help="results file (default: CACHE/int4_scale.json)")
    p.add_argument("--from-json", type=Path, nargs="+", help="measure nothing: the section of earlier runs' results")
    p.add_argument("--write-benchmarks", action="store_true")
    args = p.parse_args(argv)
    if args.from_json:
        runs = [json.loads(path.read_text()) for path in args.from_json]
    else:
        runs = [measure(args)]
        (args.json or args.cache / "int4_scale.json").write_text(json.dumps(runs[0], indent=1))
    lines = section(runs)
    return publish_section(SECTION, lines, args.write_benchmarks)


if __name__ == "__main__":
    sys.exit(main())
