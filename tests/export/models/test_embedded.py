"""The embedded "tiny" LLaVA-1.5-shaped checkpoint, its tokenizers and demo images."""

import hashlib
import math
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from export.models.embedded import SPECS, embedded_model
from export.models.tokenizer_training import load_corpus, train_clip_tokenizer, train_llama_tokenizer

IMAGES = Path(__file__).resolve().parents[3] / "assets" / "images"
PROMPT = "USER: <image>\nWhat is this? ASSISTANT:"
TEXTS = ["What colour is the Cat's hat? 🐱", "Ein Café in Zürich, naïve façade!", "How many dogs?  Two\tdogs.", "x"]


@pytest.fixture(scope="module", autouse=True)
def _single_thread():
    # The tiny model's matmuls are microseconds; OpenMP sync across threads costs far more
    # (100x slower on a busy 2-core box), so run this module single-threaded.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def ckpt(tmp_path_factory):
    return embedded_model("tiny", cache_dir=tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="session")
def llava(ckpt):
    from transformers import LlavaForConditionalGeneration

    return LlavaForConditionalGeneration.from_pretrained(ckpt.model_dir, attn_implementation="eager").eval()


@pytest.fixture(scope="session")
def processor(ckpt):
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(ckpt.model_dir)


@pytest.fixture(scope="session")
def raw_tokenizers():
    lines = load_corpus()
    return train_llama_tokenizer(lines), train_clip_tokenizer(lines)


def test_geometry(llava, processor):
    cfg, vt = llava.config, llava.model.vision_tower
    assert cfg.vision_config.num_hidden_layers == len(vt.encoder.layers) == 24
    assert cfg.text_config.num_hidden_layers == len(llava.model.language_model.layers) == 32
    assert (cfg.vision_config.image_size, cfg.vision_config.patch_size) == (336, 14)
    assert vt.embeddings.position_embedding.num_embeddings == 577  # 24*24 patches + CLS
    assert cfg.vision_config.hidden_act == "quick_gelu"
    assert (cfg.vision_feature_layer, cfg.vision_feature_select_strategy) == (-2, "default")
    tok = processor.tokenizer
    assert cfg.image_token_id == tok.convert_tokens_to_ids("<image>")
    assert cfg.text_config.vocab_size == len(tok) == llava.lm_head.out_features
    assert (cfg.text_config.bos_token_id, cfg.text_config.eos_token_id) == (1, 2)
    assert cfg.text_config.pad_token_id == tok.pad_token_id == tok.convert_tokens_to_ids("<pad>")
    assert all(p.dtype == torch.float32 for p in llava.parameters())


def test_clip_vision_tower_is_llavas(ckpt, llava):
    from transformers import AutoProcessor, CLIPModel

    clip = CLIPModel.from_pretrained(ckpt.clip_dir).eval()
    a, b = clip.vision_model.state_dict(), llava.model.vision_tower.state_dict()
    assert a.keys() == b.keys()
    assert max((a[k] - b[k]).abs().max().item() for k in a) == 0
    proc = AutoProcessor.from_pretrained(ckpt.clip_dir)
    assert clip.config.text_config.eos_token_id == proc.tokenizer.convert_tokens_to_ids("<|endoftext|>")
    assert clip.config.text_config.max_position_embeddings == 77
    inputs = proc(text=["a cat", "a rocket"], images=Image.open(IMAGES / "chelsea.jpg"), return_tensors="pt", padding=True)
    with torch.no_grad():
        out = clip(**inputs)
    assert out.logits_per_image.shape == (1, 2) and torch.isfinite(out.logits_per_image).all()


def test_build_is_deterministic_and_cached(ckpt, tmp_path, capsys):
    other = embedded_model("tiny", cache_dir=tmp_path)
    assert other.model_dir.parent.name == ckpt.model_dir.parent.name  # same digest
    for sub in ("model_dir", "clip_dir"):
        d1, d2 = getattr(ckpt, sub), getattr(other, sub)
        t1, t2 = load_file(d1 / "model.safetensors"), load_file(d2 / "model.safetensors")
        assert t1.keys() == t2.keys()
        assert all(torch.equal(t1[k], t2[k]) for k in t1)
        assert (d1 / "tokenizer.json").read_bytes() == (d2 / "tokenizer.json").read_bytes()
    capsys.readouterr()
    assert embedded_model("tiny", cache_dir=tmp_path) == other
    assert "building" not in capsys.readouterr().err  # second call hits the cache
    assert [p.name for p in tmp_path.iterdir()] == [other.model_dir.parent.name]  # no leftover temp dirs


def test_tokenizer_training_is_deterministic(raw_tokenizers):
    lines = load_corpus()
    assert train_llama_tokenizer(lines).to_str() == raw_tokenizers[0].to_str()
    assert train_clip_tokenizer(lines).to_str() == raw_tokenizers[1].to_str()


def test_tokenizers_are_the_ones_the_cached_models_hold(raw_tokenizers):
    """The embedded models' cache key does not cover the tokenizer code: its output is pinned here instead."""
    digests = [hashlib.sha256(t.to_str().encode()).hexdigest()[:16] for t in raw_tokenizers]
    assert digests == ["f068e71000ebe89e", "88cb9ca3715e2167"]


def test_special_token_ids(raw_tokenizers):
    llama, clip = raw_tokenizers
    assert [llama.token_to_id(t) for t in ("<unk>", "<s>", "</s>")] == [0, 1, 2]
    assert llama.get_vocab_size(with_added_tokens=False) == 1024
    assert [llama.token_to_id(t) for t in ("<image>", "<pad>")] == [1024, 1025]
    assert all(llama.token_to_id(f"<0x{b:02X}>") is not None for b in range(256))
    assert clip.get_vocab_size() == 1024
    assert [clip.token_to_id(t) for t in ("<|startoftext|>", "<|endoftext|>")] == [1022, 1023]


def _check_offsets(tok, text, lower):
    """Each run of non-special tokens sharing an offset span decodes to exactly that slice."""
    enc = tok.encode(text)
    groups: dict = {}
    for token, span, special in zip(enc.tokens, enc.offsets, enc.special_tokens_mask):
        if not special:
            groups.setdefault(span, []).append(token.replace("</w>", ""))
    assert groups
    for (s, e), pieces in groups.items():
        want = text[s:e].lower() if lower else text[s:e]
        assert tok.decoder.decode(pieces).strip() == want.strip(), (pieces, (s, e))


@pytest.mark.parametrize("text", TEXTS)
def test_tokenizers_round_trip_and_offsets(raw_tokenizers, text):
    llama, clip = raw_tokenizers
    enc = llama.encode(text)
    assert enc.ids[0] == 1 and 0 not in enc.ids  # <s> prepended, never <unk> (byte fallback)
    assert llama.decode(enc.ids) == text
    _check_offsets(llama, text, lower=False)

    enc = clip.encode(text)
    assert (enc.ids[0], enc.ids[-1]) == (1022, 1023)
    assert 1023 not in enc.ids[1:-1]  # <unk> is <|endoftext|>: no unknowns inside
    # CLIP decoding loses only whitespace (and case): every character comes back.
    assert "".join(clip.decode(enc.ids).replace("</w>", " ").split()) == "".join(text.lower().split())
    _check_offsets(clip, text, lower=True)


def test_saved_tokenizers_match_trained(ckpt, processor, raw_tokenizers):
    from transformers import AutoTokenizer

    clip_tok = AutoTokenizer.from_pretrained(ckpt.clip_dir)
    for hf, raw in ((processor.tokenizer, raw_tokenizers[0]), (clip_tok, raw_tokenizers[1])):
        for text in TEXTS + [PROMPT]:
            got = hf(text, return_offsets_mapping=True)
            want = raw.encode(text)
            assert got.input_ids == want.ids
            assert [tuple(o) for o in got.offset_mapping] == want.offsets


def test_processor_and_chat_template(processor):
    msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is this?"}]}]
    assert processor.apply_chat_template(msgs, add_generation_prompt=True) == PROMPT
    ip = processor.image_processor
    assert (ip.size, ip.crop_size, ip.resample) == ({"shortest_edge": 336}, {"height": 336, "width": 336}, 3)
    for name in ("astronaut.jpg", "camera.jpg"):  # camera is grayscale: converted to RGB
        inputs = processor(images=Image.open(IMAGES / name), text=PROMPT, return_tensors="pt")
        assert inputs.pixel_values.shape == (1, 3, 336, 336)
        assert (inputs.input_ids == processor.image_token_id).sum().item() == 576


def test_generate(llava, processor):
    inputs = processor(images=Image.open(IMAGES / "coffee.jpg"), text=PROMPT, return_tensors="pt")
    with torch.no_grad():
        out = llava.generate(**inputs, max_new_tokens=5, min_new_tokens=5, do_sample=False)
    new = out[0, inputs.input_ids.shape[1] :]
    assert new.shape == (5,)
    assert (new < llava.config.text_config.vocab_size).all()


def test_vit_attention_is_peaked(llava, processor):
    pixel_values = processor.image_processor(Image.open(IMAGES / "astronaut.jpg"), return_tensors="pt").pixel_values
    with torch.no_grad():
        out = llava.model.vision_tower(pixel_values, output_attentions=True)
    cls_row = out.attentions[22][0].mean(0)[0]  # layer 22, mean over heads, CLS query: (577,)
    top = cls_row.topk(3).values.tolist()
    entropy = -(cls_row * cls_row.clamp_min(1e-12).log()).sum().item()
    print(f"layer 22 CLS attention: top3={top} entropy={entropy:.3f} (uniform {math.log(577):.3f})")
    # Uniform would be 1/577 everywhere; the tiny model gives ~0.09 (about 50x).
    assert cls_row.max().item() > 20 / 577
    assert entropy < 0.9 * math.log(577)


def test_spec_table():
    tiny = SPECS["tiny"]
    assert (tiny.vit_layers, tiny.llm_layers, tiny.image_size, tiny.patch_size) == (24, 32, 336, 14)
    with pytest.raises(KeyError):
        embedded_model("no-such-model")
