"""The model's dimensions and special tokens, read from a checkpoint's configs: what the manifest records for
the runtime, the methods' schedules and the FLOPs counter."""
from export.models.checkpoint import Checkpoint


def vision_feature_layer(ckpt: Checkpoint) -> int:
    """Encoder layer index whose output LLaVA feeds the LLM (vision_feature_layer=-2 -> index 22 of 24)."""
    cfg = ckpt.llava.config
    if cfg.vision_feature_select_strategy != "default" or not isinstance(cfg.vision_feature_layer, int):
        raise NotImplementedError("only LLaVA-1.5's single feature layer with the CLS dropped is supported")
    n = cfg.vision_config.num_hidden_layers
    return cfg.vision_feature_layer % (n + 1) - 1  # hidden_states[k] is the output of layer k-1


def model_facts(ckpt: Checkpoint) -> dict:
    """The dimensions: what the methods' schedules and the FLOPs counter need."""
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


def special_tokens(ckpt: Checkpoint) -> dict:
    """eos from generation_config.json, else text_config. pad from the top level of config.json, where llava-hf
    puts it (its text_config has none), else text_config, else eos."""
    cfg = ckpt.llava.config
    eos = ckpt.llava.generation_config.eos_token_id
    eos = cfg.text_config.eos_token_id if eos is None else eos
    eos = eos[0] if isinstance(eos, list) else eos
    pad = next((p for p in (getattr(cfg, "pad_token_id", None), cfg.text_config.pad_token_id) if p is not None), eos)
    return {"eos_token_id": eos, "pad_token_id": pad}


def manifest_facts(ckpt: Checkpoint) -> dict:
    """The dimensions, the special tokens the runtime generates with, and with CLIP's text tower (IVTP) its
    positions: an instruction is encoded in windows of that many."""
    facts = {**model_facts(ckpt), **special_tokens(ckpt)}
    if ckpt.clip is not None:
        facts["clip_positions"] = ckpt.clip.config.text_config.max_position_embeddings
    return facts
