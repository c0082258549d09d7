"""Session fixtures: the tiny model is built once, each method exported once, for every test."""
import json
import stat
from pathlib import Path

import pytest
import torch

from calibration.capture import record
from calibration.fidelity import greedy_mismatch
from engines.kv_names import PAST_PREFIX
from engines.tensorrt.availability import TensorRTUnavailable, require_tensorrt

ROOT = Path(__file__).resolve().parent.parent
IMAGES = ROOT / "assets" / "images"
PROMPTS = ["What is the person in this photo wearing, and what colour is it?",
           "Describe the animal on the sofa.",
           "How many cups are on the table?"]


def generate_with_logits(generator, requests, max_new_tokens):
    """Results, each request's logits at every greedy step (the LM head's at prefill, then at each decode step),
    and the recording runners."""
    recorders = record(generator, keep_outputs=True)
    results = generator.generate(requests, max_new_tokens)
    steps = [o["logits"] for o in recorders[generator.pipe.lm_head].outputs]
    return results, [[step[b] for step in steps] for b in range(len(requests))], recorders


def token_mismatches(want, want_logits, got, got_logits) -> list:
    """greedy_mismatch per request: None where `got` is within tolerance of `want`."""
    return [greedy_mismatch(*request) for request in zip(want_logits, got_logits, [w.token_ids for w in want],
                                                         [g.token_ids for g in got])]


def file_modes(root: Path) -> dict:
    """{path relative to root ("." for root): permission bits}."""
    return {str(p.relative_to(root)): stat.S_IMODE(p.stat().st_mode) for p in [root, *root.rglob("*")]}


def past_types(feeds: list[dict]) -> list[set]:
    """Per decode feed, the type names of its past KV caches (numpy, OrtValue, CacheView...)."""
    return [{type(v).__name__ for k, v in feed.items() if k.startswith(PAST_PREFIX)} for feed in feeds]


def tensorrt_skip_reason() -> str | None:
    try:
        require_tensorrt()
    except TensorRTUnavailable as e:
        return f"needs TensorRT and an NVIDIA GPU: {e}"
    return None


needs_tensorrt_gpu = pytest.mark.skipif(tensorrt_skip_reason() is not None, reason=tensorrt_skip_reason() or "")


@pytest.fixture(scope="session", autouse=True)
def single_thread_torch():
    # On 2 cores torch's intra-op threads make the tiny matmuls ~100x slower; one thread is fastest.
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    from export.models.embedded import embedded_model
    return embedded_model("tiny")


@pytest.fixture(scope="session")
def llava_hf(tmp_path_factory):
    """Offline stand-ins for llava-hf/llava-1.5-7b-hf and openai/clip-vit-large-patch14-336 as their files are on
    the hub (hand-written transformers-4 configs, llava-hf tensor names in fp16 shards, CLIP as pytorch_model.bin
    only, tokenizers with the real 32000/49408 vocabularies and ids), with tiny widths: built once, ~3 s."""
    from export.models.llava_hf_layout import build_llava_hf_pair
    return build_llava_hf_pair(tmp_path_factory.mktemp("llava-hf") / "pair")


def _export(tmp_path_factory, method, opset, dtype, **knobs):
    from export.methods.registry import get_method
    from export.pipeline import ExportConfig, export
    out = tmp_path_factory.mktemp("engines") / method
    cfg = get_method(method).config_type(**knobs)
    return export(ExportConfig(method=method, model="tiny", out=out, method_config=cfg, opset=opset, dtype=dtype),
                  progress=lambda m: None)


@pytest.fixture(scope="session")
def exported(tiny, tmp_path_factory):
    """exported(method, opset=23, dtype=None, **knobs) -> engine dir of the tiny model; each combination is
    exported once."""
    cache = {}

    def get(method, opset=23, dtype=None, **knobs):
        key = (method, opset, dtype, tuple(sorted(knobs.items())))
        if key not in cache:
            cache[key] = _export(tmp_path_factory, method, opset, dtype, **knobs)
        return cache[key]
    return get


@pytest.fixture(scope="session")
def none_dir(exported):
    return exported("none")


@pytest.fixture(scope="session")
def ivtp_dir(exported):
    return exported("ivtp")


@pytest.fixture(scope="session")
def ivtp_engines(ivtp_dir):
    from runtime.load import open_engine_dir
    return open_engine_dir(ivtp_dir)


@pytest.fixture(scope="session")
def ivtp_reference(ivtp_engines):
    from export.reference import reference_generator
    return reference_generator(ivtp_engines.m)


def read_manifest(engine_dir) -> dict:
    return json.loads((Path(engine_dir) / "manifest.json").read_text())
