"""Source (reference) vs quantized engine dir on held-out requests: first-token logit cosine, greedy-token
agreement, kept-index overlap per pruning stage, and the CPU latency ratio quantized / reference (ONNX Runtime,
medians of interleaved runs, with decode per token apart: that is where weight-only INT4 pays)."""
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


def latency(reference, quantized, request, max_new_tokens: int, runs: int, progress) -> dict:
    """Interleaved runs (reference, quantized, reference, ...) after one warm-up each, medians of end-to-end, prefill
    and decode-per-token ms."""
    samples = {"reference": [], "quantized": []}
    for generator in (reference, quantized):
        generator.generate([request], max_new_tokens)
    for i in range(runs):
        progress(f"[calibrate] latency run {i + 1}/{runs}")
        for key, generator in (("reference", reference), ("quantized", quantized)):
            r = generator.generate([request], max_new_tokens)[0]
            samples[key].append({**r.timings_ms, "decode_per_token": r.timings_ms["decode_total"] /
                                 max(len(r.token_ids) - 1, 1)})
    median = {k: {m: statistics.median(t[m] for t in v) for m in ("total", "prefill_total", "decode_per_token")}
              for k, v in samples.items()}
    # None where the reference took no time: a request that ended at its first token has no decode steps
    ratio = lambda m: median["quantized"][m] / median["reference"][m] if median["reference"][m] else None  # noqa: E731
    return {"runs": runs, "max_new_tokens": max_new_tokens, "reference_ms": median["reference"],
            "quantized_ms": median["quantized"], "ratio": ratio("total"), "prefill_ratio": ratio("prefill_total"),
            "decode_ratio": ratio("decode_per_token")}


def compare(reference_dir, quantized_dir, requests, max_new_tokens: int = 8, runs: int = 3,
            progress=lambda m: print(m, file=sys.stderr, flush=True)) -> dict:
    reference, rec_ref = _open_with_head_recorder(reference_dir)
    quantized, rec_q = _open_with_head_recorder(quantized_dir)
    rows = []
    for k, request in enumerate(requests, 1):
        a, logits_a = _first_logits(reference, rec_ref, request, max_new_tokens)
        b, logits_b = _first_logits(quantized, rec_q, request, max_new_tokens)
        prefix, overall = token_agreement(a.token_ids, b.token_ids)
        rows.append({"image": str(getattr(request.image, "name", request.image)), "prompt": request.prompt,
                     "logit_cosine": cosine(logits_a, logits_b), "first_token_match": a.token_ids[0] == b.token_ids[0],
                     "agreement_prefix": prefix, "agreement_overall": overall,
                     "kept_overlap": kept_overlap(a.stages, b.stages),
                     "tokens_reference": a.token_ids, "tokens_quantized": b.token_ids})
        progress(f"[calibrate] compared held-out request {k}/{len(requests)}: cosine {rows[-1]['logit_cosine']:.4f}")
    stages = list(rows[0]["kept_overlap"]) if rows else []
    summary = {"reference": _label(reference), "quantized": _label(quantized), "requests": len(rows),
               "logit_cosine_mean": statistics.fmean(r["logit_cosine"] for r in rows),
               "logit_cosine_min": min(r["logit_cosine"] for r in rows),
               "first_token_match": statistics.fmean(r["first_token_match"] for r in rows),
               "agreement_prefix": statistics.fmean(r["agreement_prefix"] for r in rows),
               "agreement_overall": statistics.fmean(r["agreement_overall"] for r in rows),
               "kept_overlap": {s: statistics.fmean(r["kept_overlap"][s] for r in rows) for s in stages}}
    summary["latency"] = latency(reference, quantized, requests[0], max_new_tokens, runs, progress)
    return {"summary": summary, "requests": rows}


def _label(generator) -> str:
    """What an engine dir computes in: its quantization, else its graphs' dtype."""
    q = generator.m.quantization
    return q["precision"] if q else generator.m.dtype


def smoke_test(engine_dir, request, max_new_tokens: int) -> dict:
    """One generation on the new dir alone: it loads and runs (the report's check when the source dir is too
    large to open beside it)."""
    result = open_engine_dir(engine_dir, "cpu").generate([request], max_new_tokens)[0]
    return {"summary": None, "smoke_test": {"prompt": request.prompt, "token_ids": result.token_ids,
                                            "timings_ms": result.timings_ms}}


def format_report(report: dict) -> str:
    s = report["summary"]
    if s is None:
        t = report["smoke_test"]
        return f"no report; one generation ran: {len(t['token_ids'])} tokens in {t['timings_ms']['total']:.0f} ms"
    lat, ref, q = s["latency"], s["reference"], s["quantized"]
    lines = [f"{'held-out requests':32s} {s['requests']}",
             f"{'first-token logit cosine':32s} mean {s['logit_cosine_mean']:.4f}  min {s['logit_cosine_min']:.4f}",
             f"{'first token identical':32s} {s['first_token_match']:.0%}",
             f"{'greedy agreement':32s} to first divergence {s['agreement_prefix']:.0%}, overall {s['agreement_overall']:.0%}"]
    lines += [f"{'kept overlap ' + name:32s} {v:.3f}" for name, v in s["kept_overlap"].items()]
    decode = "n/a" if lat["decode_ratio"] is None else f"{lat['decode_ratio']:.2f}"
    lines.append(f"{f'CPU latency {q} / {ref}':32s} {lat['ratio']:.2f} (end to end, {lat['quantized_ms']['total']:.0f} "
                 f"vs {lat['reference_ms']['total']:.0f} ms), prefill {lat['prefill_ratio']:.2f}, decode per token "
                 f"{decode}")
    lines.append(verdict(s))
    return "\n".join(lines)


# Where the first answer token is the same and the logits point the same way, greedy answers match; a cosine under
# 0.99 on a trained model moves answers at near ties, under 0.95 it moves them often.
FAITHFUL, CLOSE = (0.99, 1.0), (0.95, 0.8)


def verdict(s: dict) -> str:
    """One line a user can act on, from the first-token logits and the greedy tokens of the held-out requests."""
    cos, first = s["logit_cosine_min"], s["first_token_match"]
    if cos >= FAITHFUL[0] and first >= FAITHFUL[1]:
        word = "faithful: answers as the source dir does"
    elif cos >= CLOSE[0] and first >= CLOSE[1]:
        word = "close: most answers as the source's; near ties may flip"
    else:
        word = "degraded: answers differ from the source's"
    return (f"verdict: {word} (min logit cosine {cos:.3f}, first token identical on {first:.0%} of {s['requests']} "
            f"held-out requests). Measure what it costs in answers with `cli.py eval DIR --data FILE.jsonl`.")
