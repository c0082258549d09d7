"""Stitches the engines of an engine dir: prefill (runtime/prefill.py), then greedy KV-cached decoding: each step
runs every segment's decoder graph against that segment's buffers, then the LM head. Any runner with
infer(feed) -> dict serves: ONNX Runtime, TensorRT, or the torch modules themselves (the PyTorch oracle, at
export)."""
import time

import numpy as np
from PIL import Image

from runtime.errors import InputError
from runtime.manifest import Manifest
from runtime.prefill import Prefilled, Timer, prefill
from runtime.preprocess import ImagePreprocessConfig, load_image, preprocess
from runtime.prompt import PromptTokenizer
from runtime.relevance import ClipTokenWindows, InstructionRelevance
from runtime.request import Request, Result


class Generator:
    def __init__(self, manifest: Manifest, engines: dict):
        self.m, self.engines, self.pipe = manifest, engines, manifest.pipeline
        self.facts = manifest.model
        self.prompts = PromptTokenizer(manifest.path(manifest.tokenizers["llm"]), manifest.prompt_template,
                                       manifest.image_token)
        self.clip = (ClipTokenWindows(manifest.path(manifest.tokenizers["clip"]), self.facts["clip_positions"])
                     if self.pipe.text_encoder else None)
        self.relevance = InstructionRelevance(self.clip, self.pipe.text_encoder, self.pipe.tau)
        self.preprocess_cfg = ImagePreprocessConfig.from_dict(manifest.preprocess)
        self.eos, self.pad = self.facts["eos_token_id"], self.facts["pad_token_id"]
        self.vision_tokens = manifest.vision_tokens_out  # visual tokens entering the LLM

    def generate(self, requests: list[Request], max_new_tokens: int = 32) -> list[Result]:
        if max_new_tokens < 1:
            raise InputError(f"--max-new-tokens must be at least 1, got {max_new_tokens}")
        timer, start = Timer(self.m.graphs), time.perf_counter()
        prompts = [self.prompts.encode(r.prompt) for r in requests]
        self._check_lengths(prompts, max_new_tokens)
        pixels = np.stack([preprocess(self._image(r), self.preprocess_cfg) for r in requests])
        done = self.prefill(prompts, pixels, timer, max_new_tokens - 1)
        kv_bytes = done.caches.nbytes() // len(prompts)  # per request
        prefill_ms = (time.perf_counter() - start) * 1e3
        tokens = self._decode(done, len(prompts), max_new_tokens, timer)
        total_ms = (time.perf_counter() - start) * 1e3
        timings = {**{k: round(v, 3) for k, v in timer.ms.items()}, "prefill_total": round(prefill_ms, 3),
                   "decode_total": round(total_ms - prefill_ms, 3), "total": round(total_ms, 3)}
        return [Result(self.prompts.decode(tokens[b]), tokens[b], p.input_ids,
                       [{"name": s, "kept": k[b, :n[b]].tolist()} for s, k, n in done.stages], dict(timings),
                       done.relevant[b], kv_bytes, done.visual.report(b)) for b, p in enumerate(prompts)]

    def prefill(self, prompts, pixels, timer: Timer, decode_slots: int = 0) -> Prefilled:
        return prefill(self, prompts, pixels, timer, decode_slots)

    def _decode(self, done: Prefilled, batch: int, max_new_tokens: int, timer: Timer) -> list[list[int]]:
        logits, caches = done.logits, done.caches
        tokens = [[] for _ in range(batch)]
        finished = np.zeros(batch, dtype=bool)
        for step in range(max_new_tokens):
            nxt = logits.argmax(-1)
            for b in range(batch):
                if not finished[b]:
                    tokens[b].append(int(nxt[b]))
                    finished[b] = nxt[b] == self.eos
            if finished.all() or step == max_new_tokens - 1:
                break
            nxt = np.where(finished, self.pad, nxt).astype(np.int32)[:, None]
            logits = self._step(nxt, (caches.next_position + step)[:, None].astype(np.int32), caches, timer)
        return tokens

    def _step(self, token_ids, positions, caches, timer: Timer) -> np.ndarray:
        """One decode step for one new token per request: its logits [B, V]; every segment's buffers gain its slot."""
        run = lambda name, feed: timer.run(self.engines[name], name, feed, key="decode")  # noqa: E731
        x = run(self.pipe.embed, {"input_ids": token_ids})["inputs_embeds"]
        for seg, cache in zip(self.pipe.segments, caches.segments):
            cache.valid[:, cache.used] = True  # the new token sees itself
            feed = {"hidden_in": x, "position_ids": positions, "attention_mask": cache.valid[:, None, :].copy(),
                    "write_index": np.full(len(x), cache.used, np.int32), **cache.past()}
            out = run(seg.decoder, feed)
            cache.add(seg, out)
            cache.used += 1
            x = out["hidden_out"]
        return run(self.pipe.lm_head, {"hidden_last": x[:, -1]})["logits"]

    @staticmethod
    def _image(request):
        """A path is loaded (with checks); an already opened PIL image is converted to RGB."""
        return request.image.convert("RGB") if isinstance(request.image, Image.Image) else load_image(request.image)

    def _check_lengths(self, prompts, max_new_tokens):
        limit = self.facts["max_positions"]
        for p in prompts:
            need = len(p.input_ids) - 1 + self.vision_tokens + max_new_tokens
            if need > limit:
                raise InputError(f"the prompt is {len(p.input_ids) - 1} tokens; with {self.vision_tokens} visual tokens and "
                                 f"{max_new_tokens} new tokens the sequence needs {need} positions, but the model has "
                                 f"{limit}. Shorten the prompt or lower --max-new-tokens.")
