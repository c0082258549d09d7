"""fp32 vs int8 on held-out requests: first-token logit cosine, greedy-token agreement, kept-index overlap per
pruning stage, and the CPU latency ratio int8 / fp32 (ONNX Runtime, medians of interleaved runs)."""
import statistics
import sys

from calibration.capture import RecordingRunner
from calibration.fidelity import cosine, kept_overlap, token_agreement
from runtime.load import open_engine_dir


def _open_with_head_recorder(engine_dir):
    generator = open_engine_dir(engine_dir, "cpu")
    head = generator.pipe.lm_head
    recorder = RecordingRunner(generator.engines[head], keep_outputs=True)
    generator.engines = {**generator.engines, head: recorder}
    return generator, recorder


def _first_logits(generator, recorder, request, max_new_tokens):
    recorder.clear()
    result = generator.generate([request], max_new_tokens)[0]
    return result, recorder.outputs[0]["logits"][0]  # the LM head's first run is prefill's


def latency(fp32, int8, request, max_new_tokens: int, runs: int, progress) -> dict:
    """Interleaved runs (fp32, int8, fp32, ...) after one warm-up each, medians of end-to-end and prefill ms."""
    samples = {"fp32": [], "int8": []}
    for generator in (fp32, int8):
        generator.generate([request], max_new_tokens)
    for i in range(runs):
        progress(f"[calibrate] latency run {i + 1}/{runs}")
        for key, generator in (("fp32", fp32), ("int8", int8)):
            samples[key].append(generator.generate([request], max_new_tokens)[0].timings_ms)
    median = {k: {m: statistics.median(t[m] for t in v) for m in ("total", "prefill_total")} for k, v in samples.items()}
    return {"runs": runs, "max_new_tokens": max_new_tokens, "fp32_ms": median["fp32"], "int8_ms": median["int8"],
            "ratio": median["int8"]["total"] / median["fp32"]["total"],
            "prefill_ratio": median["int8"]["prefill_total"] / median["fp32"]["prefill_total"]}


def compare(fp32_dir, int8_dir, requests, max_new_tokens: int = 8, runs: int = 3,
            progress=lambda m: print(m, file=sys.stderr, flush=True)) -> dict:
    fp32, rec32 = _open_with_head_recorder(fp32_dir)
    int8, rec8 = _open_with_head_recorder(int8_dir)
    rows = []
    for k, request in enumerate(requests, 1):
        a, logits_a = _first_logits(fp32, rec32, request, max_new_tokens)
        b, logits_b = _first_logits(int8, rec8, request, max_new_tokens)
        prefix, overall = token_agreement(a.token_ids, b.token_ids)
        rows.append({"image": str(getattr(request.image, "name", request.image)), "prompt": request.prompt,
                     "logit_cosine": cosine(logits_a, logits_b), "first_token_match": a.token_ids[0] == b.token_ids[0],
                     "agreement_prefix": prefix, "agreement_overall": overall,
                     "kept_overlap": kept_overlap(a.stages, b.stages),
                     "tokens_fp32": a.token_ids, "tokens_int8": b.token_ids})
        progress(f"[calibrate] compared held-out request {k}/{len(requests)}: cosine {rows[-1]['logit_cosine']:.4f}")
    stages = list(rows[0]["kept_overlap"]) if rows else []
    summary = {"requests": len(rows),
               "logit_cosine_mean": statistics.fmean(r["logit_cosine"] for r in rows),
               "logit_cosine_min": min(r["logit_cosine"] for r in rows),
               "first_token_match": statistics.fmean(r["first_token_match"] for r in rows),
               "agreement_prefix": statistics.fmean(r["agreement_prefix"] for r in rows),
               "agreement_overall": statistics.fmean(r["agreement_overall"] for r in rows),
               "kept_overlap": {s: statistics.fmean(r["kept_overlap"][s] for r in rows) for s in stages}}
    summary["latency"] = latency(fp32, int8, requests[0], max_new_tokens, runs, progress)
    return {"summary": summary, "requests": rows}


def format_report(report: dict) -> str:
    s = report["summary"]
    lat = s["latency"]
    lines = [f"{'held-out requests':32s} {s['requests']}",
             f"{'first-token logit cosine':32s} mean {s['logit_cosine_mean']:.4f}  min {s['logit_cosine_min']:.4f}",
             f"{'first token identical':32s} {s['first_token_match']:.0%}",
             f"{'greedy agreement':32s} to first divergence {s['agreement_prefix']:.0%}, overall {s['agreement_overall']:.0%}"]
    lines += [f"{'kept overlap ' + name:32s} {v:.3f}" for name, v in s["kept_overlap"].items()]
    lines.append(f"{'CPU latency int8 / fp32':32s} {lat['ratio']:.2f} (end to end, {lat['int8_ms']['total']:.0f} vs "
                 f"{lat['fp32_ms']['total']:.0f} ms), prefill {lat['prefill_ratio']:.2f}")
    return "\n".join(lines)
