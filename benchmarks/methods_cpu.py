"""Exports every registered method for the `bench` embedded model, profiles them all in one run on ONNX Runtime
CPU against PyTorch, and writes BENCHMARKS.md and assets/benchmarks.png.

    python -m benchmarks.methods_cpu [--model bench] [--runs 5] [--out out/benchmarks]
"""
import argparse
import json
import sys
import time
from pathlib import Path

from benchmarks.scale_check import carry_section
from export.profiling.benchmark import page, plot, run

ROOT = Path(__file__).resolve().parent.parent


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="bench")
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--max-new-tokens", type=int, default=16)
    p.add_argument("--out", type=Path, default=ROOT / "out" / "benchmarks")
    args = p.parse_args(argv)
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    reports = run(args.model, args.runs, args.out, args.max_new_tokens)
    (args.out / "reports.json").write_text(json.dumps(reports, indent=1))
    plot(reports, ROOT / "assets" / "benchmarks.png")
    lines = page(reports, args.model, args.runs, args.max_new_tokens, started, "assets/benchmarks.png")
    path = ROOT / "BENCHMARKS.md"
    path.write_text(carry_section(path.read_text() if path.is_file() else "", "\n".join(lines)))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
