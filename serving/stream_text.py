"""Streamed text deltas that never have to be taken back. The engine reports the whole text so far after each token
(cut before any stop string); a delta is sent only once no later token can change it: a trailing U+FFFD may be the
first bytes of a character still being generated, and a tail that begins a stop string may yet be cut. At the end
the Result's text flushes what was held, so the joined deltas equal the non-streamed text."""

REPLACEMENT = "\ufffd"  # what a tokenizer decodes an incomplete UTF-8 sequence to


class StreamText:
    def __init__(self, stops=()):
        self.stops, self.sent = tuple(stops), ""

    def update(self, text: str) -> str:
        """The delta to send now, given the text so far ("" when nothing is safe yet)."""
        end = min(len(text.rstrip(REPLACEMENT)), len(text) - stop_prefix_tail(text, self.stops))
        return self._extend(text[:end])

    def finish(self, text: str) -> str:
        """The last delta: the final text, held parts included. `self.sent == text` afterwards unless the text changed
        under what was already sent (a tokenizer whose decoding rewrites earlier characters), which cannot be undone."""
        return self._extend(text)

    def _extend(self, safe: str) -> str:
        if len(safe) <= len(self.sent) or not safe.startswith(self.sent):
            return ""
        delta, self.sent = safe[len(self.sent):], safe
        return delta


def stop_prefix_tail(text: str, stops) -> int:
    """The length of the longest end of `text` that is the beginning of a stop string (0: none)."""
    return max((k for s in stops for k in range(min(len(s), len(text)), 0, -1) if text.endswith(s[:k])), default=0)
