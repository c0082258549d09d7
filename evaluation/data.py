"""The question file of `cli.py eval`: JSONL, one object per line (blank lines skipped):

    {"image": "pope/000123.jpg", "question": "Is there a dog in the image?", "answer": "yes", "type": "adversarial"}
    {"image": "/data/mme/a.png", "question": "What colour is the car?", "answer": "red",
     "choices": ["blue", "red", "green"]}

- image: a path, relative to the file's folder or absolute;
- question: the prompt, sent as it is (with choices, LLaVA's multiple-choice prompt is built around it);
- answer: the reference; with choices, its letter or its option's text (kept as the letter);
- type (optional): the group it counts in for the per-type accuracy ("all" where absent);
- choices (optional): the options, 2..26 strings, lettered A, B, ...;
- id (optional): a string or integer carried into the per-request records.
Other keys (a benchmark's own metadata) are ignored, except one that looks like a misspelt "choices" ("choises",
"options"): that is refused, since it would turn a multiple-choice question into an open one.

Every line is checked, and every image opened far enough to read its format, before any engine runs: all the
problems are reported at once, each as FILE:LINE.
"""
import difflib
import json
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from evaluation.scoring import LETTERS, answer_letter, mc_prompt
from runtime.errors import InputError

REQUIRED = ("image", "question", "answer")
OPTIONAL = ("type", "choices", "id")
DEFAULT_TYPE = "all"
SCHEMA = '{"image": PATH, "question": TEXT, "answer": TEXT} (optionally "type", "choices", "id")'
CHOICE_SYNONYMS = ("options", "option", "choice", "candidates")
SHOWN = 5  # problems named in the error; the rest are counted


@dataclass(frozen=True)
class Question:
    line: int  # in the file, from 1
    image: Path
    question: str
    answer: str  # a letter for multiple choice
    type: str = DEFAULT_TYPE
    choices: tuple[str, ...] | None = None
    id: str | int | None = None

    @property
    def prompt(self) -> str:
        return mc_prompt(self.question, self.choices) if self.choices else self.question


def read_questions(path) -> list[Question]:
    """Every question of the file, in order; one InputError naming each bad FILE:LINE and what to fix."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"question file {path} does not exist; pass --data FILE.jsonl with one {SCHEMA} object per "
                         "line (see the README, Measuring accuracy)")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"question file {path} cannot be read as UTF-8 text ({e}); write it as UTF-8 JSONL") from None
    questions, problems, images = [], [], {}
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            questions.append(parse_line(line, n, path.parent, images))
        except ValueError as e:
            problems.append(f"{path}:{n}: {e}")
    if problems:
        more = f" (and {len(problems) - SHOWN} more bad lines)" if len(problems) > SHOWN else ""
        raise InputError(f"{len(problems)} bad line(s) in the question file: " + "; ".join(problems[:SHOWN]) + more)
    if not questions:
        raise InputError(f"question file {path} holds no questions; write one {SCHEMA} object per line")
    return questions


def parse_line(line: str, n: int, folder: Path, images: dict) -> Question:
    """Line n as a Question; ValueError saying what is wrong and how to fix it. `images` caches each image's check."""
    try:
        item = json.loads(line)
    except json.JSONDecodeError as e:
        raise ValueError(f"not valid JSON ({e.msg} at column {e.colno}); each line must be one {SCHEMA} object") from None
    if not isinstance(item, dict):
        raise ValueError(f"a JSON {type(item).__name__}, expected one {SCHEMA} object")
    missing = [k for k in REQUIRED if k not in item]
    if missing:
        hint = ' (`run --requests` files say "prompt"; question files say "question")' if "prompt" in item else ""
        raise ValueError(f"no {', '.join(map(repr, missing))}; each line needs {SCHEMA}{hint}")
    misspelt = [k for k in sorted(set(item) - set(REQUIRED) - set(OPTIONAL))
                if k.lower() in CHOICE_SYNONYMS or difflib.get_close_matches(k.lower(), ["choices"], 1, 0.75)]
    if misspelt:
        raise ValueError(f"key {misspelt[0]!r} is not one of {', '.join(REQUIRED + OPTIONAL)}: did you mean "
                         "'choices'? (a misspelt 'choices' would score a multiple-choice question as open-ended)")
    for key in ("image", "question", "answer", "type"):
        if key in item and (not isinstance(item[key], str) or not item[key].strip()):
            raise ValueError(f'"{key}" must be a non-empty string, found {json.dumps(item[key])}'
                             + (f'; write it in quotes: "{item[key]}"' if isinstance(item[key], (int, float)) else ""))
    if "id" in item and (isinstance(item["id"], bool) or not isinstance(item["id"], (str, int))):
        raise ValueError(f'"id" must be a string or an integer, found {json.dumps(item["id"])}')
    choices = parse_choices(item.get("choices"))
    answer = item["answer"]
    if choices:
        answer = answer_letter(answer, choices)
        if answer is None:
            raise ValueError(f'"answer" {json.dumps(item["answer"])} is neither a letter A..{LETTERS[len(choices) - 1]} '
                             f"nor the text of one of the choices {list(choices)}")
    image = Path(item["image"]).expanduser()
    image = image if image.is_absolute() else folder / image
    if image not in images:
        images[image] = image_problem(image)
    if images[image]:
        raise ValueError(f"image {item['image']!r} {images[image]}")
    return Question(n, image, item["question"], answer, item.get("type", DEFAULT_TYPE), choices, item.get("id"))


def parse_choices(choices) -> tuple[str, ...] | None:
    if choices is None:
        return None
    if (not isinstance(choices, list) or not 2 <= len(choices) <= len(LETTERS)
            or not all(isinstance(c, str) and c.strip() for c in choices)):
        raise ValueError(f'"choices" must be a list of 2..{len(LETTERS)} non-empty strings, found {json.dumps(choices)}')
    return tuple(choices)


def image_problem(image: Path) -> str | None:
    """What is wrong with an image file (None: nothing); only its header is read."""
    if not image.exists():
        return (f"does not exist (looked for {image}); relative paths start at the question file's folder, or give an "
                "absolute path")
    if not image.is_file():
        return f"is not a file ({image}); name an image file"
    try:
        with Image.open(image):
            return None
    except UnidentifiedImageError:
        return f"is not an image Pillow can read ({image}); convert it to JPEG or PNG"
    except OSError as e:
        return f"cannot be read ({e.strerror or e}); check its permissions"
