"""The header-name, header-value, method and request-target checks done in C (`bytes.translate`, compiled character
classes) refuse exactly what the Python loops they replaced refused, with the same words, for every input of the
types they are given (mitmproxy's fields are bytes; its path, authority and method are str, undecodable bytes as
surrogate escapes)."""

from __future__ import annotations

import string
from collections.abc import Iterable

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from goex_proxy.addons.decide import _SPACE_OR_CONTROL
from goex_proxy.policy.requestview import field_problem, token_problem

# The loops as they were before the checks moved to C (ef88741), verbatim.
_OLD_TCHAR = frozenset(b"!#$%&'*+-.^_`|~" + string.ascii_letters.encode() + string.digits.encode())
_OLD_LINE_BREAKING = frozenset(b"\r\n\x00")


def _old_field_problem(fields: Iterable[tuple[bytes, bytes]], what: str = "header", quote: bool = True) -> str | None:
    for place, (name, value) in enumerate(fields, start=1):
        named = f"{name[:60]!r}" if quote else f"number {place}"
        if not name or not all(c in _OLD_TCHAR for c in name):
            return f"the {what} name {named} is not a token" if quote else f"the name of {what} {named} is not a token"
        if any(c in _OLD_LINE_BREAKING for c in value):
            named = repr(name[:60].decode("latin-1")) if quote else named
            return f"the value of the {what} {named} holds a CR, LF or NUL byte"
    return None


def _old_token_problem(method: str) -> str | None:
    if not method or not all(c in _OLD_TCHAR for c in method.encode("utf-8", "surrogateescape")):
        return f"the method {method[:60]!r} is not a token"
    return None


def _old_space_or_control(text: str) -> bool:
    return any(c <= " " or c == "\x7f" for c in text)


def _outcome(check: object, *args: object) -> tuple[str, object]:
    try:
        return "gave", check(*args)  # type: ignore[operator]
    except Exception as exc:  # the same exception, of the same type, counts as the same answer
        return "raised", type(exc)


#: Bytes a header holds: mostly token characters (so that some names pass), with every byte value possible.
_EDGY = b"\x00\t\n\r \"(),/:;<=>?@[\\]{}\x7f\x80\xff"
_byte = st.one_of(st.sampled_from(sorted(_OLD_TCHAR)), st.sampled_from(list(_EDGY)), st.integers(0, 255))
_name = st.lists(_byte, max_size=80).map(bytes)
_value = st.lists(st.one_of(st.integers(0x20, 0x7e), st.sampled_from(list(_EDGY)), st.integers(0, 255)),
                  max_size=80).map(bytes)
_fields = st.lists(st.tuples(_name, _value), max_size=6)


@settings(max_examples=1500, deadline=None)
@given(fields=_fields, what=st.sampled_from(["header", "trailer"]), quote=st.booleans(), mutable=st.booleans())
@example(fields=[(b"", b"v")], what="header", quote=True, mutable=False)  # an empty name
@example(fields=[(b"ok", b"a\r\nb"), (b"bad name", b"")], what="trailer", quote=False, mutable=False)
@example(fields=[(b"x" * 70 + b"\x00", b"")], what="header", quote=True, mutable=True)  # cut at 60 when quoted
def test_field_names_and_values_are_refused_as_the_loops_refused_them(
        fields: list[tuple[bytes, bytes]], what: str, quote: bool, mutable: bool) -> None:
    given_fields = [(bytearray(n), bytearray(v)) for n, v in fields] if mutable else fields
    assert _outcome(field_problem, given_fields, what, quote) == _outcome(_old_field_problem, given_fields, what, quote)


@settings(max_examples=1500, deadline=None)
@given(method=st.one_of(
    st.text(alphabet=st.sampled_from(sorted({chr(c) for c in _OLD_TCHAR.union(_EDGY)}))),
    st.text(),  # any code point, lone surrogates among them (those surrogateescape cannot encode raise, both ways)
    st.binary().map(lambda b: b.decode("utf-8", "surrogateescape")),  # as mitmproxy decodes a method
))
@example(method="")
@example(method="GET\udcff")
@example(method="G\u00c9T")
@example(method="\ud800")
def test_methods_are_refused_as_the_loop_refused_them(method: str) -> None:
    assert _outcome(token_problem, method) == _outcome(_old_token_problem, method)


@settings(max_examples=2000, deadline=None)
@given(text=st.one_of(
    st.text(),
    st.text(alphabet=st.characters(max_codepoint=0x100)),
    st.binary().map(lambda b: b.decode("utf-8", "surrogateescape")),  # as mitmproxy decodes a path
))
@example(text="")
@example(text="/a\x7f")
@example(text="/a\x80\x85\xa0\u2028\u3000\ufeff")  # Unicode spaces and C1 controls: neither check refuses them
@example(text="/\udc80\udcff")
def test_request_targets_are_refused_as_the_loop_refused_them(text: str) -> None:
    assert (_SPACE_OR_CONTROL.search(text) is not None) is _old_space_or_control(text)


@pytest.mark.parametrize("fields", [[("x-note", "a\r\nb")], [("bad name", "v")], [(memoryview(b"x"), b"v")]])
def test_fields_of_another_type_raise_rather_than_pass(fields: list[tuple[object, object]]) -> None:
    """Where the loops met a str (never from mitmproxy, whose fields are bytes) they passed a value with a CR LF in
    it; the checks in C raise instead, which the stage's fail_closed turns into a refusal."""
    with pytest.raises((TypeError, AttributeError)):
        field_problem(fields)  # type: ignore[arg-type]
