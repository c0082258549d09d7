"""One record per evaluated request (what `--out` writes, one JSON line each), and the staged write of them."""
import json
import os
import tempfile
from pathlib import Path

from evaluation.data import Question
from evaluation.flops import text_tokens
from evaluation.scoring import is_correct
from runtime.request import Result


def batch_records(questions: list[Question], results: list[Result], tflops: list[float]) -> list[dict]:
    """The records of one generate call. Its timings cover the whole batch, so each request gets an equal share
    (with one request per call, its own latency): prefill ms, decode ms, and decode ms per step the batch ran."""
    n, steps = len(results), max(len(r.token_ids) for r in results) - 1  # the first token comes from prefill
    prefill_ms, decode_ms = results[0].timings_ms["prefill_total"] / n, results[0].timings_ms["decode_total"] / n
    return [{"line": q.line, **({"id": q.id} if q.id is not None else {}), "type": q.type, "question": q.question,
             "answer": q.answer, "prediction": r.text, "correct": is_correct(r.text, q.answer, q.choices),
             "visual_tokens": r.visual_tokens["count"], "text_tokens": text_tokens(r), "tflops": f,
             "new_tokens": len(r.token_ids), "prefill_ms": round(prefill_ms, 3), "decode_ms": round(decode_ms, 3),
             "decode_ms_per_token": round(decode_ms / steps, 3) if steps else None}
            for q, r, f in zip(questions, results, tflops)]


def write_records(records: list[dict], out: Path):
    """JSONL, written to a temp file beside `out` and renamed over it, so `out` is never half written."""
    out = Path(out)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.writelines(json.dumps(r) + "\n" for r in records)
        os.chmod(tmp, 0o644)
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
