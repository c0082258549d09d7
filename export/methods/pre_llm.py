"""Shared by methods that prune before the LLM: the decoder stays exactly as `none` builds it, only the vision
graph differs; plus the keep-count check every such method needs."""
from dataclasses import asdict

from export.feature_vision import FeatureVision
from export.graphs import BATCH, GraphDef, vision_feature_layer
from export.methods.none import NoneConfig, build as build_none
from export.methods.plan import MethodPlan
from runtime import io_names as io
from runtime.errors import ConfigError


def check_count(flag: str, value, low: int, high: int, why: str = ""):
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise ConfigError(f"{flag} must be an integer in {low}..{high}{why}, got {value!r}")


def pre_llm_plan(ckpt, module, stages: list[tuple[str, int]], config, vision_tokens: int) -> MethodPlan:
    """`module` returns image_features then kept.<stage> for each (stage, keep) in `stages`, in order."""
    outputs = io.VISION_OUT + [io.kept_name(s) for s, _ in stages]
    plan = build_none(ckpt, NoneConfig())
    plan.graphs["vision"] = GraphDef(module, io.VISION_IN, outputs, {"pixel_values": BATCH})
    layer = vision_feature_layer(ckpt)
    plan.stages = [{"name": s, "where": "vision", "layer": layer, "keep": keep} for s, keep in stages]
    plan.config, plan.vision_tokens = asdict(config), vision_tokens
    return plan


def selector_plan(ckpt, selector, stages: list[tuple[str, int]], config, vision_tokens: int) -> MethodPlan:
    """The common case: CLIP up to the feature layer, then `selector` picks or merges the tokens."""
    m = ckpt.llava.model
    module = FeatureVision(m.vision_tower, m.multi_modal_projector, vision_feature_layer(ckpt), selector)
    return pre_llm_plan(ckpt, module, stages, config, vision_tokens)
