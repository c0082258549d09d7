"""FastV (ECCV 2024): after decoder layer K-1, keep the visual tokens the last prompt token attends to most.
Layers < K cache every token; layers >= K see and cache only the kept ones, at their original positions."""
from dataclasses import asdict, dataclass, field

from export.graphs import decode_graph, embed_graph, language_model, model_facts, prefill_graph, vision_graph
from export.llm_pruners import FastVPruner
from export.methods.plan import MethodPlan, segment_entry
from export.methods.registry import register
from runtime.errors import ConfigError


@dataclass(frozen=True)
class FastVConfig:
    layer: int = field(default=2, metadata={"help": "K: decoder layers >= K see only the kept visual tokens"})
    keep: int = field(default=288, metadata={"help": "visual tokens left after the last pruning point"})


@register("fastv", FastVConfig, needs_clip=False,
          summary="prune inside the decoder by the last prompt token's attention at layer K-1 (top-k)")
def build(ckpt, cfg: FastVConfig) -> MethodPlan:
    facts = model_facts(ckpt)
    n_layers, n_patches, k = facts["llm_layers"], facts["num_patches"], cfg.layer
    if not 1 <= k < n_layers:
        raise ConfigError(f"--layer must be in 1..{n_layers - 1} (the decoder has {n_layers} layers and FastV "
                          f"reads layer K-1's attention), got {k}")
    if not 1 <= cfg.keep <= n_patches:
        raise ConfigError(f"--keep must be in 1..{n_patches} (the image has {n_patches} patches), got {cfg.keep}")
    lm, stage = language_model(ckpt), f"llm.l{k - 1}"
    graphs = {"vision": vision_graph(ckpt, {}, group=1, with_cls=False), "embed": embed_graph(ckpt),
              "prefill.0": prefill_graph(lm, 0, k - 1, None, 1, pseudo_cls=False, head=False,
                                         pruner=FastVPruner(cfg.keep)),
              "prefill.1": prefill_graph(lm, k, n_layers - 1, None, 1, pseudo_cls=False, head=True),
              "decode": decode_graph(lm, [(0, k - 1), (k, n_layers - 1)])}
    pipeline = {"vision": "vision", "text_encoder": None, "embed": "embed", "decode": "decode",
                "segments": [segment_entry("prefill.0", 0, k - 1, stage, cfg.keep),
                             segment_entry("prefill.1", k, n_layers - 1, head=True)]}
    stages = [{"name": stage, "where": "llm", "layer": k - 1, "keep": cfg.keep}]
    return MethodPlan(graphs, pipeline, stages, asdict(cfg))
