"""prunevlm's LLM against onnxruntime-genai on the same LLaMA weights, both on ONNX Runtime CPU with the same
intra-op thread count: LLM prefill over the same sequence length and decode per token, medians of interleaved
runs in one process. Writes the "Against onnxruntime-genai" section of BENCHMARKS.md and assets/peer_genai.png.

The peer's model is the `bench` (or any embedded) checkpoint's decoder saved as a plain LlamaForCausalLM and built
by onnxruntime-genai's own model builder, at fp32 and int4. prunevlm runs `none` (every visual token) and `ivtp`
(64 after pruning) on the photo and prompt below; the peer gets token ids of `none`'s sequence length, so both
compute the same decoder over the same context.

    pip install -e '.[bench]'   # onnxruntime-genai 0.18 (its builder needs onnx-ir, which [export] brings)
    python -m benchmarks.peer_genai [--model bench] [--runs 3] [--threads 2] [--new-tokens 16]
"""
import argparse
import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks.scale_check import write_benchmarks_section

ROOT = Path(__file__).resolve().parent.parent
SECTION = "## Against onnxruntime-genai"
PHOTO, PROMPT = ROOT / "assets" / "images" / "chelsea.jpg", "Describe the animal on the sofa and the colour of its fur."
PEER_PRECISIONS = ("fp32", "int4")


def extract_llama(model_dir: Path, out: Path):
    """The LLaVA checkpoint's language model as a plain LlamaForCausalLM directory, what the peer's builder reads."""
    import torch
    from transformers import LlamaForCausalLM, LlavaForConditionalGeneration
    llava = LlavaForConditionalGeneration.from_pretrained(model_dir, dtype=torch.float32)
    llama = LlamaForCausalLM(llava.config.text_config)
    llama.model.load_state_dict(llava.model.language_model.state_dict())
    llama.lm_head.load_state_dict(llava.lm_head.state_dict())
    llama.save_pretrained(out)
    for name in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        shutil.copyfile(model_dir / name, out / name)


def build_peer(llama_dir: Path, out: Path, precision: str, threads: int):
    """onnxruntime-genai's builder, then its config told the thread count (its default leaves it to ONNX Runtime)."""
    subprocess.run([sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(llama_dir), "-o", str(out),
                    "-p", precision, "-e", "cpu", "-c", str(out.parent / "builder_cache")], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    config_path = out / "genai_config.json"
    config = json.loads(config_path.read_text())
    config["model"]["decoder"]["session_options"]["intra_op_num_threads"] = threads
    config_path.write_text(json.dumps(config, indent=4))


class Peer:
    def __init__(self, path: Path):
        import onnxruntime_genai as og
        self.og, self.model = og, og.Model(og.Config(str(path)))

    def run(self, ids: np.ndarray, new_tokens: int) -> tuple[float, float]:
        """(prefill ms, median decode ms per token) for one request of `ids`."""
        params = self.og.GeneratorParams(self.model)
        params.set_search_options(max_length=len(ids) + new_tokens, do_sample=False)
        generator = self.og.Generator(self.model, params)
        start = time.perf_counter()
        generator.append_tokens(ids)
        prefill = (time.perf_counter() - start) * 1e3
        steps = []
        for _ in range(new_tokens - 1):
            start = time.perf_counter()
            generator.generate_next_token()
            steps.append((time.perf_counter() - start) * 1e3)
        return prefill, statistics.median(steps)


def llm_prefill_ms(timings: dict) -> float:
    """The decoder's share of prefill: its segments' graphs and the LM head (not vision, CLIP text or embed)."""
    return sum(v for k, v in timings.items() if k.startswith(("decoder.", "prune.")) or k == "lm_head")


def measure(dirs: dict, peers: dict, runs: int, new_tokens: int, threads: int, progress) -> dict:
    from runtime.generator import Generator
    from runtime.manifest import load_manifest
    from runtime.request import Request
    from runtime.runners import open_onnxruntime
    request = Request(PHOTO, PROMPT)
    ours = {}
    for name, d in dirs.items():
        manifest = load_manifest(d)
        ours[name] = Generator(manifest, open_onnxruntime(manifest, ["CPUExecutionProvider"], threads=threads))
    sequence = None
    samples = {name: [] for name in [*ours, *peers]}
    for run in range(runs + 1):  # run 0 warms every engine up and is dropped
        progress(f"[peer] run {run}/{runs}")
        for name, generator in ours.items():
            result = generator.generate([request], new_tokens)[0]
            t = result.timings_ms
            if name == "none":
                sequence = len(result.input_ids) - 1 + result.visual_tokens["count"]
            samples[name].append((llm_prefill_ms(t), t["decode_total"] / (len(result.token_ids) - 1)))
        ids = np.random.default_rng(0).integers(3, 1000, sequence).astype(np.int32)
        for name, peer in peers.items():
            samples[name].append(peer.run(ids, new_tokens))
    return {"sequence": sequence, "rows": {name: {"prefill_ms": statistics.median(s[0] for s in rows[1:]),
                                                  "decode_ms_per_token": statistics.median(s[1] for s in rows[1:])}
                                           for name, rows in samples.items()}}


def dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def section(result: dict, args, started: str) -> list[str]:
    rows, base = result["rows"], result["rows"]["genai-fp32"]
    lines = [SECTION, "", f"Measured {started} by `python -m benchmarks.peer_genai --model {args.model}`: the "
             f"`{args.model}` model's LLM, {args.threads} intra-op threads on both sides, {result['sequence']} tokens "
             f"of context (576 visual + the prompt), {args.new_tokens} new tokens, medians of {args.runs} interleaved "
             "runs after a warm-up. prunevlm's prefill is its decoder graphs' and LM head's time (not vision or "
             "embedding); onnxruntime-genai's is `append_tokens` over token ids of the same length.", "",
             "| engine | visual tokens | LLM prefill ms (x genai fp32) | decode ms/token (x genai fp32) | disk MiB |",
             "|---|---|---|---|---|"]
    for name, row in rows.items():
        tokens = {"none": "576", "ivtp": "64"}.get(name, "576 (as tokens)")
        lines.append(f"| {'prunevlm ' + name if name in ('none', 'ivtp') else 'onnxruntime-genai ' + name[6:]} "
                     f"| {tokens} | {row['prefill_ms']:.0f} ({row['prefill_ms'] / base['prefill_ms']:.2f}) "
                     f"| {row['decode_ms_per_token']:.1f} ({row['decode_ms_per_token'] / base['decode_ms_per_token']:.2f}) "
                     f"| {result['disk'][name] / 2**20:.0f} |")
    return lines + ["", "![against onnxruntime-genai](assets/peer_genai.png)", ""]


def plot(result: dict, path: Path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    names = list(result["rows"])
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for ax, key, title in zip(axes, ("prefill_ms", "decode_ms_per_token"), ("LLM prefill (ms)", "decode (ms/token)")):
        values = [result["rows"][n][key] for n in names]
        ax.bar(range(len(names)), values, color=["#2a6f97" if n in ("none", "ivtp") else "#999999" for n in names])
        ax.set_xticks(range(len(names)), [n if n in ("none", "ivtp") else n.replace("genai-", "genai\n") for n in names])
        ax.set_title(title)
        for i, v in enumerate(values):
            ax.text(i, v, f"{v:.0f}" if key == "prefill_ms" else f"{v:.1f}", ha="center", va="bottom", fontsize=8)
    fig.suptitle("prunevlm (blue) vs onnxruntime-genai (grey), same weights, ONNX Runtime CPU")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="bench")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--new-tokens", type=int, default=16)
    p.add_argument("--out", type=Path, default=ROOT / "out" / "peer_genai")
    args = p.parse_args(argv)
    try:
        import onnxruntime_genai  # noqa: F401
    except ImportError:
        raise SystemExit("needs onnxruntime-genai: pip install -e '.[bench]'")
    from export.models.embedded import embedded_model
    from export.pipeline import ExportConfig, export
    progress = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    model_dir = embedded_model(args.model).model_dir
    args.out.mkdir(parents=True, exist_ok=True)
    llama = args.out / "llama"
    if not (llama / "config.json").is_file():
        extract_llama(model_dir, llama)
    peers = {}
    for precision in PEER_PRECISIONS:
        path = args.out / f"genai-{precision}"
        if not (path / "genai_config.json").is_file():
            progress(f"[peer] building onnxruntime-genai {precision}")
            build_peer(llama, path, precision, args.threads)
        peers[f"genai-{precision}"] = Peer(path)
    dirs = {}
    for method in ("none", "ivtp"):
        dirs[method] = args.out / method
        if not (dirs[method] / "manifest.json").is_file():
            export(ExportConfig(method, args.model, dirs[method], force=True), progress)
    result = measure(dirs, peers, args.runs, args.new_tokens, args.threads, progress)
    result["disk"] = {**{m: dir_bytes(d) for m, d in dirs.items()},
                      **{n: dir_bytes(args.out / n) for n in peers}}
    (args.out / "result.json").write_text(json.dumps(result, indent=1))
    plot(result, ROOT / "assets" / "peer_genai.png")
    lines = section(result, args, started)
    return write_benchmarks_section(SECTION, lines)


if __name__ == "__main__":
    sys.exit(main())
