"""Graph definitions shared by methods: which module, which I/O names, which symbolic dims."""
import inspect
from dataclasses import dataclass, field

import torch
from torch import nn

from export.checkpoint import Checkpoint
from export.decoder import DecodeStep, LanguageModelParts, PrefillSegment
from export.text_encoder import TokenEmbeddings
from export.vision import PrunedVision
from runtime import io_names as io

BATCH = {0: "batch"}


class Int32Boundary(nn.Module):
    """Integer inputs come in as int32 and integer outputs leave as int32 (ids, positions, masks, kept indices
    and counts all fit), so TensorRT casts nothing per call; inside, torch's indexing wants int64."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, *args):
        out = self.inner(*(_widen(a) for a in args))
        if isinstance(out, torch.Tensor):
            return _narrow(out)
        return {k: _narrow(v) for k, v in out.items()}


def int32_boundary(inner: nn.Module) -> Int32Boundary:
    """Int32Boundary around `inner`, whose forward shows inner's signature: torch.export matches dynamic shapes
    and input names to parameters by that signature."""
    signature = inspect.signature(inner.forward)
    self_param = inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)

    def forward(self, *args):
        return Int32Boundary.forward(self, *args)
    forward.__signature__ = signature.replace(parameters=[self_param, *signature.parameters.values()])
    return type(f"Int32{type(inner).__name__}", (Int32Boundary,), {"forward": forward})(inner)


def _widen(x):
    if isinstance(x, list):
        return [_widen(t) for t in x]
    return x.long() if isinstance(x, torch.Tensor) and x.dtype == torch.int32 else x


def _narrow(x: torch.Tensor) -> torch.Tensor:
    return x.int() if x.dtype == torch.int64 else x


@dataclass
class GraphDef:
    module: nn.Module
    input_names: list[str]
    output_names: list[str]
    dims: dict[str, dict[int, str]]
    nested: list = field(default_factory=list)  # input structure where the module takes lists

    def __post_init__(self):
        if not isinstance(self.module, Int32Boundary):
            self.module = int32_boundary(self.module)


class Embed(nn.Module):
    def __init__(self, table: nn.Embedding):
        super().__init__()
        self.table = table

    def forward(self, input_ids):
        return self.table(input_ids)


def model_facts(ckpt: Checkpoint) -> dict:
    """Dimensions the runtime and the FLOPs counter need, read from the checkpoint's configs."""
    cfg = ckpt.llava.config
    tc, vc = cfg.text_config, cfg.vision_config
    head_dim = getattr(tc, "head_dim", None) or tc.hidden_size // tc.num_attention_heads
    return {
        "llm_hidden": tc.hidden_size, "llm_layers": tc.num_hidden_layers, "llm_heads": tc.num_attention_heads,
        "kv_heads": tc.num_key_value_heads, "head_dim": head_dim, "vocab_size": tc.vocab_size,
        "max_positions": tc.max_position_embeddings, "llm_intermediate": tc.intermediate_size,
        "image_token_id": cfg.image_token_id, "image_size": vc.image_size, "patch_size": vc.patch_size,
        "num_patches": (vc.image_size // vc.patch_size) ** 2, "vit_hidden": vc.hidden_size,
        "vit_layers": vc.num_hidden_layers, "vit_intermediate": vc.intermediate_size,
        "feature_layer": vision_feature_layer(ckpt),
    }


def vision_feature_layer(ckpt: Checkpoint) -> int:
    """Encoder layer index whose output LLaVA feeds the LLM (vision_feature_layer=-2 -> index 22 of 24)."""
    cfg = ckpt.llava.config
    if cfg.vision_feature_select_strategy != "default" or not isinstance(cfg.vision_feature_layer, int):
        raise NotImplementedError("only LLaVA-1.5's single feature layer with the CLS dropped is supported")
    n = cfg.vision_config.num_hidden_layers
    return cfg.vision_feature_layer % (n + 1) - 1  # hidden_states[k] is the output of layer k-1


def vision_graph(ckpt: Checkpoint, prune_after: dict[int, tuple[int, str]], group: int, with_cls: bool,
                 fusion: str = "rollout") -> GraphDef:
    m = ckpt.llava.model
    projection = ckpt.clip.visual_projection if with_cls else None
    module = PrunedVision(m.vision_tower, m.multi_modal_projector, projection, vision_feature_layer(ckpt),
                          prune_after, group, fusion)
    stages = [stage for _, (_, stage) in sorted(prune_after.items())]
    outputs = io.VISION_OUT + [io.kept_name(s) for s in stages] + (io.VISION_CLS_OUT if with_cls else [])
    return GraphDef(module, io.VISION_IN, outputs, {"pixel_values": BATCH})


def text_encoder_graph(ckpt: Checkpoint) -> GraphDef:
    module = TokenEmbeddings(ckpt.clip.text_model, ckpt.clip.text_projection)
    return GraphDef(module, io.TEXT_IN, io.TEXT_OUT, {"input_ids": {0: "batch", 1: "clip_tokens"}})


def embed_graph(ckpt: Checkpoint) -> GraphDef:
    table = ckpt.llava.model.language_model.embed_tokens
    return GraphDef(Embed(table), io.EMBED_IN, io.EMBED_OUT, {"input_ids": {0: "batch", 1: "seq"}})


def language_model(ckpt: Checkpoint) -> LanguageModelParts:
    return LanguageModelParts(ckpt.llava.model.language_model, ckpt.llava.lm_head)


def prefill_graph(lm: LanguageModelParts, first: int, last: int, keep: int | None, group: int,
                  pseudo_cls: bool, head: bool, pruner: nn.Module | None = None, visual_mask: bool = False,
                  thresholds: bool = False, fusion: str = "rollout") -> GraphDef:
    """A prefill segment graph. Optional inputs keep their place in the module's signature (None where absent)."""
    module = PrefillSegment(lm, first, last, keep, group, head, pruner, fusion)
    optional = [(io.PSEUDO_CLS_IN, pseudo_cls), (io.VISUAL_MASK_IN, visual_mask), (io.THRESHOLDS_IN, thresholds)]
    structure = io.PREFILL_IN + [name if used else None for names, used in optional for name in names]
    while structure[-1] is None:
        structure.pop()
    inputs = [n for n in structure if n is not None]
    prunes = keep is not None or pruner is not None
    outputs = (io.KEPT_OUT if prunes else []) + (io.KEPT_COUNT_OUT if getattr(pruner, "variable_count", False) else [])
    outputs += io.LOGITS_OUT if head else io.HIDDEN_OUT
    outputs += io.PSEUDO_CLS_OUT if pseudo_cls and not head else []
    outputs += io.kv_names("present", range(first, last + 1))
    dims = {"prefix_embeds": {0: "batch", 1: "prefix"}, "visual_embeds": {0: "batch", 1: "visual_tokens"},
            "suffix_embeds": {0: "batch", 1: "suffix"}, "visual_positions": {0: "batch", 1: "visual_tokens"},
            "suffix_positions": {0: "batch", 1: "suffix"}, "suffix_mask": {0: "batch", 1: "suffix"},
            "pseudo_cls": BATCH, "pseudo_cls_position": BATCH, "visual_mask": {0: "batch", 1: "visual_tokens"},
            "thresholds": BATCH}
    return GraphDef(module, inputs, outputs, {k: v for k, v in dims.items() if k in inputs},
                    nested=structure if structure != inputs else [])


def decode_graph(lm: LanguageModelParts, segments: list[tuple[int, int]]) -> GraphDef:
    """One graph for every layer; each segment's cache has its own length dim `past_seq.<s>`."""
    segment_of_layer = [s for s, (first, last) in enumerate(segments) for _ in range(first, last + 1)]
    masks = [io.past_mask(s) for s in range(len(segments))]
    past = io.kv_names("past_key_values", range(len(segment_of_layer)))
    dims = {"inputs_embeds": {0: "batch", 1: "seq"}, "position_ids": {0: "batch", 1: "seq"}}
    dims.update({m: {0: "batch", 1: f"past_seq.{s}"} for s, m in enumerate(masks)})
    dims.update({n: {0: "batch", 2: f"past_seq.{segment_of_layer[int(n.split('.')[1])]}"} for n in past})
    outputs = io.LOGITS_OUT + io.kv_names("present", range(len(segment_of_layer)))
    return GraphDef(DecodeStep(lm, segment_of_layer), io.DECODE_IN + masks + past, outputs, dims,
                    nested=io.DECODE_IN + [masks, past])
