"""The summary of `cli.py eval` as a person reads it: accuracy overall and by type, cost, and the first wrong
answers (`--json` prints the summary itself)."""
SHOWN_WRONG = 10


def format_summary(s: dict, shown_wrong: int = SHOWN_WRONG) -> str:
    lines = [f"{s['method']} ({s['engine_dir']}) on {s['data']}: accuracy {s['accuracy']:.4f} "
             f"({s['correct']} of {s['n']})", "",
             f"  {'type':24s} {'n':>6s} {'accuracy':>9s}"]
    lines += [f"  {t[:24]:24s} {v['n']:6d} {v['accuracy']:9.4f}" for t, v in s["by_type"].items()]
    lines += ["", f"  visual tokens into the LLM's last layers (mean)  {s['mean_visual_tokens']:.1f}",
              f"  prefill TFLOPs per request (mean)               {s['tflops']:.4g}",
              f"  prefill ms (mean / median)                      {ms(s['prefill_ms'])}",
              f"  decode ms per token (mean / median)             {ms(s['decode_ms_per_token'])}"]
    if "reference" in s:
        ref = s["reference"]
        lines.append(f"  same greedy tokens as the PyTorch reference     {ref['same_tokens']} of {ref['n']}"
                     + (f" (differ on lines {', '.join(map(str, ref['differ_lines'][:10]))})" if ref["differ_lines"] else ""))
    if s["batch"] > 1:
        lines.append(f"  (batches of {s['batch']}: each request's ms are an equal share of its batch's)")
    wrong = s["wrong"]
    if wrong:
        lines += ["", f"wrong answers ({min(len(wrong), shown_wrong)} of {len(wrong)} shown; --json or --out lists "
                  "them all):"]
        lines += [f"  line {w['line']} [{w['type']}] {one_line(w['question'])!r}: expected {w['expected']!r}, "
                  f"got {one_line(w['got'])!r}" for w in wrong[:shown_wrong]]
    return "\n".join(lines)


def ms(spread: dict | None) -> str:
    return "n/a (no request decoded past its first token)" if spread is None else \
        f"{spread['mean']:.2f} / {spread['median']:.2f}"


def one_line(text: str, width: int = 80) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[:width - 3] + "..."
