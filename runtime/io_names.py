"""Graph input/output names: the part of the manifest contract that both export and runtime spell out.
KV-cache names follow engines/kv_names.py."""

VISION_IN = ["pixel_values"]
VISION_OUT = ["image_features"]  # plus kept.<stage> per vision pruning point
VISION_CLS_OUT = ["cls_joint", "cls_llm"]  # only where a method needs the visual CLS
TEXT_IN, TEXT_OUT = ["input_ids"], ["token_embeddings"]
EMBED_IN, EMBED_OUT = ["input_ids"], ["inputs_embeds"]
PREFILL_IN = ["prefix_embeds", "visual_embeds", "suffix_embeds", "visual_positions", "suffix_positions", "suffix_mask"]
PSEUDO_CLS_IN = ["pseudo_cls", "pseudo_cls_position"]
VISUAL_MASK_IN = ["visual_mask"]  # segments whose visual block is padded (per-request counts, ATP)
THRESHOLDS_IN = ["thresholds"]  # ATP's calibrated (theta_r, theta_s), fed from the manifest
HIDDEN_OUT = ["prefix_hidden", "visual_hidden", "suffix_hidden"]
PSEUDO_CLS_OUT = ["pseudo_cls_hidden"]
KEPT_OUT, KEPT_COUNT_OUT, LOGITS_OUT = ["kept"], ["kept_count"], ["logits"]
DECODER_IN, DECODER_OUT = ["hidden_in", "position_ids", "attention_mask", "write_index"], ["hidden_out"]
LM_HEAD, LM_HEAD_IN = "lm_head", ["hidden_last"]


def kept_name(stage: str) -> str:
    return f"kept.{stage}"


def decoder_graph(segment: int) -> str:
    return f"decoder.{segment}"


def prefill_graph(segment: int) -> str:
    return f"prefill.{segment}"


def capacity(segment: int) -> str:
    """The dim of segment s's cache buffers: its prompt plus the tokens decode will add."""
    return f"capacity.{segment}"
