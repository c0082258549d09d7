"""The LLaVA parts every method shares, as graphs: vision (unpruned, or with a selector after the feature layer),
CLIP's text tower, the token embedding, and the LLM's segments, prune graphs and head (export/modules/decoder.py,
export/modules/pruning.py)."""
from torch import nn

from engines.kv_names import PAST, PRESENT, kv_names
from export.graphs.graph import GraphDef
from export.models.checkpoint import Checkpoint
from export.models.facts import vision_feature_layer
from export.modules.decoder import DecoderLayers, Embed, LanguageModelParts, LogitsHead
from export.modules.pruning import LlmPruner, PruneSegment, tap_layers
from export.modules.text_encoder import TokenEmbeddings
from export.modules.vision import FeatureVision
from runtime import io_names as io
from runtime.manifest import Segment

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


def decoder_graph(lm: LanguageModelParts, segment: int, first: int, last: int, taps: list[int] = ()) -> GraphDef:
    """Decoder layers [first, last] for `seq` new tokens against the segment's buffers of `capacity.<segment>`
    slots: every segment's prefill and decode step. `taps`: layers whose queries it also outputs (q.<layer>),
    ascending (tap_layers)."""
    past = kv_names(PAST, range(first, last + 1))
    capacity = io.capacity(segment)
    dims = {"hidden_in": {0: "batch", 1: "seq"}, "position_ids": {0: "batch", 1: "seq"},
            "attention_mask": {0: "batch", 1: "seq", 2: capacity}, "write_index": BATCH, **_kv_dims(past, capacity)}
    outputs = io.DECODER_OUT + kv_names(PRESENT, range(first, last + 1)) + [io.query_tap(i) for i in taps]
    return GraphDef(DecoderLayers(lm, first, last, taps), io.DECODER_IN + past, outputs, dims,
                    nested=io.DECODER_IN + [past])


def prune_graph(lm: LanguageModelParts, segment: int, last: int, pruner: LlmPruner, taps: list[int],
                visual_mask: bool = False, pseudo_cls: bool = False) -> GraphDef:
    """The decision of a segment that prunes after layer `last`, from the queries of its `taps` and their cached
    keys (and the last layer's values where the pruner reads them): no decoder weights. The pruner's own inputs
    come last, as one list; an input the graph does not take keeps its place in the module's signature as None."""
    if pruner.reads_values and last not in taps:
        raise ValueError(f"a pruner that reads the last layer's values must tap it (layer {last}), taps {taps}")
    queries, keys = [io.query_tap(i) for i in taps], [io.cached("key", i) for i in taps]
    values = [io.cached("value", last)] if pruner.reads_values else []
    extra = list(pruner.input_names)
    structure = io.PRUNE_IN + [queries, keys, values or None, io.VISUAL_MASK_IN[0] if visual_mask else None,
                               extra or None]
    while structure[-1] is None:
        structure.pop()
    inputs = io.PRUNE_IN + queries + keys + values + (io.VISUAL_MASK_IN if visual_mask else []) + extra
    capacity, prompt = io.capacity(segment), {0: "batch", 2: "prompt"}
    dims = {"attention_mask": {0: "batch", 1: "prompt", 2: capacity}, "visual_positions": {0: "batch", 1: "visual_tokens"},
            "suffix_mask": {0: "batch", 1: "suffix"}, "visual_mask": {0: "batch", 1: "visual_tokens"},
            **{name: prompt for name in queries}, **_kv_dims(keys + values, capacity), **{name: BATCH for name in extra}}
    attn = lm.layers[last].self_attn
    module = PruneSegment(pruner, list(taps), attn.scaling, attn.num_key_value_groups, pseudo_cls)
    return GraphDef(module, inputs, list(pruner.kept_names), {k: v for k, v in dims.items() if k in inputs},
                    nested=structure)


def segment(s: int, first: int, last: int, pruner: LlmPruner | None = None, **fields) -> Segment:
    """The manifest's segment s over layers [first, last], as llm_graphs exports it: a pruning one (with `pruner`)
    names its prune graph and the taps that graph reads. `fields`: Segment's stage, keep, pseudo_cls..."""
    if pruner is None:
        return Segment(io.decoder_graph(s), [first, last], **fields)
    return Segment(io.decoder_graph(s), [first, last], prune=io.prune_graph(s), taps=tap_layers(pruner, first, last),
                   reads_values=pruner.reads_values, **fields)


def lm_head_graph(lm: LanguageModelParts) -> GraphDef:
    return GraphDef(LogitsHead(lm), io.LM_HEAD_IN, io.LOGITS_OUT, {io.LM_HEAD_IN[0]: BATCH})


def llm_graphs(lm: LanguageModelParts, spans: list[tuple[int, int]], pruners: dict[int, LlmPruner],
               visual_mask: bool = False, pseudo_cls: bool = False) -> dict[str, GraphDef]:
    """The LLM's graphs for segments over layer `spans`: decoder.<s> for each, prune.<s> for those with a pruner (by
    segment index), and the LM head."""
    graphs = {}
    for s, (first, last) in enumerate(spans):
        taps = tap_layers(pruners[s], first, last) if s in pruners else []
        graphs[io.decoder_graph(s)] = decoder_graph(lm, s, first, last, taps)
        if s in pruners:
            graphs[io.prune_graph(s)] = prune_graph(lm, s, last, pruners[s], taps, visual_mask, pseudo_cls)
    graphs[io.LM_HEAD] = lm_head_graph(lm)
    return graphs
