"""In-flight batching against static batching on ONNX Runtime CPU: N requests (mixed images, prompts and token
limits) arrive at staggered times; in-flight lets each join the running batch at the next decode step, static
batching takes up to max_batch of those that arrived whenever the engines are idle and runs them through
Generator.generate to the end of the longest. Prints wall time, tokens/s, and per-request latency and
time-to-first-token (from its arrival), mean and p99.

    python -m benchmarks.inflight_cpu [ENGINE_DIR] [--requests 16] [--max-batch 4] [--gaps 0.25,1]

Without ENGINE_DIR the tiny model's IVTP export in out/inflight-ivtp is used (exported first if absent).
"""
import argparse
import sys
import time
from pathlib import Path

import numpy as np

from runtime.inflight import InflightBatcher
from runtime.load import open_engine_dir
from runtime.request import Request
from runtime.sampling import SamplingParams

ROOT = Path(__file__).resolve().parent.parent
IMAGES = sorted((ROOT / "assets" / "images").glob("*.jpg"))
PROMPTS = ["What is the person in this photo wearing, and what colour is it?", "Describe the animal on the sofa.",
           "How many cups are on the table?", "What is in the picture? Answer in one long, detailed sentence."]


def default_dir() -> Path:
    out = ROOT / "out" / "inflight-ivtp"
    if not (out / "manifest.json").is_file():
        from export.methods.registry import get_method
        from export.pipeline import ExportConfig, export
        print(f"exporting the tiny IVTP model to {out} ...", flush=True)
        export(ExportConfig(method="ivtp", model="tiny", out=out, method_config=get_method("ivtp").config_type()),
               progress=lambda m: None)
    return out


def workload(n: int, limits: list[int]) -> list[Request]:
    return [Request(IMAGES[i % len(IMAGES)], PROMPTS[i % len(PROMPTS)],
                    SamplingParams(max_new_tokens=limits[i % len(limits)])) for i in range(n)]


def wait_until(t: float):
    if t > time.perf_counter():
        time.sleep(t - time.perf_counter())


def inflight(generator, requests, arrivals, max_batch) -> dict:
    batcher = InflightBatcher(generator, max_batch=max_batch)
    t0, k, handles = time.perf_counter(), 0, []
    arrive = [t0 + a for a in arrivals]
    while k < len(requests) or batcher.busy:
        if not batcher.busy:
            wait_until(arrive[k])
        while k < len(requests) and arrive[k] <= time.perf_counter():
            handles.append(batcher.submit(requests[k]))  # its submit time is its arrival
            k += 1
        batcher.step()
    end = max(h.times["end"] for h in handles)
    return {"wall_s": end - t0, "tokens": [h.result().token_ids for h in handles],
            "latency_ms": [(h.times["end"] - a) * 1e3 for h, a in zip(handles, arrive)],
            "ttft_ms": [(h.times["first"] - a) * 1e3 for h, a in zip(handles, arrive)]}


def static(generator, requests, arrivals, max_batch) -> dict:
    t0, k = time.perf_counter(), 0
    arrive = [t0 + a for a in arrivals]
    tokens, latency, ttft, end = [], [], [], t0
    while k < len(requests):
        wait_until(arrive[k])
        group = [i for i in range(k, min(k + max_batch, len(requests))) if arrive[i] <= time.perf_counter()]
        start = time.perf_counter()
        results = generator.generate([requests[i] for i in group])
        end = time.perf_counter()
        for i, r in zip(group, results):
            tokens.append(r.token_ids)
            latency.append((end - arrive[i]) * 1e3)  # a static batch hands all its results back at its end
            ttft.append((start + r.timings_ms["prefill_total"] / 1e3 - arrive[i]) * 1e3)
        k += len(group)
    return {"wall_s": end - t0, "tokens": tokens, "latency_ms": latency, "ttft_ms": ttft}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("engine_dir", nargs="?", type=Path)
    p.add_argument("--requests", type=int, default=16)
    p.add_argument("--max-batch", type=int, default=4)
    p.add_argument("--limits", default="4,16,8,24,12", help="max_new_tokens of the requests, in turn")
    p.add_argument("--gaps", default="0.25,1",
                   help="times between arrivals, as fractions of one request's latency alone (measured first)")
    args = p.parse_args(argv)
    generator = open_engine_dir(args.engine_dir or default_dir(), "cpu")
    requests = workload(args.requests, [int(n) for n in args.limits.split(",")])
    for _ in range(2):  # warm-up, then the latency of a typical request alone
        alone = generator.generate([Request(IMAGES[0], PROMPTS[0], SamplingParams(max_new_tokens=12))])[0]
    alone_s = alone.timings_ms["total"] / 1e3
    print(f"{len(requests)} requests, max_batch {args.max_batch}, max_new_tokens {args.limits}; 12 tokens alone: "
          f"{alone_s * 1e3:.0f} ms ({alone.timings_ms['prefill_total']:.0f} ms prefill)")
    print(f"{'arrivals':>14} {'':10} {'wall s':>7} {'tok/s':>7} {'lat mean':>9} {'lat p99':>8} {'ttft mean':>10} "
          f"{'ttft p99':>9} {'tokens':>7}  (latencies in ms, from arrival)")
    for gap in [float(g) for g in args.gaps.split(",")]:
        arrivals = [i * gap * alone_s for i in range(len(requests))]
        runs = {"in-flight": inflight(generator, requests, arrivals, args.max_batch),
                "static": static(generator, requests, arrivals, args.max_batch)}
        differ = sum(a != b for a, b in zip(runs["in-flight"]["tokens"], runs["static"]["tokens"]))
        if differ:
            print(f"  {differ} requests got different tokens in the two runs")
        n_tokens = sum(map(len, runs["static"]["tokens"]))
        for name, r in runs.items():
            lat, ttft = np.array(r["latency_ms"]), np.array(r["ttft_ms"])
            label = f"every {gap * alone_s * 1e3:.0f} ms"
            print(f"{label:>14} {name:10} {r['wall_s']:7.2f} {n_tokens / r['wall_s']:7.1f} "
                  f"{lat.mean():9.0f} {np.percentile(lat, 99):8.0f} {ttft.mean():10.0f} {np.percentile(ttft, 99):9.0f} "
                  f"{n_tokens:7}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
