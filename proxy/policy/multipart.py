"""How servers read a `_method` field in a multipart/form-data body (PHP's parser, Rack's, Werkzeug's among them),
read leniently enough that the policy sees every method one of them would run the request as."""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable
from urllib.parse import unquote_to_bytes

#: What a multipart body must hold for a part to be `_method` as PHP names a key (`_method`, `.method`, ` _method`):
#: `method`, its letters perhaps split by line ends (PHP joins a header's continuation lines with nothing between
#: them) or by backslashes (Rack and Werkzeug read `\m` in a quoted name as `m`), a NUL anywhere (PHP reads a header
#: line only to its first NUL, so what follows one in a line vanishes too), or an RFC 2231 parameter (`name*=`,
#: `name*0=`: Werkzeug percent-decodes the one and joins the other to the next, so `method` need be in none of their
#: bytes). A body without any is read no further (searches in C; most bodies, however large or hostile).
_METHOD_SPREAD = re.compile(rb"m(?:\r?\n)?e(?:\r?\n)?t(?:\r?\n)?h(?:\r?\n)?o(?:\r?\n)?d")
_RFC2231 = re.compile(rb"\*[0-9]*\*?=")
#: A part's Content-Disposition header (found leniently: anywhere, not only at a line's start) and its value; its
#: `name` parameters, read in the value lowered with a `;` before it (a parameter starts the value or follows a `;`,
#: white space and line ends between as Rack reads them; every `;`, a quoted one too, is tried), quoted in double or
#: (as PHP reads them) single quotes with backslash escapes, or bare: to a `;` (most parsers), to the end of a token
#: as Rack (`TOKEN`) and Werkzeug read one, or as PHP reads it, to white space, a `;` in quotes kept; `name*`,
#: `name*0`, `name*0*` too (RFC 2231, as Werkzeug reads them: group 1), and `name==` (PHP skips every `=`). Rack
#: names a part without a `name` by its Content-ID header (to its line's end, after white space that may span lines).
_NAMING_HEADER = re.compile(rb"content-(disposition|id)")
_DISPOSITION_VALUE = re.compile(rb"[ \t]*:([^\r\n]*)")
_CONTENT_ID_VALUE = re.compile(rb"[ \t]*:\s*([^\r\n]*)")
_PART_NAME = re.compile(
    rb";[ \t\r\n\v\f]*name(\*[0-9]*\*?)?[ \t\r\v\f]*=+[ \t\r\v\f]*"
    rb"""(?=(?:"([^"\\]*(?:\\.[^"\\]*)*)"?|'([^'\\]*(?:\\.[^'\\]*)*)'?"""
    rb"""|(?=([^;\s]*))(?=([^\s()<>,;:\\"/\[\]?=]*))(?=([\w!#$%&'*+\-.^`|~]*))"""
    rb"""((?:[^;\s"']|"(?:\\"|[^"\s])*"?|'(?:\\'|[^'\s])*'?)*)))""", re.S)
#: The escapes of a quoted parameter that parsers read: a backslash before a quote or a backslash (PHP), before any
#: byte but a line end (Rack's `dequote`, Werkzeug's `unquote_header_value`).
_UNESCAPED = re.compile(rb"""\\(["'\\])""")
_UNESCAPED_ANY = re.compile(rb"\\(.)")
#: What Werkzeug takes off an RFC 2231 value before percent-decoding it: `charset'language'`.
_RFC2231_PREFIX = re.compile(rb"[^']*'[^']*'")
_PART_END = re.compile(rb"\r?\n--")
#: Where Rack starts a part's value: after the first CRLF CRLF of its head (a lone LF ends no head to it).
_RACK_HEAD_END = b"\r\n\r\n"
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
PHP_TRIMMED = b" \t\n\r\0\x0b"
#: What a `_method` that cannot be read is read as: no method, which no rule allows.
UNREADABLE = ("_method", "")


class _Unreadable(Exception):
    """A body past the bounds: one more `_method` is read as no method."""


def method_fields(body: bytes, is_method: Callable[[str], bool]) -> tuple[tuple[str, str], ...]:
    """The (name, value) pairs of a multipart/form-data body whose names `is_method` (as PHP names a key: `_method`;
    Laravel, Symfony and Rails read `_method` in such a form too). Found by each part's Content-Disposition (or
    Content-ID, as Rack names a part) wherever it is, not by the boundary: servers find the boundary in the
    Content-Type each their own way, and a part the policy did not see would run the request as another method. Each
    Content-Disposition is read as its line, as PHP reads it (`_PHP_FILL`) and as Rack does (to a colon, over line
    ends), and a `_method` part's value after the first blank line, where PHP starts it and where Rack does. A name
    given twice counts each time; past the bounds, or a value with a byte past ASCII, one more pair is `UNREADABLE`."""
    if not body or (b"\0" not in body and not _may_name_method(body)):
        return ()
    lowered = body.lower()  # parts found in C: a regex ignoring case took 0.3 s over 10 MB of line ends
    pairs: list[tuple[str, str]] = []
    lines = _PhpLines(body)
    rack = _RackHeads(body)
    at = named = 0
    try:
        for _ in range(_MOST_PARTS):
            if (header := _NAMING_HEADER.search(lowered, at)) is None:
                return tuple(pairs)
            start, at = header.start(), header.end()
            raw_names = header.group(1) == b"id"
            if raw_names:  # Rack names a part by its Content-ID, raw: the rest of its line, after white space
                reach = at + _MOST_DISPOSITION_BYTES + 1
                if (found := _CONTENT_ID_VALUE.match(body, at, reach)) is None:
                    continue
                dispositions = {body[at:reach] if found.end() == reach else found.group(1)}  # cut: too long
                php_next = None
            else:
                if (found := _DISPOSITION_VALUE.match(body, at)) is None:
                    continue
                at = found.end()  # the rest of its line is read once, whatever else it holds
                php_value, php_next = lines.disposition(start)
                dispositions = {found.group(1), php_value, rack.disposition(found.start(1))}
            if not any(_may_name_method(d) for d in dispositions):
                continue  # no name of it is `_method`, escapes read or not
            named += 1
            if named > _MOST_METHOD_PARTS:
                raise _Unreadable
            names: set[bytes] = set()
            for disposition in dispositions:
                if len(disposition) > _MOST_DISPOSITION_BYTES:
                    raise _Unreadable
                if raw_names:
                    names.add(disposition)
                elif (more := _part_names(disposition)) is None:
                    raise _Unreadable
                else:
                    names |= more
            methods = sorted(n for n in names if is_method(n.decode("latin-1")))
            if not methods:
                continue
            values = _part_value(body, at) | rack.value(start)
            if php_next is not None:
                values |= _values_at(body, lines.header_end(php_next))
            values |= {v.strip(PHP_TRIMMED) for v in values}
            if not all(v.isascii() for v in values):
                # servers upcase a value by its part's charset, some a byte past ASCII to an ASCII letter (Rack's
                # `upcase` of UTF-8's or ISO-8859-9's dotless i is `I`, Python's too): no method is written so
                values.add(b"")
            pairs += [(n.decode("latin-1"), v.decode("latin-1")) for n in methods for v in sorted(values)]
    except _Unreadable:
        return (*pairs, UNREADABLE)
    return (*pairs, UNREADABLE) if _NAMING_HEADER.search(lowered, at) is not None else tuple(pairs)


def _may_name_method(data: bytes) -> bool:
    """Whether `data` holds `method` as a name may (`_METHOD_SPREAD`, `_RFC2231`; backslashes dropped in C, as a
    regex allowing one between letters took 0.6 s over 10 MB of them)."""
    return (_METHOD_SPREAD.search(data) is not None or _RFC2231.search(data) is not None
            or (b"\\" in data and b"method" in data.replace(b"\\", b"")))


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


class _RackHeads:
    r"""Part heads as Rack (2.2) reads them: a head ends at the first CRLF CRLF, and its name is the last
    `;\s*name=VALUE` before the first colon after `Content-Disposition:` (`MULTIPART_CONTENT_DISPOSITION`), over line
    ends."""

    def __init__(self, body: bytes) -> None:
        self.body = body
        self.last_head_end: int | None = None

    def disposition(self, at: int) -> bytes:
        """The Content-Disposition value starting at `at` as Rack reads it: to its first colon or the end of its head
        (more than `_MOST_DISPOSITION_BYTES`: longer than the bound)."""
        body, reach = self.body, at + _MOST_DISPOSITION_BYTES + 1
        ends = [e for e in (body.find(b":", at, reach), body.find(_RACK_HEAD_END, at, reach)) if e >= 0]
        return body[at:min(ends, default=reach)]

    def value(self, start: int) -> set[bytes]:
        """The start of the value of the part whose head holds `start`, where Rack starts it (none: Rack reads no head
        end after it; empty: the end is past `_PART_HEAD_BYTES`)."""
        body = self.body
        if (end := body.find(_RACK_HEAD_END, start, start + _PART_HEAD_BYTES)) >= 0:
            return _values_at(body, end + len(_RACK_HEAD_END))
        if self.last_head_end is None:
            self.last_head_end = body.rfind(_RACK_HEAD_END)  # once a body: whether any head end follows
        return {b""} if self.last_head_end > start else set()


def _part_names(disposition: bytes) -> set[bytes] | None:
    """The values of a Content-Disposition's `name` parameters, quoted ones both as written and with their escapes
    read, bare ones to a `;`, to a token's end and as PHP reads them, RFC 2231 ones percent-decoded too (None: more
    than _MOST_NAMES, or a name continued over `name*0`, `name*1`, ...: Werkzeug joins the pieces it keeps, each its
    own way, in order, and no client writes a form's name so)."""
    value = b";" + disposition
    found = list(itertools.islice(_PART_NAME.finditer(value.lower()), _MOST_NAMES + 1))  # `NAME=` is a name too
    if len(found) > _MOST_NAMES or any((param.group(1) or b"").strip(b"*") for param in found):
        return None
    names: set[bytes] = set()
    for param in found:
        readings: set[bytes] = set()
        for group in range(2, 8):
            if param.start(group) >= 0:
                name = value[slice(*param.span(group))]
                readings |= {name, _UNESCAPED.sub(rb"\1", name), _UNESCAPED_ANY.sub(rb"\1", name)}
        if param.group(1):  # `name*`: `charset'language'` and percent escapes, read whatever the charset
            readings |= {unquote_to_bytes(_RFC2231_PREFIX.sub(b"", r, count=1)) for r in readings}
        names |= readings
    return names


def _part_value(body: bytes, head: int) -> set[bytes]:
    """The start of the value of the part whose headers go on at `head`, after the first blank line (empty: their
    end is not in reach)."""
    ends = [(at, len(blank)) for blank in (b"\n\n", b"\n\r\n") if (at := body.find(blank, head, head + _PART_HEAD_BYTES)) >= 0]
    if not ends:
        return {b""}
    at, length = min(ends)
    return _values_at(body, at + length)


def _values_at(body: bytes, start: int) -> set[bytes]:
    """The start of a part's value that starts at `start`, at most `_METHOD_BYTES`: to a line starting `--` (PHP,
    Werkzeug), and to its first `--` (Rack ends a value at `--boundary` with or without a line end before it; no
    method holds `--`, so a value Rack ends at a later one is none)."""
    end = _PART_END.search(body, start, start + _METHOD_BYTES + 2)
    value = body[start:end.start() if end is not None else start + _METHOD_BYTES]
    return {value, value.partition(b"--")[0]}
