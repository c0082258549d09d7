"""FastV (ECCV 2024): after decoder layer K-1, keep the visual tokens the last prompt token attends to most.
Layers < K cache every token; layers >= K see and cache only the kept ones, at their original positions."""
from dataclasses import dataclass, field

import torch

from export.graphs.parts import embed_graph, language_model, llm_graphs, segment, vision_graph
from export.methods.registry import Method, MethodPlan, Schedule, register
from export.models.facts import model_facts
from export.modules.pruning import LayerTap, LlmPruner, SegmentView, attention_rows
from export.modules.select import select_top_k
from runtime.errors import ConfigError
from runtime.manifest import Pipeline, Stage


@dataclass(frozen=True)
class FastVConfig:
    layer: int = field(default=2, metadata={"help": "K: decoder layers >= K see only the kept visual tokens"})
    keep: int = field(default=288, metadata={"help": "visual tokens left after the last pruning point"})


class FastVPruner(LlmPruner):
    """Attention of the last real prompt token over the visual tokens, heads averaged; top `keep`, ascending."""

    def __init__(self, keep: int):
        super().__init__()
        self.keep = keep

    def forward(self, q, k, bias, scale, view: SegmentView):
        """q, k [B, heads, N, D] post-RoPE (k repeated over KV groups) -> (kept [B, keep], None)."""
        last = view.n_pre + view.n_vis + view.suffix_mask.sum(-1) - 1  # [B] index of the last real token
        q_last = torch.gather(q, 2, last[:, None, None, None].expand(-1, q.shape[1], 1, q.shape[-1]))
        bias_last = torch.gather(bias, 2, last[:, None, None, None].expand(-1, 1, 1, bias.shape[-1]))
        row = attention_rows(q_last, k, bias_last, scale)[:, 0, view.visual]
        return select_top_k(row, self.keep), None

    def decide(self, taps: dict[int, LayerTap], view: SegmentView, inputs: list):
        (tap,) = taps.values()
        kept, _ = self(tap.q, tap.k_all, tap.bias, tap.scale, view)
        return {"kept": kept}


@register
class FastV(Method):
    name, title, config_type = "fastv", "FastV", FastVConfig
    summary = "prune inside the decoder by the last prompt token's attention at layer K-1 (top-k)"

    def schedule(self, cfg, dims):
        n_layers, n_patches, k = dims["llm_layers"], dims["num_patches"], cfg.layer
        if not 1 <= k < n_layers:
            raise ConfigError(f"--layer must be in 1..{n_layers - 1} (the decoder has {n_layers} layers and FastV "
                              f"reads layer K-1's attention), got {k}")
        if not 1 <= cfg.keep <= n_patches:
            raise ConfigError(f"--keep must be in 1..{n_patches} (the image has {n_patches} patches), got {cfg.keep}")
        return Schedule([Stage(f"llm.l{k - 1}", "llm", k - 1, cfg.keep)], n_patches)

    def build(self, ckpt, cfg) -> MethodPlan:
        dims = model_facts(ckpt)
        schedule = self.schedule(cfg, dims)
        lm, stage, k, last = language_model(ckpt), schedule.stages[0], cfg.layer, dims["llm_layers"] - 1
        pruner = FastVPruner(cfg.keep)
        graphs = {"vision": vision_graph(ckpt), "embed": embed_graph(ckpt),
                  **llm_graphs(lm, [(0, k - 1), (k, last)], {0: pruner})}
        pipeline = Pipeline("vision", "embed", [segment(0, 0, k - 1, pruner, stage=stage.name, keep=cfg.keep),
                                                segment(1, k, last)])
        return MethodPlan(graphs, pipeline, schedule)
