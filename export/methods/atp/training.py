"""Training ATP-LLaVA's threshold heads (Sec. 3.3.2-3.3.3) with the vision tower and the LLM frozen.

Soft-masked forward: the sequence prefix | 576 unpruned visual tokens | prompt suffix + continuation runs
through every decoder layer; after each pruning point p, layer p's q/k give the scores (AtpPruner.signals),
that point's heads the thresholds, Eqs. 9-11 a soft mask, which multiplies the visual tokens' running mask.
From layer p+1 on the running mask weighs the visual key columns inside the softmax, as the paper does
("multiply the exponentials by the mask before summing"): log(mask) is added to those logits, kept in log
space (sum of log-sigmoids) so that products of tiny masks never underflow. Layers <= p are untouched, as at
inference, where the pruned tokens stay in those layers' KV caches.

Scores match inference: the rows that score S_cross are the prompt's suffix tokens only (the continuation
comes after them and causal attention hides it), and the set normalised and averaged over (the `valid`
mask of the signals) is the hard keep rule's running result, so the heads see what they will see when
tokens are discarded outright. Masks summed for the losses are the running (cumulative) soft masks.

Loss (Eq. 14): L = L_ntp + lambda_atp L_ATP + lambda_target L_target. There is no SFT dataset here, so L_ntp
is self-distillation: the label is the frozen unpruned model's own greedy continuation (`new_tokens` tokens)
of each request, and L_ntp the cross-entropy of the soft-masked model on it under teacher forcing. L_ATP
weighs a point by the index of the layer it prunes before (p + 1, the paper's convention). L_target compares
the batch's mean count per decoder layer over all layers (scores.mean_layer_count) with the target, the
count the paper's tables report (its "144" is kept [126, 88, 20] after layers 3, 13, 23).
"""
import math
import random
import time

import torch
import torch.nn.functional as F

from export.graphs.parts import language_model
from export.methods.atp.examples import Example, grid_of, prepare_examples
from export.methods.atp.heads import new_heads
from export.methods.atp.pruner import AtpPruner
from export.methods.atp.scores import atp_loss, mean_layer_count, redundant_score, target_loss, to_raster
from export.modules.decoder import causal_window
from export.modules.layers import additive_mask, llama_attend, llama_finish, llama_qkv, repeat_kv, rope_cos_sin
from export.modules.pruning import SegmentView
from runtime.errors import ConfigError
from runtime.shipped import atp_training_requests

# Adam moves every parameter by about its rate per step, and the trunk sums 2 x 576 inputs: at the rate of the
# output biases (which set the thresholds' common level) it would shift the thresholds by hundreds of times that
# in one step (measured: every token pruned by the third step at lr 1e-2). The instance-wise weights get less.
WEIGHT_LR_RATIO = 0.01


def log_soft_mask(s_red, s_spatial, thresholds, temperature: float) -> torch.Tensor:
    """log of scores.soft_mask (Eqs. 9-11), computed stably."""
    return torch.maximum(F.logsigmoid((s_red - thresholds[:, :1]) * temperature),
                         F.logsigmoid((s_spatial - thresholds[:, 1:]) * temperature))


def masked_forward(lm, pruner: AtpPruner, ex: Example, heads: dict | None, temperature: float) -> dict:
    """Logits [1, n_new, vocab] at the label positions; per point: running soft mask [1, V], hard kept count
    [1], thresholds [1, 2]. Without heads: the unpruned model."""
    x = torch.cat([ex.prefix, ex.visual, ex.text], 1)
    n, n_pre, n_vis = x.shape[1], ex.prefix.shape[1], ex.visual.shape[1]
    n_text = n - n_pre - n_vis
    cos, sin = rope_cos_sin(lm.inv_freq, torch.arange(n)[None])
    causal = additive_mask(causal_window(n, n, x.device), torch.ones(1, n, dtype=torch.bool))
    suffix_mask = (torch.arange(n_text) < ex.n_prompt).long()[None]
    positions = n_pre + torch.arange(n_vis)[None]
    log_keep, hard = torch.zeros(1, n_vis), torch.ones(1, n_vis, dtype=torch.bool)
    out = {"masks": [], "kept_hard": [], "thresholds": []}
    for i, layer in enumerate(lm.layers):
        bias = causal + F.pad(log_keep, (n_pre, n_text))[:, None, None]
        q, k, v, _ = llama_qkv(layer, lm.qkv[i], x, cos, sin)
        attn, _ = llama_attend(layer, q, k, v, bias, need_probs=True)  # explicit: SDPA's fallback is slower
        if heads and i in heads:
            view = SegmentView(n_pre, n_vis, suffix_mask, hard.long(), positions)
            k_all = repeat_kv(k, layer.self_attn.num_key_value_groups)
            s_self, s_cross, s_spatial, raster, valid = pruner.signals(q, k_all, bias, layer.self_attn.scaling, view)
            s_self, s_cross, s_red = redundant_score(s_self, s_cross, valid)
            theta = heads[i](to_raster(s_self, raster, valid, pruner.n_patches),
                             to_raster(s_cross, raster, valid, pruner.n_patches))
            log_m = log_soft_mask(s_red, s_spatial, theta, temperature)
            log_keep = log_keep + log_m
            hard = hard & ((s_red > theta[:, :1]) | (s_spatial > theta[:, 1:]))  # keep_order's rule: soft > 1/2
            out["masks"].append(log_keep.exp())
            out["kept_hard"].append(hard.sum(-1))
            out["thresholds"].append(theta)
        x = llama_finish(layer, x, attn)
    out["logits"] = lm.lm_head(lm.norm(x[:, n_pre + n_vis + ex.n_prompt - 1:]))
    return out


def objective(outs: list[dict], examples: list[Example], points, n_layers: int, target: float,
              lambda_atp: float, lambda_target: float) -> dict:
    """Eq. 14 over a batch, L_target on the batch's mean count (Eq. 13; the count averaged over all decoder
    layers, as the paper's tables count it): the terms and the total, plus the soft and hard kept counts."""
    ntp = torch.stack([F.cross_entropy(o["logits"][0], ex.labels) for o, ex in zip(outs, examples)]).mean()
    masks = [torch.cat([o["masks"][j] for o in outs]) for j in range(len(points))]
    l_atp = atp_loss(masks, [p + 1 for p in points], masks[0].shape[-1])
    l_target = target_loss(masks, target, points, n_layers)
    with torch.no_grad():
        soft = [m.sum(-1) for m in masks]
        hard = [torch.cat([o["kept_hard"][j] for o in outs]).float() for j in range(len(points))]
        counts = {"kept": [float(c.mean()) for c in soft], "kept_hard": [float(c.mean()) for c in hard]}
        for name, c in (("layer_mean", soft), ("layer_mean_hard", hard)):
            counts[name] = float(mean_layer_count(c, points, n_layers, masks[0].shape[-1]).mean())
        counts["thresholds"] = [torch.cat([o["thresholds"][j] for o in outs]).mean(0).tolist()
                                for j in range(len(points))]
    return {"loss": ntp + lambda_atp * l_atp + lambda_target * l_target, "ntp": ntp, "atp": l_atp,
            "target": l_target, **counts}


def evaluate_heads(ckpt, heads, examples, target=144, temperature=50.0, lambda_atp=0.05, lambda_target=0.2) -> dict:
    """The objective over all examples at once, without gradients: floats."""
    lm, points = language_model(ckpt), sorted(heads)
    pruner = AtpPruner(math.isqrt(heads[points[0]].n_patches))
    with torch.no_grad():
        outs = [masked_forward(lm, pruner, ex, heads, temperature) for ex in examples]
        res = objective(outs, examples, points, len(lm.layers), target, lambda_atp, lambda_target)
    return {k: (float(v) if torch.is_tensor(v) else v) for k, v in res.items()}


def describe(row: dict) -> str:
    """One line for a history row or an evaluate_heads result."""
    counts = lambda key: "/".join(f"{c:.0f}" for c in row[key])  # noqa: E731
    return (f"loss {row['loss']:.3f} (ntp {row['ntp']:.3f}, atp {row['atp']:.3f}, target {row['target']:.2f}); "
            f"kept per point soft {counts('kept')}, hard {counts('kept_hard')}; mean per layer soft "
            f"{row['layer_mean']:.1f}, hard {row['layer_mean_hard']:.1f}")


def check_settings(points: list[int], n_layers: int, n_patches: int, target: float, **positive) -> list[int]:
    if not points or points != sorted(set(points)) or points[0] < 0 or points[-1] >= n_layers - 1:
        raise ConfigError(f"--points must be increasing decoder layers in 0..{n_layers - 2} (a layer must follow "
                          f"the last one), got {','.join(map(str, points))}")
    floor = (points[0] + 1) * n_patches / n_layers  # layers up to the first point see every token
    if not floor < target <= n_patches:
        raise ConfigError(f"--keep {target}: the target is the mean visual token count over all {n_layers} decoder "
                          f"layers, which lies between {floor:g} (layers 0..{points[0]} always see all {n_patches}) "
                          f"and {n_patches}; pick a value in that range or prune earlier (--points)")
    bad = [f"{name}={value}" for name, value in positive.items() if not value > 0]
    if bad:
        raise ConfigError(f"these must be positive: {', '.join(bad)}")
    return points


def train_threshold_heads(ckpt, points=(3, 13, 23), target: float = 144, steps: int = 30, lr: float = 0.05,
                          temperature: float = 50.0, lambda_atp: float = 0.05, lambda_target: float = 0.2,
                          requests=None, progress=lambda msg: None, batch: int = 4, new_tokens: int = 4,
                          hidden: int = 64, seed: int = 0, examples=None):
    """Adam on the heads only (lr for the output biases, lr * WEIGHT_LR_RATIO for the weights, cosine decay);
    each step takes `batch` examples (cycling through a shuffled order).
    Returns ({point: ThresholdHeads}, history: per step {loss, ntp, atp, target, kept, kept_hard, seconds})."""
    grid, lm = grid_of(ckpt), language_model(ckpt)
    points = check_settings(list(points), len(lm.layers), grid * grid, target, steps=steps, batch=batch, lr=lr,
                            temperature=temperature, new_tokens=new_tokens)
    torch.manual_seed(seed)
    ckpt.llava.requires_grad_(False)
    pruner = AtpPruner(grid)
    if examples is None:
        requests = requests or atp_training_requests()
        progress(f"[train-atp] preparing {len(requests)} requests (image features; labels: the unpruned model's "
                 f"{new_tokens}-token greedy continuations)")
        examples = prepare_examples(ckpt, requests, new_tokens)
    heads = {p: new_heads(grid * grid, hidden) for p in points}
    biases = [w for h in heads.values() for w in (h.redundant.bias, h.spatial.bias)]
    weights = [w for h in heads.values() for w in h.parameters() if all(w is not b for b in biases)]
    opt = torch.optim.Adam([{"params": biases, "lr": lr}, {"params": weights, "lr": lr * WEIGHT_LR_RATIO}])
    # cosine decay: batches differ in their counts, so a constant rate keeps the heads chasing the last batch
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    history = []
    for step in range(steps):
        start = time.perf_counter()
        chosen = [examples[order[(step * batch + b) % len(order)]] for b in range(min(batch, len(order)))]
        outs = [masked_forward(lm, pruner, ex, heads, temperature) for ex in chosen]
        res = objective(outs, chosen, points, len(lm.layers), target, lambda_atp, lambda_target)
        opt.zero_grad()
        res["loss"].backward()
        opt.step()
        schedule.step()
        row = {k: (float(v.detach()) if torch.is_tensor(v) else v) for k, v in res.items()}
        row["seconds"] = time.perf_counter() - start
        history.append(row)
        progress(f"[train-atp] step {step + 1}/{steps} ({row['seconds']:.1f}s): {describe(row)}")
    for h in heads.values():
        h.eval().requires_grad_(False)
    return heads, history
