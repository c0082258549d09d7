"""IVTP's CLIP text encoder runs on the whole batch's windows at once, never wider than the request batch,
and picks the same instruction tokens as one request at a time."""
from dataclasses import replace

import pytest

from runtime.generator import Generator
from runtime.request import Request
from tests.conftest import IMAGES, PROMPTS

LONG = ("Look closely at this photo and describe, in order, every object you can see on the left, the right, "
        "the top and the bottom of the frame, then say which colours dominate, what the lighting is like, "
        "whether anything moves, and what a person standing there would hear and smell.")


@pytest.fixture(scope="module")
def ivtp_tau0(ivtp_engines):
    """The tiny's random CLIP scores instruction tokens near 0: tau 0 makes them pick about half, so the
    comparison below is about chosen tokens, not empty lists. Tau is a runtime constant of the manifest."""
    m = ivtp_engines.m
    return Generator(replace(m, pipeline=replace(m.pipeline, tau=0.0)), ivtp_engines.engines)


def _count_calls(monkeypatch, engines):
    engine, shapes = engines.engines["text_encoder"], []
    real = engine.infer

    def counting(feed):
        shapes.append(feed["input_ids"].shape[0])
        return real(feed)
    monkeypatch.setattr(engine, "infer", counting)
    return shapes


def test_one_text_encoder_call_per_batch_with_the_same_chosen_tokens(ivtp_tau0, monkeypatch):
    requests = [Request(IMAGES / "chelsea.jpg", p) for p in PROMPTS]
    alone = [ivtp_tau0.generate([r], max_new_tokens=1)[0] for r in requests]
    rows = _count_calls(monkeypatch, ivtp_tau0)
    batched = ivtp_tau0.generate(requests, max_new_tokens=1)
    assert rows == [3]
    assert [r.relevant_tokens for r in batched] == [r.relevant_tokens for r in alone]
    assert [r.stages for r in batched] == [r.stages for r in alone]  # the pseudo-CLS guides the LLM stages
    assert sum(len(r.relevant_tokens) for r in alone) >= 2  # tokens were picked: the comparison means something


def test_long_prompts_split_into_calls_no_wider_than_the_batch(ivtp_tau0, monkeypatch):
    windows = len(ivtp_tau0.clip.encode(LONG)[0])
    assert windows == 2, f"the long prompt should need two CLIP windows, got {windows}"
    requests = [Request(IMAGES / "chelsea.jpg", LONG), Request(IMAGES / "astronaut.jpg", PROMPTS[0])]
    alone = [ivtp_tau0.generate([r], max_new_tokens=1)[0] for r in requests]
    rows = _count_calls(monkeypatch, ivtp_tau0)
    batched = ivtp_tau0.generate(requests, max_new_tokens=1)
    assert rows == [2, 1]  # three windows, at most two rows (the request batch) per call
    assert [r.relevant_tokens for r in batched] == [r.relevant_tokens for r in alone]
    assert [r.stages for r in batched] == [r.stages for r in alone]
