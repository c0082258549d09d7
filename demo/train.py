"""Trains the demo model from scratch on the CPU, deterministically, and saves it in the Hugging Face layout:

    python -m demo.train --out DIR [--seed 0] [--threads 2]

LLaVA-1.5's recipe at toy scale: (1) CLIP, contrastive on captions of the scenes, with per-patch and per-token
auxiliary losses (demo/train_clip.py); (2) the projector and decoder on captions; (3) instruction tuning on
conversations (demo/train_llm.py). The ViT is frozen after stage 1, as LLaVA's is. DIR/llava and DIR/clip load with
the same code as llava-hf/llava-1.5-7b-hf and openai/clip-vit-large-patch14-336; DIR/training.json holds the
settings and the curves."""
from __future__ import annotations

import argparse
import dataclasses
import json
import resource
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from demo.pool import make_pool
from demo.text import phrasings
from demo.train_clip import train_clip
from demo.train_llm import HeldOut, LlmTrainer, vision_features
from export.models.embedded import EmbeddedModelSpec, clip_config, llava_config, save_checkpoint
from export.models.tokenizer_training import load_corpus, train_clip_tokenizer, train_llama_tokenizer
from runtime.engine_dir import staged_engine_dir

# A 6-layer ViT 64 wide at LLaVA's 336 px / 14 px geometry (576 patches + CLS, features from layer 4 = hidden_states
# [-2]), a 4-layer CLIP text tower, and a 6-layer LLaMA 128 wide: small enough to train in about an hour on 2 cores,
# deep enough for every method (FastV's layer 2, IVTP's groups of 3, ATP's points).
DEMO_SPEC = EmbeddedModelSpec(name="demo", vit_hidden=64, vit_heads=2, vit_intermediate=256, vit_layers=6,
                              text_hidden=64, text_heads=2, text_intermediate=256, text_layers=4, projection_dim=64,
                              llm_hidden=128, llm_heads=4, llm_intermediate=344, llm_layers=6,
                              max_position_embeddings=2048)


@dataclass(frozen=True)
class TrainConfig:
    out: Path
    seed: int = 0
    threads: int = 2
    pool: int = 10000  # training images, rendered once
    clip_steps: int = 400
    clip_batch: int = 32
    clip_lr: float = 2e-3
    caption_steps: int = 200
    instruct_steps: int = 900
    llm_batch: int = 8
    llm_lr: float = 1e-3
    held_out: int = 256  # questions scored during training (a seed of their own)
    clip_from: str = ""  # a finished run's dir: take its CLIP (stage 1) instead of training one


def train(cfg: TrainConfig, log=lambda m: print(m, file=sys.stderr, flush=True)) -> dict:
    from transformers import CLIPModel, LlavaForConditionalGeneration
    start = time.perf_counter()
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    lines = load_corpus() + phrasings()
    llama_tok, clip_tok = train_llama_tokenizer(lines), train_clip_tokenizer(lines)
    llava = LlavaForConditionalGeneration(llava_config(DEMO_SPEC, llama_tok))
    clip = CLIPModel(clip_config(DEMO_SPEC, clip_tok))
    with staged_engine_dir(cfg.out, force=True) as tmp:
        tok_file = tmp / "llama-tokenizer.json"
        llama_tok.save(str(tok_file))
        pool = make_pool(cfg.seed, cfg.pool, 1, 6, lambda d, n: log(f"[pool] rendered {d}/{n}"))
        if cfg.clip_from:  # stage 1 as a finished run left it (fp16 on disk), to iterate on stages 2-3
            clip = CLIPModel.from_pretrained(Path(cfg.clip_from) / "clip", dtype=torch.float32)
            curves = {"clip": json.loads((Path(cfg.clip_from) / "training.json").read_text())["curves"]["clip"]}
            log(f"[clip] taken from {cfg.clip_from}")
        else:
            curves = {"clip": train_clip(clip, pool, clip_tok, cfg.clip_steps, cfg.clip_batch, cfg.clip_lr, cfg.seed,
                                         log)}
        llava.model.vision_tower.load_state_dict(clip.vision_model.state_dict())
        llava.model.vision_tower.requires_grad_(False)
        features = vision_features(llava.model.vision_tower, pool, log=log)
        trainer = LlmTrainer(llava, tok_file, features, pool, cfg.seed)
        held_out = HeldOut(trainer, llava.model.vision_tower, cfg.seed + 1000, cfg.held_out)
        curves["caption"] = trainer.train(cfg.caption_steps, cfg.llm_batch, cfg.llm_lr, lambda s: (6, 1.0), held_out,
                                          log, "caption")
        ramp = cfg.instruct_steps // 3
        curves["instruct"] = trainer.train(
            cfg.instruct_steps, cfg.llm_batch, cfg.llm_lr,
            lambda s: (min(6, 2 + 4 * s // max(1, ramp)), 0.15), held_out, log, "instruct")
        tok_file.unlink()
        clip.vision_model.load_state_dict(llava.model.vision_tower.state_dict())
        save_checkpoint(llava.half(), clip.half(), llama_tok, clip_tok, DEMO_SPEC, tmp)
        summary = {"config": {k: str(v) if isinstance(v, Path) else v for k, v in dataclasses.asdict(cfg).items()},
                   "spec": dataclasses.asdict(DEMO_SPEC), "curves": curves,
                   "minutes": round((time.perf_counter() - start) / 60, 2),
                   "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
                   "torch": torch.__version__}
        (tmp / "training.json").write_text(json.dumps(summary, indent=1))
    log(f"[train] done in {summary['minutes']} min, peak RSS {summary['peak_rss_gib']} GiB: {cfg.out}")
    return summary


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m demo.train", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True, help="checkpoint dir to write (llava/, clip/, training.json)")
    for f in dataclasses.fields(TrainConfig):
        if f.name != "out":
            p.add_argument(f"--{f.name.replace('_', '-')}", type=type(f.default), default=f.default,
                           help=f"default {f.default}")
    args = p.parse_args(argv)
    train(TrainConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
