"""Every method's PyTorch reference and the unpruned HF baseline at LLaVA-1.5-7B geometry, with random weights
made on the device (no download, nothing on disk), so a GPU gives pruned vs unpruned and reference vs HF ratios
beside the CPU engine profile in BENCHMARKS.md (benchmarks/reference_gpu.py runs it). Engines on a GPU (TensorRT
plans, ONNX Runtime CUDA) are timed by `cli.py profile DIR --provider ...` where those install.

The embedded tiny checkpoint lends its tokenizers and image preprocessing; only the widths change. Random
weights make kept indices and tokens meaningless but not the timings: every method runs its real shapes.
The KV caches stay on the device between steps (TorchRunner), as a GPU engine's should.
"""
import sys
import tempfile
import time
from pathlib import Path

import torch

from export.graphs.torch_runner import TorchRunner
from export.methods.registry import get_method
from export.models.checkpoint import Checkpoint
from export.pipeline import ExportConfig, base_manifest
from export.profiling.flops import clip_text_dims, count_flops, tokens_per_layer
from export.profiling.profile import hf_baseline, median_generation
from runtime.generator import Generator
from runtime.prompt import LLAVA_15_TEMPLATE
from runtime.shipped import PROFILE_REQUEST

# Widths of llava-hf/llava-1.5-7b-hf and openai/clip-vit-large-patch14-336; the tiny already has their depths,
# patch grid and feature layer. "tiny" keeps the tiny's own widths (a quick run on a CPU).
GEOMETRIES = {
    "llava-1.5-7b": {
        "vision": dict(hidden_size=1024, intermediate_size=4096, num_attention_heads=16, projection_dim=768),
        "clip_text": dict(hidden_size=768, intermediate_size=3072, num_attention_heads=12, projection_dim=768),
        "llm": dict(hidden_size=4096, intermediate_size=11008, num_attention_heads=32, num_key_value_heads=32,
                    head_dim=128, vocab_size=32064),
        "projection_dim": 768,
    },
    "tiny": {},
}
DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


def random_checkpoint(geometry: str, device: str, dtype: torch.dtype) -> Checkpoint:
    """LLaVA + CLIP with the geometry's widths and transformers' random init, made directly on `device`."""
    from transformers import CLIPConfig, CLIPModel, LlavaConfig, LlavaForConditionalGeneration

    from export.models.embedded import embedded_model
    tiny, widths = embedded_model("tiny"), GEOMETRIES[geometry]
    llava_cfg, clip_cfg = LlavaConfig.from_pretrained(tiny.model_dir), CLIPConfig.from_pretrained(tiny.clip_dir)
    for cfg, part in ((llava_cfg.vision_config, "vision"), (clip_cfg.vision_config, "vision"),
                      (clip_cfg.text_config, "clip_text"), (llava_cfg.text_config, "llm")):
        for key, value in widths.get(part, {}).items():
            setattr(cfg, key, value)
    clip_cfg.projection_dim = widths.get("projection_dim", clip_cfg.projection_dim)
    with torch.device(device):
        llava = LlavaForConditionalGeneration._from_config(llava_cfg, dtype=dtype, attn_implementation="sdpa").eval()
        clip = CLIPModel._from_config(clip_cfg, dtype=dtype).eval()
    clip.vision_model.load_state_dict(llava.model.vision_tower.state_dict())  # LLaVA-1.5 keeps CLIP's ViT
    return Checkpoint(tiny.model_dir, tiny.clip_dir, llava, clip)


def profile_method(name: str, ckpt: Checkpoint, device: str, dtype, runs: int, max_new_tokens: int,
                   progress, batch: int = 1) -> dict:
    method = get_method(name)
    plan = method.build(ckpt, method.config_type())
    with tempfile.TemporaryDirectory() as tmp:
        manifest = base_manifest(ExportConfig(name, "tiny", Path(tmp)), ckpt, plan, Path(tmp))
        generator = Generator(manifest, {g: TorchRunner(g, graph, device=device, dtype=dtype)
                                         for g, graph in plan.graphs.items()})
        if plan.calibrate:  # ATP: thresholds for this model, as export would set them
            plan.calibrate(generator, progress)
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        measured = median_generation(generator, PROFILE_REQUEST, runs, max_new_tokens, progress, f"{name} reference",
                                     batch)
        kernels = gpu_kernel_ms(generator, max_new_tokens, batch) if device == "cuda" else {}
    result = measured.pop("result")
    dims, text_tokens = manifest.model, len(result.input_ids) - 1
    flops = count_flops(dims, tokens_per_layer(plan.schedule, dims), text_tokens, plan.schedule.text_encoder,
                        clip_text_dims(ckpt.clip.config.to_dict()))
    return {"method": name, "prefill_ms": measured["prefill_ms"],
            "decode_ms_per_token": measured["decode_ms_per_token"], "breakdown_ms": measured["breakdown_ms"],
            "visual_tokens_final": result.visual_tokens["count"], "text_tokens": text_tokens,
            "tflops": flops["total_tflops"], "kv_cache_bytes": result.kv_cache_bytes,
            "peak_gpu_bytes": torch.cuda.max_memory_allocated() if device == "cuda" else None, **kernels}


def gpu_kernel_ms(generator, max_new_tokens: int, batch: int = 1) -> dict:
    """GPU busy time (sum of kernel durations, CUPTI) for prefill and per decode token. At batch 1 eager
    PyTorch waits on the host between kernels; this is the time an engine without that overhead approaches."""
    from torch.profiler import ProfilerActivity, profile

    def busy(new_tokens):
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            generator.generate([PROFILE_REQUEST] * batch, new_tokens)
        return sum(e.self_device_time_total for e in prof.key_averages()) / 1e3

    prefill, total = busy(1), busy(max_new_tokens)  # one new token: prefill only
    return {"prefill_kernel_ms": prefill, "decode_kernel_ms_per_token": (total - prefill) / max(max_new_tokens - 1, 1)}


def run(geometry: str, device: str, dtype_name: str, methods: list[str], runs: int, max_new_tokens: int,
        progress=lambda m: print(m, file=sys.stderr, flush=True), batch: int = 1) -> dict:
    from transformers import AutoProcessor
    torch.manual_seed(0)
    start = time.perf_counter()
    ckpt = random_checkpoint(geometry, device, DTYPES[dtype_name])
    progress(f"[reference-profile] {geometry} weights ({sum(p.numel() for p in ckpt.llava.parameters()) / 1e9:.2f} B "
             f"params, {dtype_name}) made on {device} in {time.perf_counter() - start:.1f}s")
    reports = {}
    for name in methods:  # one method failing (say, fp16 overflow) should not cost the others' timings
        try:
            reports[name] = profile_method(name, ckpt, device, DTYPES[dtype_name], runs, max_new_tokens, progress,
                                           batch)
        except Exception as e:
            progress(f"[reference-profile] {name} failed: {type(e).__name__}: {e}")
            reports[name] = {"method": name, "error": f"{type(e).__name__}: {e}"}
    processor = AutoProcessor.from_pretrained(ckpt.model_dir)
    hf = hf_baseline(ckpt.llava, processor, LLAVA_15_TEMPLATE, PROFILE_REQUEST, runs, max_new_tokens, progress, batch)
    device_name = torch.cuda.get_device_name() if device == "cuda" else "cpu"
    return {"geometry": geometry, "device": device_name, "dtype": dtype_name, "runs": runs, "batch": batch,
            "max_new_tokens": max_new_tokens, "torch": torch.__version__, "hf_baseline": hf, "methods": reports,
            "measured": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}


def _baseline(measured: list[dict]) -> dict:
    """Every ratio is against the unpruned run, or the first method measured when that one failed."""
    return next((r for r in measured if r["method"] == "none"), measured[0])


def table(report: dict) -> list[str]:
    methods = report["methods"]
    measured = [r for r in methods.values() if "error" not in r]
    base = _baseline(measured)
    hf = report["hf_baseline"]
    ratio = lambda a, b: f"{a / b:.3f}" if b else "-"
    rows = [f"Measured {report['measured']} on {report['device']} ({report['dtype']}, torch {report['torch']}) by "
            f"`python -m benchmarks.reference_gpu`; batch {report.get('batch', 1)}, medians of {report['runs']} runs after a warm-up, "
            f"{report['max_new_tokens']} new tokens; ratios against `{base['method']}` in the same run.", "",
            "| method | visual tokens | TFLOPs (ratio) | prefill ms (ratio) | decode ms/token (ratio) | KV MiB per request |",
            "|---|---|---|---|---|---|"]
    for r in methods.values():
        if "error" in r:
            rows.append(f"| {r['method']} | failed: {r['error'][:120]} | | | | |")
            continue
        rows.append(f"| {r['method']} | {r['visual_tokens_final']} | {r['tflops']:.3f} ({ratio(r['tflops'], base['tflops'])}) "
                    f"| {r['prefill_ms']:.1f} ({ratio(r['prefill_ms'], base['prefill_ms'])}) "
                    f"| {r['decode_ms_per_token']:.2f} ({ratio(r['decode_ms_per_token'], base['decode_ms_per_token'])}) "
                    f"| {r['kv_cache_bytes'] / 2**20:.1f} |")
    if all("prefill_kernel_ms" in r for r in measured):
        rows += ["", "GPU busy time (sum of kernel durations): what the same graphs cost without eager PyTorch's host "
                 "overhead between kernels, the gap engines close.", "",
                 "| method | prefill kernel ms (ratio) | decode kernel ms/token (ratio) |", "|---|---|---|"]
        rows += [f"| {r['method']} | {r['prefill_kernel_ms']:.1f} ({ratio(r['prefill_kernel_ms'], base['prefill_kernel_ms'])}) "
                 f"| {r['decode_kernel_ms_per_token']:.2f} "
                 f"({ratio(r['decode_kernel_ms_per_token'], base['decode_kernel_ms_per_token'])}) |"
                 for r in measured]
    rows += ["", f"HF `LlavaForConditionalGeneration` (SDPA attention), unpruned: prefill {hf['prefill_ms']:.1f} ms, "
                 f"decode {hf['decode_ms_per_token']:.2f} ms/token; the `{base['method']}` reference over it: prefill "
                 f"{ratio(base['prefill_ms'], hf['prefill_ms'])}, decode "
                 f"{ratio(base['decode_ms_per_token'], hf['decode_ms_per_token'])}."]
    return rows


def plot(report: dict, path: Path):
    """Per method: FLOPs, GPU busy and wall-clock prefill, each as a ratio to the unpruned run."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    methods = [r for r in report["methods"].values() if "error" not in r]
    base = _baseline(methods)
    bars = [("FLOPs", "tflops"), ("GPU busy (kernels)", "prefill_kernel_ms"), ("wall clock", "prefill_ms")]
    bars = [(label, key) for label, key in bars if key in base]
    fig, ax = plt.subplots(figsize=(max(5, 0.9 * len(methods) + 2), 3.2))
    width = 0.8 / len(bars)
    for j, (label, key) in enumerate(bars):
        ax.bar([i + (j - (len(bars) - 1) / 2) * width for i in range(len(methods))],
               [r[key] / base[key] for r in methods], width, label=label)
    ax.axhline(1.0, color="grey", lw=0.8)
    ax.set_xticks(range(len(methods)), [f"{r['method']}\n{r['visual_tokens_final']}" for r in methods], fontsize=8)
    ax.set_ylabel(f"prefill, ratio to {base['method']}")
    ax.set_title(f"{report['geometry']} on {report['device']}, {report['dtype']}, batch {report.get('batch', 1)}",
                 fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
