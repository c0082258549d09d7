"""The files of llava-hf/llava-1.5-7b-hf and openai/clip-vit-large-patch14-336 as they are on the hub, rebuilt
offline with seeded random weights at any widths: what the loader must read when a user brings the real ones.

Unlike the embedded models (embedded.py), which transformers 5 writes with save_pretrained, nothing here is
written by transformers: the configs are the hub's transformers-4 JSON written out by hand, the tensors carry
the hub's names and dtypes, so loading them exercises the same conversions the real files need.

- llava/: config.json with image_token_index and pad_token_id at the top level (text_config has neither),
  generation_config.json, fp16 safetensors in shards with model.safetensors.index.json, tensors named
  vision_tower.vision_model.*, multi_modal_projector.*, language_model.model.*, language_model.lm_head.weight;
  embed_tokens and lm_head have 32064 rows for a tokenizer of 32002 (LLaMA-2's 32000, <image>, <pad>);
  tokenizer.json and tokenizer_config.json, preprocessor_config.json, chat_template.json.
- clip/: config.json in the transformers 4.21 layout (text_config_dict / vision_config_dict, the legacy
  eos_token_id 2), pytorch_model.bin only (fp32, with the position_ids buffers the old files carry),
  tokenizer.json (49408 tokens), vocab.json, merges.txt, preprocessor_config.json.

LLaVA's vision tower is CLIP's, rounded to fp16, as LLaVA-1.5 keeps CLIP's ViT frozen. Every tensor is drawn
from its own generator, seeded from (seed, tensor name), so a shard can be written without the others in
memory. Files not rebuilt: LLaMA's tokenizer.model (a SentencePiece proto; tokenizer.json is what loads).
"""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file

from .embedded import CLIP_MEAN, CLIP_STD, LLAVA_CHAT_TEMPLATE, EmbeddedCheckpoint
from .llava_hf_tokenizers import LLAVA_HF_TEXT_VOCAB, llama2_tokenizer, openai_clip_tokenizer

TRANSFORMERS_4 = "4.36.0.dev0"  # what llava-1.5-7b-hf's files were written with

# llava-hf's tensor names -> transformers 5's (what LlavaForConditionalGeneration.state_dict() and its
# save_pretrained use). transformers 5.23 converts these on load itself; the loader uses the table to say
# which file name a missing weight should have had.
LLAVA_HF_RENAMES = (
    ("language_model.lm_head.", "lm_head."),
    ("language_model.model.", "model.language_model."),
    ("vision_tower.vision_model.", "model.vision_tower."),
    ("multi_modal_projector.", "model.multi_modal_projector."),
)


def transformers_name(llava_hf_key: str) -> str:
    for old, new in LLAVA_HF_RENAMES:
        if llava_hf_key.startswith(old):
            return new + llava_hf_key[len(old):]
    return llava_hf_key


def llava_hf_name(transformers_key: str) -> str:
    for old, new in LLAVA_HF_RENAMES:
        if transformers_key.startswith(new):
            return old + transformers_key[len(new):]
    return transformers_key


@dataclass(frozen=True)
class LlavaHfGeometry:
    vit_hidden: int
    vit_heads: int
    vit_intermediate: int
    vit_layers: int
    text_hidden: int  # CLIP's text tower
    text_heads: int
    text_intermediate: int
    text_layers: int
    projection_dim: int  # CLIP's joint space
    llm_hidden: int
    llm_heads: int
    llm_kv_heads: int
    llm_intermediate: int
    llm_layers: int
    image_size: int = 336
    patch_size: int = 14
    max_position_embeddings: int = 4096
    clip_positions: int = 77

    @property
    def vision_positions(self) -> int:
        return (self.image_size // self.patch_size) ** 2 + 1


# The real widths and depths (what a real-geometry random model would use).
LLAVA_1_5_7B = LlavaHfGeometry(vit_hidden=1024, vit_heads=16, vit_intermediate=4096, vit_layers=24, text_hidden=768,
                               text_heads=12, text_intermediate=3072, text_layers=12, projection_dim=768,
                               llm_hidden=4096, llm_heads=32, llm_kv_heads=32, llm_intermediate=11008, llm_layers=32)
# The real vocabularies, image grid and positions with tiny widths and few layers: seconds to build and load.
TINY_LAYOUT = LlavaHfGeometry(vit_hidden=32, vit_heads=2, vit_intermediate=64, vit_layers=4, text_hidden=32,
                              text_heads=2, text_intermediate=64, text_layers=2, projection_dim=16,
                              llm_hidden=64, llm_heads=4, llm_kv_heads=4, llm_intermediate=128, llm_layers=2)


# --------------------------------------------------------------------------- tensor names and shapes


def _clip_encoder(prefix: str, width: int, intermediate: int, layers: int) -> dict:
    out = {}
    for i in range(layers):
        p = f"{prefix}encoder.layers.{i}."
        for proj in ("k_proj", "v_proj", "q_proj", "out_proj"):
            out[f"{p}self_attn.{proj}.weight"], out[f"{p}self_attn.{proj}.bias"] = (width, width), (width,)
        out[f"{p}layer_norm1.weight"], out[f"{p}layer_norm1.bias"] = (width,), (width,)
        out[f"{p}mlp.fc1.weight"], out[f"{p}mlp.fc1.bias"] = (intermediate, width), (intermediate,)
        out[f"{p}mlp.fc2.weight"], out[f"{p}mlp.fc2.bias"] = (width, intermediate), (width,)
        out[f"{p}layer_norm2.weight"], out[f"{p}layer_norm2.bias"] = (width,), (width,)
    return out


def clip_vision_keys(g: LlavaHfGeometry, prefix: str) -> dict:
    """CLIPVisionTransformer's tensors under `prefix` (LLaVA: "vision_tower.vision_model.", CLIP: "vision_model.")."""
    d = g.vit_hidden
    return {f"{prefix}embeddings.class_embedding": (d,),
            f"{prefix}embeddings.patch_embedding.weight": (d, 3, g.patch_size, g.patch_size),
            f"{prefix}embeddings.position_embedding.weight": (g.vision_positions, d),
            f"{prefix}pre_layrnorm.weight": (d,), f"{prefix}pre_layrnorm.bias": (d,),  # sic: CLIP's spelling
            **_clip_encoder(prefix, d, g.vit_intermediate, g.vit_layers),
            f"{prefix}post_layernorm.weight": (d,), f"{prefix}post_layernorm.bias": (d,)}


def llava_hf_keys(g: LlavaHfGeometry) -> dict:
    """Name -> shape of every tensor in llava-1.5-7b-hf's safetensors."""
    h, i, kv = g.llm_hidden, g.llm_intermediate, g.llm_kv_heads * (g.llm_hidden // g.llm_heads)
    out = clip_vision_keys(g, "vision_tower.vision_model.")
    out.update({"multi_modal_projector.linear_1.weight": (h, g.vit_hidden), "multi_modal_projector.linear_1.bias": (h,),
                "multi_modal_projector.linear_2.weight": (h, h), "multi_modal_projector.linear_2.bias": (h,),
                "language_model.model.embed_tokens.weight": (LLAVA_HF_TEXT_VOCAB, h)})
    for n in range(g.llm_layers):
        p = f"language_model.model.layers.{n}."
        out.update({f"{p}self_attn.q_proj.weight": (h, h), f"{p}self_attn.k_proj.weight": (kv, h),
                    f"{p}self_attn.v_proj.weight": (kv, h), f"{p}self_attn.o_proj.weight": (h, h),
                    f"{p}mlp.gate_proj.weight": (i, h), f"{p}mlp.up_proj.weight": (i, h),
                    f"{p}mlp.down_proj.weight": (h, i),
                    f"{p}input_layernorm.weight": (h,), f"{p}post_attention_layernorm.weight": (h,)})
    out["language_model.model.norm.weight"] = (h,)
    out["language_model.lm_head.weight"] = (LLAVA_HF_TEXT_VOCAB, h)
    return out


def openai_clip_keys(g: LlavaHfGeometry, vocab_size: int) -> dict:
    """Name -> shape of every tensor in openai/clip-vit-large-patch14-336's pytorch_model.bin."""
    t = g.text_hidden
    out = {"text_model.embeddings.token_embedding.weight": (vocab_size, t),
           "text_model.embeddings.position_embedding.weight": (g.clip_positions, t),
           "text_model.embeddings.position_ids": (1, g.clip_positions),
           **_clip_encoder("text_model.", t, g.text_intermediate, g.text_layers),
           "text_model.final_layer_norm.weight": (t,), "text_model.final_layer_norm.bias": (t,)}
    vision = clip_vision_keys(g, "vision_model.")
    at = list(vision).index("vision_model.embeddings.position_embedding.weight") + 1
    vision = dict([*list(vision.items())[:at], ("vision_model.embeddings.position_ids", (1, g.vision_positions)),
                   *list(vision.items())[at:]])
    out.update(vision)
    out.update({"visual_projection.weight": (g.projection_dim, g.vit_hidden),
                "text_projection.weight": (g.projection_dim, t), "logit_scale": ()})
    return out


# --------------------------------------------------------------------------- values


def random_tensor(name: str, shape: tuple, seed: int) -> torch.Tensor:
    """fp32 values for `name`, from a generator seeded by (seed, name) alone. Scaled so activations stay O(1)
    through the layers (fan-in for linear maps, q/k with gain 2 so attention is peaked); norms are near 1,
    not exactly 1, so a norm left at its default would show."""
    if name.endswith("position_ids"):
        return torch.arange(shape[-1], dtype=torch.int64).reshape(shape)
    if name == "logit_scale":
        return torch.tensor(math.log(100.0))  # OpenAI's trained value
    digest = hashlib.sha256(f"{seed}:{name}".encode()).digest()
    gen = torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1)
    x = torch.randn(shape, generator=gen, dtype=torch.float32)
    parts = name.split(".")
    leaf = parts[-2] if parts[-1] in ("weight", "bias") else parts[-1]  # the module, or the bare parameter
    if "norm" in leaf:  # layer_norm1, pre_layrnorm, input_layernorm, norm, ...
        return 1.0 + 0.1 * x if name.endswith("weight") else 0.02 * x
    if name.endswith("bias"):
        return 0.02 * x
    if leaf in ("embed_tokens", "token_embedding", "class_embedding"):
        return x
    if leaf == "position_embedding":
        return 0.5 * x
    fan_in = math.prod(shape[1:])
    return x * (2.0 if leaf in ("q_proj", "k_proj") else 1.0) / math.sqrt(fan_in)


def _vision_source(name: str) -> str:
    """The name whose seed a tensor takes: LLaVA's and CLIP's vision towers are one set of values."""
    return "vision_model." + name[len("vision_tower.vision_model."):] if name.startswith("vision_tower.") else name


# --------------------------------------------------------------------------- configs


def llava_hf_config(g: LlavaHfGeometry, image_token: int, pad_token: int) -> dict:
    """llava-1.5-7b-hf's config.json: image_token_index and pad_token_id at the top level, text_config with
    neither (its hidden sizes are spelled out here; the hub's leaves the 7B ones to LlamaConfig's defaults)."""
    return {
        "architectures": ["LlavaForConditionalGeneration"],
        "ignore_index": -100,
        "image_token_index": image_token,
        "model_type": "llava",
        "pad_token_id": pad_token,
        "projector_hidden_act": "gelu",
        "text_config": {
            "_name_or_path": "lmsys/vicuna-7b-v1.5",
            "architectures": ["LlamaForCausalLM"],
            "hidden_size": g.llm_hidden,
            "intermediate_size": g.llm_intermediate,
            "max_position_embeddings": g.max_position_embeddings,
            "model_type": "llama",
            "num_attention_heads": g.llm_heads,
            "num_hidden_layers": g.llm_layers,
            "num_key_value_heads": g.llm_kv_heads,
            "rms_norm_eps": 1e-05,
            "torch_dtype": "float16",
            "vocab_size": LLAVA_HF_TEXT_VOCAB,
        },
        "tie_word_embeddings": False,
        "torch_dtype": "float16",
        "transformers_version": TRANSFORMERS_4,
        "vision_config": {
            "hidden_size": g.vit_hidden,
            "image_size": g.image_size,
            "intermediate_size": g.vit_intermediate,
            "model_type": "clip_vision_model",
            "num_attention_heads": g.vit_heads,
            "num_hidden_layers": g.vit_layers,
            "patch_size": g.patch_size,
            "projection_dim": g.projection_dim,
            "vocab_size": 32000,
        },
        "vision_feature_layer": -2,
        "vision_feature_select_strategy": "default",
        "vocab_size": LLAVA_HF_TEXT_VOCAB,
    }


def openai_clip_config(g: LlavaHfGeometry, vocab_size: int) -> dict:
    """openai/clip-vit-large-patch14-336's config.json (transformers 4.21): the sub-configs twice, as
    text_config / vision_config and as the *_config_dict that transformers lets override them, and the legacy
    special ids (bos 0, eos 2, pad 1) that the text model's pooling reads as "take the argmax id"."""
    text = {"hidden_size": g.text_hidden, "intermediate_size": g.text_intermediate,
            "num_attention_heads": g.text_heads, "num_hidden_layers": g.text_layers, "projection_dim": g.projection_dim}
    vision = {"hidden_size": g.vit_hidden, "image_size": g.image_size, "intermediate_size": g.vit_intermediate,
              "num_attention_heads": g.vit_heads, "num_hidden_layers": g.vit_layers, "patch_size": g.patch_size,
              "projection_dim": g.projection_dim}
    legacy = {"architectures": None, "bos_token_id": None, "eos_token_id": None, "chunk_size_feed_forward": 0,
              "is_encoder_decoder": False, "max_length": 20, "num_beams": 1, "pruned_heads": {},
              "tie_word_embeddings": True, "torch_dtype": None, "transformers_version": "4.21.3"}
    return {
        "_name_or_path": "openai/clip-vit-large-patch14-336",
        "architectures": ["CLIPModel"],
        "initializer_factor": 1.0,
        "logit_scale_init_value": 2.6592,
        "model_type": "clip",
        "projection_dim": g.projection_dim,
        "text_config": {**legacy, "attention_dropout": 0.0, "bos_token_id": 0, "dropout": 0.0, "eos_token_id": 2,
                        "hidden_act": "quick_gelu", **text, "initializer_range": 0.02, "layer_norm_eps": 1e-05,
                        "max_position_embeddings": g.clip_positions, "model_type": "clip_text_model",
                        "pad_token_id": 1, "vocab_size": vocab_size},
        "text_config_dict": text,
        "torch_dtype": "float32",
        "transformers_version": None,
        "vision_config": {**legacy, "attention_dropout": 0.0, "dropout": 0.0, "hidden_act": "quick_gelu", **vision,
                          "initializer_range": 0.02, "layer_norm_eps": 1e-05, "model_type": "clip_vision_model",
                          "num_channels": 3},
        "vision_config_dict": vision,
    }


def _added(content: str) -> dict:
    return {"content": content, "lstrip": False, "normalized": False, "rstrip": False, "single_word": False,
            "special": True}


def llava_hf_tokenizer_config(tok) -> dict:
    ids = {t: tok.token_to_id(t) for t in ("<unk>", "<s>", "</s>", "<image>", "<pad>")}
    return {"add_bos_token": True, "add_eos_token": False,
            "added_tokens_decoder": {str(i): _added(t) for t, i in ids.items()},
            "bos_token": "<s>", "clean_up_tokenization_spaces": False, "eos_token": "</s>", "legacy": False,
            "model_max_length": 1000000000000000019884624838656, "pad_token": "<pad>", "padding_side": "left",
            "processor_class": "LlavaProcessor", "sp_model_kwargs": {}, "tokenizer_class": "LlamaTokenizer",
            "trust_remote_code": False, "unk_token": "<unk>", "use_default_system_prompt": False}


def _image_processor_config(g: LlavaHfGeometry, **extra) -> dict:
    return {"crop_size": {"height": g.image_size, "width": g.image_size}, "do_center_crop": True,
            "do_convert_rgb": True, "do_normalize": True, "do_rescale": True, "do_resize": True,
            "image_mean": CLIP_MEAN, "image_std": CLIP_STD, "resample": 3, "rescale_factor": 0.00392156862745098,
            "size": {"shortest_edge": g.image_size}, **extra}


def _write_json(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


# --------------------------------------------------------------------------- build


def _shards(keys: dict, n: int) -> list[list[str]]:
    """The names, in order, in n runs of about as many tensors each (the files' names say "i of n")."""
    names = list(keys)
    return [names[len(names) * i // n:len(names) * (i + 1) // n] for i in range(n)]


def write_llava_hf_weights(model_dir: Path, g: LlavaHfGeometry, seed: int, shards: int) -> dict:
    """fp16 safetensors shards named model-0000i-of-0000n.safetensors and their index; returns the weight map."""
    keys = llava_hf_keys(g)
    runs = _shards(keys, shards)
    weight_map, total = {}, 0
    for i, run in enumerate(runs, 1):
        name = f"model-{i:05d}-of-{len(runs):05d}.safetensors"
        tensors = {k: random_tensor(_vision_source(k), keys[k], seed).to(torch.float16) for k in run}
        save_file(tensors, model_dir / name, metadata={"format": "pt"})
        (model_dir / name).chmod(0o644)  # safetensors writes 0600; the hub's files are world-readable
        total += sum(t.numel() * t.element_size() for t in tensors.values())
        weight_map.update(dict.fromkeys(run, name))
    _write_json(model_dir / "model.safetensors.index.json",
                {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))})
    return weight_map


def build_llava_hf_pair(out_dir: Path | str, geometry: LlavaHfGeometry = TINY_LAYOUT, seed: int = 0,
                        shards: int = 3) -> EmbeddedCheckpoint:
    """Write out_dir/llava (llava-1.5-7b-hf's layout) and out_dir/clip (openai/clip-vit-large-patch14-336's)."""
    out_dir = Path(out_dir)
    ckpt = EmbeddedCheckpoint(model_dir=out_dir / "llava", clip_dir=out_dir / "clip")
    ckpt.model_dir.mkdir(parents=True)
    ckpt.clip_dir.mkdir(parents=True)
    llama, clip_tok = llama2_tokenizer(), openai_clip_tokenizer()
    image, pad = llama.token_to_id("<image>"), llama.token_to_id("<pad>")

    m = ckpt.model_dir
    _write_json(m / "config.json", llava_hf_config(geometry, image, pad))
    _write_json(m / "generation_config.json", {"_from_model_config": True, "bos_token_id": llama.token_to_id("<s>"),
                                               "eos_token_id": llama.token_to_id("</s>"), "pad_token_id": pad,
                                               "transformers_version": TRANSFORMERS_4})
    write_llava_hf_weights(m, geometry, seed, shards)
    llama.save(str(m / "tokenizer.json"), pretty=True)
    _write_json(m / "tokenizer_config.json", llava_hf_tokenizer_config(llama))
    _write_json(m / "special_tokens_map.json", {"bos_token": _added("<s>"), "eos_token": _added("</s>"),
                                                "pad_token": "<pad>", "unk_token": _added("<unk>")})
    _write_json(m / "added_tokens.json", {"<image>": image, "<pad>": pad})
    _write_json(m / "preprocessor_config.json", _image_processor_config(
        geometry, image_processor_type="CLIPImageProcessor", processor_class="LlavaProcessor"))
    _write_json(m / "processor_config.json", {"num_additional_image_tokens": 1, "patch_size": geometry.patch_size,
                                              "processor_class": "LlavaProcessor",
                                              "vision_feature_select_strategy": "default"})
    _write_json(m / "chat_template.json", {"chat_template": LLAVA_CHAT_TEMPLATE})

    c, vocab = ckpt.clip_dir, clip_tok.get_vocab_size()
    _write_json(c / "config.json", openai_clip_config(geometry, vocab))
    torch.save({k: random_tensor(k, s, seed) for k, s in openai_clip_keys(geometry, vocab).items()},
               c / "pytorch_model.bin")
    clip_tok.save(str(c / "tokenizer.json"), pretty=True)
    model = json.loads(clip_tok.to_str())["model"]
    _write_json(c / "vocab.json", model["vocab"])
    (c / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in model["merges"]),
                                  encoding="utf-8")
    bos, eos = "<|startoftext|>", "<|endoftext|>"
    _write_json(c / "tokenizer_config.json", {"add_prefix_space": False, "bos_token": bos, "do_lower_case": True,
                                              "eos_token": eos, "errors": "replace", "model_max_length": 77,
                                              "pad_token": eos, "tokenizer_class": "CLIPTokenizer", "unk_token": eos})
    _write_json(c / "special_tokens_map.json", {"bos_token": bos, "eos_token": eos, "pad_token": eos, "unk_token": eos})
    _write_json(c / "preprocessor_config.json", _image_processor_config(
        geometry, feature_extractor_type="CLIPFeatureExtractor", image_processor_type="CLIPImageProcessor"))
    return ckpt
