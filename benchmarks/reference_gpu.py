"""Every method's PyTorch reference and the unpruned HF baseline at LLaVA-1.5-7B geometry on a GPU, with random
weights made on the device (export/profiling/reference_profile.py), as a table for BENCHMARKS-GPU.md and a plot.

    python -m benchmarks.reference_gpu --device cuda --dtype float16 [--methods none,ivtp] [--runs 5] [--out DIR]
"""
import argparse
import json
import sys
from pathlib import Path

import torch

from export.methods.registry import all_methods, get_method
from export.profiling.reference_profile import DTYPES, GEOMETRIES, plot, run, table


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--geometry", choices=sorted(GEOMETRIES), default="llava-1.5-7b")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="float16")
    p.add_argument("--methods", default=None, help="comma-separated; default: every registered method")
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--max-new-tokens", type=int, default=16)
    p.add_argument("--batch", type=int, default=1, help="copies of the request generated together")
    p.add_argument("--out", type=Path, default=None, help="write report.json and table.md here")
    args = p.parse_args(argv)
    if min(args.batch, args.runs) < 1 or args.max_new_tokens < 2:
        p.error("--batch and --runs must be at least 1 and --max-new-tokens at least 2 (decode is timed per token)")
    methods = args.methods.split(",") if args.methods else ["none"] + sorted(m for m in all_methods() if m != "none")
    for name in methods:
        get_method(name)  # an unknown name fails before minutes of work
    report = run(args.geometry, args.device, args.dtype, methods, args.runs, args.max_new_tokens, batch=args.batch)
    lines = table(report)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "report.json").write_text(json.dumps(report, indent=1))
        (args.out / "table.md").write_text("\n".join(lines) + "\n")
        plot(report, args.out / "prefill_ratios.png")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
