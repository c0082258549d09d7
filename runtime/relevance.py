"""IVTP Sec. 3.3: CLIP token relevance to the visual CLS (Eq. 6), mapped onto LLM tokens by character
spans (Eq. 7), and the pseudo-CLS (Eq. 8)."""
import numpy as np
from tokenizers import Tokenizer


class ClipTokenWindows:
    """Tokenizes an instruction for CLIP's text encoder in windows of at most `context` tokens (CLIP's positions,
    77 for OpenAI's: bos + 75 + eos); longer instructions take several windows."""

    def __init__(self, tokenizer_file, context: int = 77):
        self.context = context
        self.tokenizer = Tokenizer.from_file(str(tokenizer_file))
        self.tokenizer.no_padding()
        self.tokenizer.no_truncation()
        self.bos = self.tokenizer.token_to_id("<|startoftext|>")
        self.eos = self.tokenizer.token_to_id("<|endoftext|>")

    def encode(self, text: str):
        """Returns (ids [n_windows, L] int32 padded with eos, spans [(window, position, (a, b))])."""
        enc = self.tokenizer.encode(text, add_special_tokens=False)
        body = self.context - 2
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


class InstructionRelevance:
    """Eqs. 6-8 for a batch. CLIP embeds every request's instruction windows in as few text-encoder calls as the
    request batch allows; each token is scored against its own image's visual CLS; the chosen tokens' LLM
    embeddings are averaged into the pseudo-CLS. Without a text encoder (the no-instruction ablation) the visual
    CLS guides the LLM stages."""

    def __init__(self, windows: ClipTokenWindows | None, text_encoder: str | None, tau: float | None):
        self.windows, self.text_encoder, self.tau = windows, text_encoder, tau

    def pseudo_cls(self, engines: dict, prompts, vision: dict, suffix_embeds: np.ndarray, timer):
        """Returns the pseudo-CLS [B, H] and, per request, the suffix positions that formed it."""
        if self.windows is None:
            return vision["cls_llm"], [[] for _ in prompts]
        encoded = [self.windows.encode(p.text) for p in prompts]
        embeddings = self._embeddings(engines, [ids for ids, _ in encoded], len(prompts), timer)
        out, relevant = [], []
        for b, (p, (_, clip_spans), emb) in enumerate(zip(prompts, encoded, embeddings)):
            scores = clip_relevance(emb, clip_spans, vision["cls_joint"][b])
            chosen = select_tokens(map_to_llm(p.suffix_spans, scores), p.suffix_spans, self.tau)
            out.append(pseudo_cls(suffix_embeds[b], chosen, vision["cls_llm"][b]))
            relevant.append(chosen.tolist())
        return np.stack(out), relevant

    def _embeddings(self, engines: dict, windows: list, max_rows: int, timer) -> list:
        """CLIP token embeddings for every request's windows, in calls of at most `max_rows` windows (the request
        batch, which every graph's batch profile accepts) rather than one call per request. Windows are
        right-padded with eos to one width: CLIP's text attention is causal, so padding after a token does not
        change its embedding."""
        width = max(ids.shape[1] for ids in windows)
        rows = np.concatenate([np.pad(ids, ((0, 0), (0, width - ids.shape[1])), constant_values=self.windows.eos)
                               for ids in windows])
        engine = engines[self.text_encoder]
        emb = np.concatenate([timer.run(engine, self.text_encoder, {"input_ids": rows[i:i + max_rows]})["token_embeddings"]
                              for i in range(0, len(rows), max_rows)])
        return np.split(emb, np.cumsum([len(ids) for ids in windows])[:-1])
