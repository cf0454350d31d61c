"""How servers read a `_method` field in a multipart/form-data body (PHP's parser among them), read leniently enough
that the policy sees every method one of them would run the request as."""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable

#: What a multipart body must hold for a part to be `_method` as PHP names a key (`_method`, `.method`, ` _method`):
#: `method`, its letters perhaps split by line ends (PHP joins a header's continuation lines with nothing between
#: them), or a NUL anywhere (PHP reads a header line only to its first NUL, so what follows one in a line vanishes
#: too). A body without either is read no further (one search in C; most bodies, however large or hostile).
_METHOD_SPREAD = re.compile(rb"m(?:\r?\n)?e(?:\r?\n)?t(?:\r?\n)?h(?:\r?\n)?o(?:\r?\n)?d")
#: A part's Content-Disposition header (found leniently: anywhere, not only at a line's start) and its value; its
#: `name` parameters, read in the value lowered with a `;` before it (a parameter starts the value or follows a `;`;
#: every `;`, a quoted one too, is tried), quoted in double or (as PHP reads them) single quotes with backslash
#: escapes, or bare: to a `;` (most parsers) or as PHP reads it, to white space, a `;` in quotes kept; `name*` too,
#: which some parsers take, and `name==` (PHP skips every `=`).
_DISPOSITION = b"content-disposition"
_DISPOSITION_VALUE = re.compile(rb"[ \t]*:([^\r\n]*)")
_PART_NAME = re.compile(
    rb";[ \t\r\v\f]*name\*?[ \t\r\v\f]*=+[ \t\r\v\f]*"
    rb"""(?=(?:"([^"\\]*(?:\\.[^"\\]*)*)"?|'([^'\\]*(?:\\.[^'\\]*)*)'?"""
    rb"""|(?=([^;\s]*))((?:[^;\s"']|"(?:\\"|[^"\s])*"?|'(?:\\'|[^'\s])*'?)*)))""", re.S)
#: The escapes of a quoted parameter that parsers read (PHP, Werkzeug): a backslash before a quote or a backslash.
_UNESCAPED = re.compile(rb"""\\(["'\\])""")
_PART_END = re.compile(rb"\r?\n--")
#: PHP (rfc1867.c) reads a part's headers a line at a time through a buffer of 5 KiB (FILLUNIT): a longer line is
#: read in pieces of that size, each a line of its own. A line is read to its first NUL; an empty one, or one
#: starting with a NUL, ends the headers (the value starts after it); one starting with white space, or without a
#: colon, goes on the header before it, joined with nothing between.
_PHP_FILL = 5 * 1024
_PHP_SPACE = b" \t\n\v\f\r"
#: Bounds on the work a hostile body makes: the parts read, those whose Content-Disposition says `method` read
#: further, the bytes of such a Content-Disposition and the names in it (more of any, and one more `_method` is read
#: as no method, which no rule allows: no server takes such headers), the bytes a part's headers are looked through
#: for their end (none in reach: no method either), the header lines read as PHP reads them over the whole body (more:
#: no method), and what of a part's value is read as a method (methods are short).
_MOST_PARTS, _MOST_METHOD_PARTS, _MOST_DISPOSITION_BYTES, _MOST_NAMES = 1000, 64, 8192, 16
_PART_HEAD_BYTES = 64 * 1024
_MOST_HEADER_LINES = 4096
_METHOD_BYTES = 64
#: What PHP's `trim` takes off a value (NUL too, which Python's `strip` keeps).
_PHP_TRIMMED = b" \t\n\r\0\x0b"
#: What a `_method` that cannot be read is read as: no method, which no rule allows.
UNREADABLE = ("_method", "")


class _Unreadable(Exception):
    """A body past the bounds: one more `_method` is read as no method."""


def method_fields(body: bytes, is_method: Callable[[str], bool]) -> tuple[tuple[str, str], ...]:
    """The (name, value) pairs of a multipart/form-data body whose names `is_method` (as PHP names a key: `_method`;
    Laravel, Symfony and Rails read `_method` in such a form too). Found by each part's Content-Disposition
    wherever it is, not by the boundary: servers find the boundary in the Content-Type each their own way, and a part
    the policy did not see would run the request as another method. Each Content-Disposition is read both as its line
    and as PHP reads it (`_PHP_FILL`), and a `_method` part's value both after the first blank line and where PHP
    starts it. A name given twice counts each time; past the bounds, one more pair is `UNREADABLE`."""
    if not body or (b"\0" not in body and _METHOD_SPREAD.search(body) is None):
        return ()
    lowered = body.lower()  # parts found in C: a regex ignoring case took 0.3 s over 10 MB of line ends
    pairs: list[tuple[str, str]] = []
    lines = _PhpLines(body)
    at = named = 0
    try:
        for _ in range(_MOST_PARTS):
            if (start := lowered.find(_DISPOSITION, at)) < 0:
                return tuple(pairs)
            at = start + len(_DISPOSITION)
            if (found := _DISPOSITION_VALUE.match(body, at)) is None:
                continue
            at = found.end()  # the rest of its line is read once, whatever else it holds
            php_value, php_next = lines.disposition(start)
            dispositions = {found.group(1), php_value}
            if not any(b"method" in d for d in dispositions):  # no name of it is `_method`, escapes read or not
                continue
            named += 1
            names: set[bytes] = set()
            for disposition in dispositions:
                if len(disposition) > _MOST_DISPOSITION_BYTES or (more := _part_names(disposition)) is None:
                    raise _Unreadable
                names |= more
            if named > _MOST_METHOD_PARTS:
                raise _Unreadable
            methods = sorted(n for n in names if is_method(n.decode("latin-1")))
            if not methods:
                continue
            values = {_part_value(body, at), _value_at(body, lines.header_end(php_next))}
            values |= {v.strip(_PHP_TRIMMED) for v in values}
            pairs += [(n.decode("latin-1"), v.decode("latin-1")) for n in methods for v in sorted(values)]
    except _Unreadable:
        return (*pairs, UNREADABLE)
    return (*pairs, UNREADABLE) if lowered.find(_DISPOSITION, at) >= 0 else tuple(pairs)


class _PhpLines:
    """Part headers as PHP reads them (`_PHP_FILL`), at most `_MOST_HEADER_LINES` lines over a body."""

    def __init__(self, body: bytes) -> None:
        self.body = body
        self.left = _MOST_HEADER_LINES

    def line(self, pos: int) -> tuple[bytes, int] | None:
        """The line PHP reads at `pos` (to its first NUL) and where the next starts; None: the body ends first."""
        self.left -= 1
        if self.left < 0:
            raise _Unreadable
        body = self.body
        if (lf := body.find(b"\n", pos, pos + _PHP_FILL)) >= 0:
            line, pos = body[pos:lf], lf + 1
            if line[-1:] == b"\r":
                line = line[:-1]
        elif len(body) - pos >= _PHP_FILL:
            line, pos = body[pos:pos + _PHP_FILL], pos + _PHP_FILL
        else:
            return None
        return line.partition(b"\0")[0], pos

    def disposition(self, start: int) -> tuple[bytes, int]:
        """The value PHP reads for the header whose line starts at `start` (none: not one it reads as a header), its
        continuation lines joined on, and where the line after them starts."""
        if (read := self.line(start)) is None:
            return b"", start
        line, pos = read
        key, colon, value = line.partition(b":")
        if not colon or key[:1] in (b"", *(bytes([c]) for c in _PHP_SPACE)):
            return b"", pos
        value = value.lstrip(_PHP_SPACE)
        while (read := self.line(pos)) is not None and read[0] and (read[0][0] in _PHP_SPACE or b":" not in read[0]):
            value += read[0]
            pos = read[1]
            if len(value) > _MOST_DISPOSITION_BYTES:
                raise _Unreadable
        return value, pos

    def header_end(self, pos: int) -> int:
        """Where PHP starts the value of a part whose header lines go on at `pos`."""
        while (read := self.line(pos)) is not None:
            if not read[0]:
                return read[1]
            pos = read[1]
        return pos  # the body ends in the headers: PHP reads what is left as the value


def _part_names(disposition: bytes) -> set[bytes] | None:
    """The values of a Content-Disposition's `name` parameters, quoted ones both as written and with their escapes
    read, bare ones both to a `;` and as PHP reads them (None: more than _MOST_NAMES)."""
    value = b";" + disposition
    found = list(itertools.islice(_PART_NAME.finditer(value.lower()), _MOST_NAMES + 1))  # `NAME=` is a name too
    if len(found) > _MOST_NAMES:
        return None
    names: set[bytes] = set()
    for param in found:
        for group in range(1, 5):
            if param.start(group) >= 0:
                name = value[slice(*param.span(group))]
                names |= {name, _UNESCAPED.sub(rb"\1", name)}
    return names


def _part_value(body: bytes, head: int) -> bytes:
    """The start of the value of the part whose headers go on at `head`, after the first blank line (empty: their
    end is not in reach)."""
    ends = [(at, len(blank)) for blank in (b"\n\n", b"\n\r\n") if (at := body.find(blank, head, head + _PART_HEAD_BYTES)) >= 0]
    if not ends:
        return b""
    at, length = min(ends)
    return _value_at(body, at + length)


def _value_at(body: bytes, start: int) -> bytes:
    """The start of a part's value that starts at `start`: to a line starting `--`, at most `_METHOD_BYTES`."""
    end = _PART_END.search(body, start, start + _METHOD_BYTES + 2)
    return body[start:end.start() if end is not None else start + _METHOD_BYTES]
