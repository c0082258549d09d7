"""A placed TorchRunner (the GPU reference) keeps KV caches as device tensors and changes no result."""
import numpy as np
import torch

from export.graphs.torch_runner import TorchRunner
from runtime.generator import Generator
from runtime.request import Request
from tests.conftest import IMAGES, PROMPTS


def test_placed_runners_keep_kv_as_tensors_and_give_the_same_tokens(ivtp_reference):
    placed = {n: TorchRunner(n, r.graph, record=True, device="cpu", dtype=torch.float32)
              for n, r in ivtp_reference.engines.items()}
    request = Request(IMAGES / "chelsea.jpg", PROMPTS[1])
    want = ivtp_reference.generate([request], max_new_tokens=4)[0]
    got = Generator(ivtp_reference.m, placed).generate([request], max_new_tokens=4)[0]
    assert got.token_ids == want.token_ids
    assert got.stages == want.stages
    assert got.kv_cache_bytes == want.kv_cache_bytes

    decoder = placed[ivtp_reference.pipe.segments[0].decoder]
    step = decoder.feeds[-1]
    assert all(isinstance(step[k], torch.Tensor) for k in step if k.startswith("past_key_values."))
    out = decoder.infer(step)
    assert isinstance(out["present.0.key"], torch.Tensor)
    assert isinstance(out["hidden_out"], np.ndarray) and out["hidden_out"].dtype == np.float32
