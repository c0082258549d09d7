"""What a method hands the exporter: its graphs, the pipeline the runtime follows, and its stages."""
from dataclasses import dataclass

from export.graphs import GraphDef


@dataclass
class MethodPlan:
    graphs: dict[str, GraphDef]
    pipeline: dict  # manifest["pipeline"]: which graph plays which part, segment by segment
    stages: list[dict]  # [{"name", "where", "layer", "keep"}], vision stages first
    config: dict


def segment_entry(graph: str, first: int, last: int, stage: str | None = None, keep: int | None = None,
                  pseudo_cls: bool = False, head: bool = False) -> dict:
    return {"graph": graph, "layers": [first, last], "stage": stage, "keep": keep,
            "pseudo_cls": pseudo_cls, "head": head}
