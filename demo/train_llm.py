"""Stages 2 and 3: the projector and the LLaMA decoder on the frozen ViT's features (computed once per image).
Stage 2 captions every object in reading order (a loss on every word, as LLaVA's projector stage); stage 3 tunes
on conversations of several questions about one image, with some captions mixed in. Scenes with fewer objects come
first (a curriculum): with one or two objects an answer needs no search, so the decoder learns to read a token's
colour and pattern before it must learn to find the one asked about.

Next-token loss alone left the decoder at the answer priors for 500 steps (it had not learnt to find the object a
question names). An auxiliary grounding loss gives that search a direct signal: at decoder layers 1 and 2, the
attention of the position that predicts an answer, averaged over heads, should fall on the patches of the object
the question is about (-log of its mass there). This is what FastV reads (layer K-1 = 1) and what a grounded VLM
does; it is a training aid only, nothing at inference depends on it."""
from __future__ import annotations

import time

import numpy as np
import torch
import torch.nn.functional as F

from demo.dialogue import DialogueTokenizer, collate
from demo.pool import Pool
from demo.questions import TYPES, ask, describe
from demo.scenes import SIZE, render
from demo.text import CAPTION_PROMPT
from demo.train_clip import Stepper, pixels_of

GROUNDING_LAYERS = (1, 2)
GROUNDING_WEIGHT = 0.5


@torch.no_grad()
def vision_features(vision_tower, pool: Pool, batch: int = 64, log=lambda m: None) -> torch.Tensor:
    """[N, 576, vit_hidden] float32: the feature layer's patch outputs (LLaVA's hidden_states[-2], CLS dropped)."""
    out = []
    for start in range(0, len(pool), batch):
        idx = np.arange(start, min(start + batch, len(pool)))
        out.append(vision_tower(pixel_values=pixels_of(pool, idx), output_hidden_states=True).hidden_states[-2][:, 1:])
        if (start // batch) % 20 == 0:
            log(f"[features] {min(start + batch, len(pool))}/{len(pool)}")
    return torch.cat(out)


def reading_order_caption(scene) -> str:
    """Every object, top to bottom by thirds of the image, then left to right: "a small striped red disc at the top
    left, a large plain blue tile in the middle."."""
    things = sorted(scene.things, key=lambda t: (int(3 * t.centre[1] / SIZE), t.centre[0]))
    return ", ".join(describe(t) for t in things) + "."


def conversation(scene, rng, turns: int) -> list:
    """Up to `turns` distinct questions (demo.questions.Question) about the scene."""
    out, tries = [], 0
    while len(out) < turns and tries < 4 * turns:
        tries += 1
        q = ask(scene, TYPES[int(rng.integers(len(TYPES)))], rng)
        if q is not None and all(q.question != seen.question for seen in out):
            out.append(q)
    return out


class AttentionTap:
    """Captures what decoder layer `layer`'s attention sees (its normed input and RoPE tables) on the next forward."""

    def __init__(self, layer_module):
        self.attn, self.seen = layer_module.self_attn, None
        self.handle = self.attn.register_forward_hook(self._keep, with_kwargs=True)

    def _keep(self, module, args, kwargs, output):
        self.seen = (kwargs.get("hidden_states", args[0] if args else None), kwargs["position_embeddings"])

    def rows(self, b: int, p: int) -> torch.Tensor:
        """Softmax attention of position p of row b over positions 0..p, heads averaged: [p + 1]."""
        from transformers.models.llama.modeling_llama import apply_rotary_pos_emb
        h, (cos, sin) = self.seen
        h, a = h.float(), self.attn
        cos, sin = cos[:1], sin[:1]  # every row has positions 0..T-1: one table for the batch
        hd = a.head_dim
        q = a.q_proj(h[b:b + 1, p:p + 1]).view(1, 1, -1, hd).transpose(1, 2)
        k = a.k_proj(h[b:b + 1, :p + 1]).view(1, p + 1, -1, hd).transpose(1, 2)
        q, _ = apply_rotary_pos_emb(q, q, cos[:, p:p + 1], sin[:, p:p + 1])
        _, k = apply_rotary_pos_emb(k, k, cos[:, :p + 1], sin[:, :p + 1])
        k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
        return torch.softmax((q.float() @ k.float().transpose(-1, -2)) * a.scaling, -1)[0, :, 0].mean(0)


class LlmTrainer:
    def __init__(self, llava, tokenizer_file, features: torch.Tensor, pool: Pool, seed: int):
        self.llava, self.features, self.pool = llava, features, pool
        layers = llava.model.language_model.layers
        self.taps = [AttentionTap(layers[i]) for i in GROUNDING_LAYERS if i < len(layers)]
        self.text = DialogueTokenizer(tokenizer_file)
        self.n_visual = features.shape[1]
        self.rng = np.random.default_rng([seed, 2])
        self.objects = np.array([len(s.things) for s in pool.scenes])

    def params(self):
        lm = self.llava.model
        return [*lm.multi_modal_projector.parameters(), *lm.language_model.parameters(), *self.llava.lm_head.parameters()]

    def loss(self, idx, seqs, objects) -> tuple[torch.Tensor, torch.Tensor]:
        """(next-token loss, grounding loss). objects[b][turn]: the pool index of the object turn asks about, or
        None (a caption, or "no" to an exist question)."""
        ids, targets, mask = collate(seqs, self.n_visual, self.text.pad, self.text.image_id)
        lm = F.cross_entropy(self.forward(self.features[torch.as_tensor(idx)], ids, mask, targets >= 0),
                             targets[targets >= 0])
        start = seqs[0].ids.index(self.text.image_id)  # the same prefix in every row
        terms = []
        for b, (i, seq) in enumerate(zip(idx, seqs)):
            for at, obj in zip(seq.answer_at, objects[b]):
                if obj is None:
                    continue
                patches = torch.from_numpy(np.flatnonzero(self.pool.owner[i] == obj + 1)) + start
                p = at + self.n_visual - 1  # the image token became n_visual positions
                for tap in self.taps:
                    terms.append(-torch.log(tap.rows(b, p)[patches].sum() + 1e-6))
        grounding = torch.stack(terms).mean() if terms else torch.zeros(())
        return lm, grounding

    def forward(self, features, ids, mask, want):
        """Logits [n, V] at the positions `want` marks; `features` [B, 576, vit_hidden] go where ids hold the image."""
        lm = self.llava.model
        embeds = lm.language_model.embed_tokens(ids)
        visual = lm.multi_modal_projector(features)
        embeds = embeds.masked_scatter((ids == self.text.image_id)[..., None], visual.to(embeds.dtype))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            hidden = lm.language_model(inputs_embeds=embeds, attention_mask=mask).last_hidden_state
        return self.llava.lm_head(hidden[want].float())

    def batch(self, size: int, max_objects: int, caption_share: float):
        """Pool indices, their sequences (captions in reading order, or conversations of 4-8 questions) and per
        sequence the object each turn asks about."""
        allowed = np.flatnonzero(self.objects <= max_objects)
        idx = self.rng.choice(allowed, size, replace=False)
        seqs, objects = [], []
        for i in idx:
            scene = self.pool.scenes[i]
            turns = [] if self.rng.random() < caption_share else \
                conversation(scene, self.rng, int(self.rng.integers(4, 9)))
            if not turns:  # a caption (also where no question fits the scene)
                seqs.append(self.text.encode([(CAPTION_PROMPT, reading_order_caption(scene))]))
                objects.append([None])
            else:
                seqs.append(self.text.encode([(q.question, q.answer) for q in turns]))
                objects.append([None if q.target is None else scene.things.index(q.target) for q in turns])
        return idx, seqs, objects

    def train(self, steps: int, batch: int, lr: float, schedule, evaluate, log, name: str, eval_every: int = 100):
        """`schedule(step) -> (max_objects, caption_share)`; `evaluate()` -> dict, run every eval_every steps."""
        step_with = Stepper(self.params(), lr, steps, warmup=max(1, steps // 15), weight_decay=0.01)
        curve, start, running = [], time.perf_counter(), []
        self.llava.train()
        for step in range(steps):
            max_objects, caption_share = schedule(step)
            idx, seqs, objects = self.batch(batch, max_objects, caption_share)
            lm, grounding = self.loss(idx, seqs, objects)
            step_with(lm + GROUNDING_WEIGHT * grounding)
            running.append((lm.item(), grounding.item()))
            if (step + 1) % eval_every == 0 or step == steps - 1:
                self.llava.eval()
                scores = evaluate()
                self.llava.train()
                row = {"step": step + 1, "loss": round(float(np.mean([r[0] for r in running])), 4),
                       "grounding": round(float(np.mean([r[1] for r in running])), 4), "max_objects": max_objects,
                       **scores, "minutes": round((time.perf_counter() - start) / 60, 2)}
                running = []
                curve.append(row)
                log(f"[{name} {step + 1}/{steps}] " + " ".join(f"{k} {v}" for k, v in row.items() if k != "step"))
        self.llava.eval()
        return curve


class HeldOut:
    """Single-turn questions on held-out scenes, scored by the first answer token (every answer is one token), as
    greedy decoding would answer them."""

    def __init__(self, trainer: LlmTrainer, vision_tower, seed: int, count: int):
        from demo.dataset import questions
        pairs = list(questions(seed, count))
        pool = Pool([s for s, _ in pairs], np.stack([np.asarray(render(s)) for s, _ in pairs]), None, None, None)
        self.features = vision_features(vision_tower, pool)
        self.trainer, self.questions = trainer, [q for _, q in pairs]
        tok = trainer.text
        self.seqs = [tok.encode([(q.question, q.answer)]) for q in self.questions]
        self.answer_ids = torch.tensor([next(t for t in s.targets if t >= 0) for s in self.seqs])

    @torch.no_grad()
    def __call__(self, batch: int = 32) -> dict:
        t, right = self.trainer, []
        for start in range(0, len(self.seqs), batch):
            idx = np.arange(start, min(start + batch, len(self.seqs)))
            ids, targets, mask = collate([self.seqs[i] for i in idx], t.n_visual, t.text.pad, t.text.image_id)
            first = (targets >= 0).int().argmax(1)  # the position whose next token is the answer
            want = torch.zeros_like(mask, dtype=torch.bool)
            want[torch.arange(len(idx)), first] = True
            logits = t.forward(self.features[torch.as_tensor(idx)], ids, mask, want)
            right += (logits.argmax(-1) == self.answer_ids[idx]).tolist()
        types = [q.type for q in self.questions]
        out = {"acc": round(float(np.mean(right)), 4)}
        for kind in TYPES:
            out[kind] = round(float(np.mean([r for r, k in zip(right, types) if k == kind])), 3)
        return out
