"""Offline, deterministic training of the two small tokenizers used by the embedded model.

Both tokenizers copy the pipelines of the real ones (LLaMA's SentencePiece-BPE with byte
fallback, and OpenAI CLIP's byte-level BPE with "</w>" word ends), so that downstream code sees
the same token/offset behaviour as with the real checkpoints, only with a ~1k vocabulary.

The corpus is pre-tokenised with the tokenizers' own components, merges are learnt by a small
BPE loop with an explicit tie-break, and the vocabulary is laid out explicitly (specials, byte
tokens, alphabet, merge results) up to the target size, so the JSON is byte-identical on every run.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from pathlib import Path

from tokenizers import AddedToken, Regex, Tokenizer, decoders, normalizers, pre_tokenizers, processors
from tokenizers.models import BPE

CORPUS_PATH = Path(__file__).resolve().parents[2] / "assets" / "corpus.txt"

LLAMA_VOCAB_SIZE = 1024  # base vocab, before the added <image>/<pad>
CLIP_VOCAB_SIZE = 1024
LLAMA_SPECIALS = ["<unk>", "<s>", "</s>"]  # ids 0, 1, 2 as in LLaMA
LLAVA_ADDED = ["<image>", "<pad>"]  # appended after the base vocab, as in llava-1.5-hf
CLIP_BOS, CLIP_EOS = "<|startoftext|>", "<|endoftext|>"
# The pre-tokenisation regex of OpenAI CLIP (as in its tokenizer.json).
CLIP_PATTERN = r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""


def load_corpus(path: Path = CORPUS_PATH) -> list[str]:
    return [line for line in path.read_text(encoding="ascii").splitlines() if line.strip()]


def _learn_merges(words: Counter, base: list[str], size: int) -> tuple[dict[str, int], list]:
    """Classic BPE merge learning over `words` (word as a tuple of symbols -> count).

    The `tokenizers` BpeTrainer breaks count ties by internal ids that, with an end-of-word suffix,
    depend on hash-map order (different on each run), so merges are learnt here with an explicit
    tie-break: highest count, then the lexicographically smallest pair. Returns the vocabulary
    (base tokens, then merge results in merge order, `size` entries at most) and the merges."""
    vocab = {t: i for i, t in enumerate(dict.fromkeys(base))}
    words = [[list(w), c] for w, c in sorted(words.items())]
    merges: list[tuple[str, str]] = []
    while len(vocab) < size:
        pairs: Counter = Counter()
        for syms, c in words:
            for p in zip(syms, syms[1:]):
                pairs[p] += c
        if not pairs:
            break  # every word is a single token: the corpus is exhausted
        a, b = min(pairs, key=lambda p: (-pairs[p], p))
        merges.append((a, b))
        vocab.setdefault(a + b, len(vocab))
        for w in words:
            syms, i, out = w[0], 0, []
            if a not in syms:
                continue
            while i < len(syms):
                if i + 1 < len(syms) and syms[i] == a and syms[i + 1] == b:
                    out.append(a + b)
                    i += 2
                else:
                    out.append(syms[i])
                    i += 1
            w[0] = out
        words = [w for w in words if len(w[0]) > 1]  # whole-token words have no pairs left
    return vocab, merges


def _word_counts(lines: Iterable[str], normalizer, pre_tokenizer) -> Counter:
    """Pre-tokenise the corpus with the tokenizer's own components; count the words."""
    counts: Counter = Counter()
    for line in lines:
        text = normalizer.normalize_str(line) if normalizer else line
        counts.update(w for w, _ in pre_tokenizer.pre_tokenize_str(text))
    return counts


def train_llama_tokenizer(corpus_lines: Iterable[str]) -> Tokenizer:
    """LLaMA-style BPE: Metaspace "▁", byte fallback, <unk>/<s>/</s> = 0/1/2, <s> prepended."""
    words = llama_words(corpus_lines)
    vocab, merges = _learn_merges(
        Counter({tuple(w): c for w, c in words.items()}), llama_base_vocab(words), LLAMA_VOCAB_SIZE
    )
    return llama_pipeline(vocab, merges)


def llama_base_vocab(words: Counter) -> list[str]:
    """<unk> <s> </s>, the 256 byte tokens <0x00>..<0xFF> (ids 3..258: any UTF-8 text encodes without <unk>),
    then printable ASCII (space as "▁") plus anything else in the corpus, so plain text never falls back to bytes."""
    byte_tokens = [f"<0x{b:02X}>" for b in range(256)]
    alphabet = sorted({chr(c) for c in range(0x21, 0x7F)} | {"▁"} | {ch for w in words for ch in w})
    return LLAMA_SPECIALS + byte_tokens + alphabet


def llama_words(lines: Iterable[str]) -> Counter:
    """The corpus as SentencePiece sees it: "▁word" pieces (split=True), so no merge spans a word boundary."""
    return _word_counts(lines, None, pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=True))


def llama_pipeline(vocab: dict[str, int], merges: list) -> Tokenizer:
    """A LLaMA SentencePiece-BPE tokenizer (as transformers converts it, legacy=False) over vocab/merges, with
    <image> and <pad> added after the base vocabulary."""
    tok = Tokenizer(BPE(vocab=vocab, merges=merges, unk_token="<unk>", fuse_unk=True, byte_fallback=True))
    # Same pipeline transformers' LlamaTokenizer (legacy=False) builds, so reloading is lossless.
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=False)
    tok.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    tok.post_processor = processors.TemplateProcessing(
        single="<s>:0 $A:0", pair="<s>:0 $A:0 <s>:1 $B:1", special_tokens=[("<s>", 1)]
    )
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in LLAMA_SPECIALS + LLAVA_ADDED])
    return tok


def _bytes_to_unicode() -> list[str]:
    """GPT-2/CLIP byte -> printable-char table, in CLIP's vocabulary order."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for c in cs]


def _clip_normalizer() -> normalizers.Normalizer:
    return normalizers.Sequence([normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()])


def _clip_pre_tokenizer() -> pre_tokenizers.PreTokenizer:
    return pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(CLIP_PATTERN), behavior="removed", invert=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False),
        ]
    )


def train_clip_tokenizer(corpus_lines: Iterable[str]) -> Tokenizer:
    """OpenAI-CLIP-style byte-level BPE with "</w>" word ends, wrapped as <|startoftext|> ... <|endoftext|>."""
    vocab, merges = _learn_merges(clip_words(corpus_lines), clip_base_vocab(), CLIP_VOCAB_SIZE - 2)
    vocab[CLIP_BOS] = len(vocab)  # specials last, as in CLIP (49406, 49407)
    vocab[CLIP_EOS] = len(vocab)
    return clip_pipeline(vocab, merges)


def clip_words(lines: Iterable[str]) -> Counter:
    """The corpus as CLIP's BPE sees it: byte-level chars of each word, the last one carrying "</w>"."""
    words = _word_counts(lines, _clip_normalizer(), _clip_pre_tokenizer())
    return Counter({tuple(w[:-1]) + (w[-1] + "</w>",): c for w, c in words.items()})


def clip_base_vocab() -> list[str]:
    """Every byte, mid-word and word-final, in CLIP's order: no <unk> ever."""
    chars = _bytes_to_unicode()
    return chars + [c + "</w>" for c in chars]


def clip_pipeline(vocab: dict[str, int], merges: list) -> Tokenizer:
    """An OpenAI-CLIP tokenizer over vocab/merges (which must hold <|startoftext|> and <|endoftext|>)."""
    tok = Tokenizer(
        BPE(
            vocab=vocab,
            merges=merges,
            unk_token=CLIP_EOS,
            continuing_subword_prefix="",
            end_of_word_suffix="</w>",
            fuse_unk=False,
        )
    )
    tok.normalizer = _clip_normalizer()
    tok.pre_tokenizer = _clip_pre_tokenizer()
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.RobertaProcessing(
        (CLIP_EOS, vocab[CLIP_EOS]), (CLIP_BOS, vocab[CLIP_BOS]), trim_offsets=False, add_prefix_space=False
    )
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in (CLIP_BOS, CLIP_EOS)])
    return tok
