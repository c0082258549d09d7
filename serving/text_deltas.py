"""A streamed answer's text as pieces: each piece extends what was sent, and the pieces join to the final text.

The text so far can still change at its end: a trailing U+FFFD is a character whose bytes have not all come, and
a tail that begins a stop string may turn into that stop string and be cut. Both are held back until the next
token settles them."""


class TextDeltas:
    def __init__(self, stop: tuple[str, ...] = ()):
        self.stop, self.sent = stop, ""

    def push(self, text: str) -> str:
        """The new piece of the text so far that is safe to send ("" if none)."""
        safe = text[:len(text) - self._held(text)]
        if not safe.startswith(self.sent) or len(safe) <= len(self.sent):
            return ""
        piece, self.sent = safe[len(self.sent):], safe
        return piece

    def finish(self, text: str) -> str:
        """The rest of the final text. What was sent is always a prefix of it: only a stop string cuts text, and
        no tail that could begin one was sent."""
        rest, self.sent = text[len(self.sent):], text
        return rest

    def _held(self, text: str) -> int:
        if text.endswith("\ufffd"):
            return len(text) - len(text.rstrip("\ufffd"))
        return max((n for s in self.stop for n in range(min(len(s) - 1, len(text)), 0, -1)
                    if text.endswith(s[:n])), default=0)
