"""export(): checkpoint + method -> engine dir (graphs, tokenizers, manifest), every graph validated against its
torch module on real inputs, written through the staged engine-dir write."""
import platform
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import torch
import transformers
from tokenizers import Tokenizer

from engines.onnxruntime_runner import OnnxrtRunner, SessionFromOnnx
from export.graphs.chunked import ChunkedOnnxRunner
from export.graphs.dims import graph_dims
from export.graphs.onnx_export import OPSET, OPSETS, export_graph, external_bytes_differ, torch_held_weights
from export.graphs.release import WeightRelease
from export.graphs.torch_runner import TorchRunner, module_args
from export.graphs.validate import TOLERANCES, Agreement, ValidationError, compare
from export.methods.registry import MethodPlan, get_method
from export.models.checkpoint import Checkpoint, load_checkpoint, resolve_model_dirs
from export.models.dtypes import DTYPES, resolve_dtype
from export.models.facts import manifest_facts
from runtime.engine_dir import check_destination, staged_engine_dir
from runtime.errors import ConfigError
from runtime.feeds import cast_floats, float_inputs
from runtime.generator import Generator
from runtime.manifest import GraphRecord, Manifest, TensorRecord, save_manifest
from runtime.preprocess import ImagePreprocessConfig
from runtime.prompt import LLAVA_15_TEMPLATE
from runtime.shipped import EXPORT_SAMPLE

PIECE_BYTES = 1 << 29  # weights per piece when an fp16 graph is validated in pieces: 1 GiB of fp32 casts at a time


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
    dtype: str | None = None  # fp32 | fp16 | bf16; None: the checkpoint's own (fp32 for the embedded models)

    def __post_init__(self):
        self.method_config = self.method_config or get_method(self.method).config_type()


def export(cfg: ExportConfig, progress=lambda msg: print(msg, file=sys.stderr, flush=True)) -> Path:
    out = Path(cfg.out).resolve()
    check_destination(out, cfg.force)
    if cfg.opset not in OPSETS:
        raise ConfigError(f"--opset {cfg.opset} is not one torch's exporter writes; choose {OPSETS.start}..{OPSETS.stop - 1} "
                          f"({OPSET}, the default, keeps attention as one ONNX Attention op; lower opsets write it out)")
    method = get_method(cfg.method)
    t0 = time.perf_counter()
    model_dir, _ = resolve_model_dirs(cfg.model, cfg.clip)
    dtype = resolve_dtype(cfg.dtype, model_dir)
    progress(f"[export] loading checkpoint {cfg.model} in {dtype}")
    ckpt = load_checkpoint(cfg.model, cfg.clip, method.needs_clip, DTYPES[dtype])
    plan = method.build(ckpt, cfg.method_config)
    with staged_engine_dir(out, cfg.force) as tmp:
        manifest = base_manifest(cfg, ckpt, plan, tmp, dtype)
        runners = {name: TorchRunner(name, graph, record=True, dtype=DTYPES[dtype]) for name, graph in plan.graphs.items()}
        if plan.calibrate:
            progress("[export] calibrating the method's constants with the PyTorch reference")
            plan.calibrate(Generator(manifest, runners), progress)
            for runner in runners.values():
                runner.feeds.clear()
        progress("[export] running the PyTorch reference once to capture real inputs for every graph")
        Generator(manifest, runners).generate([EXPORT_SAMPLE], max_new_tokens=2)
        n = len(plan.graphs)
        for k, (name, graph) in enumerate(plan.graphs.items(), 1):
            start = time.perf_counter()
            export_graph(graph, _trace_sample(graph, runners[name].feeds[0], DTYPES[dtype]), tmp / f"{name}.onnx", cfg.opset)
            progress(f"[export] {k}/{n} {name}: exported in {time.perf_counter() - start:.1f}s")
        # Validated after all are exported, so that each graph's torch weights go once the last graph holding them
        # is validated: the peak is the weights still to validate, not the whole model twice.
        weights = {name: torch_held_weights(tmp / f"{name}.onnx", graph.module) for name, graph in plan.graphs.items()}
        release = WeightRelease(weights, [ckpt.llava, *([ckpt.clip] if ckpt.clip is not None else []),
                                          *(g.module for g in plan.graphs.values())])
        for k, name in enumerate(plan.graphs, 1):
            start = time.perf_counter()
            feeds = runners[name].feeds  # a decoder graph's first is a prefill, its last a decode step
            agreement, record = _validate(name, tmp / f"{name}.onnx", runners[name], feeds[:1] + feeds[1:][-1:],
                                          dtype, weights.pop(name))
            record.dims = graph_dims([t.shape for t in record.inputs], manifest.model)
            manifest.graphs[name] = record
            runners[name].feeds.clear()
            freed = release.done(name)
            progress(f"[export] {k}/{n} {name}: validated in {time.perf_counter() - start:.1f}s ({agreement.summary()})"
                     + (f"; {freed / 2**30:.2f} GiB of torch weights released" if freed > 2**28 else ""))
        save_manifest(manifest, tmp)
    progress(f"[export] wrote {out} in {time.perf_counter() - t0:.1f}s")
    return out


def base_manifest(cfg: ExportConfig, ckpt: Checkpoint, plan: MethodPlan, tmp: Path, dtype: str = "fp32") -> Manifest:
    """The manifest before any graph is exported, rooted at `tmp`, where the tokenizers are copied."""
    (tmp / "tokenizer").mkdir()
    shutil.copyfile(ckpt.model_dir / "tokenizer.json", tmp / "tokenizer" / "llm.json")
    tokenizers = {"llm": "tokenizer/llm.json"}
    if ckpt.clip_dir:
        shutil.copyfile(ckpt.clip_dir / "tokenizer.json", tmp / "tokenizer" / "clip.json")
        tokenizers["clip"] = "tokenizer/clip.json"
    facts = manifest_facts(ckpt)
    image_token = Tokenizer.from_file(str(tmp / "tokenizer" / "llm.json")).id_to_token(facts["image_token_id"])
    if image_token is None:
        raise ConfigError(f"{ckpt.model_dir / 'config.json'}: image_token_index {facts['image_token_id']} is not a "
                          f"token of {ckpt.model_dir / 'tokenizer.json'}; the config and the tokenizer must come from "
                          "the same checkpoint (llava-1.5-hf: <image> = 32000)")
    return Manifest(
        method=cfg.method, config=asdict(cfg.method_config), opset=cfg.opset, stages=plan.schedule.stages,
        pipeline=plan.pipeline, model=facts, vision_tokens_out=plan.schedule.vision_tokens,
        preprocess=ImagePreprocessConfig.from_hf_dict(ckpt.preprocessor_config).to_dict(),
        prompt_template=cfg.prompt_template, image_token=image_token, tokenizers=tokenizers,
        source={"model": str(ckpt.model_dir), "clip": str(ckpt.clip_dir) if ckpt.clip_dir else None},
        versions={"python": platform.python_version(), "torch": torch.__version__,
                  "transformers": transformers.__version__, "onnx": onnx.__version__,
                  "onnxruntime": onnxruntime.__version__},
        dtype=dtype, validation={**TOLERANCES[dtype].to_json(),
                    "sample": {"image": EXPORT_SAMPLE.image.name, "prompt": EXPORT_SAMPLE.prompt}},
        root=tmp)


def _trace_sample(graph, feed: dict, dtype) -> tuple:
    """Batch 2, so the exporter keeps it symbolic (a prefill's lengths already are); float inputs in the graph's
    dtype."""
    return module_args(graph, {k: np.concatenate([v, v]) for k, v in feed.items()}, dtype=dtype)


def _validate(name, path: Path, runner: TorchRunner, feeds: list, dtype: str, weights: dict) -> tuple[Agreement, GraphRecord]:
    """Max differences against torch on each feed, and the graph's I/O record for the manifest. ONNX Runtime reads
    `weights` ({initializer: torch tensor}) where torch holds them, and the graph's files must hold those bytes, so
    validating a graph costs no second copy of its weights; an fp16 graph larger than PIECE_BYTES runs in pieces
    (export/graphs/chunked.py), so that the CPU provider's fp32 casts of its weights are not all held at once.
    Caches are fed as copies: a session writes them in place."""
    shared = {init: t.detach().numpy() for init, t in weights.items()}  # views: no copy
    differ = external_bytes_differ(path, shared)
    if differ:
        raise ValidationError(f"graph {name}: the weights written to {path.name}.data differ from the module's for "
                              f"{differ[:3]}{' ...' if len(differ) > 3 else ''}; export again (is the disk full?)")
    with OnnxrtRunner(SessionFromOnnx(path, ["CPUExecutionProvider"], initializers=shared), name) as whole:
        sig = whole.io_signature()
        describe = lambda items: [TensorRecord(n, np.dtype(t).name, s) for n, t, s in items]  # noqa: E731
        data = path.name + ".data" if (path.parent / (path.name + ".data")).exists() else None
        record = GraphRecord(path.name, describe(sig["inputs"]), describe(sig["outputs"]), {}, data)
        big = dtype != "fp32" and sum(a.nbytes for a in shared.values()) > PIECE_BYTES
        ort_runner = ChunkedOnnxRunner(path, shared, PIECE_BYTES) if big else whole
        agreements = [compare(name, runner.infer(feed), ort_runner.infer(cast_floats(_copied(feed), float_inputs(record))),
                              TOLERANCES[dtype]) for feed in feeds]
    return Agreement.worst(agreements), record


def _copied(feed: dict) -> dict:
    return {k: v.copy() if isinstance(v, np.ndarray) else v for k, v in feed.items()}
