"""The fp16-vs-fp32 token tolerance that the TensorRT test applies, checked on hand-made logits and on real fp16
rounding (the torch reference in fp16 on the CPU)."""
import numpy as np

from calibration.fidelity import greedy_mismatch
from tests.conftest import IMAGES, PROMPTS, generate_with_logits, token_mismatches

FP32 = [np.array([0.0, 10.0, 2.0, 9.95]), np.array([5.0, 1.0, 0.0, 2.0]), np.array([0.0, 3.0, 8.0, 1.0])]
TOKENS = [1, 0, 2]


def test_the_same_tokens_with_rounding_noise_pass():
    noisy = [w + 0.001 * np.arange(4) for w in FP32]
    assert greedy_mismatch(FP32, noisy, TOKENS, TOKENS) is None


def test_a_flip_at_a_near_tie_passes_and_ends_the_comparison():
    flipped = [np.array([0.0, 9.97, 2.0, 9.98]), np.zeros(4), np.zeros(4)]  # later steps see another context
    assert greedy_mismatch(FP32, flipped, TOKENS, [3, 2, 2]) is None  # margin 0.05 of range 10: 0.5%


def test_a_flip_without_a_near_tie_fails_and_says_where():
    want = np.full(1000, 5.0)
    want[[0, 1, 2]] = 0.0, 10.0, 7.0  # top two 3 apart over a range of 10
    got = want.copy()
    got[2] = 10.5  # one logit off: cosine still 0.9997, but the token changes without a tie
    assert greedy_mismatch([want], [got], [1], [2]) == (
        "step 0: token 2 instead of 1, but fp32's top two logits are 3 apart, 30.0% of their range: "
        "not a near tie (<= 1%)")


def test_low_logit_cosine_fails_even_with_the_same_tokens():
    got = [FP32[0], np.array([5.0, 4.0, 4.0, 4.0]), FP32[2]]
    assert greedy_mismatch(FP32, got, TOKENS, TOKENS) == "step 1: logit cosine 0.79064 is below 0.998"


def test_stopping_early_with_the_same_tokens_fails():
    assert greedy_mismatch(FP32, FP32[:2], TOKENS, TOKENS[:2]) == "2 tokens instead of 3 with the same tokens up to there"


def test_real_fp16_rounding_passes_though_it_changes_tokens(none_dir):
    """The tiny model's torch reference run entirely in fp16 (a harsher proxy for a TensorRT fp16 plan, which
    keeps norms and softmax fp32) against fp32: tokens differ, only at near ties, and cosine stays above 0.998."""
    import torch

    from export.graphs.torch_runner import TorchRunner
    from export.reference import reference_generator
    from runtime.generator import Generator
    from runtime.manifest import load_manifest
    from runtime.request import Request
    manifest = load_manifest(none_dir)
    fp16 = {name: TorchRunner(name, runner.graph, device="cpu", dtype=torch.float16)
            for name, runner in reference_generator(manifest).engines.items()}
    for runner in fp16.values():
        runner.graph.module.half()
    requests = [Request(IMAGES / "chelsea.jpg", PROMPTS[0]), Request(IMAGES / "rocket.jpg", PROMPTS[1])]
    want, want_logits, _ = generate_with_logits(reference_generator(manifest), requests, 8)
    got, got_logits, _ = generate_with_logits(Generator(manifest, fp16), requests, 8)
    assert want[0].token_ids[0] == 961 and got[0].token_ids[0] == 511  # a near tie at the first token
    assert got[1].token_ids == want[1].token_ids
    assert token_mismatches(want, want_logits, got, got_logits) == [None, None]
