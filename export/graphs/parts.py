"""The LLaVA parts every method shares, as graphs: vision (unpruned, or with a selector after the feature layer),
CLIP's text tower, the token embedding, and the LLM's segments and head (export/modules/decoder.py)."""
from torch import nn

from engines.kv_names import PAST_PREFIX, kv_names
from export.graphs.graph import GraphDef
from export.models.checkpoint import Checkpoint
from export.models.facts import vision_feature_layer
from export.modules.decoder import DecoderLayers, Embed, LanguageModelParts, LogitsHead, PrefillSegment
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


def _kv_dims(names: list[str], capacity: str) -> dict:
    return {n: {0: "batch", 2: capacity} for n in names}


def prefill_graph(lm: LanguageModelParts, segment: int, first: int, last: int, pruner: LlmPruner,
                  visual_mask: bool = False) -> GraphDef:
    """The prefill of a segment that prunes, over decoder layers [first, last], writing its caches into the
    segment's buffers. The pruner's own inputs come last, as one list; an input the graph does not take keeps its
    place in the module's signature as None."""
    extra, past = list(pruner.input_names), kv_names(PAST_PREFIX.rstrip("."), range(first, last + 1))
    structure = io.PREFILL_IN + [past] + (io.VISUAL_MASK_IN if visual_mask else [None]) + ([extra] if extra else [])
    while structure[-1] is None:
        structure.pop()
    inputs = io.PREFILL_IN + past + (io.VISUAL_MASK_IN if visual_mask else []) + extra
    outputs = list(pruner.kept_names) + io.HIDDEN_OUT + list(pruner.carry_names) + kv_names("present", range(first, last + 1))
    dims = {"prefix_embeds": {0: "batch", 1: "prefix"}, "visual_embeds": {0: "batch", 1: "visual_tokens"},
            "suffix_embeds": {0: "batch", 1: "suffix"}, "visual_positions": {0: "batch", 1: "visual_tokens"},
            "suffix_positions": {0: "batch", 1: "suffix"}, "suffix_mask": {0: "batch", 1: "suffix"},
            "visual_mask": {0: "batch", 1: "visual_tokens"}, **{name: BATCH for name in extra},
            **_kv_dims(past, io.capacity(segment))}
    return GraphDef(PrefillSegment(lm, first, last, pruner), inputs, outputs,
                    {k: v for k, v in dims.items() if k in inputs}, nested=structure)


def decoder_graph(lm: LanguageModelParts, segment: int, first: int, last: int) -> GraphDef:
    """Decoder layers [first, last] for `seq` new tokens against the segment's buffers of `capacity.<segment>`
    slots: the prefill of a segment that does not prune, and every segment's decode step."""
    past = kv_names(PAST_PREFIX.rstrip("."), range(first, last + 1))
    capacity = io.capacity(segment)
    dims = {"hidden_in": {0: "batch", 1: "seq"}, "position_ids": {0: "batch", 1: "seq"},
            "attention_mask": {0: "batch", 1: "seq", 2: capacity}, "write_index": BATCH, **_kv_dims(past, capacity)}
    return GraphDef(DecoderLayers(lm, first, last), io.DECODER_IN + past,
                    io.DECODER_OUT + kv_names("present", range(first, last + 1)), dims, nested=io.DECODER_IN + [past])


def lm_head_graph(lm: LanguageModelParts) -> GraphDef:
    return GraphDef(LogitsHead(lm), io.LM_HEAD_IN, io.LOGITS_OUT, {io.LM_HEAD_IN[0]: BATCH})


def llm_graphs(lm: LanguageModelParts, spans: list[tuple[int, int]], pruners: dict[int, LlmPruner],
               visual_mask: bool = False) -> dict[str, GraphDef]:
    """The LLM's graphs for segments over layer `spans`: decoder.<s> for each, prefill.<s> for those with a
    pruner (by segment index), and the LM head."""
    graphs = {}
    for s, (first, last) in enumerate(spans):
        if s in pruners:
            graphs[io.prefill_graph(s)] = prefill_graph(lm, s, first, last, pruners[s], visual_mask)
        graphs[io.decoder_graph(s)] = decoder_graph(lm, s, first, last)
    graphs[io.LM_HEAD] = lm_head_graph(lm)
    return graphs
