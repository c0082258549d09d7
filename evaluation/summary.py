"""The records of an evaluation in all: accuracy overall and by type, mean visual tokens and FLOPs, latency, and
every wrong answer."""
from statistics import mean, median


def summarize(records: list[dict], about: dict) -> dict:
    """`about` (method, engine dir, data, settings) leads the summary."""
    by_type = {}
    for r in records:
        by_type.setdefault(r["type"], []).append(r["correct"])
    per_token = [r["decode_ms_per_token"] for r in records if r["decode_ms_per_token"] is not None]
    compared = [r for r in records if "same_as_reference" in r]
    against = {"reference": {"n": len(compared), "same_tokens": sum(r["same_as_reference"] for r in compared),
                             "differ_lines": [r["line"] for r in compared if not r["same_as_reference"]]}} \
        if compared else {}
    return {**about, **against, "n": len(records), "correct": sum(r["correct"] for r in records),
            "accuracy": accuracy([r["correct"] for r in records]),
            "by_type": {t: {"accuracy": accuracy(c), "n": len(c)} for t, c in sorted(by_type.items())},
            "mean_visual_tokens": mean(r["visual_tokens"] for r in records),
            "tflops": mean(r["tflops"] for r in records),
            "prefill_ms": spread([r["prefill_ms"] for r in records]),
            "decode_ms_per_token": spread(per_token) if per_token else None,
            "wrong": [{"line": r["line"], "type": r["type"], "question": r["question"], "expected": r["answer"],
                       "got": r["prediction"]} for r in records if not r["correct"]]}


def accuracy(correct: list[bool]) -> float:
    return sum(correct) / len(correct)


def spread(values: list[float]) -> dict:
    return {"mean": round(mean(values), 3), "median": round(median(values), 3)}
