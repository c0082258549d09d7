"""export(): checkpoint + method -> engine dir (graphs, tokenizers, manifest), validated, written atomically."""
import json
import platform
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import torch
import transformers
from tokenizers import Tokenizer

from export.checkpoint import load_checkpoint
from export.graphs import model_facts
from export.methods.registry import get_method
from export.onnx_export import OPSET, OPSETS, GraphSpec, export_graph
from export.torch_runner import TorchRunner, module_args
from export.validate import compare
from runtime.errors import ConfigError
from runtime.generator import Generator, Request
from runtime.manifest import FORMAT, MANIFEST, Manifest, file_records, publish
from runtime.preprocess import ImagePreprocessConfig

ASSETS = Path(__file__).resolve().parent.parent / "assets"
LLAVA_15_TEMPLATE = "USER: <image>\n{prompt} ASSISTANT:"
SAMPLE = Request(ASSETS / "images" / "astronaut.jpg", "What is the person in this photo wearing, and what colour is it?")


@dataclass
class ExportConfig:
    method: str
    model: str
    out: Path
    method_config: object = None  # the method's own config dataclass; None takes its defaults
    clip: str | None = None
    force: bool = False
    prompt_template: str = LLAVA_15_TEMPLATE
    opset: int = OPSET


def export(cfg: ExportConfig, progress=lambda msg: print(msg, file=sys.stderr, flush=True)) -> Path:
    out = Path(cfg.out).resolve()
    if out.exists() and not cfg.force:
        raise ConfigError(f"{out} already exists; pass --force to replace it or choose another --out")
    if cfg.opset not in OPSETS:
        raise ConfigError(f"--opset {cfg.opset} is not one torch's exporter writes; choose {OPSETS.start}..{OPSETS.stop - 1} "
                          f"({OPSET}, the default, keeps attention as one ONNX Attention op; lower opsets write it out)")
    method = get_method(cfg.method)
    method_config = cfg.method_config or method.config_type()
    t0 = time.perf_counter()
    progress(f"[export] loading checkpoint {cfg.model}")
    ckpt = load_checkpoint(cfg.model, cfg.clip, method.needs_clip)
    plan = method.build(ckpt, method_config)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        manifest = base_manifest(cfg, ckpt, plan, tmp)
        runners = {name: TorchRunner(name, graph, record=True) for name, graph in plan.graphs.items()}
        if plan.calibrate:
            progress("[export] calibrating the method's constants with the PyTorch reference")
            plan.calibrate(Generator(Manifest(tmp, manifest), runners), progress)
            for runner in runners.values():
                runner.feeds.clear()
        progress("[export] running the PyTorch reference once to capture real inputs for every graph")
        Generator(Manifest(tmp, manifest), runners).generate([SAMPLE], max_new_tokens=2)
        manifest["graphs"] = {}
        for k, (name, graph) in enumerate(plan.graphs.items(), 1):
            start = time.perf_counter()
            feed = runners[name].feeds[0]
            path = tmp / f"{name}.onnx"
            export_graph(GraphSpec(name, graph.module, _trace_sample(graph, feed), graph.input_names,
                                   graph.output_names, graph.dims), path, graph.nested or None, cfg.opset)
            diffs, manifest["graphs"][name] = _validate(name, path, runners[name], feed)
            worst = max((v for o, v in diffs.items() if not o.startswith("kept")), default=0.0)
            progress(f"[export] {k}/{len(plan.graphs)} {name}: exported and validated in "
                     f"{time.perf_counter() - start:.1f}s (max abs diff {worst:.2e}, kept indices identical)")
        manifest["files"] = file_records(tmp)
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1))
        publish(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    progress(f"[export] wrote {out} in {time.perf_counter() - t0:.1f}s")
    return out


def base_manifest(cfg: ExportConfig, ckpt, plan, tmp: Path) -> dict:
    (tmp / "tokenizer").mkdir()
    shutil.copyfile(ckpt.model_dir / "tokenizer.json", tmp / "tokenizer" / "llm.json")
    tokenizers = {"llm": "tokenizer/llm.json"}
    if ckpt.clip_dir:
        shutil.copyfile(ckpt.clip_dir / "tokenizer.json", tmp / "tokenizer" / "clip.json")
        tokenizers["clip"] = "tokenizer/clip.json"
    facts = model_facts(ckpt)
    llava = ckpt.llava
    eos = llava.generation_config.eos_token_id
    facts["eos_token_id"] = eos[0] if isinstance(eos, list) else eos
    pad = llava.config.text_config.pad_token_id
    facts["pad_token_id"] = pad if pad is not None else facts["eos_token_id"]
    image_token = Tokenizer.from_file(str(tmp / "tokenizer" / "llm.json")).id_to_token(facts["image_token_id"])
    vision_stages = [s for s in plan.stages if s["where"] == "vision"]
    return {
        "format": FORMAT, "method": cfg.method, "opset": cfg.opset, "config": plan.config, "stages": plan.stages,
        "pipeline": plan.pipeline, "model": facts,
        "vision_tokens_out": plan.vision_tokens or (vision_stages[-1]["keep"] if vision_stages else facts["num_patches"]),
        "preprocess": ImagePreprocessConfig.from_hf_dict(ckpt.preprocessor_config).to_dict(),
        "prompt_template": cfg.prompt_template, "image_token": image_token, "tokenizers": tokenizers,
        "source": {"model": str(ckpt.model_dir), "clip": str(ckpt.clip_dir) if ckpt.clip_dir else None},
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "transformers": transformers.__version__, "onnx": onnx.__version__,
                     "onnxruntime": onnxruntime.__version__},
        "validation": {"atol": 1e-4, "rtol": 1e-3, "sample": {"image": SAMPLE.image.name, "prompt": SAMPLE.prompt}},
    }


def _trace_sample(graph, feed: dict) -> tuple:
    """Batch 2 and (for decode) two new tokens, so the exporter keeps those dims symbolic."""
    sample = {k: np.concatenate([v, v]) for k, v in feed.items()}
    if "position_ids" in sample:
        sample["inputs_embeds"] = np.concatenate([sample["inputs_embeds"]] * 2, 1)
        sample["position_ids"] = np.concatenate([sample["position_ids"], sample["position_ids"] + 1], 1)
    return module_args(graph, sample)


def _validate(name, path: Path, runner: TorchRunner, feed) -> tuple[dict, dict]:
    """Max differences against torch, and the graph's I/O record for the manifest, from one ORT session."""
    from engines.onnxruntime_engine import OnnxrtRunner, SessionFromOnnx
    reference = runner.infer(feed)
    with OnnxrtRunner(SessionFromOnnx(path, ["CPUExecutionProvider"]), name) as ort_runner:
        diffs = compare(name, reference, ort_runner.infer(feed))
        sig = ort_runner.io_signature()
    describe = lambda items: [{"name": n, "dtype": np.dtype(t).name, "shape": s} for n, t, s in items]
    return diffs, {"file": path.name, "data": path.name + ".data", "inputs": describe(sig["inputs"]),
                   "outputs": describe(sig["outputs"])}
