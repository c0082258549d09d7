"""Questions about a scene that need one object's region among distractors, with one-word answers, and captions that
list every object (for the CLIP and captioning stages of training)."""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np

from demo.scenes import COLOURS, PATTERNS, SIZE, Scene, Thing

TYPES = ("colour", "pattern", "exist", "side")
TEMPLATES = {
    "colour": ("What colour is the {pattern} object?", "What is the colour of the {pattern} object?"),
    "pattern": ("What pattern is the {colour} object?", "Which pattern does the {colour} object have?"),
    "exist": ("Is there a {pattern} {colour} object?", "Is there a {pattern} {colour} object in the picture?"),
    "side": ("Is the {pattern} {colour} object on the left or the right?",
             "Which side is the {pattern} {colour} object on?"),
}
SIDE_MARGIN = 24  # px from the vertical midline: a "side" question asks only about an object clearly on one side


@dataclass(frozen=True)
class Question:
    question: str
    answer: str
    type: str
    target: Thing | None  # the object the question is about (None: "no" to an exist question)


def ask(scene: Scene, kind: str, rng: np.random.Generator) -> Question | None:
    """A question of `kind` about the scene, or None where the scene has no object it can ask about."""
    template = TEMPLATES[kind][int(rng.integers(len(TEMPLATES[kind])))]
    things = scene.things
    if kind == "colour":  # the pattern must name one object
        patterns = Counter(t.pattern for t in things)
        options = [t for t in things if patterns[t.pattern] == 1]
        return _pick(options, rng, lambda t: Question(template.format(pattern=t.pattern), t.colour, kind, t))
    if kind == "pattern":
        colours = Counter(t.colour for t in things)
        options = [t for t in things if colours[t.colour] == 1]
        return _pick(options, rng, lambda t: Question(template.format(colour=t.colour), t.pattern, kind, t))
    names = Counter(t.name for t in things)
    if kind == "side":
        options = [t for t in things if names[t.name] == 1 and abs(t.centre[0] - SIZE / 2) >= SIDE_MARGIN]
        return _pick(options, rng, lambda t: Question(template.format(colour=t.colour, pattern=t.pattern),
                                                      "left" if t.centre[0] < SIZE / 2 else "right", kind, t))
    if kind == "exist":
        if rng.random() < 0.5:
            t = things[int(rng.integers(len(things)))]
            return Question(template.format(colour=t.colour, pattern=t.pattern), "yes", kind, t)
        colour, pattern = absent(scene, rng)
        return Question(template.format(colour=colour, pattern=pattern), "no", kind, None)
    raise ValueError(f"unknown question type {kind!r}; known: {', '.join(TYPES)}")


def absent(scene: Scene, rng: np.random.Generator) -> tuple[str, str]:
    """A colour and pattern no object has together. Mostly a hard one: a colour and a pattern the scene does have,
    on different objects."""
    present = {(t.colour, t.pattern) for t in scene.things}
    hard = [(c, s) for c in {t.colour for t in scene.things} for s in {t.pattern for t in scene.things}
            if (c, s) not in present]
    pool = sorted(hard) if hard and rng.random() < 0.7 else [(c, s) for c in COLOURS for s in PATTERNS
                                                               if (c, s) not in present]
    return pool[int(rng.integers(len(pool)))]


def _pick(options, rng, make):
    return make(options[int(rng.integers(len(options)))]) if options else None


def where(t: Thing) -> str:
    """The object's place on a 3x3 grid: "top left", "middle", "bottom"..."""
    x, y = t.centre
    row = ("top", "", "bottom")[min(2, int(3 * y / SIZE))]
    col = ("left", "", "right")[min(2, int(3 * x / SIZE))]
    return " ".join(w for w in (row, col) if w) or "middle"


def describe(t: Thing, places: bool = True) -> str:
    """"a small striped red disc at the top left", or without its place "a small striped red disc"."""
    place = where(t)
    at = (" in the middle" if place == "middle" else f" at the {place}") if places else ""
    return f"a {t.size} {t.pattern} {t.colour} {t.outline}{at}"


def caption(scene: Scene, rng: np.random.Generator, places: bool = True) -> str:
    """Every object, in a random order: "a small striped red disc at the top left, a large plain blue tile in the
    middle."."""
    return ", ".join(describe(scene.things[int(i)], places) for i in rng.permutation(len(scene.things))) + "."
