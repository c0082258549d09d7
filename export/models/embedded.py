"""The embedded default model: a tiny, random, LLaVA-1.5-shaped checkpoint built locally.

It has the real LLaVA-1.5 geometry where it matters to the exporter (24-layer CLIP ViT-L/14-336
layout: 336 px, 14 px patches, 577 positions; 32-layer LLaMA; <image> token; chat template;
CLIP image preprocessing) but tiny widths, so it builds in seconds with no download. Next to it
sits a full CLIPModel whose vision tower is the very same weights, as with the frozen CLIP that
LLaVA-1.5 keeps, so CLIP text/image similarity can be computed for the LLaVA image tokens.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from runtime.cache import cache_root

from .tokenizer_training import CORPUS_PATH, load_corpus, train_clip_tokenizer, train_llama_tokenizer

# Bump whenever the build below changes what ends up on disk: it is part of the cache key.
BUILDER_VERSION = "1"

CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]

# llava-hf/llava-1.5-7b-hf's chat template: "USER: <image>\n{text} ASSISTANT:".
LLAVA_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] != 'system' %}{{ message['role'].upper() + ': '}}{% endif %}"
    "{# Render all images first #}{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}"
    "{{ '<image>\n' }}{% endfor %}"
    "{# Render all text next #}{% if message['role'] != 'assistant' %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ content['text'] + ' '}}"
    "{% endfor %}{% else %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{% generation %}{{ content['text'] + ' '}}{% endgeneration %}{% endfor %}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)


@dataclass(frozen=True)
class EmbeddedModelSpec:
    name: str
    vit_hidden: int
    vit_heads: int
    vit_intermediate: int
    text_hidden: int  # CLIP text tower
    text_heads: int
    text_intermediate: int
    text_layers: int
    projection_dim: int  # CLIP joint embedding
    llm_hidden: int
    llm_heads: int
    llm_intermediate: int
    vit_layers: int = 24
    image_size: int = 336
    patch_size: int = 14
    llm_layers: int = 32
    max_position_embeddings: int = 4096
    seed: int = 0


SPECS: dict[str, EmbeddedModelSpec] = {
    "tiny": EmbeddedModelSpec(
        name="tiny",
        vit_hidden=64,
        vit_heads=4,
        vit_intermediate=128,
        text_hidden=64,
        text_heads=4,
        text_intermediate=128,
        text_layers=12,
        projection_dim=32,
        llm_hidden=64,
        llm_heads=4,
        llm_intermediate=172,
    ),
    # For benchmarks: widths 1/8 of LLaVA-1.5-7B's (ViT 1024 -> 128, LLM 4096 -> 512, same head sizes and
    # MLP ratios), so ViT:LLM FLOPs stay near the 7B's and an unpruned prefill takes ~1-3 s on 2 cores.
    "bench": EmbeddedModelSpec(
        name="bench",
        vit_hidden=128,
        vit_heads=2,
        vit_intermediate=512,
        text_hidden=96,
        text_heads=2,
        text_intermediate=384,
        text_layers=12,
        projection_dim=96,
        llm_hidden=512,
        llm_heads=4,
        llm_intermediate=1376,
    ),
}


@dataclass(frozen=True)
class EmbeddedCheckpoint:
    model_dir: Path  # LlavaForConditionalGeneration + LlavaProcessor
    clip_dir: Path  # CLIPModel + CLIPProcessor, vision tower identical to LLaVA's


def spec_digest(spec: EmbeddedModelSpec) -> str:
    h = hashlib.sha256()
    h.update(json.dumps(dataclasses.asdict(spec), sort_keys=True).encode())
    h.update(CORPUS_PATH.read_bytes())
    h.update(BUILDER_VERSION.encode())
    return h.hexdigest()


def embedded_model(name: str = "tiny", cache_dir: Path | str | None = None) -> EmbeddedCheckpoint:
    """Return the embedded checkpoint `name`, building it into the cache on first use."""
    if name not in SPECS:
        raise KeyError(f"unknown embedded model {name!r}; known: {sorted(SPECS)}")
    spec = SPECS[name]
    cache_dir = Path(cache_dir) if cache_dir is not None else cache_root()
    final = cache_dir / f"{name}-{spec_digest(spec)[:12]}"

    def build(tmp: Path):
        with _quiet_progress_bars():
            build_checkpoint(spec, tmp)
    build_once(final, build, f"building embedded model {name!r} into {final} (one-off, a few seconds)")
    return EmbeddedCheckpoint(model_dir=final / "llava", clip_dir=final / "clip")


def build_once(final: Path, build, announce: str) -> None:
    """Unless `final` exists, says `announce` and runs build(dir) into a private dir beside it, then renames that
    into place: `final` only ever exists complete, and a failed build leaves nothing."""
    if final.is_dir():
        return
    final.parent.mkdir(parents=True, exist_ok=True)
    print(announce, file=sys.stderr, flush=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}-building-", dir=final.parent))
    try:
        build(tmp)
        os.chmod(tmp, 0o755)  # mkdtemp makes it private
        try:
            os.rename(tmp, final)
        except OSError:
            if not final.is_dir():
                raise
            shutil.rmtree(tmp)  # another process won the race; its copy is identical
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextlib.contextmanager
def _quiet_progress_bars():
    """Keep the build to its one progress line: hide transformers' "Writing model shards" bars."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


# --------------------------------------------------------------------------- weights


@torch.no_grad()
def _init_weights(model: nn.Module, gen: torch.Generator) -> None:
    """Deterministic re-initialisation, in `named_modules()` order, of every parameter.

    Unit-gain fan-in scaling keeps activations O(1) through 24/32 random layers; q/k get gain 2
    so attention logits are spread out and attention is peaked (fewer near-ties in top-k picks)."""

    def normal_(p: torch.Tensor, std: float) -> None:
        p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float32) * std)

    done: set[int] = set()
    for name, m in model.named_modules():
        leaf = name.rsplit(".", 1)[-1]
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            fan_in = m.weight[0].numel()
            normal_(m.weight, (2.0 if leaf in ("q_proj", "k_proj") else 1.0) / math.sqrt(fan_in))
            if m.bias is not None:
                normal_(m.bias, 0.02)
        elif isinstance(m, nn.Embedding):
            normal_(m.weight, 0.5 if leaf == "position_embedding" else 1.0)
        elif isinstance(m, nn.LayerNorm):
            m.weight.fill_(1.0)
            m.bias.fill_(0.0)
        elif type(m).__name__.endswith("RMSNorm"):
            m.weight.fill_(1.0)
        if hasattr(m, "class_embedding"):  # CLIPVisionEmbeddings
            normal_(m.class_embedding, 1.0)
        if hasattr(m, "logit_scale"):  # CLIPModel
            m.logit_scale.fill_(math.log(1 / 0.07))
        done.update(id(p) for p in m.parameters(recurse=False))
    missed = [n for n, p in model.named_parameters() if id(p) not in done]
    assert not missed, f"parameters left uninitialised: {missed}"


# --------------------------------------------------------------------------- build


def _image_processor():
    from transformers.utils import is_torchvision_available

    # The default CLIPImageProcessor needs torchvision; the PIL one is equivalent and both save
    # as "CLIPImageProcessor", so loaders pick whichever backend they have.
    if is_torchvision_available():
        from transformers import CLIPImageProcessor
    else:
        from transformers import CLIPImageProcessorPil as CLIPImageProcessor
    # LLaVA-1.5 / CLIP ViT-L/14-336 preprocessing.
    return CLIPImageProcessor(
        do_resize=True,
        size={"shortest_edge": 336},
        resample=3,  # bicubic
        do_center_crop=True,
        crop_size={"height": 336, "width": 336},
        do_rescale=True,
        rescale_factor=1 / 255,
        do_normalize=True,
        image_mean=CLIP_MEAN,
        image_std=CLIP_STD,
        do_convert_rgb=True,
    )


def _vision_config(spec: EmbeddedModelSpec) -> dict:
    """CLIPVisionConfig settings, shared by LLaVA's tower and the CLIP checkpoint's (they are one set of weights)."""
    return dict(
        hidden_size=spec.vit_hidden,
        intermediate_size=spec.vit_intermediate,
        num_hidden_layers=spec.vit_layers,
        num_attention_heads=spec.vit_heads,
        image_size=spec.image_size,
        patch_size=spec.patch_size,
        projection_dim=spec.projection_dim,
        hidden_act="quick_gelu",
        layer_norm_eps=1e-5,
    )


def llava_config(spec: EmbeddedModelSpec, llama_tok):
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig

    tid = llama_tok.token_to_id
    text = LlamaConfig(
        vocab_size=llama_tok.get_vocab_size(),  # incl. <image> and <pad>
        hidden_size=spec.llm_hidden,
        intermediate_size=spec.llm_intermediate,
        num_hidden_layers=spec.llm_layers,
        num_attention_heads=spec.llm_heads,
        num_key_value_heads=spec.llm_heads,
        max_position_embeddings=spec.max_position_embeddings,
        rms_norm_eps=1e-5,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        bos_token_id=tid("<s>"),
        eos_token_id=tid("</s>"),
        pad_token_id=tid("<pad>"),
        tie_word_embeddings=False,
    )
    return LlavaConfig(
        vision_config=CLIPVisionConfig(**_vision_config(spec)),
        text_config=text,
        image_token_index=tid("<image>"),
        image_seq_length=(spec.image_size // spec.patch_size) ** 2,
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
        projector_hidden_act="gelu",
        tie_word_embeddings=False,
        pad_token_id=tid("<pad>"),
    )


def clip_config(spec: EmbeddedModelSpec, clip_tok):
    from transformers import CLIPConfig, CLIPTextConfig, CLIPVisionConfig

    bos, eos = clip_tok.token_to_id("<|startoftext|>"), clip_tok.token_to_id("<|endoftext|>")
    return CLIPConfig(
        text_config=CLIPTextConfig(
            vocab_size=clip_tok.get_vocab_size(),
            hidden_size=spec.text_hidden,
            intermediate_size=spec.text_intermediate,
            num_hidden_layers=spec.text_layers,
            num_attention_heads=spec.text_heads,
            projection_dim=spec.projection_dim,
            max_position_embeddings=77,
            hidden_act="quick_gelu",
            layer_norm_eps=1e-5,
            pad_token_id=eos,  # CLIP pads with <|endoftext|>
            bos_token_id=bos,
            eos_token_id=eos,  # pooling takes the first eos position; must be the real id
        ).to_dict(),
        vision_config=CLIPVisionConfig(**_vision_config(spec)).to_dict(),
        projection_dim=spec.projection_dim,
    )


def _random_models(spec: EmbeddedModelSpec, llava_config, clip_config):
    """Seeded weights. The CLIP checkpoint's vision tower *is* LLaVA's (frozen CLIP in LLaVA-1.5); both are
    CLIPVisionModel in transformers 5 (no inner `.vision_model`), so the keys match 1:1."""
    from transformers import CLIPModel, LlavaForConditionalGeneration

    with torch.random.fork_rng(devices=[]):  # seed without clobbering the caller's global RNG
        torch.manual_seed(spec.seed)
        gen = torch.Generator().manual_seed(spec.seed)
        llava = LlavaForConditionalGeneration(llava_config).eval()
        _init_weights(llava, gen)
        clip = CLIPModel(clip_config).eval()
        _init_weights(clip, gen)
    clip.vision_model.load_state_dict(llava.model.vision_tower.state_dict())
    return llava, clip


def build_checkpoint(spec: EmbeddedModelSpec, out_dir: Path) -> EmbeddedCheckpoint:
    """Build both checkpoints into out_dir/llava and out_dir/clip (no caching here)."""
    lines = load_corpus()
    llama_tok, clip_tok = train_llama_tokenizer(lines), train_clip_tokenizer(lines)
    llava, clip = _random_models(spec, llava_config(spec, llama_tok), clip_config(spec, clip_tok))
    return save_checkpoint(llava, clip, llama_tok, clip_tok, spec, out_dir)


def save_checkpoint(llava, clip, llama_tok, clip_tok, spec: EmbeddedModelSpec, out_dir: Path) -> EmbeddedCheckpoint:
    """Both models with their processors, as the hub lays them out: out_dir/llava and out_dir/clip."""
    from transformers import CLIPProcessor, CLIPTokenizer, LlamaTokenizer, LlavaProcessor

    ckpt = EmbeddedCheckpoint(model_dir=out_dir / "llava", clip_dir=out_dir / "clip")
    image_processor = _image_processor()

    llava.save_pretrained(ckpt.model_dir)
    tokenizer = LlamaTokenizer(
        tokenizer_object=llama_tok,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
    )  # tokenizer.json (ours, with its "<s> $A" template) is what transformers 5 loads for llava
    LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=spec.patch_size,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,  # the CLS token
        chat_template=LLAVA_CHAT_TEMPLATE,
    ).save_pretrained(ckpt.model_dir)

    clip.save_pretrained(ckpt.clip_dir)
    CLIPProcessor(
        image_processor=image_processor,
        tokenizer=CLIPTokenizer(tokenizer_object=clip_tok, model_max_length=77),
    ).save_pretrained(ckpt.clip_dir)
    return ckpt
