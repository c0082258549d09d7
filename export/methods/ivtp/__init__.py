"""IVTP (ECCV 2024): GTP in the ViT (vision.py), then instruction-guided GTP with a pseudo-CLS in the first W
decoder layers (llm.py); schedule.py fixes the keep count of every group."""
from export.graphs.graph import GraphDef
from export.graphs.parts import BATCH, embed_graph, language_model, llm_graphs, segment, text_encoder_graph
from export.methods.ivtp.llm import IvtpPruner
from export.methods.ivtp.schedule import IvtpConfig, resolve
from export.methods.ivtp.vision import PrunedVision
from export.methods.registry import Method, MethodPlan, Schedule, register
from export.models.facts import model_facts
from runtime import io_names as io
from runtime.manifest import Pipeline, Stage


def ivtp_vision_graph(ckpt, schedule: Schedule, group: int, fusion: str) -> GraphDef:
    vit = [s for s in schedule.stages if s.where == "vision"]
    m = ckpt.llava.model
    module = PrunedVision(m.vision_tower, m.multi_modal_projector, ckpt.clip.visual_projection,
                          model_facts(ckpt)["feature_layer"], {s.layer: (s.keep, s.name) for s in vit}, group, fusion)
    outputs = io.VISION_OUT + [io.kept_name(s.name) for s in vit] + io.VISION_CLS_OUT
    return GraphDef(module, io.VISION_IN, outputs, {"pixel_values": BATCH})


@register
class Ivtp(Method):
    name, title, config_type, needs_clip = "ivtp", "IVTP", IvtpConfig, True
    summary = "instruction-guided GTP: rollout pruning in the ViT, then pseudo-CLS pruning in the LLM"

    def schedule(self, cfg: IvtpConfig, dims) -> Schedule:
        vit, llm = resolve(cfg, dims["num_patches"], dims["feature_layer"], dims["llm_layers"])
        stages = [Stage(f"vit.l{layer}", "vision", layer, keep) for layer, keep in vit.items()]
        stages += [Stage(f"llm.l{top}", "llm", top, keep) for top, keep in llm.items()]
        return Schedule(stages, list(vit.values())[-1], [stages[len(vit) - 1].name], max(llm) + 1, cfg.use_text)

    def build(self, ckpt, cfg: IvtpConfig) -> MethodPlan:
        dims = model_facts(ckpt)
        schedule = self.schedule(cfg, dims)
        segments, spans, pruners, first = [], [], {}, 0
        for j, stage in enumerate(s for s in schedule.stages if s.where == "llm"):
            top = stage.layer
            pruners[j] = IvtpPruner(stage.keep, range(max(first, top - cfg.group + 1), top + 1), cfg.fusion)
            segments.append(segment(j, first, top, pruners[j], stage=stage.name, keep=stage.keep, pseudo_cls=True))
            spans.append((first, top))
            first = top + 1
        last = dims["llm_layers"] - 1  # resolve() left at least one layer after the last stage
        segments.append(segment(len(segments), first, last))
        spans.append((first, last))
        graphs = {"vision": ivtp_vision_graph(ckpt, schedule, cfg.group, cfg.fusion), "embed": embed_graph(ckpt),
                  **llm_graphs(language_model(ckpt), spans, pruners, pseudo_cls=True)}
        if cfg.use_text:
            graphs["text_encoder"] = text_encoder_graph(ckpt)
        pipeline = Pipeline("vision", "embed", segments, "text_encoder" if cfg.use_text else None, cfg.tau,
                            schedule.visual_ids)
        return MethodPlan(graphs, pipeline, schedule)
