"""Every registered method exported for an embedded model and profiled in one run (ratios are only meaningful
within one run on a shared machine), as tables, targets and a plot for BENCHMARKS.md
(benchmarks/methods_cpu.py runs it)."""
import os
import platform
from pathlib import Path

from export.methods.registry import all_methods
from export.pipeline import ExportConfig, export
from export.profiling.profile import profile


def run(model: str, runs: int, out: Path, max_new_tokens: int) -> dict:
    dirs = {name: out / f"{model}-{name}" for name in ["none"] + sorted(m for m in all_methods() if m != "none")}
    for name, engine_dir in dirs.items():  # exports first (reused when present), so profiles run back to back
        if not (engine_dir / "manifest.json").is_file():
            export(ExportConfig(method=name, model=model, out=engine_dir, force=True))
    return {name: profile(engine_dir, runs, max_new_tokens) for name, engine_dir in dirs.items()}


def table(reports: dict) -> list[str]:
    base = reports["none"]
    rows = ["| method | visual tokens | TFLOPs (ratio) | prefill ms engines (ratio) | decode ms/token engines (ratio) "
            "| HF PyTorch prefill / decode ms | torch reference prefill ms | KV cache MiB |",
            "|---|---|---|---|---|---|---|---|"]
    for name, r in reports.items():
        e, p = r["engines"], r["pytorch"]
        rows.append(
            f"| {name} | {r['visual_tokens_final']} | {r['flops']['pruned_tflops']:.4f} "
            f"({r['flops']['pruned_tflops'] / base['flops']['pruned_tflops']:.3f}) | {e['prefill_ms']:.0f} "
            f"({e['prefill_ms'] / base['engines']['prefill_ms']:.3f}) | {e['decode_ms_per_token']:.1f} "
            f"({e['decode_ms_per_token'] / base['engines']['decode_ms_per_token']:.3f}) | {p['prefill_ms']:.0f} / "
            f"{p['decode_ms_per_token']:.1f} | {r['reference']['prefill_ms']:.0f} | {r['kv_cache_bytes'] / 2**20:.2f} |")
    return rows


def targets(reports: dict) -> list[str]:
    base, lines = reports["none"], []
    verdict = lambda ok: "met" if ok else "MISSED"
    if "ivtp" in reports:
        r = reports["ivtp"]
        latency = r["engines"]["prefill_ms"] / base["engines"]["prefill_ms"]
        flops = r["flops"]["pruned_tflops"] / base["flops"]["pruned_tflops"]
        lines.append(f"- IVTP prefill latency ratio {latency:.3f} vs FLOPs ratio {flops:.3f}: "
                     f"{latency / flops:.2f}x (target <= 1.15x): {verdict(latency / flops <= 1.15)}")
        decode = r["engines"]["decode_ms_per_token"] / base["engines"]["decode_ms_per_token"]
        lines.append(f"- IVTP decode per token vs unpruned: {decode:.3f} (target < 1): {verdict(decode < 1)}")
    e, p = base["engines"], base["pytorch"]
    lines.append(f"- Unpruned engines prefill vs HF PyTorch: {e['prefill_ms'] / p['prefill_ms']:.3f} (target <= 1): "
                 f"{verdict(e['prefill_ms'] <= p['prefill_ms'])}")
    lines.append(f"- Unpruned engines decode vs HF PyTorch: {e['decode_ms_per_token'] / p['decode_ms_per_token']:.3f} "
                 f"(target < 1): {verdict(e['decode_ms_per_token'] < p['decode_ms_per_token'])}")
    return lines


def plot(reports: dict, path: Path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    names = list(reports)
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.4))
    x = range(len(names))
    a.bar([i - 0.2 for i in x], [reports[n]["engines"]["prefill_ms"] for n in names], 0.4, label="engines (ORT)")
    a.bar([i + 0.2 for i in x], [reports[n]["pytorch"]["prefill_ms"] for n in names], 0.4, label="HF PyTorch, unpruned")
    b.bar([i - 0.2 for i in x], [reports[n]["engines"]["decode_ms_per_token"] for n in names], 0.4, label="engines (ORT)")
    b.bar([i + 0.2 for i in x], [reports[n]["pytorch"]["decode_ms_per_token"] for n in names], 0.4, label="HF PyTorch")
    for ax, label in ((a, "prefill (TTFT), ms"), (b, "decode, ms / token")):
        ax.set_xticks(list(x), names)
        ax.set_ylabel(label)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def page(reports: dict, model: str, runs: int, max_new_tokens: int, started: str, plot_file: str) -> list[str]:
    """BENCHMARKS.md's lines."""
    return [f"# Benchmarks: `{model}` embedded model, ONNX Runtime CPU vs PyTorch", "",
            f"Measured {started} on {platform.machine()} with {os.cpu_count()} cores, by `python -m "
            f"benchmarks.methods_cpu`; medians of {runs} runs after a warm-up, {max_new_tokens} new tokens, one "
            "process, so ratios compare like with like. Absolute numbers move with the machine's load.", "",
            *table(reports), "", "## Targets", "", *targets(reports), "", f"![latency]({plot_file})", "",
            "On a GPU at LLaVA-1.5-7B geometry (PyTorch reference, `python -m benchmarks.reference_gpu`): "
            "[BENCHMARKS-GPU.md](BENCHMARKS-GPU.md).", ""]
