"""Request bodies parsed as the policy and undo read them, in time that grows with their size alone: a urlencoded form
as `urllib.parse.parse_qsl` reads it, its escapes decoded in C, and JSON without the cyclic garbage collector.

An agent's body is parsed on the event loop, every other agent's requests waiting meanwhile. urllib decodes a
field's escapes in a Python loop (a 32 MiB field of `%41` took 6 s), and the collector walked the young objects of
a large JSON array again and again (32 MiB of `[],` took 2.2 s, 0.8 s without it)."""

from __future__ import annotations

import codecs
import contextlib
import gc
import json
import re
from collections.abc import Iterator
from typing import Any

#: A `%` that does not start an escape (two hex digits after it): urllib keeps it as it is.
_LONE_PERCENT = re.compile(rb"%(?![0-9A-Fa-f]{2})")


def unquote(text: str) -> str:
    """`urllib.parse.unquote(text)`: each `%XX` as the byte it names, the bytes read as UTF-8 (a sequence that is not
    UTF-8 read as U+FFFD). A text holding lone surrogates (a body read with `surrogateescape`) has the bytes they
    stand for read together with the escapes beside them, where urllib keeps the surrogates as they are."""
    if "%" not in text:
        return text
    raw = text.encode("utf-8", "surrogateescape")
    # every `%` made the start of an escape (`%25` for a lone one), then each escape one `escape_decode` reads
    escaped = _LONE_PERCENT.sub(b"%25", raw.replace(b"\\", b"\\\\")).replace(b"%", b"\\x")
    decoded: bytes = codecs.escape_decode(escaped)[0]
    return decoded.decode("utf-8", "replace")


def form_pairs(text: str) -> list[tuple[str, str]]:
    """`urllib.parse.parse_qsl(text, keep_blank_values=True)`: the (key, value) pairs of a urlencoded form, in order
    (`+` read as a space, escapes decoded by `unquote`; a field without `=` has the value "", empty fields none)."""
    pairs = []
    for field in text.split("&"):
        if field:
            key, _, value = field.partition("=")
            pairs.append((unquote(key.replace("+", " ")), unquote(value.replace("+", " "))))
    return pairs


@contextlib.contextmanager
def collector_paused() -> Iterator[None]:
    """The cyclic garbage collector off meanwhile (as it was after): what a parse makes is freed by reference
    counting as before, and a cycle (which JSON cannot make) at the next collection. Building a policy set off the
    event loop pauses it too (`addons.state`)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def json_loads(data: bytes | str, **options: Any) -> Any:
    """`json.loads` with the collector paused (`collector_paused`)."""
    with collector_paused():
        return json.loads(data, **options)
