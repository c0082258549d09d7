"""End to end from a llava-hf style dir (hub layout, real vocabularies): `export --method none`, then the engines
generate what Hugging Face's generate does from the same dir. ~30 s, most of it the export."""
import json

import pytest
import torch
from PIL import Image

from runtime.load import open_engine_dir
from runtime.request import Request
from tests.conftest import IMAGES, read_manifest

PROMPTS = ["Is the café in Zürich über 2024? 中 🐱", "Describe it."]


@pytest.fixture(scope="module")
def engine_dir(llava_hf, tmp_path_factory):
    from export.pipeline import ExportConfig, export
    out = tmp_path_factory.mktemp("llava-hf-engines") / "none"
    return export(ExportConfig(method="none", model=str(llava_hf.model_dir), out=out), progress=lambda m: None)


@pytest.fixture(scope="module")
def engines(engine_dir):
    return open_engine_dir(engine_dir)


def test_the_manifest_carries_llava_hf_s_tokens(engine_dir, llava_hf):
    m = read_manifest(engine_dir)
    assert m["dtype"] == "fp16"  # the checkpoint's own: llava-hf stores fp16
    model = m["model"]
    assert (model["image_token_id"], model["pad_token_id"], model["eos_token_id"], model["vocab_size"]) == (
        32000, 32001, 2, 32064)
    assert m["image_token"] == "<image>"
    assert (engine_dir / "tokenizer" / "llm.json").read_bytes() == (llava_hf.model_dir / "tokenizer.json").read_bytes()
    assert m["source"]["model"] == str(llava_hf.model_dir)
    preprocess = json.loads((llava_hf.model_dir / "preprocessor_config.json").read_text())
    assert m["preprocess"]["image_mean"] == pytest.approx(preprocess["image_mean"])
    assert m["preprocess"]["shortest_edge"] == 336


def test_engines_generate_the_tokens_of_hf_generate(engines, llava_hf):
    from transformers import AutoProcessor, LlavaForConditionalGeneration
    processor = AutoProcessor.from_pretrained(llava_hf.model_dir)
    model = LlavaForConditionalGeneration.from_pretrained(llava_hf.model_dir, dtype=torch.float32).eval()
    image, prompt = IMAGES / "astronaut.jpg", PROMPTS[0]
    result = engines.generate([Request(image, prompt)], max_new_tokens=12)[0]
    inputs = processor(images=Image.open(image), text=f"USER: <image>\n{prompt} ASSISTANT:", return_tensors="pt")
    assert (inputs["input_ids"] == 32000).sum().item() == 576
    with torch.no_grad():
        hf = model.generate(**inputs, max_new_tokens=12, do_sample=False)
    n = inputs["input_ids"].shape[1]
    assert result.token_ids == hf[0, n:].tolist()
    ids = inputs["input_ids"][0].tolist()
    first = ids.index(32000)
    assert result.input_ids == ids[:first + 1] + ids[first + 576:]  # the runtime keeps one image token


def test_a_padded_batch_equals_each_request_alone(engines):
    requests = [Request(IMAGES / "chelsea.jpg", PROMPTS[0]), Request(IMAGES / "coffee.jpg", PROMPTS[1])]
    together = engines.generate(requests, max_new_tokens=6)
    for request, got in zip(requests, together):
        alone = engines.generate([request], max_new_tokens=6)[0]
        assert got.token_ids == alone.token_ids and got.input_ids == alone.input_ids


def test_ids_past_the_tokenizer_decode_to_nothing(engine_dir):
    """llava-1.5-7b-hf's lm_head has 32064 rows for 32002 tokens: an id in 32002..32063 is skipped, not an error."""
    from runtime.prompt import LLAVA_15_TEMPLATE, PromptTokenizer
    tok = PromptTokenizer(engine_dir / "tokenizer" / "llm.json", LLAVA_15_TEMPLATE, "<image>")
    hat = tok.tokenizer.encode("hat", add_special_tokens=False).ids
    assert tok.decode(hat + [32002, 32063] + hat) == "hat hat"
