"""mitmproxy as `run` trims it (`mitmtrim.trim`): the header look-ups it replaces give what mitmproxy's give, for any
fields and any name, and refuse what mitmproxy's refuse."""

from __future__ import annotations

from typing import Any

from hypothesis import example, given
from hypothesis import strategies as st
from mitmproxy import http

from goex_proxy import mitmtrim

mitmtrim.trim()


class Original(http.Headers):
    """Headers with mitmproxy's own look-ups, as they were before `trim`."""


for (cls, name), before in mitmtrim.REPLACED.items():
    if cls is http.Headers:
        setattr(Original, name, before)

NAMES = [b"Host", b"host", b"HOST", b"Content-Length", b"content-length", b"X-A", b"x-\xc3\xa9", b"X-\xc3\x89", b"\xff",
         b"", b"Transfer-Encoding"]
fields = st.lists(st.tuples(st.sampled_from(NAMES) | st.binary(max_size=6), st.binary(max_size=12)), max_size=8)
keys = (st.sampled_from(NAMES) | st.binary(max_size=6)
        | st.sampled_from(NAMES).map(lambda n: n.decode("utf-8", "surrogateescape"))
        | st.text(max_size=6) | st.sampled_from(["x-é", "X-É", "\udcff", "HoSt"]))


def outcome(fn: Any) -> Any:
    try:
        return "value", fn()
    except Exception as exc:  # noqa: BLE001 - what is compared is which exception, if any
        return "raised", type(exc)


@given(fields, keys)
def test_every_look_up_gives_what_mitmproxys_gives(pairs: list[tuple[bytes, bytes]], key: str | bytes) -> None:
    ours, theirs = http.Headers(pairs), Original(pairs)
    assert type(ours).get_all is not type(theirs).get_all  # the replacement against mitmproxy's own
    assert outcome(lambda: ours.get_all(key)) == outcome(lambda: theirs.get_all(key))
    assert outcome(lambda: ours.get(key)) == outcome(lambda: theirs.get(key))
    assert outcome(lambda: ours.get(key, "-")) == outcome(lambda: theirs.get(key, "-"))
    assert outcome(lambda: key in ours) == outcome(lambda: key in theirs)
    assert outcome(lambda: ours[key]) == outcome(lambda: theirs[key])


def test_what_is_not_a_name_is_refused_alike() -> None:
    ours, theirs = http.Headers([(b"Host", b"x")]), Original([(b"Host", b"x")])
    for key in (None, 1, 1.5, ["Host"]):
        for look in (lambda h, k: h.get_all(k), lambda h, k: h.get(k), lambda h, k: k in h, lambda h, k: h[k]):
            assert outcome(lambda look=look, key=key: look(ours, key)) == \
                outcome(lambda look=look, key=key: look(theirs, key)), key


def test_keyword_arguments_are_taken_and_refused_alike() -> None:
    """`Mapping.get(self, key, default=None)` and `Mapping.__contains__(self, key)` name their argument `key`; a caller
    that passes it by name must get mitmproxy's answer, and `name=` must be refused as mitmproxy refuses it."""
    ours, theirs = http.Headers([(b"Host", b"x")]), Original([(b"Host", b"x")])
    calls = (lambda h: h.get(key="Host"), lambda h: h.get(key="nope", default="-"), lambda h: h.get("Host", default=1),
             lambda h: h.get(name="Host"), lambda h: h.__contains__(key="Host"), lambda h: h.__contains__(name="Host"),
             lambda h: h.get_all(name="Host"), lambda h: h.get_all(key="Host"))
    for i, call in enumerate(calls):
        assert outcome(lambda call=call: call(ours)) == outcome(lambda call=call: call(theirs)), i


odd = st.none() | st.integers(0, 1) | st.sampled_from(["host", "Host", "x"]) | st.sampled_from(NAMES) | st.binary(max_size=3)
odd_fields = st.lists(st.tuples(odd) | st.tuples(odd, odd) | st.tuples(odd, odd, odd), max_size=5)


@given(odd_fields, st.sampled_from(NAMES) | st.sampled_from(["host", "x"]))
@example([(b"Host", "text"), (b"x",)], "host")  # a value not bytes, then a field not a pair
@example([(b"Host", None), (None, b"x")], "host")
@example([(b"Host", b"x"), (b"y", b"z", b"w")], "host")
def test_fields_reassigned_to_anything_are_read_or_refused_alike(pairs: list[tuple[Any, ...]], key: str | bytes) -> None:
    """`fields` is a plain attribute: whatever is put there, a look-up gives what mitmproxy's gives, or raises the same
    exception (mitmproxy finds every field's name before it decodes a value)."""
    ours, theirs = http.Headers(), Original()
    ours.fields = theirs.fields = tuple(pairs)
    assert outcome(lambda: ours.get_all(key)) == outcome(lambda: theirs.get_all(key))
    assert outcome(lambda: ours.get(key)) == outcome(lambda: theirs.get(key))
    assert outcome(lambda: key in ours) == outcome(lambda: key in theirs)
    assert outcome(lambda: ours[key]) == outcome(lambda: theirs[key])
