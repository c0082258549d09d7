"""Prefill: the vision graph, then (IVTP) the pseudo-CLS from CLIP's instruction relevance, then the decoder
segments in turn, each of which may shrink the visual block, then the LM head at each request's last token.

Requests in a batch are padded and masked, never mixed: suffixes on the right, and a visual block that pruning
left with different counts per request (ATP) to the longest of them. Each segment keeps its own KV buffers, with
room for the tokens decode will add and a mask of the slots that hold real tokens, since each saw a different
visual set.
"""
import time
from collections import defaultdict
from dataclasses import dataclass, replace

import numpy as np

from engines.kv_names import PAST, kv_names
from runtime import io_names as io
from runtime.feeds import DTYPE_NAMES, cast_floats, float_inputs
from runtime.manifest import Manifest, Segment
from runtime.prompt import Prompt


class Timer:
    """Runs engines by graph name, each fed its floats in the dtypes its record names, and adds up each one's wall
    time. Without records (the PyTorch oracle at export, before any graph exists) feeds go as they are."""

    def __init__(self, records: dict | None = None):
        self.ms = defaultdict(float)
        self.float_inputs = {name: float_inputs(record) for name, record in (records or {}).items()}

    def run(self, runner, name, feed, key: str | None = None):
        """`key` names the account the time goes to (default: the graph's name; decode steps go to "decode")."""
        start = time.perf_counter()
        dtypes = self.float_inputs.get(name)
        out = runner.infer(cast_floats(feed, dtypes) if dtypes else feed)
        self.ms[key or name] += (time.perf_counter() - start) * 1e3
        return out


@dataclass
class VisualBlock:
    """The visual tokens as a segment receives them, one row per request, padded to the longest."""
    embeds: np.ndarray  # [B, V, H]
    positions: np.ndarray  # [B, V] int32: original positions, kept through pruning
    mask: np.ndarray  # [B, V] int32: 1 for a request's real tokens
    ids: np.ndarray  # [B, V] raster ids (for merged tokens: their rows in the vision graph's output)
    merged: bool = False  # the tokens are merges, which no raster id names

    def pruned(self, hidden: np.ndarray, kept: np.ndarray, counts: np.ndarray) -> "VisualBlock":
        """What a segment hands on that kept `kept` ([B, V'] indices into this block, a request's `counts` first) of
        its output `hidden` [B, V, H]."""
        width = int(counts.max())  # the longest request sets the width
        kept = kept[:, :width]
        mask = (np.arange(width) < counts[:, None]).astype(np.int32)
        return replace(self, embeds=np.take_along_axis(hidden, kept[..., None], 1),
                       positions=np.take_along_axis(self.positions, kept, 1), mask=mask,
                       ids=np.take_along_axis(self.ids, kept, 1))

    def report(self, b: int) -> dict:
        """Request b's visual tokens as a result states them."""
        n = int(self.mask[b].sum())
        return {"count": n, "raster_ids": None if self.merged else sorted(self.ids[b, :n].tolist())}


@dataclass
class SegmentCache:
    """One segment's KV buffers, per decoder layer (key, value) [B, Hkv, capacity, D] as its runner returned them;
    past and present are the same buffers. `valid` marks the slots that hold a request's real tokens."""
    layers: dict
    valid: np.ndarray  # [B, capacity] bool
    used: int  # slots written so far, the same for every request (padding fills the shorter ones)

    def add(self, seg: Segment, out: dict):
        self.layers.update({i: (out[f"present.{i}.key"], out[f"present.{i}.value"]) for i in range(seg.first, seg.last + 1)})

    def step_feed(self) -> dict:
        """A decode step's cache feeds: every request writes its new token at slot `used`, which it sees."""
        self.valid[:, self.used] = True  # the new token sees itself
        return {"attention_mask": self.valid[:, None, :].copy(),
                "write_index": np.full(len(self.valid), self.used, np.int32), **self.past()}

    def stepped(self, seg: Segment, out: dict):
        self.add(seg, out)
        self.used += 1

    def past(self) -> dict:
        return dict(zip(kv_names(PAST, self.layers), (cache for kv in self.layers.values() for cache in kv)))

    def nbytes(self) -> int:
        """Bytes of the slots written, not of the room left for decode."""
        return sum(nbytes(k) + nbytes(v) for k, v in self.layers.values()) * self.used // self.valid.shape[1]


@dataclass
class KvCaches:
    segments: list[SegmentCache]
    next_position: np.ndarray  # [B]: where each request's first generated token goes

    def nbytes(self) -> int:
        return sum(s.nbytes() for s in self.segments)


def empty_buffers(manifest: Manifest, seg: Segment, batch: int, capacity: int) -> dict:
    """Zeroed KV buffers for a segment's layers, in the graphs' dtype, as past_key_values.* feeds."""
    facts, dtype = manifest.model, np.dtype(DTYPE_NAMES[manifest.dtype])
    shape = (batch, facts["kv_heads"], capacity, facts["head_dim"])
    return {name: np.zeros(shape, dtype) for name in kv_names(PAST, range(seg.first, seg.last + 1))}


def nbytes(cache) -> int:
    """Size of a KV cache as a runner returned it: numpy, or left on a GPU (torch tensor, polygraphy DeviceView,
    ONNX Runtime OrtValue), which cannot be indexed per request."""
    return cache.tensor_size_in_bytes() if hasattr(cache, "tensor_size_in_bytes") else cache.nbytes


@dataclass
class Prefilled:
    logits: np.ndarray  # [B, vocab] at each request's last prompt token
    caches: KvCaches
    stages: list  # (stage name, raster ids [B, K], counts [B]) per pruning point, in order
    relevant: list  # per request: the suffix positions that formed the pseudo-CLS
    visual: VisualBlock  # what the layers after the last pruning point see


def vision_stages(manifest: Manifest, vision: dict, batch: int) -> list:
    return [(s.name, k, np.full(batch, k.shape[1])) for s in manifest.stages if s.where == "vision"
            for k in [vision[io.kept_name(s.name)]]]


def entering_block(manifest: Manifest, features: np.ndarray, stages: list, n_pre: int) -> VisualBlock:
    """The vision graph's output as the first segment's visual block, with the raster ids pipeline.visual_ids
    gives its rows."""
    batch, n_vis = features.shape[:2]
    rows = np.tile(np.arange(n_vis), (batch, 1))
    named, kept = manifest.pipeline.visual_ids, {name: k for name, k, _ in stages}
    ids = np.sort(np.concatenate([kept[s] for s in named], 1), 1) if named else rows
    positions = np.tile(np.arange(n_pre, n_pre + n_vis, dtype=np.int32), (batch, 1))
    return VisualBlock(features, positions, np.ones((batch, n_vis), np.int32), ids, merged=named is None)


def decoder_feed(x, positions, valid: np.ndarray, capacity: int, buffers: dict) -> dict:
    """The feed of a decoder graph over a whole prompt: causal attention among its valid tokens, slots 0..N-1."""
    batch, n = valid.shape
    mask = np.zeros((batch, n, capacity), bool)
    mask[:, :, :n] = np.tril(np.ones((n, n), bool))[None] & valid[:, None, :]
    return {"hidden_in": x, "position_ids": positions, "attention_mask": mask,
            "write_index": np.zeros(batch, np.int32), **buffers}


def prune_feed(seg: Segment, mask, visual: VisualBlock, suffix_mask, out: dict, cache: "SegmentCache") -> dict:
    """The feed of a segment's prune graph, after its decoder graph ran the prompt: the queries it handed out, the
    keys (and values) it wrote."""
    feed = {"attention_mask": mask, "visual_positions": visual.positions, "suffix_mask": suffix_mask}
    for i in seg.taps:
        feed[io.query_tap(i)], feed[io.cached("key", i)] = out[io.query_tap(i)], cache.layers[i][0]
    if seg.reads_values:
        feed[io.cached("value", seg.last)] = cache.layers[seg.last][1]
    if seg.visual_mask:
        feed["visual_mask"] = visual.mask
    if seg.thresholds is not None:
        feed["thresholds"] = np.tile(np.asarray(seg.thresholds, np.float32), (len(suffix_mask), 1))
    return feed


@dataclass
class PseudoCls:
    """IVTP's pseudo-CLS token, which ends the prompt of each segment that prunes: it sees the prefix, the visual
    block and itself, and nothing sees it."""
    hidden: np.ndarray  # [B, 1, H]
    position: np.ndarray  # [B, 1] int32: right after the image, where the suffix starts


def run_segments(manifest: Manifest, engines: dict, timer: Timer, prefix, visual: VisualBlock, suffix, suffix_mask,
                 pseudo: PseudoCls | None, stages: list, relevant: list, decode_slots: int = 0) -> Prefilled:
    """Every segment in turn, then the LM head; `stages` grows by the LLM's pruning points. Each segment's buffers
    leave `decode_slots` free slots after its prompt."""
    batch, n_pre, n_suf = len(prefix), prefix.shape[1], suffix.shape[1]
    start = n_pre + visual.embeds.shape[1]  # pruning keeps original positions: the suffix stays where it was
    suffix_positions = np.tile(np.arange(start, start + n_suf, dtype=np.int32), (batch, 1))
    caches = KvCaches([], start + suffix_mask.sum(1))
    pre_positions = np.tile(np.arange(n_pre, dtype=np.int32), (batch, 1))
    for seg in manifest.pipeline.segments:
        n_vis = visual.embeds.shape[1]
        tail = [pseudo] if seg.pseudo_cls else []
        x = np.concatenate([prefix, visual.embeds, suffix] + [p.hidden for p in tail], 1)
        positions = np.concatenate([pre_positions, visual.positions, suffix_positions] + [p.position for p in tail], 1)
        valid = np.concatenate([np.ones((batch, n_pre), bool), visual.mask > 0, suffix_mask > 0]
                               + [np.ones((batch, 1), bool) for _ in tail], 1)
        n = valid.shape[1]
        capacity = n + decode_slots
        feed = decoder_feed(x, positions, valid, capacity, empty_buffers(manifest, seg, batch, capacity))
        if tail:
            feed["attention_mask"][:, n - 1, n_pre + n_vis:n - 1] = False  # the pseudo-CLS does not see the suffix
            valid[:, n - 1] = False  # and no later token sees it
        out = timer.run(engines[seg.decoder], seg.decoder, feed)
        hidden = out["hidden_out"]
        prefix, suffix = hidden[:, :n_pre], hidden[:, n_pre + n_vis:n_pre + n_vis + n_suf]
        cache = SegmentCache({}, np.zeros((batch, capacity), bool), n)
        cache.valid[:, :n] = valid
        cache.add(seg, out)
        caches.segments.append(cache)
        if seg.prune is None:
            visual = replace(visual, embeds=hidden[:, n_pre:n_pre + n_vis])
            continue
        decision = timer.run(engines[seg.prune], seg.prune,
                             prune_feed(seg, feed["attention_mask"], visual, suffix_mask, out, cache))
        counts = decision.get("kept_count", np.full(batch, decision["kept"].shape[1]))
        visual = visual.pruned(hidden[:, n_pre:n_pre + n_vis], decision["kept"], counts)
        stages.append((seg.stage, visual.ids, counts))
        if tail:
            pseudo = replace(pseudo, hidden=hidden[:, -1:])
    last = suffix[np.arange(batch), suffix_mask.sum(1) - 1]  # each request's last real token
    logits = timer.run(engines[manifest.pipeline.lm_head], manifest.pipeline.lm_head, {"hidden_last": last})["logits"]
    return Prefilled(logits, caches, stages, relevant, visual)


def prefill(generator, prompts: list[Prompt], pixels: np.ndarray, timer: Timer, decode_slots: int = 0) -> Prefilled:
    m, engines, batch = generator.m, generator.engines, len(prompts)
    vision = timer.run(engines[m.pipeline.vision], m.pipeline.vision, {"pixel_values": pixels})
    stages = vision_stages(m, vision, batch)
    prefix_lens = {len(p.prefix_ids) for p in prompts}
    assert len(prefix_lens) == 1, "the template puts the same text before the image in every request"
    n_pre = prefix_lens.pop()
    suffix_ids, suffix_mask = generator.prompts.pad_suffixes(prompts, generator.pad)
    embed = lambda ids: timer.run(engines[m.pipeline.embed], m.pipeline.embed, {"input_ids": ids})["inputs_embeds"]  # noqa: E731
    prefix, suffix = embed(np.array([p.prefix_ids for p in prompts], dtype=np.int32)), embed(suffix_ids)
    visual = entering_block(m, vision["image_features"], stages, n_pre)
    pseudo, relevant = None, [[] for _ in prompts]
    if any(s.pseudo_cls for s in m.pipeline.segments):
        pcls, relevant = generator.relevance.pseudo_cls(engines, prompts, vision, suffix, timer)
        pseudo = PseudoCls(pcls[:, None].astype(suffix.dtype),
                           np.full((batch, 1), n_pre + visual.embeds.shape[1], dtype=np.int32))
    return run_segments(m, engines, timer, prefix, visual, suffix, suffix_mask, pseudo, stages, relevant, decode_slots)
