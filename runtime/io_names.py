"""Graph input/output names: the part of the manifest contract that both export and runtime spell out.
KV-cache names follow engines/kv_names.py."""

VISION_IN = ["pixel_values"]
VISION_OUT = ["image_features"]  # plus kept.<stage> per vision pruning point
VISION_CLS_OUT = ["cls_joint", "cls_llm"]  # only where a method needs the visual CLS
TEXT_IN, TEXT_OUT = ["input_ids"], ["token_embeddings"]
EMBED_IN, EMBED_OUT = ["input_ids"], ["inputs_embeds"]
PRUNE_IN = ["attention_mask", "visual_positions", "suffix_mask"]  # then q.<l> and key.<l> per tap, value.<last>
VISUAL_MASK_IN = ["visual_mask"]  # segments whose visual block is padded (per-request counts, ATP)
THRESHOLDS_IN = ["thresholds"]  # ATP's calibrated (theta_r, theta_s), fed from the manifest
KEPT_OUT, KEPT_COUNT_OUT, LOGITS_OUT = ["kept"], ["kept_count"], ["logits"]
DECODER_IN, DECODER_OUT = ["hidden_in", "position_ids", "attention_mask", "write_index"], ["hidden_out"]
LM_HEAD, LM_HEAD_IN = "lm_head", ["hidden_last"]


def kept_name(stage: str) -> str:
    return f"kept.{stage}"


def decoder_graph(segment: int) -> str:
    return f"decoder.{segment}"


def prune_graph(segment: int) -> str:
    return f"prune.{segment}"


def query_tap(layer: int) -> str:
    """A decoder graph's output of that layer's queries, for its segment's prune graph."""
    return f"q.{layer}"


def cached(kind: str, layer: int) -> str:
    """A prune graph's input: a layer's key or value cache buffer, as the decoder graph just wrote it."""
    return f"{kind}.{layer}"


def capacity(segment: int) -> str:
    """The dim of segment s's cache buffers: its prompt plus the tokens decode will add."""
    return f"capacity.{segment}"
