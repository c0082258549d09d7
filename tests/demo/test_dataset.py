"""The demo task's splits: seeded, balanced, and every answer true of the picture it is asked about."""
import json

import numpy as np
import pytest
from PIL import Image

import cli
from demo.dataset import questions, write_split
from demo.questions import SIDE_MARGIN, TYPES, absent, ask
from demo.scenes import COLOURS, PATTERNS, SIZE, pattern_fill, patch_labels, render, sample_scene
from runtime.errors import ConfigError


@pytest.fixture(scope="module")
def split(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "split"
    assert cli.main(["demo-data", "--seed", "3", "--count", "24", "--out", out]) == 0
    return out, [json.loads(line) for line in (out / "questions.jsonl").read_text().splitlines()]


def test_a_seed_gives_the_same_split_byte_for_byte_and_another_seed_another(split, tmp_path):
    out, lines = split
    write_split(tmp_path / "again", 3, 24)
    assert (tmp_path / "again/questions.jsonl").read_bytes() == (out / "questions.jsonl").read_bytes()
    assert (tmp_path / "again/images/000007.png").read_bytes() == (out / "images/000007.png").read_bytes()
    write_split(tmp_path / "other", 4, 24)
    assert (tmp_path / "other/questions.jsonl").read_bytes() != (out / "questions.jsonl").read_bytes()


def test_lines_hold_the_eval_schema_types_take_turns_and_images_are_336_px(split):
    out, lines = split
    assert [q["type"] for q in lines] == [TYPES[i % 4] for i in range(24)]
    for i, q in enumerate(lines):
        assert q["image"] == f"images/{i:06d}.png" and Image.open(out / q["image"]).size == (SIZE, SIZE)
        assert set(q) >= {"image", "question", "answer", "type"} and 3 <= q["objects"] <= 6
        allowed = {"colour": COLOURS, "pattern": PATTERNS, "exist": ("yes", "no"), "side": ("left", "right")}[q["type"]]
        assert q["answer"] in allowed


def test_every_answer_is_true_of_its_scene():
    rng_checks = 0
    for scene, q in questions(11, 200):
        names = [t.name for t in scene.things]
        t = q.target
        if q.type == "colour":
            assert [s.pattern for s in scene.things].count(t.pattern) == 1 and q.answer == t.colour
            assert t.pattern in q.question
        elif q.type == "pattern":
            assert [s.colour for s in scene.things].count(t.colour) == 1 and q.answer == t.pattern
        elif q.type == "side":
            assert names.count(t.name) == 1 and abs(t.centre[0] - SIZE / 2) >= SIDE_MARGIN
            assert q.answer == ("left" if t.centre[0] < SIZE / 2 else "right")
        else:
            named = next(f"{p} {c}" for c in COLOURS for p in PATTERNS if f" {p} {c} object" in q.question)
            assert (named in names) == (q.answer == "yes")
            rng_checks += q.answer == "no"
    assert 15 <= rng_checks <= 35  # about half of the 50 exist questions are "no"


def test_each_object_shows_its_colour_and_pattern_on_every_patch_it_owns():
    rng = np.random.default_rng(5)
    scene = sample_scene(rng, 6, 6)
    pixels = np.asarray(render(scene)).astype(int).reshape(24, 14, 24, 14, 3).transpose(0, 2, 1, 3, 4)
    owner = patch_labels(scene)
    for i, t in enumerate(scene.things):
        patches = pixels[owner == i + 1]  # [n, 14, 14, 3]
        assert len(patches) >= 1  # each object owns patches: pruning can keep or drop it
        fill = pattern_fill(t.pattern, COLOURS[t.colour], 14).reshape(-1, 3)
        for patch in patches:  # the colour, and where the pattern is not plain its shade, are on the patch
            seen = {tuple(p) for p in patch.reshape(-1, 3)}
            assert {tuple(int(v) for v in c) for c in np.unique(fill, axis=0)} <= seen


def test_hard_negatives_mix_colours_and_patterns_the_scene_has():
    rng = np.random.default_rng(0)
    scene = sample_scene(rng, 5, 5)
    present = {(t.colour, t.pattern) for t in scene.things}
    picks = [absent(scene, rng) for _ in range(50)]
    assert not present & set(picks)
    hard = [p for p in picks if p[0] in {c for c, _ in present} and p[1] in {s for _, s in present}]
    assert len(hard) >= 25


def test_bad_counts_and_existing_dirs_are_refused_with_the_fix(split, capsys):
    out, _ = split
    with pytest.raises(ConfigError, match="--count must be at least 1, got 0"):
        write_split(out.parent / "none", 1, 0)
    assert cli.main(["demo-data", "--count", "2", "--out", out]) == 2
    assert "already exists; pass --force" in capsys.readouterr().err
    assert not (out.parent / "none").exists()


def test_a_scene_without_a_unique_colour_asks_no_pattern_question():
    from demo.scenes import Scene, Thing
    twins = Scene((Thing("red", "plain", "small", (10, 10, 40, 40)), Thing("red", "dotted", "small", (100, 10, 130, 40))),
                  {})
    assert ask(twins, "pattern", np.random.default_rng(0)) is None
    assert ask(twins, "colour", np.random.default_rng(0)).answer == "red"
