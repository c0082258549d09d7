"""Streamed deltas: what is held back until the next token decides it, and that the joined deltas end as the text."""
from serving.stream_text import StreamText, stop_prefix_tail


def deltas(texts, final, stops=()):
    stream = StreamText(stops)
    out = [stream.update(t) for t in texts]
    return out, stream.finish(final), stream.sent


def test_an_incomplete_character_waits_for_the_bytes_that_complete_it():
    out, last, sent = deltas(["a", "a\ufffd", "a\ufffd\ufffd", "a中", "a中b"], "a中b")
    assert out == ["a", "", "", "中", "b"] and last == "" and sent == "a中b"


def test_a_replacement_character_that_stays_goes_out_with_what_follows_it_or_at_the_end():
    out, last, sent = deltas(["x\ufffd", "x\ufffdy", "x\ufffdy\ufffd"], "x\ufffdy\ufffd")
    assert out == ["x", "\ufffdy", ""] and last == "\ufffd" and sent == "x\ufffdy\ufffd"


def test_a_tail_that_may_begin_a_stop_string_is_held_and_dropped_once_cut():
    # stop "END": "E" and "EN" wait; "ENx" shows it was not the stop; the engine's text is cut before a real one
    out, last, sent = deltas(["hi E", "hi EN", "hi ENx", "hi ENx E", "hi ENx "], "hi ENx ", stops=("END", "#"))
    assert out == ["hi ", "", "ENx", " ", ""] and last == "" and sent == "hi ENx "


def test_the_longest_matching_tail_of_any_stop_string_counts():
    assert stop_prefix_tail("abcab", ("abx", "cabz")) == 3
    assert stop_prefix_tail("abc", ("xyz",)) == 0 and stop_prefix_tail("", ("a",)) == 0


def test_text_that_changed_under_what_was_sent_is_not_resent():
    out, last, sent = deltas(["ab"], "aXb")
    assert out == ["ab"] and last == "" and sent == "ab"
