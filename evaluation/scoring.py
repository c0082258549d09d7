"""Is a model's answer right? Three rules, after the benchmarks that use them:

- short answers: normalized exact match, normalized as VQAv2's evaluation (and lmms-eval's) does: lower case,
  punctuation out (a decimal point and a thousands comma between digits stay digits), the articles a/an/the out,
  number words zero..twenty as digits, whitespace collapsed. A prediction counts up to its first line break.
- yes/no (the reference is yes or no): the prediction's first word decides, as POPE scores ("Yes, there is" -> yes).
- multiple choice: the option letter the prediction gives ("B", "B.", "(B)", "B. red", "Answer: B") or the option's
  own text, against the reference letter.
"""
import re
import string

ARTICLES = frozenset({"a", "an", "the"})
NUMBER_WORDS = {w: str(i) for i, w in enumerate(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
    "seventeen eighteen nineteen twenty".split())}
LETTERS = string.ascii_uppercase
MC_INSTRUCTION = "Answer with the option's letter from the given choices directly."  # LLaVA-1.5's MC prompt

_APOSTROPHES = re.compile(r"['\u2019]")
_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}\b)")  # 1,000 -> 1000
_PUNCTUATION = re.compile(r"(?<!\d)\.|\.(?!\d)|[^\w\s.]|_")  # every mark but a decimal point between digits
# A letter given as a letter: "B", "B.", "B)", "B:", "B,", "(B)", "(b)", then anything
_LETTER = re.compile(r"\(([A-Za-z])\)|([A-Z])(?:[.:),]|$)")
_LONE_LOWER = re.compile(r"([a-z])[.)]?")  # "b", "b." or "b)" and nothing else
_ANSWER_IS = re.compile(r"(?i:(?:the )?(?:answer|option)(?: is)?)\s*:?\s*\(?([A-Z])\b")  # "Answer: B", "the answer is (C)"


def first_line(prediction: str) -> str:
    """What a prediction answers before any explanation: its first non-blank line, stripped."""
    return prediction.strip().split("\n", 1)[0].strip()


def normalize(text: str) -> str:
    """VQAv2's answer normalization: 'The Two dogs.' -> '2 dogs', "man's t-shirt" -> 'mans t shirt'."""
    text = _APOSTROPHES.sub("", text.lower())
    text = _PUNCTUATION.sub(" ", _THOUSANDS.sub("", text))
    words = (NUMBER_WORDS.get(w, w) for w in text.split())
    return " ".join(w for w in words if w not in ARTICLES)


def is_yes_no(answer: str) -> bool:
    return normalize(answer) in ("yes", "no")


def option_letter(prediction: str, choices) -> str | None:
    """The option a prediction picks, as its letter; None where it names none of `choices`. A letter written as
    a letter wins over option text (so "A. red" is A even where another option is "red"); then the whole first
    line as an option's text ("A red ball" is the option "red ball", not the letter A); then "the answer is B"."""
    text, letters = first_line(prediction), LETTERS[:len(choices)]
    m = _LETTER.match(text) or _LONE_LOWER.fullmatch(text)
    if m:
        letter = next(g for g in m.groups() if g).upper()
        return letter if letter in letters else None
    said = normalize(text)
    for letter, option in zip(letters, choices):
        if said == normalize(option):
            return letter
    m = _ANSWER_IS.search(text)
    return m.group(1) if m and m.group(1) in letters else None


def answer_letter(answer: str, choices) -> str | None:
    """A reference answer of a multiple-choice question as its letter: the letter itself ("B", "b", "(B)", "B.")
    or an option's text; None where it is neither."""
    m = re.fullmatch(r"\(?([A-Za-z])\)?\.?", answer.strip())
    if m and m.group(1).upper() in LETTERS[:len(choices)]:
        return m.group(1).upper()
    said = normalize(answer)
    return next((letter for letter, option in zip(LETTERS, choices) if normalize(option) == said), None)


def is_correct(prediction: str, answer: str, choices=None) -> bool:
    """The rule that fits the question: multiple choice where it has choices, yes/no where the reference is yes or
    no, normalized exact match otherwise."""
    if choices:
        want = answer_letter(answer, choices)
        return want is not None and option_letter(prediction, choices) == want
    said, want = normalize(first_line(prediction)), normalize(answer)
    if want in ("yes", "no"):
        return said.split()[:1] == [want]
    return said == want


def mc_prompt(question: str, choices) -> str:
    """LLaVA-1.5's multiple-choice prompt: the question, one 'A. option' line per choice, then the instruction."""
    return "\n".join([question, *(f"{letter}. {option}" for letter, option in zip(LETTERS, choices)), MC_INSTRUCTION])
