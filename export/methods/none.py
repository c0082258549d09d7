"""No pruning: the same split as every method (vision, embed, one decoder segment, LM head), the baseline."""
from dataclasses import dataclass

from export.graphs.parts import embed_graph, language_model, llm_graphs, vision_graph
from export.methods.registry import Method, MethodPlan, Schedule, register
from export.models.facts import model_facts
from runtime.manifest import Pipeline, Segment


@dataclass(frozen=True)
class NoneConfig:
    pass


def unpruned_plan(ckpt, schedule: Schedule) -> MethodPlan:
    """Vision, embed, one decoder segment over every decoder layer, the LM head."""
    last = model_facts(ckpt)["llm_layers"] - 1
    graphs = {"vision": vision_graph(ckpt), "embed": embed_graph(ckpt), **llm_graphs(language_model(ckpt), [(0, last)], {})}
    pipeline = Pipeline("vision", "embed", [Segment("decoder.0", [0, last])], visual_ids=schedule.visual_ids)
    return MethodPlan(graphs, pipeline, schedule)


@register
class Unpruned(Method):
    name, title, config_type = "none", "none", NoneConfig
    summary = "unpruned baseline: all 576 visual tokens"

    def schedule(self, cfg, dims):
        return Schedule([], dims["num_patches"])

    def build(self, ckpt, cfg):
        return unpruned_plan(ckpt, self.schedule(cfg, model_facts(ckpt)))
