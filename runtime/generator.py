"""Stitches the engines: vision -> (CLIP text relevance -> pseudo-CLS) -> prefill segments -> greedy decode.

Each prefill segment may shrink the visual block, so each segment keeps its own KV cache, with its own
length and its own key-padding mask; decoding appends to all of them. Requests in a batch are padded
(suffix on the right, caches where a request has fewer tokens) and masked, never mixed.
"""
import time
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from runtime import io_names as io
from runtime.errors import InputError
from runtime.preprocess import ImagePreprocessConfig, load_image, preprocess
from runtime.prompt import Prompt, PromptTokenizer
from runtime.relevance import ClipTokenWindows, clip_relevance, map_to_llm, pseudo_cls, select_tokens


@dataclass
class Request:
    image: object  # path or PIL image
    prompt: str


@dataclass
class Result:
    text: str
    token_ids: list[int]
    input_ids: list[int]
    stages: list[dict]
    timings_ms: dict
    relevant_tokens: list[int] = field(default_factory=list)  # suffix positions that formed the pseudo-CLS
    kv_cache_bytes: int = 0  # this request's KV caches after prefill, all segments (padding included)

    def to_json(self) -> dict:
        return {"text": self.text, "token_ids": self.token_ids, "input_ids": self.input_ids,
                "stages": self.stages, "timings_ms": self.timings_ms, "relevant_tokens": self.relevant_tokens,
                "kv_cache_bytes": self.kv_cache_bytes}


class Timer:
    def __init__(self):
        self.ms = defaultdict(float)

    def run(self, runner, name, feed):
        start = time.perf_counter()
        out = runner.infer(feed)
        self.ms[name] += (time.perf_counter() - start) * 1e3
        return out


def nbytes(cache) -> int:
    """Size of a KV cache as a runner returned it: numpy, or left on a GPU (torch tensor, polygraphy DeviceView,
    ONNX Runtime OrtValue), which cannot be indexed per request."""
    return cache.tensor_size_in_bytes() if hasattr(cache, "tensor_size_in_bytes") else cache.nbytes


class Generator:
    def __init__(self, manifest, engines: dict):
        self.m, self.engines, self.pipe = manifest, engines, manifest.pipeline
        self.facts = manifest["model"]
        self.prompts = PromptTokenizer(manifest.path(manifest["tokenizers"]["llm"]), manifest["prompt_template"],
                                       manifest["image_token"])
        self.clip = ClipTokenWindows(manifest.path(manifest["tokenizers"]["clip"])) if self.pipe.get("text_encoder") else None
        self.preprocess_cfg = ImagePreprocessConfig.from_dict(manifest["preprocess"])
        self.eos, self.pad = self.facts["eos_token_id"], self.facts["pad_token_id"]
        self.vision_tokens = manifest["vision_tokens_out"]  # visual tokens entering the LLM

    # ------------------------------------------------------------------ public
    def generate(self, requests: list[Request], max_new_tokens: int = 32) -> list[Result]:
        if max_new_tokens < 1:
            raise InputError(f"--max-new-tokens must be at least 1, got {max_new_tokens}")
        timer, start = Timer(), time.perf_counter()
        prompts = [self.prompts.encode(r.prompt) for r in requests]
        self._check_lengths(prompts, max_new_tokens)
        pixels = np.stack([preprocess(self._image(r), self.preprocess_cfg) for r in requests])
        logits, state, stages, relevant = self._prefill(prompts, pixels, timer)
        kv_bytes = sum(nbytes(k) + nbytes(v) for k, v in state["past"].values()) // len(prompts)  # per request
        prefill_ms = (time.perf_counter() - start) * 1e3
        tokens = self._decode(logits, state, prompts, max_new_tokens, timer)
        total_ms = (time.perf_counter() - start) * 1e3
        timings = {**{k: round(v, 3) for k, v in timer.ms.items()}, "prefill_total": round(prefill_ms, 3),
                   "decode_total": round(total_ms - prefill_ms, 3), "total": round(total_ms, 3)}
        return [Result(self.prompts.decode(tokens[b]), tokens[b], p.input_ids,
                       [{"name": s, "kept": k[b, :n[b]].tolist()} for s, k, n in stages], dict(timings), relevant[b],
                       kv_bytes) for b, p in enumerate(prompts)]

    # ------------------------------------------------------------------ prefill
    def _prefill(self, prompts: list[Prompt], pixels, timer):
        pipe, run = self.pipe, self.engines
        vision = timer.run(run[pipe["vision"]], "vision", {"pixel_values": pixels})
        batch = len(prompts)
        stages = [(s["name"], k, np.full(batch, k.shape[1])) for s in self.m["stages"] if s["where"] == "vision"
                  for k in [vision[io.kept_name(s["name"])]]]
        prefix_lens = {len(p.prefix_ids) for p in prompts}
        assert len(prefix_lens) == 1, "the template puts the same text before the image in every request"
        n_pre = prefix_lens.pop()
        prefix_ids = np.array([p.prefix_ids for p in prompts], dtype=np.int32)
        suffix_ids, suffix_mask = self.prompts.pad_suffixes(prompts, self.pad)
        embed = lambda x: timer.run(run[pipe["embed"]], "embed", {"input_ids": x})["inputs_embeds"]
        prefix, suffix = embed(prefix_ids), embed(suffix_ids)
        visual = vision["image_features"]
        n_vis = visual.shape[1]
        # raster ids of the tokens entering the LLM, for LLM stages to report (merging methods have none)
        aligned = stages and stages[-1][1].shape[1] == n_vis
        ids = stages[-1][1] if aligned else np.tile(np.arange(n_vis), (batch, 1))
        visual_pos = np.tile(np.arange(n_pre, n_pre + n_vis, dtype=np.int32), (batch, 1))
        suffix_pos = np.tile(np.arange(n_pre + n_vis, n_pre + n_vis + suffix_ids.shape[1], dtype=np.int32), (batch, 1))
        relevant = [[] for _ in prompts]
        feed_pcls = {}
        if any(s["pseudo_cls"] for s in pipe["segments"]):
            pcls, relevant = self._pseudo_cls(prompts, vision, suffix, timer)
            feed_pcls = {"pseudo_cls": pcls[:, None].astype(np.float32),
                         "pseudo_cls_position": np.full((batch, 1), n_pre + n_vis, dtype=np.int32)}
        state = {"past": {}, "masks": [], "next_pos": n_pre + n_vis + suffix_mask.sum(1)}
        visual_mask = np.ones((batch, n_vis), np.int32)
        for seg in pipe["segments"]:
            feed = {"prefix_embeds": prefix, "visual_embeds": visual, "suffix_embeds": suffix,
                    "visual_positions": visual_pos, "suffix_positions": suffix_pos, "suffix_mask": suffix_mask}
            if seg["pseudo_cls"]:
                feed.update(feed_pcls)
            if seg.get("visual_mask"):
                feed["visual_mask"] = visual_mask
            if seg.get("thresholds") is not None:
                feed["thresholds"] = np.tile(np.asarray(seg["thresholds"], np.float32), (batch, 1))
            out = timer.run(run[seg["graph"]], seg["graph"], feed)
            first, last = seg["layers"]
            for i in range(first, last + 1):
                state["past"][i] = (out[f"present.{i}.key"], out[f"present.{i}.value"])
            state["masks"].append(np.concatenate([np.ones((batch, n_pre), np.int32), visual_mask, suffix_mask], 1))
            if seg["head"]:
                return out["logits"], state, stages, relevant
            prefix, visual, suffix = out["prefix_hidden"], out["visual_hidden"], out["suffix_hidden"]
            if seg["pseudo_cls"]:
                feed_pcls["pseudo_cls"] = out["pseudo_cls_hidden"]
            if "kept" in out:
                kept, counts = out["kept"], out.get("kept_count", np.full(batch, out["kept"].shape[1]))
                kept, visual = kept[:, :counts.max()], visual[:, :counts.max()]  # longest request sets the width
                visual_mask = (np.arange(kept.shape[1]) < counts[:, None]).astype(np.int32)
                ids, visual_pos = np.take_along_axis(ids, kept, 1), np.take_along_axis(visual_pos, kept, 1)
                stages.append((seg["stage"], ids, counts))
        raise RuntimeError("the manifest's last segment has no head")

    def _pseudo_cls(self, prompts, vision, suffix_embeds, timer):
        """Eq. 6-8 per request: returns pseudo-CLS [B, H] and the suffix positions that formed it."""
        if self.clip is None:  # no-instruction ablation: the visual CLS guides the LLM stage
            return vision["cls_llm"], [[] for _ in prompts]
        encoded = [self.clip.encode(p.text) for p in prompts]
        embeddings = self._clip_embeddings([ids for ids, _ in encoded], len(prompts), timer)
        out, relevant = [], []
        for b, (p, (_, clip_spans), emb) in enumerate(zip(prompts, encoded, embeddings)):
            scores = clip_relevance(emb, clip_spans, vision["cls_joint"][b])
            chosen = select_tokens(map_to_llm(p.suffix_spans, scores), p.suffix_spans, self.pipe["tau"])
            out.append(pseudo_cls(suffix_embeds[b], chosen, vision["cls_llm"][b]))
            relevant.append(chosen.tolist())
        return np.stack(out), relevant

    def _clip_embeddings(self, windows: list, max_rows: int, timer) -> list:
        """CLIP token embeddings for every request's windows, in calls of at most `max_rows` windows (the
        request batch, which every graph's batch profile accepts) rather than one call per request. Windows
        are right-padded with eos to one width: CLIP's text attention is causal, so padding after a token
        does not change its embedding."""
        width = max(ids.shape[1] for ids in windows)
        rows = np.concatenate([np.pad(ids, ((0, 0), (0, width - ids.shape[1])), constant_values=self.clip.eos)
                               for ids in windows])
        engine = self.engines[self.pipe["text_encoder"]]
        emb = np.concatenate([timer.run(engine, "text_encoder", {"input_ids": rows[i:i + max_rows]})["token_embeddings"]
                              for i in range(0, len(rows), max_rows)])
        return np.split(emb, np.cumsum([len(ids) for ids in windows])[:-1])

    # ------------------------------------------------------------------ decode
    def _decode(self, logits, state, prompts, max_new_tokens, timer):
        batch = len(prompts)
        tokens = [[] for _ in range(batch)]
        done = np.zeros(batch, dtype=bool)
        n_layers = len(state["past"])
        for step in range(max_new_tokens):
            nxt = logits.argmax(-1)
            for b in range(batch):
                if not done[b]:
                    tokens[b].append(int(nxt[b]))
                    done[b] = nxt[b] == self.eos
            if done.all() or step == max_new_tokens - 1:
                break
            nxt = np.where(done, self.pad, nxt).astype(np.int32)[:, None]
            feed = {"inputs_embeds": timer.run(self.engines[self.pipe["embed"]], "embed", {"input_ids": nxt})["inputs_embeds"],
                    "position_ids": (state["next_pos"] + step)[:, None].astype(np.int32)}
            feed.update({io.past_mask(s): m for s, m in enumerate(state["masks"])})
            for i in range(n_layers):
                feed[f"past_key_values.{i}.key"], feed[f"past_key_values.{i}.value"] = state["past"][i]
            out = timer.run(self.engines[self.pipe["decode"]], "decode", feed)
            logits = out["logits"]
            state["past"] = {i: (out[f"present.{i}.key"], out[f"present.{i}.value"]) for i in range(n_layers)}
            state["masks"] = [np.concatenate([m, np.ones((batch, 1), np.int32)], 1) for m in state["masks"]]
        return tokens

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
