"""What a method hands the exporter: its graphs, the pipeline the runtime follows, and its stages."""
from dataclasses import dataclass
from typing import Callable

from export.graphs import GraphDef


@dataclass
class MethodPlan:
    graphs: dict[str, GraphDef]
    pipeline: dict  # manifest["pipeline"]: which graph plays which part, segment by segment
    stages: list[dict]  # [{"name", "where", "layer", "keep"}], vision stages first
    config: dict
    vision_tokens: int | None = None  # tokens the vision graph hands the LLM; None: the last vision stage's keep
    calibrate: Callable | None = None  # (generator of torch runners, progress) -> None: fills pipeline constants


def segment_entry(graph: str, first: int, last: int, stage: str | None = None, keep: int | None = None,
                  pseudo_cls: bool = False, head: bool = False, visual_mask: bool = False,
                  thresholds: list[float] | None = None) -> dict:
    """One prefill segment for the runtime. visual_mask: the graph takes the padding mask of the visual block;
    thresholds: ATP's constant (theta_r, theta_s), fed as an input so calibration can change them in place."""
    return {"graph": graph, "layers": [first, last], "stage": stage, "keep": keep, "pseudo_cls": pseudo_cls,
            "head": head, "visual_mask": visual_mask, "thresholds": thresholds}
