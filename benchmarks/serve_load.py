"""Load on `cli.py serve` over loopback, through its OpenAI endpoint and the official `openai` client: a bounded
set of streamed chat requests (mixed photos, prompts and token limits) from 1, 4 and 8 concurrent clients, once
with in-flight batching and once with static batching, each on a fresh server (Triton included). Then a run at
the highest concurrency with bad requests mixed into the good ones: every good one must still succeed, every bad
one get its 4xx.

Prints requests/s, tokens/s, latency and time to first token (p50/p99), errors, and whether both modes gave the
same greedy text for every request.

    python -m benchmarks.serve_load [ENGINE_DIR] [--requests 24] [--concurrency 1,4,8] [--max-batch 8]
                                    [--write-benchmarks] [--json out.json] [--render out.json]

Without ENGINE_DIR the tiny model's IVTP export (out/inflight-ivtp) is used, exported first if absent.
"""
import argparse
import base64
import json
import os
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from benchmarks.inflight_cpu import IMAGES, PROMPTS, default_dir
from benchmarks.scale_check import cpu_name, publish_section
from serving.server import free_ports

ROOT = Path(__file__).resolve().parent.parent
SECTION = "## Serving on loopback (CPU)"
LIMITS = [4, 16, 8, 24, 12]


def data_url(path: Path) -> str:
    return "data:image/jpeg;base64," + base64.b64encode(path.read_bytes()).decode()


def workload(n: int) -> list[dict]:
    urls = [data_url(p) for p in IMAGES]
    return [{"image": urls[i % len(urls)], "prompt": PROMPTS[i % len(PROMPTS)], "max_tokens": LIMITS[i % len(LIMITS)]}
            for i in range(n)]


def bad_bodies(model: str, url: str) -> list[tuple[str, bytes]]:
    """(what, body): each must come back 4xx."""
    def chat(**over):
        body = {"model": model, "messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": "What is this?"}]}],
                "max_tokens": 8, **over}
        return json.dumps(body).encode()
    return [("malformed JSON", b'{"model": '),
            ("corrupt base64", chat(messages=[{"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,@@@"}},
                {"type": "text", "text": "hi"}]}])),
            ("not an image", chat(messages=[{"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": "data:image/png;base64," + base64.b64encode(
                    b"not a png at all").decode()}}, {"type": "text", "text": "hi"}]}])),
            ("bad temperature", chat(temperature=-1)),
            ("over-long prompt", chat(messages=[{"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": "word " * 5000}]}])),
            ("wrong model", chat(model="nope"))]


class ServerProcess:
    """`cli.py serve` in a child process, up until its "ready" line."""

    def __init__(self, engine_dir: Path, batching: str, max_batch: int, log: Path):
        self.port, http, grpc, metrics = free_ports(4)
        cmd = [sys.executable, str(ROOT / "cli.py"), "serve", str(engine_dir), "--port", str(self.port),
               "--http-port", str(http), "--grpc-port", str(grpc), "--metrics-port", str(metrics),
               "--batching", batching, "--max-batch", str(max_batch), "--max-queue", "256"]
        self.log = log.open("w")
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=self.log, text=True, cwd=ROOT)
        for line in self.proc.stdout:
            self.log.write(line)
            if line.strip() == "ready":
                break
        else:
            raise RuntimeError(f"the server exited before it was ready (rc {self.proc.wait()}); see {log}")
        threading.Thread(target=lambda: [self.log.write(x) for x in self.proc.stdout], daemon=True).start()
        self.model = json.load(urllib.request.urlopen(f"http://127.0.0.1:{self.port}/v1/models"))["data"][0]["id"]

    def close(self):
        self.proc.send_signal(2)
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


def stream_one(client, model: str, item: dict) -> dict:
    start, first = time.perf_counter(), None
    text, usage = [], None
    stream = client.chat.completions.create(
        model=model, max_tokens=item["max_tokens"], stream=True, stream_options={"include_usage": True},
        messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": item["image"]}},
                                               {"type": "text", "text": item["prompt"]}]}])
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            if choice.delta.content:
                first = first or time.perf_counter()
                text.append(choice.delta.content)
    end = time.perf_counter()
    return {"text": "".join(text), "tokens": usage.completion_tokens, "latency_ms": (end - start) * 1e3,
            "ttft_ms": ((first or end) - start) * 1e3}


def level(client, model: str, items: list[dict], concurrency: int) -> dict:
    """All items through `concurrency` clients (each sends its next as soon as its last one ended)."""
    def safe(item):
        try:
            return stream_one(client, model, item)
        except Exception as e:
            return {"error": f"{type(e).__name__}: {e}"}
    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        out = list(pool.map(safe, items))
    wall = time.perf_counter() - start
    ok = [o for o in out if "error" not in o]
    lat, ttft = np.array([o["latency_ms"] for o in ok]), np.array([o["ttft_ms"] for o in ok])
    return {"concurrency": concurrency, "requests": len(items), "wall_s": wall, "errors": len(out) - len(ok),
            "first_error": next((o["error"] for o in out if "error" in o), None),
            "req_per_s": len(ok) / wall, "tok_per_s": sum(o["tokens"] for o in ok) / wall,
            "latency_p50": np.percentile(lat, 50), "latency_p99": np.percentile(lat, 99),
            "ttft_p50": np.percentile(ttft, 50), "ttft_p99": np.percentile(ttft, 99),
            "texts": [o.get("text") for o in out]}


def post(port: int, body: bytes) -> int:
    req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/chat/completions", data=body,
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            r.read()
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def mixed(client, server: ServerProcess, items: list[dict], concurrency: int) -> dict:
    """Good streamed requests with a bad one after every second good one, all at once."""
    bads = bad_bodies(server.model, items[0]["image"])
    jobs = []
    for i, item in enumerate(items):
        jobs.append(("good", item))
        if i % 2 == 1:
            jobs.append(("bad", bads[(i // 2) % len(bads)]))

    def run(job):
        kind, what = job
        if kind == "bad":
            return {"bad": what[0], "status": post(server.port, what[1])}
        try:
            return stream_one(client, server.model, what)
        except Exception as e:
            return {"error": f"{type(e).__name__}: {e}"}
    with ThreadPoolExecutor(concurrency) as pool:
        out = list(pool.map(run, jobs))
    good = [o for o in out if "bad" not in o]
    bad = [o for o in out if "bad" in o]
    return {"good": len(good), "good_ok": sum("error" not in o for o in good), "bad": len(bad),
            "bad_4xx": sum(400 <= o["status"] < 500 for o in bad),
            "bad_statuses": sorted({f"{o['bad']}: {o['status']}" for o in bad}),
            "texts": [o.get("text") for o in good]}


def run_mode(engine_dir, batching, args, items, logs: Path) -> dict:
    import openai
    server = ServerProcess(engine_dir, batching, args.max_batch, logs / f"serve-{batching}.log")
    try:
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{server.port}/v1", api_key="unused", max_retries=0,
                               timeout=600)
        stream_one(client, server.model, items[0])  # warm-up
        levels = [level(client, server.model, items, c) for c in args.concurrency]
        for r in levels:
            print(f"  {batching:9} concurrency {r['concurrency']}: {r['req_per_s']:.2f} req/s, "
                  f"{r['tok_per_s']:.1f} tok/s, latency p50 {r['latency_p50']:.0f} ms, errors {r['errors']}",
                  flush=True)
        result = {"levels": levels}
        if batching == "inflight":
            result["mixed"] = mixed(client, server, items, max(args.concurrency))
        return result
    finally:
        server.close()


def table(results: dict, args) -> list[str]:
    lines = [SECTION, "", f"`python -m benchmarks.serve_load` ({results['requests']} streamed requests per row through "
             "the OpenAI endpoint and the `openai` client, over loopback; max_tokens "
             f"{','.join(map(str, LIMITS))} in turn; {len(IMAGES)} photos and {len(PROMPTS)} prompts in turn; "
             f"max_batch {args.max_batch}; engines {results['engine_dir']}, ONNX Runtime CPU, on {results['cpu']}). "
             "Latency and time to first token are per request, from its send.", "",
             "| batching | clients | req/s | tok/s | latency p50 / p99 ms | TTFT p50 / p99 ms | errors |",
             "|---|---|---|---|---|---|---|"]
    for mode in ("inflight", "static"):
        for r in results[mode]["levels"]:
            lines.append(f"| {mode} | {r['concurrency']} | {r['req_per_s']:.2f} | {r['tok_per_s']:.1f} | "
                         f"{r['latency_p50']:.0f} / {r['latency_p99']:.0f} | {r['ttft_p50']:.0f} / {r['ttft_p99']:.0f} "
                         f"| {r['errors']} |")
    lines += ["", f"Greedy text identical in both modes for {results['same_text']} of {results['compared']} requests.",
              "", "In-flight batching admits a request at the next decode step, so its first token comes after its own "
              "prefill; a static batch's requests wait for the batch before them. In-flight prefills each newcomer "
              "alone, while a static batch prefills its requests together, which costs less per request where "
              "prefill dominates a request's time."]
    m = results["inflight"].get("mixed")
    if m:
        lines += ["", f"With bad requests mixed in (in-flight, {max(args.concurrency)} clients): {m['good_ok']} of "
                  f"{m['good']} good requests succeeded, {m['bad_4xx']} of {m['bad']} bad ones got a 4xx "
                  f"({'; '.join(m['bad_statuses'])}); the good ones' text equals the clean run's for "
                  f"{results['mixed_same']} of {m['good']}."]
    return lines + [""]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("engine_dir", nargs="?", type=Path)
    p.add_argument("--requests", type=int, default=24)
    p.add_argument("--concurrency", type=lambda s: [int(c) for c in s.split(",")], default=[1, 4, 8])
    p.add_argument("--max-batch", type=int, default=8)
    p.add_argument("--write-benchmarks", action="store_true", help=f"put the table into BENCHMARKS.md ({SECTION})")
    p.add_argument("--json", type=Path, help="also save the raw results")
    p.add_argument("--logs", type=Path, default=ROOT / "out" / "serve-load-logs")
    p.add_argument("--render", type=Path, metavar="JSON", help="only print (or write) the table of saved results")
    args = p.parse_args(argv)
    if args.render:
        return publish_section(SECTION, table(json.loads(args.render.read_text()), args), args.write_benchmarks)
    engine_dir = args.engine_dir or default_dir()
    args.logs.mkdir(parents=True, exist_ok=True)
    items = workload(args.requests)
    results = {"requests": len(items), "engine_dir": engine_dir.name, "cpu": f"{cpu_name()}, {os.cpu_count()} cores"}
    for mode in ("inflight", "static"):
        print(f"{mode} batching:", flush=True)
        results[mode] = run_mode(engine_dir, mode, args, items, args.logs)
    pairs = [(a, b) for la, lb in zip(results["inflight"]["levels"], results["static"]["levels"])
             for a, b in zip(la["texts"], lb["texts"])]
    results["same_text"], results["compared"] = sum(a == b and a is not None for a, b in pairs), len(pairs)
    mixed_texts = results["inflight"].get("mixed", {}).get("texts", [])
    clean = results["inflight"]["levels"][-1]["texts"]
    results["mixed_same"] = sum(a == b and a is not None for a, b in zip(mixed_texts, clean))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1, default=float))
    return publish_section(SECTION, table(results, args), args.write_benchmarks)


if __name__ == "__main__":
    sys.exit(main())
