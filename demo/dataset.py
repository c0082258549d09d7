"""Question splits of the demo task: each seed gives its own scenes, one question per image, the types in turn.
`cli.py demo-data` writes one as DIR/questions.jsonl plus DIR/images/, the format `cli.py eval` reads."""
from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from demo.questions import TYPES, Question, ask
from demo.scenes import Scene, render, sample_scene
from runtime.engine_dir import staged_engine_dir
from runtime.errors import ConfigError


def questions(seed: int, count: int, n_min: int = 3, n_max: int = 6) -> Iterator[tuple[Scene, Question]]:
    """`count` (scene, question) pairs, question types cycled in TYPES order. Scenes a type cannot ask about (no
    object with a unique colour, say) are drawn again, from the same stream."""
    rng = np.random.default_rng([seed, 0x5CE4E])
    for i in range(count):
        while True:
            scene = sample_scene(rng, n_min, n_max)
            q = ask(scene, TYPES[i % len(TYPES)], rng)
            if q is not None:
                yield scene, q
                break


def write_split(out: Path, seed: int, count: int, force: bool = False, progress=lambda done, total: None) -> Path:
    """DIR/questions.jsonl (image relative to DIR, question, answer, type, and the box of the object asked about)
    and DIR/images/NNNNNN.png, written beside DIR and renamed into place when complete."""
    if count < 1:
        raise ConfigError(f"--count must be at least 1, got {count}")
    with staged_engine_dir(out, force) as tmp:
        (tmp / "images").mkdir()
        lines = []
        for i, (scene, q) in enumerate(questions(seed, count)):
            name = f"images/{i:06d}.png"
            render(scene).save(tmp / name, optimize=False, compress_level=6)
            lines.append(json.dumps({"image": name, "question": q.question, "answer": q.answer, "type": q.type,
                                     "target_box": list(q.target.box) if q.target else None,
                                     "objects": len(scene.things)}))
            if (i + 1) % 100 == 0 or i + 1 == count:
                progress(i + 1, count)
        (tmp / "questions.jsonl").write_text("\n".join(lines) + "\n")
    return Path(out).resolve()
