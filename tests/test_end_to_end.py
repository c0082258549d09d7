"""Engines vs Hugging Face (unpruned) and vs the IVTP torch reference, single and batched."""
from dataclasses import replace

import pytest
import torch
from PIL import Image
from transformers import AutoProcessor, LlavaForConditionalGeneration

from runtime.load import open_engine_dir
from runtime.prefill import Timer
from runtime.preprocess import load_image, preprocess
from runtime.request import Request
from tests.conftest import IMAGES, PROMPTS

CASES = [(IMAGES / "astronaut.jpg", PROMPTS[0]), (IMAGES / "chelsea.jpg", PROMPTS[1]),
         (IMAGES / "coffee.jpg", PROMPTS[2])]


def collapse_image_tokens(ids, image_token_id):
    out = []
    for t in ids:
        if not (t == image_token_id and out and out[-1] == image_token_id):
            out.append(t)
    return out


def test_unpruned_engines_generate_the_tokens_of_hf_generate(tiny, none_dir):
    engines = open_engine_dir(none_dir)
    processor = AutoProcessor.from_pretrained(tiny.model_dir)
    model = LlavaForConditionalGeneration.from_pretrained(tiny.model_dir).eval()
    for image, prompt in CASES:
        result = engines.generate([Request(image, prompt)], max_new_tokens=32)[0]
        inputs = processor(images=Image.open(image), text=f"USER: <image>\n{prompt} ASSISTANT:", return_tensors="pt")
        with torch.no_grad():
            hf = model.generate(**inputs, max_new_tokens=32, do_sample=False)
        n = inputs["input_ids"].shape[1]
        assert result.token_ids == hf[0, n:].tolist()
        assert result.input_ids == collapse_image_tokens(inputs["input_ids"][0].tolist(), model.config.image_token_id)
        assert result.stages == []


@pytest.mark.parametrize("image, prompt", CASES)
def test_ivtp_engines_equal_the_torch_reference(ivtp_engines, ivtp_reference, image, prompt):
    got = ivtp_engines.generate([Request(image, prompt)], max_new_tokens=16)[0]
    want = ivtp_reference.generate([Request(image, prompt)], max_new_tokens=16)[0]
    assert [s["name"] for s in got.stages] == [s.name for s in ivtp_engines.m.stages]
    assert [len(s["kept"]) for s in got.stages] == [s.keep for s in ivtp_engines.m.stages]
    assert got.stages == want.stages
    assert got.token_ids == want.token_ids
    assert got.relevant_tokens == want.relevant_tokens


def test_vit_stages_ignore_the_prompt_and_llm_stages_follow_it(ivtp_engines):
    image = IMAGES / "astronaut.jpg"
    prompts = ["What colour is the flag on the left?", "Describe the face and the helmet of the person.",
               "Is there a rocket?"]
    results = ivtp_engines.generate([Request(image, p) for p in prompts], max_new_tokens=1)
    vit = [[s["kept"] for s in r.stages if s["name"].startswith("vit")] for r in results]
    llm = [[s["kept"] for s in r.stages if s["name"].startswith("llm")] for r in results]
    assert vit[0] == vit[1] == vit[2]
    assert llm[0] != llm[1] or llm[1] != llm[2]
    assert any(len(set(a[-1]) ^ set(b[-1])) > 0 for a, b in [(llm[0], llm[1]), (llm[1], llm[2])])


def test_a_batch_equals_each_request_alone(ivtp_engines):
    requests = [Request(image, prompt) for image, prompt in CASES]
    requests.append(Request(IMAGES / "rocket.jpg", "Rocket?"))  # a much shorter prompt: padded suffix
    batch = ivtp_engines.generate(requests, max_new_tokens=12)
    for request, together in zip(requests, batch):
        alone = ivtp_engines.generate([request], max_new_tokens=12)[0]
        assert together.stages == alone.stages
        assert together.token_ids == alone.token_ids
        assert together.input_ids == alone.input_ids


def test_decoding_with_per_segment_caches_equals_recomputing_without_cache(ivtp_reference):
    """The KV-cached decode (caches of different lengths per segment) against re-running every prefill
    segment over prompt + generated tokens at each step."""
    gen, request = ivtp_reference, Request(IMAGES / "chelsea.jpg", PROMPTS[1])
    cached = gen.generate([request], max_new_tokens=6)[0].token_ids
    prompt = gen.prompts.encode(request.prompt)
    pixels = preprocess(load_image(request.image), gen.preprocess_cfg)[None]
    tokens = []
    for _ in range(6):
        extended = replace(prompt, suffix_ids=prompt.suffix_ids + tokens,
                           suffix_spans=prompt.suffix_spans + [None] * len(tokens))
        logits = gen.prefill([extended], pixels, Timer()).logits
        tokens.append(int(logits.argmax(-1)[0]))
    assert tokens == cached
