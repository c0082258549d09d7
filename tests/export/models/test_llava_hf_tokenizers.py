"""The stand-ins for llava-1.5-7b-hf's and OpenAI CLIP's tokenizers: the real sizes and ids, lossless round
trips, and LLaMA's digit/byte-fallback behaviour, read from the files the llava_hf fixture wrote."""
import json
import unicodedata

import pytest
from tokenizers import Tokenizer

from export.models.llava_hf_tokenizers import llama2_tokenizer, openai_clip_tokenizer

TEXTS = ["What colour is the Cat's hat? 🐱", "Ein Café in Zürich, naïve façade!", "中文 日本語 한국어 Ελληνικά русский",
         "In 1990 there were 25 dogs, 3.14 cats and 1,000,000 ants.", "Thumbs 👍🏽 family 👨‍👩‍👧 flag 🇫🇷",
         "tabs\tand  double  spaces\nand a newline", "Cafe\u0301 (decomposed)", "x"]


@pytest.fixture(scope="module")
def llama(llava_hf):
    return Tokenizer.from_file(str(llava_hf.model_dir / "tokenizer.json"))


@pytest.fixture(scope="module")
def clip(llava_hf):
    return Tokenizer.from_file(str(llava_hf.clip_dir / "tokenizer.json"))


def test_llama_ids_are_llava_hf_s(llama, llava_hf):
    assert llama.get_vocab_size(with_added_tokens=False) == 32000
    assert llama.get_vocab_size() == 32002
    ids = {t: llama.token_to_id(t) for t in ("<unk>", "<s>", "</s>", "<0x00>", "<0x0A>", "<0x41>", "<0xFF>",
                                             "<image>", "<pad>")}
    assert ids == {"<unk>": 0, "<s>": 1, "</s>": 2, "<0x00>": 3, "<0x0A>": 13, "<0x41>": 68, "<0xFF>": 258,
                   "<image>": 32000, "<pad>": 32001}
    assert all(llama.token_to_id(f"<0x{b:02X}>") == 3 + b for b in range(256))
    config = json.loads((llava_hf.model_dir / "config.json").read_text())
    assert (config["image_token_index"], config["pad_token_id"], config["text_config"]["vocab_size"]) == (32000, 32001,
                                                                                                         32064)
    added = json.loads((llava_hf.model_dir / "tokenizer_config.json").read_text())["added_tokens_decoder"]
    assert {int(i): t["content"] for i, t in added.items()} == {0: "<unk>", 1: "<s>", 2: "</s>", 32000: "<image>",
                                                                32001: "<pad>"}


def test_clip_ids_are_openai_s(clip):
    assert clip.get_vocab_size() == 49408
    assert (clip.token_to_id("<|startoftext|>"), clip.token_to_id("<|endoftext|>")) == (49406, 49407)
    enc = clip.encode("a photo of a cat")
    assert (enc.ids[0], enc.ids[-1]) == (49406, 49407)
    assert enc.tokens[1:-1] == ["a</w>", "photo</w>", "of</w>", "a</w>", "cat</w>"]


@pytest.mark.parametrize("text", TEXTS)
def test_round_trips(llama, clip, text):
    enc = llama.encode(text)
    assert enc.ids[0] == 1 and 0 not in enc.ids  # <s>, and byte fallback: never <unk>
    assert llama.decode(enc.ids) == text
    for (a, b), token in zip(enc.offsets[1:], enc.tokens[1:]):
        assert 0 <= a < b <= len(text), (token, a, b)

    enc = clip.encode(text)
    assert (enc.ids[0], enc.ids[-1]) == (49406, 49407) and 49407 not in enc.ids[1:-1]  # unk is <|endoftext|>
    # CLIP decoding loses only whitespace, case and NFC form: every character comes back.
    got = "".join(clip.decode(enc.ids).replace("</w>", " ").split())
    assert got == "".join(unicodedata.normalize("NFC", text).lower().split())


def test_llama_splits_digits_and_falls_back_to_bytes_as_llama_does(llama):
    enc = llama.encode("A café in Zürich, 2024: 中日 🐱!")
    assert list(zip(enc.tokens, enc.ids, enc.offsets)) == [
        ("<s>", 1, (0, 0)), ("▁A", 367, (0, 1)), ("▁c", 369, (1, 3)), ("a", 323, (3, 4)), ("f", 328, (4, 5)),
        ("é", 31056, (5, 6)),  # a piece of its own, near the end of the vocabulary as in LLaMA
        ("▁in", 381, (6, 9)), ("▁", 353, (9, 10)), ("Z", 316, (10, 11)), ("ü", 31074, (11, 12)),
        ("ri", 394, (12, 14)), ("ch", 445, (14, 16)), (",", 270, (16, 17)),
        ("▁", 353, (17, 18)), ("2", 276, (18, 19)), ("0", 274, (19, 20)), ("2", 276, (20, 21)), ("4", 278, (21, 22)),
        (":", 284, (22, 23)), ("▁", 353, (23, 24)),
        ("中", 31533, (24, 25)),  # a piece; 日 is not: its three UTF-8 bytes, all with 日's span
        ("<0xE6>", 3 + 0xE6, (25, 26)), ("<0x97>", 3 + 0x97, (25, 26)), ("<0xA5>", 3 + 0xA5, (25, 26)),
        ("▁", 353, (26, 27)),
        ("<0xF0>", 3 + 0xF0, (27, 28)), ("<0x9F>", 3 + 0x9F, (27, 28)), ("<0x90>", 3 + 0x90, (27, 28)),
        ("<0xB1>", 3 + 0xB1, (27, 28)), ("!", 259, (28, 29))]


def test_builds_are_byte_identical(llama, clip):
    assert llama2_tokenizer().to_str() == llama.to_str()
    assert openai_clip_tokenizer().to_str() == clip.to_str()
