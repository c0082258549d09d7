"""The three scoring rules, each on the cases a benchmark's answers bring."""
import pytest

from evaluation.scoring import answer_letter, first_line, is_correct, mc_prompt, normalize, option_letter

COLOURS = ("blue", "red", "green", "a red ball")


@pytest.mark.parametrize("text, want", [
    ("The Two dogs.", "2 dogs"),
    ("  A   cat  ", "cat"),
    ("an apple", "apple"),
    ("the", ""),
    ("Theatre", "theatre"),  # an article only as a whole word
    ("twenty one", "20 1"),
    ("Zero", "0"),
    ("twentyone", "twentyone"),
    ("3.5", "3.5"),
    ("3.", "3"),
    ("1,000 people", "1000 people"),
    ("red, white, blue!", "red white blue"),
    ("man's t-shirt", "mans t shirt"),
    ("man\u2019s", "mans"),
    ("(yes)", "yes"),
    ("Café", "café"),
    ("a_b", "b"),  # an underscore is punctuation; then 'a' is an article
])
def test_normalize_as_vqav2_does(text, want):
    assert normalize(text) == want


def test_first_line_skips_leading_blank_lines_and_cuts_at_the_first_break():
    assert first_line("\n  red.\nBecause the car is red.") == "red."
    assert first_line("") == ""


@pytest.mark.parametrize("prediction, answer, want", [
    ("Red", "red", True),
    ("red.", "red", True),
    ("The red one", "red", False),
    ("A dog", "dog", True),
    ("dogs", "dog", False),
    ("Two", "2", True),
    ("2", "two", True),
    ("2 cats", "two", False),
    ("three\nThere are three cups on the table.", "3", True),
    ("3.0", "3", False),
    ("Stop sign", "stop-sign", True),
    ("", "red", False),
    ("   \n", "red", False),
])
def test_short_answers_match_after_normalization(prediction, answer, want):
    assert is_correct(prediction, answer) is want


@pytest.mark.parametrize("prediction, answer, want", [
    ("Yes, there is a dog in the image.", "yes", True),
    ("yes", "Yes", True),
    ("No.", "no", True),
    ("No, there is no dog.", "yes", False),
    ("Yes", "no", False),
    ("There is a dog.", "yes", False),  # the first word decides
    ("Yesterday", "yes", False),
    ("\nyes\n", "yes", True),
    ("", "no", False),
])
def test_yes_no_answers_are_decided_by_the_first_word(prediction, answer, want):
    assert is_correct(prediction, answer) is want


@pytest.mark.parametrize("prediction, want", [
    ("B", "B"),
    ("B.", "B"),
    ("(B)", "B"),
    ("B)", "B"),
    ("B: red", "B"),
    ("B. red", "B"),
    ("(c) green", "C"),
    ("b", "B"),
    ("b.", "B"),
    ("red", "B"),  # the option's text
    ("Red.", "B"),
    ("A red ball", "D"),  # 'A' here is an article: the text names option D
    ("A. red", "A"),  # a letter written as a letter wins over the text of option B
    ("The answer is C.", "C"),
    ("Answer: (D)", "D"),
    ("E", None),  # only four options
    ("purple", None),
    ("I think blue", None),
    ("Answer: Blue", None),
    ("", None),
])
def test_option_letter_reads_letters_in_their_usual_forms_and_option_text(prediction, want):
    assert option_letter(prediction, COLOURS) == want


@pytest.mark.parametrize("answer, want", [("B", "B"), ("b", "B"), ("(B)", "B"), ("B.", "B"), ("red", "B"),
                                          ("The red", "B"), ("E", None), ("purple", None)])
def test_a_reference_answer_is_kept_as_its_letter(answer, want):
    assert answer_letter(answer, COLOURS) == want


@pytest.mark.parametrize("prediction, answer, want", [
    ("B", "B", True),
    ("B. red", "red", True),  # the reference given as option text
    ("red", "B", True),
    ("C", "B", False),
    ("blue", "B", False),
    ("B", "purple", False),  # a reference that is no option never matches
])
def test_multiple_choice_compares_letters(prediction, answer, want):
    assert is_correct(prediction, answer, COLOURS) is want


def test_the_multiple_choice_prompt_is_llava_15s():
    assert mc_prompt("What colour is the car?", ("blue", "red")) == (
        "What colour is the car?\nA. blue\nB. red\nAnswer with the option's letter from the given choices directly.")
