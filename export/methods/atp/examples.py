"""Training examples for ATP's threshold heads: image features, prompt embeddings and the L_ntp labels.

There is no SFT dataset here, so the labels are self-distillation targets: the frozen unpruned model's own
greedy continuation of each request (see training.py).
"""
from dataclasses import dataclass

import torch
from tokenizers import Tokenizer

from export.models.facts import model_facts, vision_feature_layer
from export.modules.vision import FeatureVision
from runtime.preprocess import ImagePreprocessConfig, load_image, preprocess
from runtime.prompt import LLAVA_15_TEMPLATE, PromptTokenizer


def grid_of(ckpt) -> int:
    facts = model_facts(ckpt)
    return facts["image_size"] // facts["patch_size"]


@dataclass
class Example:
    prefix: torch.Tensor   # [1, n_pre, H] embeddings before the image
    visual: torch.Tensor   # [1, V, H] unpruned image features
    text: torch.Tensor     # [1, T + n_new - 1, H]: the prompt's suffix, then the continuation but its last token
    n_prompt: int          # T
    labels: torch.Tensor   # [n_new] the unpruned model's greedy continuation


def prepare_examples(ckpt, requests, new_tokens: int = 4) -> list[Example]:
    """Embeddings of each request and the frozen unpruned model's greedy continuation (the L_ntp labels)."""
    llava = ckpt.llava
    embed = llava.model.language_model.embed_tokens
    vision = FeatureVision(llava.model.vision_tower, llava.model.multi_modal_projector, vision_feature_layer(ckpt))
    cfg = ImagePreprocessConfig.from_hf_dict(ckpt.preprocessor_config)
    tok_file = ckpt.model_dir / "tokenizer.json"
    image_token = Tokenizer.from_file(str(tok_file)).id_to_token(llava.config.image_token_id)
    tokenizer = PromptTokenizer(tok_file, LLAVA_15_TEMPLATE, image_token)
    features, examples = {}, []
    with torch.no_grad():
        for r in requests:
            key = str(r.image)
            if key not in features:
                pixels = torch.from_numpy(preprocess(load_image(r.image), cfg))[None]
                features[key] = vision(pixels)["image_features"]
            p = tokenizer.encode(r.prompt)
            prefix, suffix = embed(torch.tensor([p.prefix_ids])), embed(torch.tensor([p.suffix_ids]))
            labels = greedy_continuation(llava, torch.cat([prefix, features[key], suffix], 1), new_tokens)
            text = torch.cat([suffix, embed(labels[None, :-1])], 1)
            examples.append(Example(prefix, features[key], text, len(p.suffix_ids), labels))
    return examples


def greedy_continuation(llava, embeds: torch.Tensor, new_tokens: int) -> torch.Tensor:
    """[new_tokens] greedy tokens of the unpruned HF model after `embeds` [1, N, H] (KV-cached; the explicit
    masked_forward without heads computes the same logits)."""
    lm, ids, past, x = llava.model.language_model, [], None, embeds
    for _ in range(new_tokens):
        out = lm(inputs_embeds=x, past_key_values=past, use_cache=True)
        past = out.past_key_values
        ids.append(int(llava.lm_head(out.last_hidden_state[:, -1]).argmax(-1)))
        x = lm.embed_tokens(torch.tensor([[ids[-1]]]))
    return torch.tensor(ids)
