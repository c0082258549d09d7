"""Accuracy against speed on the demo model: every method at keep 64, 128 and 192, the unpruned baseline, IVTP
without its text guidance, and fp16 / INT8 / INT4 (RTN, GPTQ) engines of IVTP and `none`, each exported from
`--model demo` and scored by `cli.py eval` on a held-out split. Writes a table into BENCHMARKS.md and
assets/frontier.png (accuracy against FLOPs and against measured prefill latency).

    python -m benchmarks.frontier [--count 500] [--keeps 64,128,192] [--out out/frontier] [--write-benchmarks]
    python -m benchmarks.frontier --render          # table and plot again from OUT/results.json

Every export, calibration and eval runs in its own process, one after another; run it on an idle machine, since
the latency columns are wall-clock (the accuracy columns do not depend on load).
"""
import argparse
import json
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from benchmarks.scale_check import cpu_name, publish_section

ROOT = Path(__file__).resolve().parent.parent
SECTION = "## Accuracy against speed (demo model)"
METHODS = ("ivtp", "fastv", "vispruner", "visionzip", "tome", "topk", "random", "pool", "atp")
POOL_COUNTS = (64, 144)
COMPARED = ("none", "ivtp-64")  # also answered by the PyTorch reference  # grid averages need g*g tokens with g dividing 24: 128 and 192 are not among them


def variants(keeps: list[int]):
    """(name, method, keep, export flags) of every fp32 engine dir."""
    yield "none", "none", 576, ["--method", "none"]
    pooled = set()
    for keep in keeps:
        for method in METHODS:
            if method == "pool":  # the nearest count a grid average can give, once
                count = min(POOL_COUNTS, key=lambda c: abs(c - keep))
                if count not in pooled:
                    pooled.add(count)
                    yield f"pool-{count}", method, count, ["--method", "pool", "--keep", str(count)]
            elif method == "visionzip":  # the paper's split: 54+10, 108+20, 162+30
                dominant = keep * 27 // 32
                yield f"visionzip-{keep}", method, keep, ["--method", method, "--dominant", str(dominant),
                                                         "--contextual", str(keep - dominant)]
            else:
                yield f"{method}-{keep}", method, keep, ["--method", method, "--keep", str(keep)]
        yield f"ivtp-notext-{keep}", "ivtp (no text)", keep, ["--method", "ivtp", "--keep", str(keep), "--no-text"]


def quantized(base_keep: int):
    """(name, source dir name, how it is made): fp16 re-exported; INT8 and INT4 by calibrate from fp32."""
    for src in ("none", f"ivtp-{base_keep}"):
        yield f"{src}-fp16", src, "fp16"
        yield f"{src}-int8", src, ["--precision", "int8"]
        yield f"{src}-int4-rtn", src, ["--precision", "int4", "--algorithm", "rtn"]
        yield f"{src}-int4-gptq", src, ["--precision", "int4", "--algorithm", "gptq"]


def cli(*args, log: Path) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, str(ROOT / "cli.py"), *map(str, args)], capture_output=True, text=True,
                          cwd=ROOT)
    log.write_text(f"$ cli.py {' '.join(map(str, args))}\n{done.stdout}\n{done.stderr}")
    return done


def run(args) -> dict:
    out = args.out
    (out / "dirs").mkdir(parents=True, exist_ok=True)
    (out / "logs").mkdir(exist_ok=True)
    data = out / "heldout"
    if not (data / "questions.jsonl").is_file():
        cli("demo-data", "--seed", args.seed, "--count", args.count, "--out", data, "--force", log=out / "logs/data.txt")
    calib = out / "calibration.jsonl"
    if not calib.is_file():  # calibrate's own format: image + prompt, from a split no eval sees
        cli("demo-data", "--seed", args.seed + 1, "--count", 48, "--out", out / "calibration", "--force",
            log=out / "logs/calibration-data.txt")
        lines = [json.loads(line) for line in (out / "calibration/questions.jsonl").read_text().splitlines()]
        calib.write_text("".join(json.dumps({"image": str(out / "calibration" / q["image"]), "prompt": q["question"]})
                                 + "\n" for q in lines))
    results_file = out / "results.json"
    results = json.loads(results_file.read_text()) if results_file.is_file() else {}
    exports = {name: (method, keep, flags) for name, method, keep, flags in variants(args.keeps)}
    jobs = [(name, method, keep, ["export", "--model", "demo", "--dtype", "fp32", *flags])
            for name, (method, keep, flags) in exports.items()]
    for name, src, how in quantized(args.keeps[0]):
        method, keep, flags = exports[src]
        if how == "fp16":
            jobs.append((name, method, keep, ["export", "--model", "demo", "--dtype", "fp16", *flags]))
        else:
            jobs.append((name, method, keep, ["calibrate", out / "dirs" / src, "--data", calib, "--held-out", 16, *how]))
    fp32 = [job for job in jobs if job[3][0] == "export" and "fp16" not in job[3]]
    for batch in (fp32, [job for job in jobs if job not in fp32]):  # calibrate reads the fp32 dirs
        todo = [job for job in batch if job[0] not in results]
        with ThreadPoolExecutor(args.jobs) as pool:  # exports validate on torch and ORT: two at a time on 2 cores
            for name, entry in zip([j[0] for j in todo], pool.map(lambda job: make(out, *job), todo)):
                results[name] = entry
                results_file.write_text(json.dumps(results, indent=1))
                print(f"[frontier] made {name} in {entry['make_s']} s" + (f": {entry['error']}" if "error" in entry
                                                                          else ""), file=sys.stderr, flush=True)
    for n, name in enumerate(results, 1):  # one at a time, nothing beside it: the latency columns are wall time
        entry = results[name]
        if "error" in entry or "accuracy" in entry:
            continue
        oracle = ["--compare-torch"] if name in COMPARED else []  # engines against torch, question by question
        done = cli("eval", out / "dirs" / name, "--data", data / "questions.jsonl", "--json", *oracle,
                   log=out / f"logs/{name}-eval.txt")
        if done.returncode != 0:
            entry["error"] = (done.stderr.strip().splitlines() or ["eval failed"])[-1]
        else:
            summary = json.loads(done.stdout)
            entry.update({k: v for k, v in summary.items() if k not in ("wrong", "prefill_ms", "decode_ms_per_token")},
                         prefill_ms=summary["prefill_ms"]["mean"],
                         decode_ms_per_token=(summary["decode_ms_per_token"] or {}).get("mean"))
        results_file.write_text(json.dumps(results, indent=1))
        print(f"[frontier {n}/{len(results)}] {name}: " + (entry.get("error") or
              f"accuracy {entry['accuracy']:.3f}, {entry['mean_visual_tokens']:.0f} tokens, "
              f"{entry['tflops']:.4f} TFLOPs, prefill {entry['prefill_ms']:.1f} ms"), file=sys.stderr, flush=True)
    return results


def make(out: Path, name: str, method: str, keep: int, how: list) -> dict:
    """Exports or calibrates one engine dir; its entry in results.json."""
    started = time.perf_counter()
    made = cli(*how, "--out", out / "dirs" / name, "--force", log=out / f"logs/{name}-make.txt")
    entry = {"method": method, "keep": keep, "make_s": round(time.perf_counter() - started, 1)}
    if made.returncode != 0:
        entry["error"] = (made.stderr.strip().splitlines() or ["failed"])[-1]
    elif how[0] == "calibrate":
        entry["verdict"] = next((line for line in made.stdout.splitlines() if line.startswith("verdict")), "")
    return entry


def table(results: dict) -> list[str]:
    types = sorted({t for r in results.values() for t in r.get("by_type", {})})
    lines = [f"| engine dir | visual tokens (mean) | TFLOPs (ratio) | prefill ms (ratio) | accuracy | "
             + " | ".join(types) + " |", "|---" * (5 + len(types)) + "|"]
    base = results.get("none", {})
    for name, r in results.items():
        if "error" in r:
            lines.append(f"| {name} | n/a: {r['error']} |" + " |" * (3 + len(types)))
            continue
        ratio = lambda k: f" ({r[k] / base[k]:.2f})" if base.get(k) else ""  # noqa: E731
        lines.append(f"| {name} | {r['mean_visual_tokens']:.1f} | {r['tflops']:.4f}{ratio('tflops')} | "
                     f"{r['prefill_ms']:.1f}{ratio('prefill_ms')} | **{r['accuracy']:.3f}** | "
                     + " | ".join(f"{r['by_type'][t]['accuracy']:.3f}" if t in r["by_type"] else "-" for t in types)
                     + " |")
    return lines


def plot(results: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.6), sharey=True)
    lines = {}
    for name, r in results.items():
        if "error" in r or "-fp16" in name or "-int" in name:
            continue
        lines.setdefault(r["method"], []).append(r)
    for ax, key, label in ((axes[0], "tflops", "prefill TFLOPs (ViT + LLM + extra)"),
                           (axes[1], "prefill_ms", "measured prefill, ms (ONNX Runtime CPU, batch 1)")):
        for method, rows in sorted(lines.items()):
            rows = sorted(rows, key=lambda r: r[key])
            style = dict(marker="*", markersize=14, linestyle="none") if method == "none" else dict(marker="o")
            ax.plot([r[key] for r in rows], [r["accuracy"] for r in rows], label=method, **style)
        for name, r in results.items():
            if "error" not in r and ("-int" in name or "-fp16" in name):
                ax.plot(r[key], r["accuracy"], marker="x", color="0.3", linestyle="none")
                ax.annotate(name.split("-", 1)[1] if name.startswith("none") else name.replace("ivtp-", ""),
                            (r[key], r["accuracy"]), fontsize=6, xytext=(3, -8), textcoords="offset points")
        ax.set_xlabel(label)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("accuracy on the held-out split")
    axes[1].legend(fontsize=8, loc="lower right")
    fig.suptitle("demo model: accuracy against cost, every method at keep 64 / 128 / 192 (x: fp16 / INT8 / INT4 dirs)",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def page(results: dict, args, started: str) -> list[str]:
    n = next((r["n"] for r in results.values() if "n" in r), 0)
    return [SECTION, "",
            f"Measured {started} on {cpu_name()}, 2 cores, by `python -m benchmarks.frontier --count {args.count}`: "
            f"each engine dir exported from `--model demo` (fp32 unless named), then `cli.py eval` on {n} held-out "
            f"questions (`cli.py demo-data --seed {args.seed}`), each in its own process, batch 1, greedy. FLOPs by "
            "the IVTP paper's convention at each request's own text length and kept counts; prefill is the engines' "
            "mean wall time per request on ONNX Runtime CPU.", "",
            *table(results), "", *findings(results), "", "![frontier](assets/frontier.png)", ""]


def findings(results: dict) -> list[str]:
    """The comparisons the table is for: against PyTorch, random against unpruned, the best at the smallest keep."""
    ok = {name: r for name, r in results.items() if "error" not in r}
    lines = [f"- `{name}`: the engines' greedy tokens equal the PyTorch reference's on {r['reference']['same_tokens']} "
             f"of {r['reference']['n']} questions." for name, r in ok.items() if "reference" in r]
    base = ok.get("none", {}).get("accuracy")
    smallest = min((r["keep"] for r in ok.values() if r["method"] != "none"), default=None)
    at = {name: r for name, r in ok.items() if r["keep"] == smallest and "-fp16" not in name and "-int" not in name}
    if base is not None and at:
        best = max(at, key=lambda n: at[n]["accuracy"])
        lines.append(f"- At keep {smallest}, the best is `{best}` at {at[best]['accuracy']:.3f}, "
                     f"{base - at[best]['accuracy']:+.3f} below unpruned ({base:.3f}).".replace("+-", "-"))
        if f"random-{smallest}" in at:
            lines.append(f"- `random-{smallest}` scores {at[f'random-{smallest}']['accuracy']:.3f}, "
                         f"{base - at[f'random-{smallest}']['accuracy']:.3f} below unpruned: the task needs the right "
                         "tokens.")
    return lines


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--count", type=int, default=500, help="held-out questions")
    p.add_argument("--seed", type=int, default=1, help="the held-out split's seed (seed + 1 calibrates INT8/GPTQ)")
    p.add_argument("--keeps", type=lambda s: [int(x) for x in s.split(",")], default=[64, 128, 192])
    p.add_argument("--out", type=Path, default=ROOT / "out" / "frontier")
    p.add_argument("--jobs", type=int, default=2, help="exports and calibrations at a time (evals run alone)")
    p.add_argument("--render", action="store_true", help="only redraw the table and plot from OUT/results.json")
    p.add_argument("--write-benchmarks", action="store_true", help="write the section into BENCHMARKS.md")
    args = p.parse_args(argv)
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    results = json.loads((args.out / "results.json").read_text()) if args.render else run(args)
    plot(results, ROOT / "assets" / "frontier.png")
    return publish_section(SECTION, page(results, args, started), args.write_benchmarks)


if __name__ == "__main__":
    sys.exit(main())
