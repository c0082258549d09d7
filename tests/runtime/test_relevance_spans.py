"""IVTP's CLIP-to-LLM mapping (Eq. 7) by character spans, on the stand-ins of the real tokenizers (LLaMA-2's
SentencePiece-BPE with byte fallback, OpenAI CLIP's lowercased byte-level BPE): unicode, digits, emoji,
whitespace runs and instructions longer than one CLIP window."""
import unicodedata
from collections import defaultdict

import numpy as np
import pytest

from runtime.prompt import LLAVA_15_TEMPLATE, PromptTokenizer
from runtime.relevance import ClipTokenWindows, map_to_llm, select_tokens

NAN = np.nan
LONG = " ".join(f"Photo {i}: a café, ü, 中 and 🐱." for i in range(8))  # 231 characters, 168 CLIP tokens
INSTRUCTIONS = ["Is it über 2024? 中日 🐱!", "What colour is the Cat's hat? 🐱👍🏽 (really)",
                "Zähle die Äpfel: 3 + 4 = 7; Ελληνικά, русский, 日本語 and 한국어.",
                "tabs\tand  double  spaces\nand a newline", LONG]


@pytest.fixture(scope="module")
def llm(llava_hf):
    return PromptTokenizer(llava_hf.model_dir / "tokenizer.json", LLAVA_15_TEMPLATE, "<image>")


@pytest.fixture(scope="module")
def clip(llava_hf):
    return ClipTokenWindows(llava_hf.clip_dir / "tokenizer.json", context=77)


def scored(spans):
    """Each CLIP token's relevance is its index: the mean an LLM token gets names the CLIP tokens it overlaps."""
    return [(span, float(k)) for k, (_, _, span) in enumerate(spans)]


def by_span(tokens, spans):
    groups = defaultdict(list)
    for token, span in zip(tokens, spans):
        if span is not None:
            groups[span].append(token)
    return groups


def test_a_short_instruction_maps_token_by_token(llm, clip):
    text = "Is it über 2024? 中日 🐱!"
    p = llm.encode(text)
    assert p.prefix_ids == [1, 614, 284, 353] and p.input_ids[len(p.prefix_ids)] == 32000  # <s> ▁USER : ▁ <image>
    assert list(zip([llm.tokenizer.id_to_token(i) for i in p.suffix_ids], p.suffix_spans)) == [
        ("<0x0A>", None), ("I", (0, 1)), ("s", (1, 2)), ("▁it", (2, 5)), ("▁", (5, 6)), ("ü", (6, 7)),
        ("ber", (7, 10)), ("▁", (10, 11)), ("2", (11, 12)), ("0", (12, 13)), ("2", (13, 14)), ("4", (14, 15)),
        ("?", (15, 16)), ("▁", (16, 17)), ("中", (17, 18)),
        ("<0xE6>", (18, 19)), ("<0x97>", (18, 19)), ("<0xA5>", (18, 19)), ("▁", (19, 20)),  # 日: three bytes
        ("<0xF0>", (20, 21)), ("<0x9F>", (20, 21)), ("<0x90>", (20, 21)), ("<0xB1>", (20, 21)),  # 🐱: four
        ("!", (21, 22)), ("▁ASSISTANT", None), (":", None)]

    ids, spans = clip.encode(text)
    assert ids.shape == (1, 24) and (ids[0, 0], ids[0, 23]) == (49406, 49407)
    assert [(clip.tokenizer.id_to_token(int(ids[w, j])), span) for w, j, span in spans] == [
        ("is</w>", (0, 2)), ("it</w>", (3, 5)), ("Ã", (6, 7)), ("¼", (6, 7)), ("b", (7, 8)), ("er</w>", (8, 10)),
        ("2</w>", (11, 12)), ("0</w>", (12, 13)), ("2</w>", (13, 14)), ("4</w>", (14, 15)), ("?</w>", (15, 16)),
        ("ä", (17, 18)), ("¸", (17, 18)), ("Ń", (17, 18)), ("æ", (18, 19)), ("Ĺ", (18, 19)), ("¥</w>", (18, 19)),
        ("ð", (20, 21)), ("Ł", (20, 21)), ("Ĳ", (20, 21)), ("±", (20, 21)), ("!</w>", (21, 22))]

    relevance = map_to_llm(p.suffix_spans, scored(spans))
    np.testing.assert_array_equal(relevance, [
        NAN, 0, 0, 1, NAN,  # "I" and "s" both inside CLIP's "is"; "▁it" overlaps "it" only
        2.5, 4.5, NAN,  # "ü" = mean of CLIP's two bytes of ü; "ber" = mean of "b" and "er"
        6, 7, 8, 9, 10, NAN, 12, 15, 15, 15, NAN, 18.5, 18.5, 18.5, 18.5, 21, NAN, NAN])
    assert select_tokens(relevance, p.suffix_spans, 9.5).tolist() == [12, 14, 15, 16, 17, 19, 20, 21, 22, 23]


def test_a_decomposed_accent_keeps_its_letter_but_not_its_mark(llm, clip):
    """CLIP's NFC normalizer folds "e" + U+0301 into "é" and gives it the span of the "e" alone: LLaMA's bytes of
    the combining mark overlap no CLIP token, so they get no relevance (as whitespace does)."""
    text = "Cafe\u0301 \t naïve"
    p = llm.encode(text)
    _, spans = clip.encode(text)
    assert [span for *_, span in spans] == [(0, 2), (2, 3), (3, 4), (3, 4), (8, 10), (10, 11), (10, 11), (11, 13)]
    assert list(zip([llm.tokenizer.id_to_token(i) for i in p.suffix_ids], p.suffix_spans))[1:7] == [
        ("C", (0, 1)), ("a", (1, 2)), ("fe", (2, 4)), ("<0xCC>", (4, 5)), ("<0x81>", (4, 5)), ("▁", (5, 6))]
    np.testing.assert_array_equal(map_to_llm(p.suffix_spans, scored(spans)),
                                  [NAN, 0, 0, 2, NAN, NAN, NAN, NAN, 4, 4, 5.5, 7, NAN, NAN])


def test_a_long_instruction_takes_several_clip_windows(llm, clip):
    ids, spans = clip.encode(LONG)
    whole = clip.tokenizer.encode(LONG, add_special_tokens=False)
    assert len(whole.ids) == 168 and ids.shape == (3, 77)  # 75 + 75 + 18 between bos and eos
    assert ids[:, 0].tolist() == [49406] * 3
    assert ids[0, 76] == ids[1, 76] == 49407 and ids[2, 19:].tolist() == [49407] * 58
    assert [(w, j) for w, j, _ in spans] == [(k // 75, k % 75 + 1) for k in range(168)]
    assert [int(ids[w, j]) for w, j, _ in spans] == whole.ids
    assert [span for *_, span in spans] == whole.offsets
    assert spans[74:77] == [(0, 75, (105, 106)), (1, 1, (107, 108)), (1, 2, (107, 108))]  # 中's bytes open window 1
    llm_spans = llm.encode(LONG).suffix_spans
    relevance = map_to_llm(llm_spans, scored(spans))
    # Each window reaches the LLM tokens by the characters: the "," ending window 0, the "中" of window 1's first
    # three tokens, the final "." that is window 2's last.
    assert LONG[105] == "," and LONG[107] == "中" and LONG[-1] == "."
    assert relevance[llm_spans.index((105, 106))] == 74.0
    assert relevance[llm_spans.index((107, 108))] == 76.0
    assert relevance[llm_spans.index((230, 231))] == 167.0


@pytest.mark.parametrize("text", INSTRUCTIONS, ids=range(len(INSTRUCTIONS)))
def test_every_clip_token_reaches_an_llm_token_that_overlaps_it(llm, clip, text):
    p = llm.encode(text)
    ids, spans = clip.encode(text)
    relevance = map_to_llm(p.suffix_spans, scored(spans))
    llm_tokens = [llm.tokenizer.id_to_token(i) for i in p.suffix_ids]
    # Spans index into the instruction itself: each run of tokens sharing a span decodes to that slice.
    for (a, b), pieces in by_span(llm_tokens, p.suffix_spans).items():
        assert 0 <= a < b <= len(text)
        assert llm.tokenizer.decoder.decode(pieces).strip() == text[a:b].strip(), (pieces, a, b)
    clip_tokens = [clip.tokenizer.id_to_token(int(ids[w, j])) for w, j, _ in spans]
    for (a, b), pieces in by_span(clip_tokens, [s for *_, s in spans]).items():
        assert 0 <= a < b <= len(text)
        assert clip.tokenizer.decoder.decode(pieces).replace("</w>", "") == unicodedata.normalize("NFC", text[a:b]).lower()
    # Every character is in an LLM token; every character a CLIP token covers is in one that scored.
    covered = [s for s in p.suffix_spans if s]
    assert all(any(a <= c < b for a, b in covered) for c, ch in enumerate(text) if not ch.isspace())
    for k, (_, _, (a, b)) in enumerate(spans):
        for c in range(a, b):
            hits = [i for i, s in enumerate(p.suffix_spans) if s and s[0] <= c < s[1]]
            assert hits and all(np.isfinite(relevance[i]) for i in hits), (k, c, text[c])
    # An LLM token scores exactly when a CLIP token overlaps it: whitespace and template tokens do not.
    for i, s in enumerate(p.suffix_spans):
        overlaps = s is not None and any(max(a, s[0]) < min(b, s[1]) for _, _, (a, b) in spans)
        assert np.isfinite(relevance[i]) == overlaps
        if s is not None and not overlaps:
            assert text[s[0]:s[1]].isspace(), (llm_tokens[i], s)
