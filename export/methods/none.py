"""No pruning: the same split as every method (vision, embed, one prefill segment, decode), the baseline."""
from dataclasses import asdict, dataclass

from export.graphs import decode_graph, embed_graph, language_model, model_facts, prefill_graph, vision_graph
from export.methods.plan import MethodPlan, segment_entry
from export.methods.registry import register


@dataclass(frozen=True)
class NoneConfig:
    pass


@register("none", NoneConfig, needs_clip=False, summary="unpruned baseline: all 576 visual tokens")
def build(ckpt, config: NoneConfig) -> MethodPlan:
    last = model_facts(ckpt)["llm_layers"] - 1
    lm = language_model(ckpt)
    graphs = {"vision": vision_graph(ckpt, {}, group=1, with_cls=False), "embed": embed_graph(ckpt),
              "prefill.0": prefill_graph(lm, 0, last, None, 1, pseudo_cls=False, head=True),
              "decode": decode_graph(lm, [(0, last)])}
    pipeline = {"vision": "vision", "text_encoder": None, "embed": "embed", "decode": "decode",
                "segments": [segment_entry("prefill.0", 0, last, head=True)]}
    return MethodPlan(graphs, pipeline, [], asdict(config))
