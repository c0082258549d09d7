"""Stage 1: CLIP on the scenes. The ViT and the text tower learn a joint space (contrastive, captions listing the
objects), and three auxiliary losses make them ground within a CPU budget:
- per patch, at the feature layer LLaVA reads: the colour and pattern of the object on it, and its column, so the
  visual tokens carry what the questions ask and where;
- per text token: its joint-space cosine with an image's CLS is pushed above IVTP's tau (0.2) where the token names
  a colour or pattern the image holds, and below it for every other word, so IVTP's relevance picks the words that
  name the object, as token-level CLIP does on real photos."""
from __future__ import annotations

import math
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from demo.pool import Pool
from demo.questions import TYPES, ask, caption
from demo.scenes import COLOURS, PATTERNS
from demo.text import attribute_of_tokens
from runtime.preprocess import CLIP_MEAN, CLIP_STD

TAU = 0.2  # IVTP's default relevance threshold
RELEVANCE_SCALE = 12.0

_MEAN = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
_STD = torch.tensor(CLIP_STD).view(1, 3, 1, 1)


def pixels_of(pool: Pool, idx) -> torch.Tensor:
    """CLIP's normalisation of 336 px images (no resize or crop is needed at this size)."""
    x = torch.from_numpy(pool.pixels[idx]).permute(0, 3, 1, 2).float() / 255
    return (x - _MEAN) / _STD


class Stepper:
    """One optimiser step per call: AdamW, gradients clipped at 1, linear warm-up then cosine to a tenth."""

    def __init__(self, params, lr: float, steps: int, warmup: int, weight_decay: float):
        self.params = list(params)
        self.opt = torch.optim.AdamW(self.params, lr=lr, betas=(0.9, 0.98), weight_decay=weight_decay)
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, warmup_cosine(steps, warmup))

    def __call__(self, loss: torch.Tensor):
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, 1.0)
        self.opt.step()
        self.sched.step()


class DenseHeads(nn.Module):
    """Auxiliary heads on the feature layer's patch outputs; dropped after training."""

    def __init__(self, width: int, n_colours: int, n_patterns: int):
        super().__init__()
        self.colour, self.pattern = nn.Linear(width, n_colours + 1), nn.Linear(width, n_patterns + 1)
        self.column = nn.Linear(width, 1)


class TextBatch:
    """CLIP-tokenized texts padded with eos, and for each token the attribute it names (None if it names none, or
    is bos/eos/padding)."""

    def __init__(self, tokenizer, texts: list[str]):
        encs = [tokenizer.encode(t) for t in texts]
        width = max(len(e.ids) for e in encs)
        eos = tokenizer.token_to_id("<|endoftext|>")
        self.ids = torch.full((len(texts), width), eos, dtype=torch.long)
        self.attributes: list[list[str | None]] = []
        self.real = torch.zeros(len(texts), width, dtype=torch.bool)  # instruction tokens: not bos/eos/padding
        for i, (e, text) in enumerate(zip(encs, texts)):
            self.ids[i, :len(e.ids)] = torch.tensor(e.ids)
            attrs = attribute_of_tokens(e.offsets, text)
            special = [s == 1 for s in e.special_tokens_mask]
            self.attributes.append([None if sp else a for a, sp in zip(attrs, special)] + [None] * (width - len(e.ids)))
            self.real[i, :len(e.ids)] = torch.tensor([not sp for sp in special])


def relevance_targets(batch: TextBatch, scenes) -> torch.Tensor:
    """[T, L, B]: 1 where token (t, l) names a colour or pattern that image b holds, else 0."""
    held = [{t.colour for t in s.things} | {t.pattern for t in s.things} for s in scenes]
    target = torch.zeros(batch.ids.shape[0], batch.ids.shape[1], len(scenes))
    for t, attrs in enumerate(batch.attributes):
        for pos, a in enumerate(attrs):
            if a is not None:
                target[t, pos] = torch.tensor([float(a in h) for h in held])
    return target


def clip_losses(clip, heads: DenseHeads, pool: Pool, idx, tokenizer, rng) -> dict:
    scenes = [pool.scenes[i] for i in idx]
    out = clip.vision_model(pixel_values=pixels_of(pool, idx), output_hidden_states=True)
    feats = out.hidden_states[-2][:, 1:]  # what LLaVA feeds its projector
    colour, pattern = torch.from_numpy(pool.colour[idx]), torch.from_numpy(pool.pattern[idx])
    obj = colour > 0
    # objects cover ~8% of patches: weigh them up so the heads do not settle for "background"
    weight = 1.0 + 4.0 * obj.float()
    ce = lambda logits, y: (F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="none") * weight.flatten()).sum() / weight.sum()  # noqa: E731
    c_logits, p_logits = heads.colour(feats), heads.pattern(feats)
    column = torch.from_numpy(pool.column)[None].expand(len(idx), -1)
    dense = ce(c_logits, colour) + 2 * ce(p_logits, pattern) + 4 * F.mse_loss(heads.column(feats)[..., 0], column)

    image = F.normalize(clip.visual_projection(out.pooler_output), dim=-1)
    captions = [caption(s, rng, places=bool(rng.random() < 0.5)) for s in scenes]
    questions = []
    for s in scenes:
        q = None
        while q is None:
            q = ask(s, TYPES[int(rng.integers(len(TYPES)))], rng)
        questions.append(q.question)
    texts = TextBatch(tokenizer, captions + questions)
    text_out = clip.text_model(input_ids=texts.ids)
    pooled = F.normalize(clip.text_projection(text_out.pooler_output[:len(idx)]), dim=-1)
    logits = clip.logit_scale.exp().clamp(max=100) * image @ pooled.T
    labels = torch.arange(len(idx))
    contrastive = (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2

    tokens = F.normalize(clip.text_projection(text_out.last_hidden_state), dim=-1)  # [T, L, P]
    cos = torch.einsum("tlp,bp->tlb", tokens, image)
    target = relevance_targets(texts, scenes)
    mask = texts.real[..., None].expand_as(cos).float()
    bce = F.binary_cross_entropy_with_logits(RELEVANCE_SCALE * (cos - TAU), target, reduction="none",
                                             pos_weight=torch.tensor(3.0))
    relevance = (bce * mask).sum() / mask.sum()

    with torch.no_grad():
        stats = {"colour_acc": (c_logits.argmax(-1) == colour)[obj].float().mean().item(),
                 "pattern_acc": (p_logits.argmax(-1) == pattern)[obj].float().mean().item(),
                 "retrieval": (logits.argmax(1) == labels).float().mean().item(),
                 "rel_pos": ((cos >= TAU) & (target > 0))[mask > 0].sum().item() / max(1, (target[mask > 0] > 0).sum().item()),
                 "rel_neg": ((cos >= TAU) & (target == 0) & (mask > 0)).sum().item() / max(1, ((target == 0) & (mask > 0)).sum().item())}
    return {"dense": dense, "contrastive": contrastive, "relevance": relevance, "stats": stats}


def train_clip(clip, pool: Pool, tokenizer, steps: int, batch: int, lr: float, seed: int, log) -> list[dict]:
    """Trains `clip` in place on the first steps * batch pool images; returns the curve (every 25 steps)."""
    torch.manual_seed(seed)
    rng = np.random.default_rng([seed, 1])
    heads = DenseHeads(clip.config.vision_config.hidden_size, len(COLOURS), len(PATTERNS))
    step_with = Stepper([*clip.parameters(), *heads.parameters()], lr, steps, max(1, steps // 12), weight_decay=0.05)
    order = rng.permutation(len(pool))
    curve, start = [], time.perf_counter()
    clip.train()
    for step in range(steps):
        idx = order[(step * batch) % len(pool):][:batch]
        if len(idx) < batch:
            idx = rng.choice(len(pool), batch, replace=False)
        losses = clip_losses(clip, heads, pool, idx, tokenizer, rng)
        loss = losses["dense"] + losses["contrastive"] + losses["relevance"]
        step_with(loss)
        if step % 25 == 0 or step == steps - 1:
            row = {"step": step, "loss": round(loss.item(), 4),
                   **{k: round(losses[k].item(), 4) for k in ("dense", "contrastive", "relevance")},
                   **{k: round(v, 4) for k, v in losses["stats"].items()},
                   "minutes": round((time.perf_counter() - start) / 60, 2)}
            curve.append(row)
            log(f"[clip {step}/{steps}] " + " ".join(f"{k} {v}" for k, v in row.items() if k != "step"))
    clip.eval()
    return curve


def warmup_cosine(steps: int, warmup: int, floor: float = 0.1):
    def factor(step):
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, steps - warmup)
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))
    return factor
