"""What a user meets at LLaVA-1.5-7B's real widths (hidden 4096, MLP 11008, vocab 32064, ViT-L/14-336) with
fewer decoder layers: export's peak memory and time, the engine dir's bytes against the checkpoint's, and what
`cli.py run` costs (start, peak memory, prefill, decode per token), then the same numbers extrapolated to the
real 32 layers, labelled as such.

    python -m benchmarks.scale_check [--layers 4] [--dtype fp16,fp32] [--method ivtp,none]
        [--cache /tmp/scale] [--json FILE] [--write-benchmarks] [--full-export ivtp:fp16]

Every step runs in its own process under /usr/bin/time -v (peak RSS, wall time), one at a time, each started
only when enough memory is available (--min-free-gib); an export that fails, is killed or runs past
--export-timeout is recorded with its exit code and its last error line, and the script goes on. The random
llava-hf / OpenAI-CLIP pair (export/models/llava_hf_layout.py) is built once under --cache and reused.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from export.models.llava_hf_layout import LLAVA_1_5_7B, TINY_LAYOUT, LlavaHfGeometry, llava_hf_keys, openai_clip_keys

ROOT = Path(__file__).resolve().parent.parent
SECTION = "## Scale check"
IMAGE = ROOT / "assets" / "images" / "chelsea.jpg"
PROMPT = "What is in the image? Describe it in detail."
REAL_LAYERS = LLAVA_1_5_7B.llm_layers
GEOMETRIES = {"llava-1.5-7b": LLAVA_1_5_7B, "tiny": TINY_LAYOUT}  # tiny: seconds, to try the script itself
CLIP_VOCAB = 49408  # openai/clip-vit-large-patch14-336's tokenizer
BYTES = {"fp32": 4, "fp16": 2}
GIB = 2**30


# --------------------------------------------------------------------------- bytes from the geometry


def decoder_layer_params(g: LlavaHfGeometry) -> int:
    """One LLaMA decoder layer: q, k, v, o, gate, up, down and its two RMSNorms."""
    keys = llava_hf_keys(dataclasses.replace(g, llm_layers=1))
    return sum(math.prod(s) for k, s in keys.items() if k.startswith("language_model.model.layers.0."))


def weight_bytes(g: LlavaHfGeometry) -> dict:
    """fp16 bytes of what the engine dir is made from: every LLaVA tensor, and (for methods with a text encoder)
    CLIP's text tower with both projections; the vision layers past the feature layer are counted too (the
    checkpoint carries them)."""
    llava = sum(math.prod(s) for s in llava_hf_keys(g).values())
    clip_text = sum(math.prod(s) for k, s in openai_clip_keys(g, CLIP_VOCAB).items()
                    if (k.startswith("text_model.") or k.endswith("_projection.weight") or k == "logit_scale")
                    and not k.endswith("position_ids"))
    qkv = sum(math.prod(s) for k, s in llava_hf_keys(dataclasses.replace(g, llm_layers=1)).items()
              if k.startswith("language_model.model.layers.0.self_attn.") and k.split(".")[-2] in ("q_proj", "k_proj", "v_proj"))
    return {"llava_fp16": 2 * llava, "clip_text_and_projections_fp16": 2 * clip_text, "qkv_fp16": 2 * qkv, "qkv_fp32": 4 * qkv,
            "decoder_layer_fp32": 4 * decoder_layer_params(g), "decoder_layer_fp16": 2 * decoder_layer_params(g)}


# --------------------------------------------------------------------------- processes


def available_gib() -> float:
    with open("/proc/meminfo") as f:
        return int(next(line for line in f if line.startswith("MemAvailable:")).split()[1]) * 1024 / GIB


def wait_for_memory(need_gib: float, what: str, wait_s: float) -> float | None:
    """MemAvailable once it is at least need_gib (polled for up to wait_s), else None."""
    deadline = time.monotonic() + wait_s
    while True:
        free = available_gib()
        if free >= need_gib:
            return free
        if time.monotonic() >= deadline:
            print(f"[scale] {what}: only {free:.1f} GiB available (need {need_gib}); skipped", file=sys.stderr)
            return None
        print(f"[scale] {what}: {free:.1f} GiB available, waiting for {need_gib}", file=sys.stderr, flush=True)
        time.sleep(30)


def _time_v(path: Path) -> dict:
    """Peak RSS, wall time and exit status from /usr/bin/time -v's report."""
    text = path.read_text() if path.is_file() else ""
    out = {}
    if m := re.search(r"Maximum resident set size \(kbytes\): (\d+)", text):
        out["peak_rss_bytes"] = int(m.group(1)) * 1024
    if m := re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): ([\d:.]+)", text):
        secs = 0.0
        for part in m.group(1).split(":"):
            secs = secs * 60 + float(part)
        out["wall_s"] = secs
    if m := re.search(r"Command terminated by signal (\d+)", text):
        out["signal"] = int(m.group(1))
    if m := re.search(r"Exit status: (\d+)", text):
        out["time_exit_status"] = int(m.group(1))
    return out


def last_error(log: Path) -> str | None:
    """The log's last line that reads like an error, else its last non-empty line."""
    lines = [line.strip() for line in log.read_text(errors="replace").splitlines() if line.strip()] if log.is_file() else []
    for line in reversed(lines):
        if re.match(r"(error|\w*Error|\w*Exception|Killed|Traceback|RuntimeError|MemoryError)", line):
            return line[:400]
    return lines[-1][:400] if lines else None


def timed(cmd: list[str], log: Path, timeout_s: float) -> dict:
    """Runs cmd under /usr/bin/time -v in its own process group, stdout and stderr to `log`; returns exit code,
    wall time, peak RSS, and the stdout text. Past timeout_s the whole group is killed and timed_out is set."""
    report = log.with_suffix(".time")
    report.unlink(missing_ok=True)
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    out_path = log.with_suffix(".stdout")
    start = time.perf_counter()
    with open(log, "w") as err, open(out_path, "w") as out:
        proc = subprocess.Popen(["/usr/bin/time", "-v", "-o", str(report), *cmd], stdout=out, stderr=err, cwd=ROOT,
                                env=env, start_new_session=True)
        try:
            rc, timed_out = proc.wait(timeout=timeout_s), False
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            rc, timed_out = proc.returncode, True
    result = {"cmd": " ".join(cmd), "exit_code": rc, "timed_out": timed_out,
              "wall_s": round(time.perf_counter() - start, 2), **_time_v(report), "log": str(log)}
    result["wall_s"] = round(result["wall_s"], 2)
    if rc != 0:
        result["error"] = ("timed out after %.0f s" % timeout_s) if timed_out else last_error(log)
    result["stdout"] = out_path.read_text(errors="replace")
    return result


def python() -> str:
    return sys.executable


# --------------------------------------------------------------------------- steps


def build_pair(cache: Path, name: str, g: LlavaHfGeometry, timeout_s: float) -> tuple[Path, dict]:
    """The llava-hf / CLIP pair at geometry g under cache (built once: a 'complete' marker says it finished)."""
    pair = cache / f"pair-{name}-{g.llm_layers}-layers"
    if (pair / "complete").is_file():
        return pair, json.loads((pair / "complete").read_text())
    shutil.rmtree(pair, ignore_errors=True)
    code = ("import dataclasses, sys\n"
            "from export.models.llava_hf_layout import LlavaHfGeometry, build_llava_hf_pair\n"
            f"build_llava_hf_pair(sys.argv[1], LlavaHfGeometry(**{dataclasses.asdict(g)!r}))\n")
    r = timed([python(), "-c", code, str(pair)], cache / "logs" / "build.log", timeout_s)
    r.pop("stdout")
    if r["exit_code"] != 0:
        raise SystemExit(f"building the checkpoint pair failed: {r.get('error')} (log: {r['log']})")
    r["bytes"] = dir_bytes(pair)
    (pair / "complete").write_text(json.dumps(r, indent=1))
    return pair, r


def dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


def method_knobs(method: str, layers: int) -> list[str]:
    """IVTP prunes in its first W decoder layers (default 12), and at least one layer must follow: with fewer
    than 13 layers, W is the layers but the last (one GTP group of 3 at 4 layers)."""
    if method == "ivtp" and layers <= 12:
        return ["--llm-layers", str(layers - 1)]
    return []


def export_step(pair: Path, method: str, dtype: str, layers: int, out: Path, logs: Path, timeout_s: float) -> dict:
    cmd = [python(), "cli.py", "export", "--method", method, "--model", str(pair / "llava"), "--clip",
           str(pair / "clip"), "--out", str(out), "--dtype", dtype, "--force", *method_knobs(method, layers)]
    r = timed(cmd, logs / f"export-{method}-{dtype}-{layers}-layers.log", timeout_s)
    r.pop("stdout")
    return r


def engine_dir_facts(out: Path) -> dict:
    m = json.loads((out / "manifest.json").read_text())
    files = {p.relative_to(out).as_posix(): p.stat().st_size for p in sorted(out.rglob("*")) if p.is_file()}
    return {"bytes": sum(files.values()), "files": files, "vision_tokens_out": m.get("vision_tokens_out"),
            "text_encoder": "clip" in (m.get("tokenizers") or {}), "graphs": sorted(m.get("graphs", {})),
            "weights": initializer_bytes(out, sorted(m.get("graphs", {})))}


START_CODE = """import json, sys, time
t0 = time.perf_counter()
from runtime.load import open_engine_dir
t1 = time.perf_counter()
generator = open_engine_dir(sys.argv[1], "cpu")
t2 = time.perf_counter()
print(json.dumps({"import_s": t1 - t0, "open_s": t2 - t1}))
"""


def start_step(out: Path, logs: Path, tag: str, timeout_s: float) -> dict:
    """open_engine_dir alone, in a fresh process: what a user waits for before the first request (the page
    cache is warm: the files were just written)."""
    r = timed([python(), "-c", START_CODE, str(out)], logs / f"start-{tag}.log", timeout_s)
    if r["exit_code"] == 0:
        r.update(json.loads(r["stdout"].strip().splitlines()[-1]))
    r.pop("stdout")
    return r


def run_step(out: Path, logs: Path, tag: str, max_new_tokens: int, timeout_s: float) -> dict:
    cmd = [python(), "cli.py", "run", str(out), "--image", str(IMAGE), "--prompt", PROMPT, "--max-new-tokens",
           str(max_new_tokens), "--provider", "cpu", "--json"]
    r = timed(cmd, logs / f"run-{tag}.log", timeout_s)
    stdout = r.pop("stdout")
    if r["exit_code"] == 0:
        res = json.loads(stdout.strip().splitlines()[-1])
        t = res["timings_ms"]
        steps = max(len(res["token_ids"]) - 1, 0)  # the first token comes from prefill's logits
        r.update({"timings_ms": t, "prefill_ms": t["prefill_total"], "decode_steps": steps,
                  "decode_ms_per_token": t["decode_total"] / steps if steps else None,
                  "kv_cache_bytes": res["kv_cache_bytes"], "new_tokens": len(res["token_ids"]),
                  "prompt_tokens": len(res["input_ids"]), "stages": [(s["name"], len(s["kept"])) for s in res["stages"]]})
    return r


def run_result(entry: dict) -> dict | None:
    """The `cli.py run --json` result of an entry's run, from the stdout its log left beside it."""
    run = entry.get("run") or {}
    path = Path(run["log"]).with_suffix(".stdout") if run.get("exit_code") == 0 and run.get("log") else None
    if path is None or not path.is_file():
        return None
    return json.loads(path.read_text().strip().splitlines()[-1])


def dtype_agreement(entries: list[dict]) -> list[str]:
    """Per method run at both dtypes: how many greedy tokens fp16 and fp32 share before they part, and how much of
    fp32's kept set each stage's fp16 set holds."""
    lines = []
    for method in dict.fromkeys(e["method"] for e in entries):
        runs = {e["dtype"]: run_result(e) for e in entries if e["method"] == method}
        if runs.get("fp16") is None or runs.get("fp32") is None:
            continue
        a, b = runs["fp16"]["token_ids"], runs["fp32"]["token_ids"]
        same = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
        kept32 = {s["name"]: set(s["kept"]) for s in runs["fp32"]["stages"]}
        overlaps = [f"{s['name']} {len(set(s['kept']) & kept32[s['name']]) / max(len(kept32[s['name']]), 1):.3f}"
                    for s in runs["fp16"]["stages"]]
        lines.append(f"- `{method}`: fp16 and fp32 give the same first {same} of {len(b)} greedy tokens"
                     + (f"; fp16 keeps these shares of fp32's tokens: {', '.join(overlaps)}" if overlaps else ""))
    return (["fp16 against fp32 on the same run (the checkpoint is stored in fp16, so the weights are the same and "
             "only the activations' rounding differs):", "", *lines, ""] if lines else [])


def full_export_lines(full: dict | None) -> list[str]:
    if not full:
        return []
    ex = full["export"]
    if ex.get("exit_code") != 0:
        return [f"**The full {REAL_LAYERS} layers, exported** (`{full['method']}`, {full['dtype']}): failed, "
                f"{status(ex)}.", ""]
    return [f"**The full {REAL_LAYERS} layers, exported and validated** (`--full-export {full['method']}:"
            f"{full['dtype']}`, measured): peak RSS {gib(ex['peak_rss_bytes'])} GiB, {ex['wall_s'] / 60:.1f} min, "
            f"engine dir {gib(full['bytes'])} GiB = {full['bytes'] / full['reference_fp16_bytes']:.3f}x the fp16 "
            f"weights it is made from ({full['reference_fp16_bytes'] / 1e9:.2f} GB).", ""]


def full_export(cache: Path, g32: LlavaHfGeometry, spec: str, wb32: dict, logs: Path, args) -> dict:
    """Exports the real 32 layers once (the pair is built under cache first), measures it, deletes the dir."""
    method, dtype = spec.split(":")
    pair, _ = build_pair(cache, "llava-1.5-7b", g32, args.step_timeout)
    out = cache / "engines" / f"{method}-{dtype}-{REAL_LAYERS}-layers"
    print(f"[scale] full export {method} {dtype}", file=sys.stderr, flush=True)
    result = {"method": method, "dtype": dtype,
              "export": export_step(pair, method, dtype, REAL_LAYERS, out, logs, args.export_timeout)}
    if result["export"]["exit_code"] == 0:
        facts = engine_dir_facts(out)
        result["bytes"] = facts["bytes"]
        result["reference_fp16_bytes"] = wb32["llava_fp16"] + (
            wb32["clip_text_and_projections_fp16"] if facts["text_encoder"] else 0)
    shutil.rmtree(out, ignore_errors=True)
    return result


def verify_step(out: Path, logs: Path, tag: str, timeout_s: float) -> dict:
    r = timed([python(), "cli.py", "verify", str(out)], logs / f"verify-{tag}.log", timeout_s)
    r.pop("stdout")
    return r


# --------------------------------------------------------------------------- extrapolation and tables


def initializer_bytes(out: Path, graphs: list[str]) -> dict:
    """Per graph, the bytes of its weights in the decoder layers (initializers named *.lm.layers.N.* and the packed
    q/k/v *.lm.qkv.N) and the rest, read from the .onnx files without their .data."""
    import onnx
    from onnx.helper import tensor_dtype_to_np_dtype
    out_bytes = {}
    for g in graphs:
        model = onnx.load(str(out / f"{g}.onnx"), load_external_data=False)
        layers = rest = 0
        for t in model.graph.initializer:
            n = math.prod(t.dims) * tensor_dtype_to_np_dtype(t.data_type).itemsize
            if re.search(r"(^|\.)lm\.(layers\.\d+\.|qkv\.\d+$)", t.name):  # LLaMA's, not the ViT's or CLIP text's
                layers += n
            else:
                rest += n
        out_bytes[g] = {"decoder_layers": layers, "other": rest}
    return out_bytes


def layer_graphs(entry: dict) -> list[str]:
    return [g for g, b in entry["engine_dir"]["weights"].items() if b["decoder_layers"]]


def extrapolate(entry: dict, layers: int, wb: dict) -> dict:
    """The 32-layer numbers from the `layers`-layer ones. Exact: the engine dir's size, adding the geometry's
    bytes per decoder layer times the copies of the layers the dir holds (measured from the graphs' weights).
    Estimates, linear in bytes: verify's and start's times. Run's peak RSS: the measured one plus the added bytes
    times run's RSS over the engine dir's bytes, rounded (the weights held whole, the rest not growing: fp16 on
    ONNX Runtime CPU is held at fp32 size, 2). Export's peak RSS: the measured one plus, per added layer, its bytes
    once (torch holds the checkpoint; validation reads torch's tensors) and its q, k and v once more (packed into
    one matrix while the checkpoint's pages stay mapped). `--full-export` measures it instead.
    Estimates, linear in layers: the decoder-layer share of the prefill graphs' time and of a decode step's (by
    bytes, as a decode step reads every weight of the decoder graphs and the LM head once: the head does not
    grow); the vision tower, text encoder, embedding and Python stay as measured."""
    dtype, extra = entry["dtype"], REAL_LAYERS - layers
    per_layer = wb[f"decoder_layer_{dtype}"]
    disk, weights = entry["engine_dir"]["bytes"], entry["engine_dir"]["weights"]
    added = extra * per_layer * entry["layer_copies"]
    out = {"layers": REAL_LAYERS, "engine_dir_bytes": disk + added, "layer_bytes_on_disk": per_layer * entry["layer_copies"]}
    scale = out["engine_dir_bytes"] / disk
    if (v := entry.get("verify", {})).get("exit_code") == 0:
        out["verify_s"] = v["wall_s"] * scale
    if (s := entry.get("start", {})).get("exit_code") == 0:
        out["start_s"] = s["wall_s"] * scale
        out["open_s"] = s["open_s"] * scale
    if (r := entry.get("run", {})).get("exit_code") == 0:
        out["run_rss_multiple"] = r["peak_rss_bytes"] / disk
        held = max(1, round(out["run_rss_multiple"]))
        out["run_peak_rss_bytes"] = r["peak_rss_bytes"] + added * held
        if (ex := entry.get("export", {})).get("exit_code") == 0:
            out["export_peak_rss_bytes"] = ex["peak_rss_bytes"] + extra * (per_layer + wb[f"qkv_{dtype}"])
        t = r["timings_ms"]
        prefill_layers_ms = sum(t.get(g, 0.0) for g in layer_graphs(entry))  # decode steps are timed as "decode"
        out["prefill_ms"] = r["prefill_ms"] + prefill_layers_ms * extra / layers
        step = [b for g, b in weights.items() if g.startswith("decoder.") or g == "lm_head"]
        if r["decode_ms_per_token"] and step:
            in_layers = sum(b["decoder_layers"] for b in step)
            share = in_layers / (in_layers + sum(b["other"] for b in step))
            per_tok = t.get("decode", 0.0) / r["decode_steps"]
            out["decode_ms_per_token"] = r["decode_ms_per_token"] + per_tok * share * extra / layers
        if entry["method"] == "none":
            out["kv_cache_bytes"] = r["kv_cache_bytes"] * REAL_LAYERS // layers
    return out


def layer_copies(entry: dict, wb: dict, layers: int) -> float:
    """How many times the decoder layers are in the engine dir: their bytes in all graphs over the geometry's."""
    total = sum(b["decoder_layers"] for b in entry["engine_dir"]["weights"].values())
    return round(total / (layers * wb[f"decoder_layer_{entry['dtype']}"]), 3)


def gib(n) -> str:
    return "-" if n is None else f"{n / GIB:.2f}"


def fmt(v, spec="{:.0f}") -> str:
    return "-" if v is None else spec.format(v)


def status(step: dict | None) -> str | None:
    if not step:
        return None
    if step.get("skipped"):
        return f"skipped: {step['skipped']}"
    if step.get("exit_code") != 0:
        return f"exit {step.get('exit_code')}{' (timed out)' if step.get('timed_out') else ''}: {step.get('error')}"
    return None


def rss_with_multiple(run: dict, engine_dir: dict) -> str:
    if not run.get("peak_rss_bytes"):
        return "-"
    return f"{gib(run['peak_rss_bytes'])} ({run['peak_rss_bytes'] / engine_dir['bytes']:.2f})"


def visual_tokens(engine_dir: dict, run: dict) -> str:
    """Into the LLM, and (where the LLM prunes) what its last layers see, e.g. 120 -> 64."""
    into = engine_dir.get("vision_tokens_out")
    llm = [n for name, n in run.get("stages", []) if name.startswith("llm")]
    return "-" if into is None else f"{into} -> {llm[-1]}" if llm else str(into)


def tables(results: dict) -> list[str]:
    rows = ["| dtype | method | visual tokens into LLM (-> last layers) | export wall | export peak RSS GiB | engine dir GiB "
            "(x fp16 weights) | start s (open) | run peak RSS GiB (x engine dir) | prefill ms | decode ms/token | KV cache MiB "
            "| verify s |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    notes = []
    for e in results["entries"]:
        ex, ed, st, ru, ve = (e.get(k) or {} for k in ("export", "engine_dir", "start", "run", "verify"))
        ref = e.get("reference_fp16_bytes")
        disk = f"{gib(ed.get('bytes'))} ({ed['bytes'] / ref:.3f})" if ed.get("bytes") and ref else "-"
        ok = lambda s: s.get("exit_code") == 0  # noqa: E731
        rows.append(
            f"| {e['dtype']} | {e['method']} | {visual_tokens(ed, ru)} "
            f"| {fmt(ex.get('wall_s') / 60 if ex.get('wall_s') else None, '{:.1f} min')} "
            f"| {gib(ex.get('peak_rss_bytes'))}{'' if ok(ex) else ' (failed)'} | {disk} "
            f"| {fmt(st.get('wall_s') if ok(st) else None, '{:.1f}')} ({fmt(st.get('open_s'), '{:.1f}')}) "
            f"| {rss_with_multiple(ru if ok(ru) else {}, ed)} | {fmt(ru.get('prefill_ms'))} "
            f"| {fmt(ru.get('decode_ms_per_token'), '{:.1f}')} | {fmt(ru.get('kv_cache_bytes') and ru['kv_cache_bytes'] / 2**20, '{:.1f}')} "
            f"| {fmt(ve.get('wall_s') if ok(ve) else None, '{:.1f}')} |")
        for step in ("export", "start", "run", "verify"):
            if s := status(e.get(step)):
                notes.append(f"- {e['dtype']} {e['method']} {step}: {s}")
    out = rows + ([""] + notes if notes else [])
    ext = [e for e in results["entries"] if e.get("extrapolated")]
    if ext:
        out += ["", f"**Extrapolated to {REAL_LAYERS} layers** (not measured):", "",
                "| dtype | method | engine dir GiB (x 32-layer fp16 weights) | decoder layer copies on disk "
                "| export peak RSS GiB (estimate) | run peak RSS GiB | start s | verify s | prefill ms | decode ms/token | KV cache MiB |",
                "|---|---|---|---|---|---|---|---|---|---|---|"]
        for e in ext:
            x = e["extrapolated"]
            ref = e["reference_fp16_bytes_32"]
            out.append(f"| {e['dtype']} | {e['method']} | {gib(x['engine_dir_bytes'])} ({x['engine_dir_bytes'] / ref:.3f}) "
                       f"| {e['layer_copies']} | {gib(x.get('export_peak_rss_bytes'))} "
                       f"| {gib(x.get('run_peak_rss_bytes'))} | {fmt(x.get('start_s'), '{:.1f}')} "
                       f"| {fmt(x.get('verify_s'), '{:.1f}')} | {fmt(x.get('prefill_ms'))} "
                       f"| {fmt(x.get('decode_ms_per_token'), '{:.1f}')} "
                       f"| {fmt(x.get('kv_cache_bytes') and x['kv_cache_bytes'] / 2**20, '{:.1f}')} |")
    return out


def section(results: dict) -> list[str]:
    g, wb, L = results["geometry"], results["weight_bytes"], results["layers"]
    m = results["machine"]
    warning = [] if results["geometry_name"] == "llava-1.5-7b" else [
        f"**Geometry {results['geometry_name']}, not LLaVA-1.5-7B's: a trial of the script, not a measurement.**", ""]
    geometry = "" if not warning else f" --geometry {results['geometry_name']}"
    seen = sorted({e["layer_copies"] for e in results["entries"] if "layer_copies" in e})
    copies = f": {' or '.join(f'{c:g}' for c in seen)} here" if seen else ""
    if seen == [1]:
        copies += ", each segment's decoder graph serving its prefill and decode"
    return [
        SECTION, "", *warning,
        f"LLaVA-1.5-7B's widths (LLM hidden {g['llm_hidden']}, MLP {g['llm_intermediate']}, vocab 32064; ViT "
        f"{g['vit_hidden']} wide with {g['vit_layers']} layers at {g['image_size']}px / {g['patch_size']}; CLIP text "
        f"tower {g['text_hidden']} wide with {g['text_layers']} layers) with **{L} of its {REAL_LAYERS} decoder "
        f"layers**, random "
        f"fp16 weights in the llava-hf file layout (export/models/llava_hf_layout.py). Measured {results['date']} on "
        f"{m['cpu']}, {m['cores']} cores, {m['mem_gib']:.0f} GiB RAM (shared with other work), ONNX Runtime CPU, by "
        f"`python -m benchmarks.scale_check{geometry} --layers {L} --dtype {','.join(results['dtypes'])} "
        f"--method {','.join(results['methods'])}`; one run each, not medians.",
        "",
        f"Each step is its own process under `/usr/bin/time -v`: export (`cli.py export --dtype D`, which runs the "
        f"PyTorch reference and validates every graph on ONNX Runtime), start (`open_engine_dir` alone in a fresh "
        f"process: wall time including Python's imports, and in brackets the open itself; the page cache is warm, "
        f"the files were just written), run (`cli.py run` on assets/images/chelsea.jpg, "
        f"{results['max_new_tokens']} new tokens, prefill and decode from its timings_ms, decode per token over the "
        f"decode-graph steps) and verify (`cli.py verify`: the sha256 of every file, which `run` no longer does at "
        f"start). IVTP at {L} layers prunes in the first {L - 1} (`--llm-layers {L - 1}`, one GTP group); its "
        f"ViT stage and keep 64 are the defaults.",
        "",
        f"The ratio in brackets is the engine dir's bytes over the fp16 bytes of what it is made from, computed from "
        f"the geometry: the LLaVA checkpoint ({wb['llava_fp16'] / 1e9:.3f} GB at {L} layers), plus CLIP's text tower "
        f"and both projections ({wb['clip_text_and_projections_fp16'] / 1e9:.3f} GB) for methods with a text "
        f"encoder. The last ViT layer and post-layernorm (past LLaVA's feature layer -2) are in the checkpoint but "
        f"need not be in the engine dir.",
        "",
        *tables(results),
        "",
        *dtype_agreement(results["entries"]),
        *full_export_lines(results.get("full_export")),
        f"What scales with the decoder layers, and how the {REAL_LAYERS}-layer row is made: a decoder layer is "
        f"exactly {wb['decoder_layer_fp32']:,} bytes in fp32 and {wb['decoder_layer_fp16']:,} in fp16 (from the "
        f"geometry); the engine dir's size adds {REAL_LAYERS - L} of them times the number of copies of the decoder "
        f"layers the dir holds (counted from the graphs' initializers{copies}), so that column is exact up to graph "
        f"overhead. "
        f"Estimates: verify's and start's times are scaled by the engine dir's bytes. Run's peak RSS adds the added "
        f"bytes times run's RSS over the engine dir's bytes rounded to a whole number (every graph's weights are held "
        f"from start; fp16's at fp32 size, below), the rest taken not to grow. Export's peak RSS is the measured one "
        f"plus, per added layer, its bytes once (torch holds the checkpoint; each graph is validated on torch's "
        f"tensors, which go once validated) and its q, k and v once more (packed into one matrix while the "
        f"checkpoint's pages stay mapped). Prefill adds the prefill segments' "
        f"measured ms per layer, decode the decode graph's, its layers' share by bytes (the LM head does not grow); "
        f"the vision tower, text encoder, embedding and Python stay as measured. For IVTP the {REAL_LAYERS}-layer "
        f"schedule (W 12, four groups) differs from the {L}-layer one, so its prefill is rougher. The KV cache is "
        f"extrapolated for `none` only (linear in layers; IVTP's depends on its schedule). Export's wall time is "
        f"not extrapolated.",
        "",
        *memory_note(results),
    ]


def memory_note(results: dict) -> list[str]:
    """Run's peak RSS over the engine dir's bytes, per dtype; and why fp16's is about twice, where it is."""
    multiples = {}
    for e in results["entries"]:
        if (r := e.get("run") or {}).get("exit_code") == 0 and e.get("engine_dir"):
            multiples.setdefault(e["dtype"], []).append(r["peak_rss_bytes"] / e["engine_dir"]["bytes"])
    if not multiples:
        return []
    parts = [f"{d} {min(m):.2f}-{max(m):.2f}x" if len(m) > 1 else f"{d} {m[0]:.2f}x" for d, m in multiples.items()]
    note = f"Run's peak RSS over the engine dir's bytes: {', '.join(parts)}."
    if min(multiples.get("fp16", [0])) > 1.6:
        note += (" ONNX Runtime's CPU provider has no fp16 MatMul kernel here: it inserts casts and folds each fp16 "
                 "weight into an fp32 copy at session creation (seen in the optimized model of a one-MatMul fp16 "
                 "graph), so on CPU an fp16 engine dir halves the disk and the verify time, not the memory.")
    return [note, ""]


def replace_named_section(text: str, heading: str, lines: list[str]) -> str:
    """text with its `heading` section (up to the next '## ' heading) replaced by lines, or lines appended."""
    body = "\n".join(lines).rstrip("\n") + "\n"
    start = text.find("\n" + heading + "\n")
    if start < 0:
        return text.rstrip("\n") + "\n\n" + body
    end = text.find("\n## ", start + 1)
    return text[:start + 1] + body + ("\n" + text[end + 1:] if end >= 0 else "")


def write_benchmarks_section(heading: str, lines: list[str]) -> int:
    """Puts the section into BENCHMARKS.md (replaced in place, or appended) and prints it."""
    path = ROOT / "BENCHMARKS.md"
    path.write_text(replace_named_section(path.read_text() if path.is_file() else "", heading, lines))
    print("\n".join(lines))
    return 0


def publish_section(heading: str, lines: list[str], write: bool) -> int:
    """Into BENCHMARKS.md (and printed) when `write`, else printed only."""
    if write:
        return write_benchmarks_section(heading, lines)
    print("\n".join(lines))
    return 0


def replace_section(text: str, lines: list[str]) -> str:
    return replace_named_section(text, SECTION, lines)


# sections other scripts write, each far slower to redo
CARRIED = (SECTION, "## Against onnxruntime-genai", "## IVTP prefill against its FLOPs", "## Quantization on CPU",
           "## INT4 at 7B geometry", "## Serving on loopback (CPU)", "## Accuracy against speed (demo model)")


def carry_section(old: str, new: str) -> str:
    """new, with old's CARRIED sections kept (methods_cpu rewrites BENCHMARKS.md whole)."""
    for heading in CARRIED:
        start = old.find("\n" + heading + "\n")
        if start >= 0:
            end = old.find("\n## ", start + 1)
            new = replace_named_section(new, heading, old[start + 1:end if end >= 0 else None].splitlines())
    return new


# --------------------------------------------------------------------------- main


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--layers", type=int, default=4, help="decoder layers (the real model has 32)")
    p.add_argument("--geometry", choices=sorted(GEOMETRIES), default="llava-1.5-7b",
                   help="widths; tiny only tries the script (its numbers mean nothing at 7B)")
    p.add_argument("--dtype", default="fp16,fp32", help="comma-separated, in order")
    p.add_argument("--method", default="ivtp,none", help="comma-separated, in order")
    p.add_argument("--cache", type=Path, default=Path("/tmp/scale"), help="checkpoint pair, engine dirs, logs")
    p.add_argument("--json", type=Path, default=None, help="results file (default: CACHE/scale_check.json)")
    p.add_argument("--max-new-tokens", type=int, default=16)
    p.add_argument("--min-free-gib", type=float, default=12.0, help="MemAvailable needed before each heavy step")
    p.add_argument("--wait-memory-s", type=float, default=600, help="how long to wait for it before skipping")
    p.add_argument("--export-timeout", type=float, default=35 * 60, help="seconds; past it the export is killed")
    p.add_argument("--step-timeout", type=float, default=20 * 60, help="seconds, for build, start, run, verify")
    p.add_argument("--clean", action="store_true", help="delete each engine dir once measured")
    p.add_argument("--write-benchmarks", action="store_true", help="replace or append the section in BENCHMARKS.md")
    p.add_argument("--from-json", type=Path, help="measure nothing: the tables of an earlier run's results file")
    p.add_argument("--full-export", metavar="METHOD:DTYPE", help="only export all 32 layers once, e.g. ivtp:fp16, "
                   "and add it to the results file (the 32-layer pair takes 16 GB of disk under --cache, the dir 15 "
                   "GB until measured)")
    args = p.parse_args(argv)
    if args.from_json:
        return report(json.loads(args.from_json.read_text()), args.write_benchmarks)
    if not 1 <= args.layers <= REAL_LAYERS:
        p.error(f"--layers must be in 1..{REAL_LAYERS}")
    if args.max_new_tokens < 2:
        p.error("--max-new-tokens must be at least 2 (decode is timed per token)")
    dtypes, methods = args.dtype.split(","), args.method.split(",")
    if bad := [d for d in dtypes if d not in BYTES]:
        p.error(f"--dtype: {bad} (fp32 or fp16)")
    g = dataclasses.replace(GEOMETRIES[args.geometry], llm_layers=args.layers)
    wb = weight_bytes(g)
    wb32 = weight_bytes(dataclasses.replace(g, llm_layers=REAL_LAYERS))
    logs = args.cache / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    json_path = args.json or args.cache / "scale_check.json"
    results = {"date": time.strftime("%Y-%m-%d", time.gmtime()), "geometry_name": args.geometry,
               "layers": args.layers, "dtypes": dtypes,
               "methods": methods, "max_new_tokens": args.max_new_tokens, "geometry": dataclasses.asdict(g),
               "weight_bytes": wb, "weight_bytes_32_layers": wb32,
               "machine": {"cpu": cpu_name(), "cores": os.cpu_count(),
                           "mem_gib": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / GIB},
               "entries": []}
    save = lambda: json_path.write_text(json.dumps(results, indent=1))  # noqa: E731
    if args.full_export:  # into the results of an earlier --layers run, which it leaves as they are
        if json_path.is_file():
            results = json.loads(json_path.read_text())
        results["full_export"] = full_export(args.cache, dataclasses.replace(g, llm_layers=REAL_LAYERS),
                                             args.full_export, wb32, logs, args)
        save()
        return report(results, args.write_benchmarks)

    if wait_for_memory(args.min_free_gib, "build", args.wait_memory_s) is None:
        raise SystemExit("not enough memory to build the checkpoint pair")
    pair, results["build"] = build_pair(args.cache, args.geometry, g, args.step_timeout)
    print(f"[scale] checkpoint pair {pair} ({results['build']['bytes'] / 1e9:.2f} GB)", file=sys.stderr, flush=True)
    save()

    for dtype in dtypes:
        for method in methods:
            tag = f"{method}-{dtype}"
            out = args.cache / "engines" / f"{tag}-{args.layers}-layers"
            entry = {"dtype": dtype, "method": method}
            results["entries"].append(entry)
            free = wait_for_memory(args.min_free_gib, f"export {tag}", args.wait_memory_s)
            if free is None:
                entry["export"] = {"skipped": f"under {args.min_free_gib} GiB available"}
                save()
                continue
            print(f"[scale] export {tag} ({free:.1f} GiB available)", file=sys.stderr, flush=True)
            entry["export"] = export_step(pair, method, dtype, args.layers, out, logs, args.export_timeout)
            entry["export"]["available_gib_before"] = round(free, 2)
            save()
            if entry["export"]["exit_code"] != 0 or not (out / "manifest.json").is_file():
                print(f"[scale] export {tag} failed: {entry['export'].get('error')}", file=sys.stderr, flush=True)
                continue
            entry["engine_dir"] = engine_dir_facts(out)
            entry["reference_fp16_bytes"] = wb["llava_fp16"] + (
                wb["clip_text_and_projections_fp16"] if entry["engine_dir"]["text_encoder"] else 0)
            entry["reference_fp16_bytes_32"] = wb32["llava_fp16"] + (
                wb32["clip_text_and_projections_fp16"] if entry["engine_dir"]["text_encoder"] else 0)
            entry["layer_copies"] = layer_copies(entry, wb, args.layers)
            for step, fn in (("start", lambda: start_step(out, logs, tag, args.step_timeout)),
                             ("run", lambda: run_step(out, logs, tag, args.max_new_tokens, args.step_timeout)),
                             ("verify", lambda: verify_step(out, logs, tag, args.step_timeout))):
                if wait_for_memory(args.min_free_gib if step != "verify" else 2, f"{step} {tag}",
                                   args.wait_memory_s) is None:
                    entry[step] = {"skipped": "not enough memory"}
                    continue
                print(f"[scale] {step} {tag}", file=sys.stderr, flush=True)
                entry[step] = fn()
                save()
            entry["extrapolated"] = extrapolate(entry, args.layers, wb)
            save()
            if args.clean:
                shutil.rmtree(out, ignore_errors=True)

    return report(results, args.write_benchmarks)


def report(results: dict, write_benchmarks: bool) -> int:
    results["weight_bytes"] = weight_bytes(LlavaHfGeometry(**results["geometry"]))
    for entry in results["entries"]:  # from the measurements, so an older results file gets today's arithmetic
        if entry.get("engine_dir"):
            entry["extrapolated"] = extrapolate(entry, results["layers"], results["weight_bytes"])
    lines = section(results)
    print("\n".join(lines))
    if write_benchmarks:
        path = ROOT / "BENCHMARKS.md"
        path.write_text(replace_section(path.read_text() if path.is_file() else "", lines))
    return 0


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.machine()


if __name__ == "__main__":
    sys.exit(main())
