"""The demo model's words: the phrasings its tokenizers are trained on (so every colour and pattern is one token), and
which tokens of a text name an attribute (what IVTP's CLIP relevance should pick out)."""
from __future__ import annotations

import re

from demo.questions import TEMPLATES
from demo.scenes import COLOURS, OUTLINES, PATTERNS, SIZES

ATTRIBUTES = (*COLOURS, *PATTERNS)  # the words that name an object
CAPTION_PROMPT = "Describe the image."
PLACES = ("top left", "top", "top right", "left", "middle", "right", "bottom left", "bottom", "bottom right")
ANSWERS = ("yes", "no", "left", "right")


def phrasings() -> list[str]:
    """Every question template with every colour and pattern, caption fragments and answers: a corpus in which each
    word the task uses is frequent, so BPE learns it whole."""
    lines = [CAPTION_PROMPT]
    for kind, templates in TEMPLATES.items():
        for template in templates:
            lines += [template.format(colour=c, pattern=s) for c in COLOURS for s in PATTERNS]
    lines += [f"a {size} {s} {c} {o} at the {p}, in the middle." for size in SIZES for c in COLOURS for s in PATTERNS
              for o in OUTLINES for p in PLACES]
    lines += [f"{a}." for a in (*ANSWERS, *ATTRIBUTES)] * 20
    return lines


def attribute_of_tokens(offsets: list[tuple[int, int]], text: str) -> list[str | None]:
    """For each token (its character span in `text`), the attribute word it lies in, or None."""
    words = [(m.start(), m.end(), m.group().lower()) for m in re.finditer(r"[^\W\d_]+", text)]  # runs of letters
    hits = [next((w for s, e, w in words if s <= a and b <= e and b > a), None) for a, b in offsets]
    return [w if w in ATTRIBUTES else None for w in hits]
