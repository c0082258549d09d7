"""A decoder plan has a decode and a prefill profile; each call runs on the one whose opt shapes are nearest."""
from engines.tensorrt.runner import pick_profile

DECODE = {"hidden_in": ((1, 1, 64), (1, 1, 64), (4, 4096, 64)), "attention_mask": ((1, 1, 1), (1, 1, 632), (4, 4096, 4096))}
PREFILL = {"hidden_in": ((1, 1, 64), (1, 632, 64), (4, 4096, 64)),
           "attention_mask": ((1, 1, 1), (1, 632, 632), (4, 4096, 4096))}


def test_one_token_runs_on_the_decode_profile_and_a_prompt_on_the_prefill_one():
    profiles = [DECODE, PREFILL]
    assert pick_profile(profiles, {"hidden_in": (1, 1, 64), "attention_mask": (1, 1, 640)}, current=1) == 0
    assert pick_profile(profiles, {"hidden_in": (1, 598, 64), "attention_mask": (1, 598, 613)}) == 1
    assert pick_profile(profiles, {"hidden_in": (2, 40, 64), "attention_mask": (2, 40, 55)}) == 1  # nearer 632 than 1


def test_shapes_no_profile_holds_keep_the_current_one():
    assert pick_profile([DECODE, PREFILL], {"hidden_in": (8, 1, 64), "attention_mask": (8, 1, 9)}, current=1) == 1
    assert pick_profile([DECODE], {"hidden_in": (1, 1, 64)}) == 0
