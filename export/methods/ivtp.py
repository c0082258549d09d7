"""IVTP (ECCV 2024): GTP in the ViT, then instruction-guided GTP with a pseudo-CLS in the first W layers."""
from dataclasses import asdict

from export.graphs import (decode_graph, embed_graph, language_model, model_facts, prefill_graph,
                           text_encoder_graph, vision_graph)
from export.methods.ivtp_schedule import IvtpConfig, resolve
from export.methods.plan import MethodPlan, segment_entry
from export.methods.registry import register


@register("ivtp", IvtpConfig, needs_clip=True,
          summary="instruction-guided GTP: rollout pruning in the ViT, then pseudo-CLS pruning in the LLM")
def build(ckpt, cfg: IvtpConfig) -> MethodPlan:
    facts = model_facts(ckpt)
    vit, llm = resolve(cfg, facts["num_patches"], facts["feature_layer"], facts["llm_layers"])
    vit_points = {layer: (keep, f"vit.l{layer}") for layer, keep in vit.items()}
    stages = [{"name": name, "where": "vision", "layer": layer, "keep": keep} for layer, (keep, name) in vit_points.items()]
    lm, graphs, segments, spans, first = language_model(ckpt), {}, [], [], 0
    for j, (top, keep) in enumerate(llm.items()):
        name, stage = f"prefill.{j}", f"llm.l{top}"
        graphs[name] = prefill_graph(lm, first, top, keep, cfg.group, pseudo_cls=True, head=False,
                                     fusion=cfg.fusion)
        segments.append(segment_entry(name, first, top, stage, keep, pseudo_cls=True))
        stages.append({"name": stage, "where": "llm", "layer": top, "keep": keep})
        spans.append((first, top))
        first = top + 1
    last, name = facts["llm_layers"] - 1, f"prefill.{len(segments)}"  # resolve() left at least one layer here
    graphs[name] = prefill_graph(lm, first, last, None, cfg.group, pseudo_cls=False, head=True)
    segments.append(segment_entry(name, first, last, head=True))
    spans.append((first, last))
    graphs.update({"vision": vision_graph(ckpt, vit_points, cfg.group, with_cls=True, fusion=cfg.fusion), "embed": embed_graph(ckpt),
                   "decode": decode_graph(lm, spans)})
    if cfg.use_text:
        graphs["text_encoder"] = text_encoder_graph(ckpt)
    pipeline = {"vision": "vision", "text_encoder": "text_encoder" if cfg.use_text else None, "embed": "embed",
                "decode": "decode", "segments": segments, "tau": cfg.tau}
    return MethodPlan(graphs, pipeline, stages, asdict(cfg))
