"""Offline stand-ins, at the real sizes and ids, for the tokenizers of llava-hf/llava-1.5-7b-hf (LLaMA-2's
SentencePiece model converted to tokenizer.json) and openai/clip-vit-large-patch14-336 (byte-level BPE).

Same pipelines as the small tokenizers of the embedded models (tokenizer_training.py); what differs is the
vocabulary: the real sizes and special ids, so that code which hard-codes or derives ids (32000 <image>,
32001 <pad>, <0x41> = 68, CLIP's 49406/49407) meets what it will meet on the real files.

- LLaMA-2: <unk> <s> </s> = 0 1 2, byte tokens <0x00>..<0xFF> = 3..258, printable ASCII, every merge the corpus
  yields (within a script run: none joins letters to punctuation or digits, as SentencePiece splits them), filler pieces, then ~1k single non-ASCII characters (Latin,
  Greek, Cyrillic, kana, the first 512 CJK ideographs) to exactly 32000, as LLaMA ends its vocabulary with single
  characters; <image> = 32000 and <pad> = 32001 added. So "é", "ü" and "中" are one token each, while other CJK
  characters and emoji fall back to bytes, as with the real tokenizer.
- CLIP: the 256 byte characters, the same with "</w>", every merge the corpus yields, filler pieces, then
  <|startoftext|> = 49406 and <|endoftext|> = 49407: 49408 in all.

Filler pieces are lowercase-letter strings ("▁aa", "aa</w>", ...) that no merge produces: they take ids and
decode like real pieces but never come out of encode, so tokenization is that of the learnt merges. Everything
is laid out explicitly, so the JSON is byte-identical on every run; building both takes a few seconds.
"""
from __future__ import annotations

import itertools
import string
from collections import Counter
from collections.abc import Iterable

from tokenizers import Tokenizer

from .tokenizer_training import (
    CLIP_BOS,
    CLIP_EOS,
    _learn_merges,
    clip_base_vocab,
    clip_pipeline,
    clip_words,
    llama_base_vocab,
    llama_pipeline,
    llama_words,
    load_corpus,
)

LLAMA2_VOCAB_SIZE = 32000  # base vocabulary: <image> = 32000 and <pad> = 32001 come after
LLAVA_HF_TEXT_VOCAB = 32064  # rows of llava-1.5-7b-hf's embed_tokens / lm_head (padded past the tokenizer)
CLIP_FULL_VOCAB_SIZE = 49408


def _chars(*ranges: tuple[int, int]) -> list[str]:
    return [chr(c) for a, b in ranges for c in range(a, b + 1)]


# Single characters LLaMA-2 has as pieces (a sample of its scripts), ids 31000..31999 or so.
EXTRA_CHARS = _chars(
    (0x00C0, 0x00D6), (0x00D8, 0x00F6), (0x00F8, 0x017F),  # Latin-1 letters (no × ÷), Latin Extended-A
    (0x0391, 0x03A1), (0x03A3, 0x03A9), (0x03B1, 0x03C9),  # Greek
    (0x0410, 0x044F),  # Cyrillic
    (0x3041, 0x3093), (0x30A1, 0x30F6),  # hiragana, katakana
    (0x4E00, 0x4FFF),  # the first 512 CJK ideographs: 中 is one, 日 and 本 are not
)


def _script_runs(words: Counter) -> Counter:
    """Each "▁word" cut where SentencePiece's split_by_unicode_script and split_digits cut it: letters apart from
    punctuation, each digit on its own, the "▁" staying with the letters or punctuation that follow. So no merge
    joins a letter to a full stop or a digit to anything: "dogs." is "▁dogs" ".", " 1990" is "▁" "1" "9" "9" "0"."""
    def kind(ch: str) -> str:
        return "letter" if ch.isalpha() else "digit" if ch.isdigit() else "other"

    out: Counter = Counter()
    for word, count in words.items():
        space = word.startswith("▁")
        parts = []
        for k, run in itertools.groupby(word[1:] if space else word, kind):
            parts += [[ch] for ch in run] if k == "digit" else [list(run)]
        if space:  # "▁" joins a following letter or punctuation run, never a digit
            parts = [["▁"] + parts[0]] + parts[1:] if parts and not parts[0][0].isdigit() else [["▁"]] + parts
        for part in parts:
            out[tuple(part)] += count
    return out


def _filler(n: int, taken: dict, prefix: str = "", suffix: str = "") -> list[str]:
    """n lowercase-letter pieces prefix+letters+suffix, shortest first, that `taken` does not hold."""
    out = []
    for length in itertools.count(2):
        for letters in itertools.product(string.ascii_lowercase, repeat=length):
            piece = prefix + "".join(letters) + suffix
            if piece not in taken:
                out.append(piece)
                if len(out) == n:
                    return out


def _extend(vocab: dict[str, int], pieces: list[str]) -> None:
    for piece in pieces:
        assert piece not in vocab, piece
        vocab[piece] = len(vocab)


def llama2_tokenizer(corpus_lines: Iterable[str] | None = None) -> Tokenizer:
    """LLaMA-2's tokenizer.json layout, 32000 base tokens + <image> (32000) + <pad> (32001)."""
    words = llama_words(load_corpus() if corpus_lines is None else corpus_lines)
    base = llama_base_vocab(words)
    assert not set(base) & set(EXTRA_CHARS), "the corpus is ASCII; extra characters come last"
    room = LLAMA2_VOCAB_SIZE - len(EXTRA_CHARS)
    vocab, merges = _learn_merges(_script_runs(words), base, room)
    _extend(vocab, _filler(room - len(vocab), vocab, prefix="▁"))
    _extend(vocab, EXTRA_CHARS)
    assert len(vocab) == LLAMA2_VOCAB_SIZE
    return llama_pipeline(vocab, merges)


def openai_clip_tokenizer(corpus_lines: Iterable[str] | None = None) -> Tokenizer:
    """OpenAI CLIP's tokenizer.json layout: 49408 tokens, <|startoftext|> 49406, <|endoftext|> 49407."""
    words = clip_words(load_corpus() if corpus_lines is None else corpus_lines)
    room = CLIP_FULL_VOCAB_SIZE - 2
    vocab, merges = _learn_merges(words, clip_base_vocab(), room)
    _extend(vocab, _filler(room - len(vocab), vocab, suffix="</w>"))
    _extend(vocab, [CLIP_BOS, CLIP_EOS])
    return clip_pipeline(vocab, merges)
