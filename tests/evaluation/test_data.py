"""The question file: what a good line becomes, and each bad line named by FILE:LINE with what to fix."""
import json
import shutil

import pytest

from evaluation.data import Question, read_questions
from runtime.errors import InputError
from tests.conftest import IMAGES


@pytest.fixture
def folder(tmp_path):
    (tmp_path / "img").mkdir()
    shutil.copy(IMAGES / "chelsea.jpg", tmp_path / "img" / "cat.jpg")
    return tmp_path


def write(folder, *lines) -> str:
    path = folder / "q.jsonl"
    path.write_text("\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines) + "\n")
    return path


def error(path) -> str:
    with pytest.raises(InputError) as e:
        read_questions(path)
    return str(e.value)


def test_good_lines_become_questions_with_images_resolved_and_blank_lines_skipped(folder):
    path = write(folder, {"image": "img/cat.jpg", "question": "Is there a cat?", "answer": "yes", "type": "pope",
                          "target_box": [1, 2, 3, 4], "question_id": "q7"},  # a benchmark's own keys are ignored
                 "", "   ",
                 {"image": str(IMAGES / "coffee.jpg"), "question": "What colour?", "answer": "red",
                  "choices": ["blue", "red"], "id": 7})
    assert read_questions(path) == [
        Question(1, folder / "img" / "cat.jpg", "Is there a cat?", "yes", "pope"),
        Question(4, IMAGES / "coffee.jpg", "What colour?", "B", "all", ("blue", "red"), 7)]


def test_the_prompt_is_the_question_as_is_or_llava_s_multiple_choice_prompt(folder):
    path = write(folder, {"image": "img/cat.jpg", "question": "What is it? ", "answer": "cat"},
                 {"image": "img/cat.jpg", "question": "What is it?", "answer": "a", "choices": ["cat", "dog"]})
    open_ended, mc = read_questions(path)
    assert open_ended.prompt == "What is it? " and mc.answer == "A"
    assert mc.prompt == "What is it?\nA. cat\nB. dog\nAnswer with the option's letter from the given choices directly."


@pytest.mark.parametrize("line, says", [
    ('{"image": "img/cat.jpg", "question": "Q?", "answer": "yes"', "not valid JSON"),
    ('["img/cat.jpg", "Q?", "yes"]', "a JSON list, expected one"),
    ({"image": "img/cat.jpg", "question": "Q?"}, "no 'answer'; each line needs"),
    ({"image": "img/cat.jpg", "prompt": "Q?", "answer": "yes"}, 'question files say "question"'),
    ({"image": "img/cat.jpg", "question": "Q?", "answer": 2}, '"answer" must be a non-empty string, found 2; write '
                                                              'it in quotes: "2"'),
    ({"image": "img/cat.jpg", "question": "", "answer": "yes"}, '"question" must be a non-empty string'),
    ({"image": "img/cat.jpg", "question": "Q?", "answer": "yes", "type": None}, '"type" must be a non-empty string'),
    ({"image": "img/cat.jpg", "question": "Q?", "answer": "yes", "choises": ["a", "b"]},
     "key 'choises' is not one of image, question, answer, type, choices, id: did you mean 'choices'?"),
    ({"image": "img/cat.jpg", "question": "Q?", "answer": "yes", "options": ["a", "b"]}, "did you mean 'choices'?"),
    ({"image": "img/cat.jpg", "question": "Q?", "answer": "A", "choices": ["only"]}, '"choices" must be a list of 2..26'),
    ({"image": "img/cat.jpg", "question": "Q?", "answer": "C", "choices": ["x", "y"]},
     "\"answer\" \"C\" is neither a letter A..B nor the text of one of the choices ['x', 'y']"),
    ({"image": "img/cat.jpg", "question": "Q?", "answer": "yes", "id": 1.5}, '"id" must be a string or an integer'),
    ({"image": "img/dog.jpg", "question": "Q?", "answer": "yes"}, "image 'img/dog.jpg' does not exist (looked for "),
    ({"image": "img", "question": "Q?", "answer": "yes"}, "image 'img' is not a file"),
    ({"image": "q.jsonl", "question": "Q?", "answer": "yes"}, "image 'q.jsonl' is not an image Pillow can read"),
])
def test_a_bad_line_is_named_by_file_and_line_with_what_to_fix(folder, line, says):
    good = {"image": "img/cat.jpg", "question": "Q?", "answer": "yes"}
    path = write(folder, good, "", line)
    message = error(path)
    assert message.startswith(f"1 bad line(s) in the question file: {path}:3: ") and says in message, message


def test_every_bad_line_is_found_in_one_pass(folder):
    good = {"image": "img/cat.jpg", "question": "Q?", "answer": "yes"}
    lines = [good] * 3 + ["{"] + [good] * 3 + [{**good, "image": "img/gone.jpg"}] + [{"image": "x"}] * 6
    path = write(folder, *lines)
    message = error(path)
    assert message.startswith("8 bad line(s) in the question file: ")
    assert [f"{path}:{n}:" in message for n in (4, 8, 9, 10, 11, 12, 13)] == [True] * 5 + [False] * 2
    assert message.endswith("(and 3 more bad lines)")


def test_a_missing_or_empty_file_says_what_a_question_file_holds(folder):
    assert error(folder / "none.jsonl").startswith(f"question file {folder / 'none.jsonl'} does not exist; pass --data")
    assert error(write(folder, "", " ")).startswith(f"question file {folder / 'q.jsonl'} holds no questions")
