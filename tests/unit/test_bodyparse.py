"""The body parsers the policy and undo share (`goex_proxy.bodyparse`): the form parser reads every text as
urllib's `parse_qsl` does, and the collector is paused only while a parse runs."""

from __future__ import annotations

import gc
from urllib.parse import parse_qsl
from urllib.parse import unquote as urllib_unquote

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from goex_proxy.bodyparse import collector_paused, form_pairs, json_loads, unquote

#: Pieces a hostile or odd form is made of: escapes whole, cut short, of bytes that are not UTF-8 alone, backslash
#: escapes (which the decoder in C also reads), separators, and characters past ASCII.
_PIECES = st.sampled_from(["%41", "%c3%a9", "%C3", "%A9", "%e2%82", "%e2%82%ac", "%", "%%", "%4", "%4g", "%0", "%25",
                           "%5C", "\\", "\\x41", "\\n", "\\\\", "&", "=", "+", ";", "a", "B", "3", "f", "é", "\u2603",
                           "\U0001f600", "\0", " ", "%00", "%ff", "%FF", "%fF"])
_TEXTS = st.lists(_PIECES | st.text(max_size=3), max_size=30).map("".join)


@settings(max_examples=3000, deadline=None)
@given(_TEXTS)
def test_form_pairs_read_every_form_as_parse_qsl_does(text: str) -> None:
    assert form_pairs(text) == parse_qsl(text, keep_blank_values=True)


@settings(max_examples=3000, deadline=None)
@given(_TEXTS)
def test_unquote_decodes_as_urllib_does(text: str) -> None:
    assert unquote(text) == urllib_unquote(text)


@pytest.mark.parametrize(("text", "pairs"), [
    ("", []),
    ("&&", []),
    ("a", [("a", "")]),
    ("a=1=2&b", [("a", "1=2"), ("b", "")]),
    ("_method=DELETE%00", [("_method", "DELETE\0")]),
    ("k=%zz%4%", [("k", "%zz%4%")]),
    ("k=\\x41%5Cx41", [("k", "\\x41\\x41")]),
    ("k=%E2%82%AC+%e2%82", [("k", "€ \ufffd")]),
])
def test_form_pairs_examples(text: str, pairs: list[tuple[str, str]]) -> None:
    assert form_pairs(text) == pairs == parse_qsl(text, keep_blank_values=True)


def test_a_large_field_of_escapes_is_decoded_whole() -> None:
    count = 1 << 20
    assert form_pairs("a=" + "%41" * count + "&b=%E2%82%AC" * 2) == [("a", "A" * count), ("b", "€"), ("b", "€")]


def test_surrogates_stand_for_their_bytes_read_with_the_escapes_beside_them() -> None:
    """A body read with `surrogateescape` (the override scan's): its undecodable bytes go back to being bytes."""
    text = b"k=\xc3%A9&m=\xff%41".decode("utf-8", "surrogateescape")
    assert form_pairs(text) == [("k", "é"), ("m", "\ufffdA")]
    assert unquote("\udcff") == "\udcff"  # nothing to decode: as it is


def test_the_collector_is_paused_only_while_a_parse_runs() -> None:
    assert gc.isenabled()
    with collector_paused():
        assert not gc.isenabled()
        with collector_paused():
            assert not gc.isenabled()
        assert not gc.isenabled()  # the inner one leaves it as it found it
    assert gc.isenabled()
    with pytest.raises(ValueError):
        json_loads(b"[1,")
    assert gc.isenabled()
    gc.disable()
    try:
        assert json_loads(b'{"a": [1, {}]}') == {"a": [1, {}]}
        assert not gc.isenabled()  # off before: left off
    finally:
        gc.enable()
