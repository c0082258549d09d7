"""The LLaVA parts every method shares, as graphs: vision (unpruned, or with a selector after the feature layer),
CLIP's text tower, the token embedding, a prefill segment and the decode step."""
from torch import nn

from engines.kv_names import kv_names
from export.graphs.graph import GraphDef
from export.models.checkpoint import Checkpoint
from export.models.facts import vision_feature_layer
from export.modules.decoder import DecodeStep, Embed, LanguageModelParts, PrefillSegment
from export.modules.pruning import LlmPruner
from export.modules.text_encoder import TokenEmbeddings
from export.modules.vision import FeatureVision
from runtime import io_names as io

BATCH = {0: "batch"}


def vision_graph(ckpt: Checkpoint, selector: nn.Module | None = None, stages: list[str] = ()) -> GraphDef:
    """CLIP up to the feature layer, then `selector` (None: every patch), then the projector. The selector
    returns kept.<stage> for each of `stages`, in order."""
    m = ckpt.llava.model
    module = FeatureVision(m.vision_tower, m.multi_modal_projector, vision_feature_layer(ckpt), selector)
    return GraphDef(module, io.VISION_IN, io.VISION_OUT + [io.kept_name(s) for s in stages], {"pixel_values": BATCH})


def text_encoder_graph(ckpt: Checkpoint) -> GraphDef:
    module = TokenEmbeddings(ckpt.clip.text_model, ckpt.clip.text_projection)
    return GraphDef(module, io.TEXT_IN, io.TEXT_OUT, {"input_ids": {0: "batch", 1: "clip_tokens"}})


def embed_graph(ckpt: Checkpoint) -> GraphDef:
    table = ckpt.llava.model.language_model.embed_tokens
    return GraphDef(Embed(table), io.EMBED_IN, io.EMBED_OUT, {"input_ids": {0: "batch", 1: "seq"}})


def language_model(ckpt: Checkpoint) -> LanguageModelParts:
    return LanguageModelParts(ckpt.llava.model.language_model, ckpt.llava.lm_head)


def prefill_graph(lm: LanguageModelParts, first: int, last: int, head: bool = False, pruner: LlmPruner | None = None,
                  visual_mask: bool = False) -> GraphDef:
    """A prefill segment over decoder layers [first, last]. The pruner's own inputs come last, as one list; an
    input the graph does not take keeps its place in the module's signature as None."""
    extra = list(pruner.input_names) if pruner is not None else []
    structure = io.PREFILL_IN + (io.VISUAL_MASK_IN if visual_mask else [None]) + ([extra] if extra else [])
    while structure[-1] is None:
        structure.pop()
    inputs = io.PREFILL_IN + (io.VISUAL_MASK_IN if visual_mask else []) + extra
    outputs = list(pruner.kept_names) if pruner is not None else []
    outputs += io.LOGITS_OUT if head else io.HIDDEN_OUT + (list(pruner.carry_names) if pruner is not None else [])
    outputs += kv_names("present", range(first, last + 1))
    dims = {"prefix_embeds": {0: "batch", 1: "prefix"}, "visual_embeds": {0: "batch", 1: "visual_tokens"},
            "suffix_embeds": {0: "batch", 1: "suffix"}, "visual_positions": {0: "batch", 1: "visual_tokens"},
            "suffix_positions": {0: "batch", 1: "suffix"}, "suffix_mask": {0: "batch", 1: "suffix"},
            "visual_mask": {0: "batch", 1: "visual_tokens"}, **{name: BATCH for name in extra}}
    return GraphDef(PrefillSegment(lm, first, last, head, pruner), inputs, outputs,
                    {k: v for k, v in dims.items() if k in inputs}, nested=structure if structure != inputs else [])


def decode_graph(lm: LanguageModelParts, segments: list[tuple[int, int]]) -> GraphDef:
    """One graph for every layer; each segment's cache has its own length dim `past_seq.<s>`."""
    segment_of_layer = [s for s, (first, last) in enumerate(segments) for _ in range(first, last + 1)]
    masks = [io.past_mask(s) for s in range(len(segments))]
    past = kv_names("past_key_values", range(len(segment_of_layer)))
    dims = {"inputs_embeds": {0: "batch", 1: "seq"}, "position_ids": {0: "batch", 1: "seq"}}
    dims.update({m: {0: "batch", 1: f"past_seq.{s}"} for s, m in enumerate(masks)})
    dims.update({n: {0: "batch", 2: f"past_seq.{segment_of_layer[int(n.split('.')[1])]}"} for n in past})
    outputs = io.LOGITS_OUT + kv_names("present", range(len(segment_of_layer)))
    return GraphDef(DecodeStep(lm, segment_of_layer), io.DECODE_IN + masks + past, outputs, dims,
                    nested=io.DECODE_IN + [masks, past])
