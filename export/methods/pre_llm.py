"""Shared by methods that prune before the LLM: the decoder stays exactly as `none` builds it, only the vision
graph differs; plus the keep-count check every such method needs."""
from export.graphs.parts import vision_graph
from export.methods.none import unpruned_plan
from export.methods.registry import MethodPlan, Schedule
from runtime.errors import ConfigError
from runtime.manifest import Stage


def check_count(flag: str, value, low: int, high: int, why: str = ""):
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise ConfigError(f"{flag} must be an integer in {low}..{high}{why}, got {value!r}")


def check_keep(keep, dims: dict):
    """--keep of a method that keeps patches: 1 up to the image's patch count."""
    n = dims["num_patches"]
    check_count("--keep", keep, 1, n, f" (the image has {n} patches)")


def feature_layer_schedule(dims: dict, stages: list[tuple[str, int]], vision_tokens: int,
                           visual_ids: list[str] | None) -> Schedule:
    """Stages (name, keep) that all select at LLaVA's feature layer."""
    return Schedule([Stage(s, "vision", dims["feature_layer"], keep) for s, keep in stages], vision_tokens, visual_ids)


def selector_plan(ckpt, selector, schedule: Schedule) -> MethodPlan:
    """CLIP up to the feature layer, then `selector` picks or merges the tokens; the rest as `none` builds it."""
    plan = unpruned_plan(ckpt, schedule)
    plan.graphs["vision"] = vision_graph(ckpt, selector, [s.name for s in schedule.stages])
    return plan
