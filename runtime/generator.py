"""Stitches the engines of an engine dir: prefill (runtime/prefill.py), then KV-cached decoding: each step runs
every segment's decoder graph against that segment's buffers, then the LM head, and each request picks its next
token by its own sampling params (greedy by default) until EOS, a stop string or its own token limit. Any runner
with infer(feed) -> dict serves: ONNX Runtime, TensorRT, or the torch modules themselves (the PyTorch oracle, at
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
from runtime.sampler import Sampler
from runtime.sampling import GREEDY
from runtime.stopping import Continuation


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
        """`max_new_tokens` is the limit of every request whose sampling params set none."""
        timer, start = Timer(self.m.graphs), time.perf_counter()
        params, limits = self.sampling(requests, max_new_tokens)
        prompts = [self.prompts.encode(r.prompt) for r in requests]
        self._check_lengths(prompts, limits)
        pixels = np.stack([preprocess(self._image(r), self.preprocess_cfg) for r in requests])
        done = self.prefill(prompts, pixels, timer, max(limits) - 1)  # room for the longest request's decode steps
        kv_bytes = done.caches.nbytes() // len(prompts)  # per request
        prefill_ms = (time.perf_counter() - start) * 1e3
        runs = self._decode(done, params, limits, timer)
        total_ms = (time.perf_counter() - start) * 1e3
        timings = {**{k: round(v, 3) for k, v in timer.ms.items()}, "prefill_total": round(prefill_ms, 3),
                   "decode_total": round(total_ms - prefill_ms, 3), "total": round(total_ms, 3)}
        return [self.result(done, b, p, run, dict(timings), kv_bytes) for b, (p, run) in enumerate(zip(prompts, runs))]

    @staticmethod
    def sampling(requests: list[Request], max_new_tokens: int) -> tuple[list, list[int]]:
        """Each request's sampling params (greedy where it sets none) and token limit."""
        if max_new_tokens < 1:
            raise InputError(f"--max-new-tokens must be at least 1, got {max_new_tokens}")
        params = [r.sampling or GREEDY for r in requests]
        return params, [p.max_new_tokens or max_new_tokens for p in params]

    def result(self, done: Prefilled, b: int, prompt, run: Continuation, timings: dict, kv_bytes: int) -> Result:
        """Request b of a prefill batch, once its Continuation finished."""
        return Result(run.text(self.prompts.decode), run.tokens, prompt.input_ids,
                      [{"name": s, "kept": k[b, :n[b]].tolist()} for s, k, n in done.stages], timings,
                      done.relevant[b], kv_bytes, done.visual.report(b), run.finish_reason)

    def prefill(self, prompts, pixels, timer: Timer, decode_slots: int = 0) -> Prefilled:
        return prefill(self, prompts, pixels, timer, decode_slots)

    def _decode(self, done: Prefilled, params: list, limits: list[int], timer: Timer) -> list[Continuation]:
        logits, caches = done.logits, done.caches
        sampler = Sampler(params)
        runs = [Continuation(limit, p.stop) for p, limit in zip(params, limits)]
        for step in range(max(limits)):
            active = [b for b, run in enumerate(runs) if run.finish_reason is None]
            nxt = sampler.pick(logits, active, fill=self.pad)
            for b in active:
                runs[b].add(int(nxt[b]), self.eos, self.prompts.decode)
                if runs[b].finish_reason is not None:
                    nxt[b] = self.pad  # a finished request rides along on padding until the batch is done
            if all(run.finish_reason is not None for run in runs):
                break
            logits = self._step(nxt.astype(np.int32)[:, None], (caches.next_position + step)[:, None].astype(np.int32),
                                caches, timer)
        return runs

    def _step(self, token_ids, positions, caches, timer: Timer) -> np.ndarray:
        """One decode step for one new token per request: its logits [B, V]. `caches.segments` holds per segment
        what step_feed()/stepped() speak (a SegmentCache, or rows of an in-flight pool): each gains the new slot."""
        run = lambda name, feed: timer.run(self.engines[name], name, feed, key="decode")  # noqa: E731
        x = run(self.pipe.embed, {"input_ids": token_ids})["inputs_embeds"]
        for seg, cache in zip(self.pipe.segments, caches.segments):
            out = run(seg.decoder, {"hidden_in": x, "position_ids": positions, **cache.step_feed()})
            cache.stepped(seg, out)
            x = out["hidden_out"]
        return run(self.pipe.lm_head, {"hidden_last": x[:, -1]})["logits"]

    @staticmethod
    def _image(request):
        """A path is loaded (with checks); an already opened PIL image is converted to RGB."""
        return request.image.convert("RGB") if isinstance(request.image, Image.Image) else load_image(request.image)

    def _check_lengths(self, prompts, limits: list[int]):
        limit = self.facts["max_positions"]
        for p, max_new_tokens in zip(prompts, limits):
            need = len(p.input_ids) - 1 + self.vision_tokens + max_new_tokens
            if need > limit:
                raise InputError(f"the prompt is {len(p.input_ids) - 1} tokens; with {self.vision_tokens} visual tokens and "
                                 f"{max_new_tokens} new tokens the sequence needs {need} positions, but the model has "
                                 f"{limit}. Shorten the prompt or lower --max-new-tokens.")
