"""`cli.py train-atp`: the embedded or given checkpoint, the built-in requests, then ATP's threshold heads trained
(training.py), evaluated before and after, and saved with their settings (heads.py)."""
from dataclasses import dataclass
from pathlib import Path

import torch

from export.methods.atp.examples import grid_of, prepare_examples
from export.methods.atp.heads import new_heads, save_heads
from export.methods.atp.training import check_settings, evaluate_heads, train_threshold_heads
from export.models.checkpoint import load_checkpoint
from export.models.embedded import SPECS
from runtime.shipped import atp_training_requests


@dataclass(frozen=True)
class TrainAtpConfig:
    model: str
    out: Path
    points: tuple[int, ...] = (3, 13, 23)
    keep: float = 144  # target mean visual tokens per decoder layer (Eq. 13)
    steps: int = 30
    batch: int = 4
    lr: float = 0.05
    temperature: float = 50.0
    lambda_atp: float = 0.05
    lambda_target: float = 0.2
    new_tokens: int = 4  # length of the self-distillation labels
    threads: int | None = None  # torch threads; default 1 for the embedded models, whose small matmuls run fastest so


def train_atp(cfg: TrainAtpConfig, progress=lambda msg: None) -> dict:
    """Trains and saves the heads; returns {"examples", "before", "after", "seconds"} (evaluate_heads results)."""
    if cfg.threads or cfg.model in SPECS:
        torch.set_num_threads(cfg.threads or 1)
    ckpt = load_checkpoint(cfg.model, None, False)
    n_patches, points = grid_of(ckpt) ** 2, list(cfg.points)
    settings = dict(target=cfg.keep, temperature=cfg.temperature, lambda_atp=cfg.lambda_atp,
                    lambda_target=cfg.lambda_target)
    check_settings(points, ckpt.llava.config.text_config.num_hidden_layers, n_patches, cfg.keep, steps=cfg.steps,
                   batch=cfg.batch, lr=cfg.lr, temperature=cfg.temperature, new_tokens=cfg.new_tokens)
    requests = atp_training_requests()
    progress(f"[train-atp] preparing {len(requests)} requests (image features; labels: the unpruned model's "
             f"{cfg.new_tokens}-token greedy continuations)")
    examples = prepare_examples(ckpt, requests, cfg.new_tokens)
    before = evaluate_heads(ckpt, {p: new_heads(n_patches) for p in points}, examples, **settings)
    heads, history = train_threshold_heads(ckpt, points, steps=cfg.steps, lr=cfg.lr, batch=cfg.batch,
                                           examples=examples, progress=progress, **settings)
    after = evaluate_heads(ckpt, heads, examples, **settings)
    seconds = sum(r["seconds"] for r in history)
    save_heads(cfg.out, heads, {
        "model": cfg.model, "keep": cfg.keep, "keep_means": "visual tokens per decoder layer, all layers",
        "steps": cfg.steps, "batch": cfg.batch, "lr": cfg.lr, "temperature": cfg.temperature,
        "lambda_atp": cfg.lambda_atp, "lambda_target": cfg.lambda_target, "new_tokens": cfg.new_tokens,
        "train_seconds": f"{seconds:.1f}", "final_loss": f"{after['loss']:.4f}",
        "final_kept_hard": ",".join(f"{c:.1f}" for c in after["kept_hard"])})
    progress(f"wrote {cfg.out} ({len(heads)} heads, {seconds:.0f}s of training)")
    return {"examples": len(examples), "before": before, "after": after, "seconds": seconds}
