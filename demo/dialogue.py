"""Token sequences for LLaVA-1.5's conversation format, as the runtime prompts the model:
"<s>USER: <image>\\nQ1 ASSISTANT: A1</s>USER: Q2 ASSISTANT: A2</s>...", with a loss on each answer and its </s>.
Several turns share one image, so each pass over its 576 visual tokens trains several answers."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from runtime.prompt import LLAVA_15_TEMPLATE, PromptTokenizer


@dataclass
class Sequence:
    ids: list[int]  # one image token where the image goes
    targets: list[int]  # -100 where no loss; else the next token at that position
    answer_at: list[int]  # per turn, the position whose next token is the answer's first


class DialogueTokenizer:
    def __init__(self, tokenizer_file):
        self.prompts = PromptTokenizer(tokenizer_file, LLAVA_15_TEMPLATE, "<image>")
        self.tokenizer = self.prompts.tokenizer
        self.image_id = self.tokenizer.token_to_id("<image>")
        self.eos = self.tokenizer.token_to_id("</s>")
        self.pad = self.tokenizer.token_to_id("<pad>")

    def encode(self, turns: list[tuple[str, str]]) -> Sequence:
        text, answers = "", []
        for n, (question, answer) in enumerate(turns):
            text += ("USER: <image>\n" if n == 0 else "USER: ") + question + " ASSISTANT: "
            answers.append((len(text), len(text) + len(answer)))
            text += answer + "</s>"
        enc = self.tokenizer.encode(text)
        ids, offsets = enc.ids, enc.offsets
        first = self.prompts.encode(turns[0][0]).input_ids
        if ids[:len(first)] != first:  # training must see exactly what the runtime will prompt with
            raise AssertionError(f"the first turn tokenizes differently from the runtime's prompt: {turns[0]}")
        answer_token = [any(max(a, s) < min(b, e) for a, b in answers) for s, e in offsets]
        scored = [ans or (tok == self.eos and i > 0 and answer_token[i - 1])
                  for i, (tok, ans) in enumerate(zip(ids, answer_token))]
        targets = [ids[i + 1] if i + 1 < len(ids) and scored[i + 1] else -100 for i in range(len(ids))]
        starts = [i - 1 for i in range(1, len(ids)) if answer_token[i] and not answer_token[i - 1]]
        if len(starts) != len(turns):
            raise AssertionError(f"{len(turns)} answers but {len(starts)} answer spans in {text!r}")
        return Sequence(ids, targets, starts)


def collate(seqs: list[Sequence], n_visual: int, pad: int, image_id: int):
    """ids [B, T] with the image token repeated n_visual times (as transformers' processor expands it), targets
    [B, T], attention mask [B, T]; right-padded."""
    expanded = []
    for s in seqs:
        at = s.ids.index(image_id)
        expanded.append((s.ids[:at] + [image_id] * n_visual + s.ids[at + 1:],
                         s.targets[:at] + [-100] * n_visual + s.targets[at + 1:]))
    width = max(len(i) for i, _ in expanded)
    ids = torch.full((len(seqs), width), pad, dtype=torch.long)
    targets = torch.full((len(seqs), width), -100, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for b, (i, t) in enumerate(expanded):
        ids[b, :len(i)], targets[b, :len(t)], mask[b, :len(i)] = torch.tensor(i), torch.tensor(t), 1
    return ids, targets, mask
