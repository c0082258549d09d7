"""Prompt templating and tokenization: where the image goes, and character offsets of the instruction."""
from dataclasses import dataclass

import numpy as np
from tokenizers import Tokenizer

from runtime.errors import InputError

PROMPT_SLOT = "{prompt}"
LLAVA_15_TEMPLATE = "USER: <image>\n{prompt} ASSISTANT:"  # llava-hf/llava-1.5-*-hf's chat template, one turn


@dataclass
class Prompt:
    text: str
    input_ids: list[int]          # the whole prompt with one image token id where the image goes
    prefix_ids: list[int]         # before the image
    suffix_ids: list[int]         # after the image
    suffix_spans: list[tuple[int, int] | None]  # character span in `text` of each suffix token, None if outside it


class PromptTokenizer:
    def __init__(self, tokenizer_file, template: str, image_token: str):
        if template.count(PROMPT_SLOT) != 1 or template.count(image_token) != 1:
            raise InputError(f"prompt template {template!r} must hold {PROMPT_SLOT} and {image_token} once each")
        self.tokenizer = Tokenizer.from_file(str(tokenizer_file))
        self.template, self.image_token = template, image_token
        self.image_token_id = self.tokenizer.token_to_id(image_token)

    def encode(self, text: str) -> Prompt:
        if not text or not text.strip():
            raise InputError("the prompt is empty: pass a question or instruction with --prompt (or a non-empty "
                             "\"prompt\" in each request line)")
        if self.image_token in text:
            raise InputError(f"the prompt contains {self.image_token!r}; the template already places the image, "
                             "remove it from the prompt")
        full = self.template.replace(PROMPT_SLOT, text)
        start = self.template.index(PROMPT_SLOT)  # where the prompt's characters begin in `full`
        enc = self.tokenizer.encode(full)
        ids = enc.ids
        where = [i for i, t in enumerate(ids) if t == self.image_token_id]
        if len(where) != 1:
            raise InputError(f"expected one image token in the tokenized prompt, found {len(where)}")
        cut = where[0]
        spans = []
        for a, b in enc.offsets[cut + 1:]:
            a, b = max(a - start, 0), min(b - start, len(text))
            spans.append((a, b) if a < b else None)
        return Prompt(text, ids, ids[:cut], ids[cut + 1:], spans)

    def decode(self, ids) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)

    def pad_suffixes(self, prompts: list[Prompt], pad_id: int):
        """Right-pads the suffixes: ids [B, T], mask [B, T] (int32)."""
        width = max(len(p.suffix_ids) for p in prompts)
        ids = np.full((len(prompts), width), pad_id, dtype=np.int32)
        mask = np.zeros((len(prompts), width), dtype=np.int32)
        for b, p in enumerate(prompts):
            ids[b, :len(p.suffix_ids)] = p.suffix_ids
            mask[b, :len(p.suffix_ids)] = 1
        return ids, mask
