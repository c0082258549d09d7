"""When a request's generation ends and what text it returns: at EOS or once its text holds a stop string
(finish reason "stop"), or at its token limit ("length"). As in OpenAI's API, the text is cut before the stop string;
the token ids keep the token that completed it, which may carry characters on either side of it."""
from dataclasses import dataclass, field

STOP, LENGTH = "stop", "length"


@dataclass
class Continuation:
    """One request's generated tokens, and why it finished (None while it runs)."""
    limit: int
    stop: tuple[str, ...] = ()
    tokens: list[int] = field(default_factory=list)
    finish_reason: str | None = None

    def add(self, token: int, eos: int, decode) -> None:
        self.tokens.append(token)
        # Only the whole decoded text can be searched: a stop string may span tokens, and a tokenizer's decoding of
        # a token depends on the ones before it (leading spaces, bytes of one character).
        if token == eos or (self.stop and first_stop(decode(self.tokens), self.stop) is not None):
            self.finish_reason = STOP
        elif len(self.tokens) >= self.limit:
            self.finish_reason = LENGTH

    def text(self, decode) -> str:
        text = decode(self.tokens)
        cut = first_stop(text, self.stop)
        return text if cut is None else text[:cut]


def first_stop(text: str, stops) -> int | None:
    """Where the earliest of the stop strings begins in text, None if none occurs."""
    return min((i for i in (text.find(s) for s in stops) if i >= 0), default=None)
