"""What is printed for a person to review hides nothing: every escape `shown` makes, for any text."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from goex_proxy.printable import _INVISIBLE, shown

#: Text as requests bring it: mostly ASCII, with the characters that hide or reorder text mixed in.
TEXTS = st.text(st.one_of(st.characters(max_codepoint=0x7F), st.sampled_from(sorted(map(chr, _INVISIBLE))),
                          st.characters(min_codepoint=0x80, max_codepoint=0x3100), st.just("\udc9b")))


@given(TEXTS)
def test_what_is_shown_holds_nothing_that_hides_or_moves_text(text: str) -> None:
    out = shown(text)
    for c in out:
        o = ord(c)
        assert c == "\t" or (o not in _INVISIBLE and not 0xDC80 <= o <= 0xDCFF and (c.isprintable() or o >= 0x3000))
    if text.isprintable() and not any(ord(c) in _INVISIBLE for c in text):
        assert out == text


def test_printable_ascii_is_shown_as_it_is_and_an_invisible_character_after_it_is_not() -> None:
    line = "allow 1M904Z0WS00MH bot GET https://slack.com/api/chat.postMessage 200"
    assert shown(line) == line
    assert shown(line + "\u202e") == line + "\\u202e" and shown(line + "\u00ad") == line + "\\xad"
