"""The calibrate report ends in a verdict a user can act on, from the held-out requests' logits and tokens."""
import pytest

from calibration.report import verdict


@pytest.mark.parametrize("cosine, first, word", [
    (0.999, 1.0, "verdict: faithful: answers as the source dir does"),
    (0.995, 0.9, "verdict: close: most answers as the source's; near ties may flip"),
    (0.96, 0.8, "verdict: close"),
    (0.97, 0.5, "verdict: degraded: answers differ from the source's"),
    (0.82, 1.0, "verdict: degraded"),
])
def test_verdict_follows_the_lowest_cosine_and_the_first_token_agreement(cosine, first, word):
    line = verdict({"logit_cosine_min": cosine, "first_token_match": first, "requests": 10})
    assert line.startswith(word)
    assert f"min logit cosine {cosine:.3f}, first token identical on {first:.0%} of 10 held-out requests" in line
    assert "cli.py eval DIR --data FILE.jsonl" in line
