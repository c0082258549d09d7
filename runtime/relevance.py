"""IVTP Sec. 3.3: CLIP token relevance to the visual CLS (Eq. 6), mapped onto LLM tokens by character
spans (Eq. 7), and the pseudo-CLS (Eq. 8)."""
import numpy as np
from tokenizers import Tokenizer

CLIP_CONTEXT = 77  # CLIP's text positions: longer instructions are encoded in windows of this size


class ClipTokenWindows:
    """Tokenizes an instruction for CLIP's text encoder in windows of at most 77 tokens (bos + 75 + eos)."""

    def __init__(self, tokenizer_file):
        self.tokenizer = Tokenizer.from_file(str(tokenizer_file))
        self.tokenizer.no_padding()
        self.tokenizer.no_truncation()
        self.bos = self.tokenizer.token_to_id("<|startoftext|>")
        self.eos = self.tokenizer.token_to_id("<|endoftext|>")

    def encode(self, text: str):
        """Returns (ids [n_windows, L] int32 padded with eos, spans [(window, position, (a, b))])."""
        enc = self.tokenizer.encode(text, add_special_tokens=False)
        body = CLIP_CONTEXT - 2
        windows = [enc.ids[i:i + body] for i in range(0, max(len(enc.ids), 1), body)]
        width = max(len(w) for w in windows) + 2
        ids = np.full((len(windows), width), self.eos, dtype=np.int32)
        spans = []
        for w, chunk in enumerate(windows):
            ids[w, 0], ids[w, 1:len(chunk) + 1] = self.bos, chunk
            for j in range(len(chunk)):
                spans.append((w, j + 1, enc.offsets[w * body + j]))
        return ids, spans


def clip_relevance(token_embeddings: np.ndarray, spans, cls_joint: np.ndarray) -> list[tuple[tuple[int, int], float]]:
    """Eq. 6: cosine of each CLIP token's joint-space embedding with the visual CLS, with its character span."""
    cls = cls_joint / np.linalg.norm(cls_joint)
    out = []
    for w, pos, span in spans:
        e = token_embeddings[w, pos]
        out.append((span, float(e @ cls / np.linalg.norm(e))))
    return out


def map_to_llm(llm_spans: list[tuple[int, int] | None], clip_scores) -> np.ndarray:
    """Eq. 7: an LLM token gets the mean relevance of the CLIP tokens its characters overlap (a token inside
    one CLIP token gets that token's value). NaN where it overlaps none (template text, whitespace)."""
    out = np.full(len(llm_spans), np.nan, dtype=np.float64)
    for i, span in enumerate(llm_spans):
        if span is None:
            continue
        hits = [c for (a, b), c in clip_scores if max(a, span[0]) < min(b, span[1])]
        if hits:
            out[i] = np.mean(hits)
    return out


def select_tokens(relevance: np.ndarray, spans, tau: float) -> np.ndarray:
    """Indices of the instruction tokens that form the pseudo-CLS: relevance >= tau; tau = -1 takes every
    instruction token (every token with a span in the prompt)."""
    if tau <= -1.0:
        return np.array([i for i, s in enumerate(spans) if s is not None], dtype=np.int32)
    return np.flatnonzero(np.nan_to_num(relevance, nan=-np.inf) >= tau)


def pseudo_cls(suffix_embeds: np.ndarray, selected: np.ndarray, fallback: np.ndarray) -> np.ndarray:
    """Eq. 8: the mean embedding of the selected tokens, or the visual CLS (in the LLM space) if none."""
    return suffix_embeds[selected].mean(axis=0) if len(selected) else fallback
