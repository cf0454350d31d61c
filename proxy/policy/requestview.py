"""RequestView: the frozen, mitmproxy-free picture of a request that policies decide on."""

from __future__ import annotations

import dataclasses
import itertools
import math
import re
import string
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from ..bodyparse import form_pairs, json_loads
from . import multipart

_ESCAPE = re.compile(r"%([0-9A-Fa-f]{2})")
_UNRESERVED = frozenset(string.ascii_letters + string.digits + "-._~")


def _normalise(raw: str) -> str:
    """`raw` with escapes of unreserved characters decoded and every other escape upper-cased (RFC 3986 6.2.2)."""
    return _ESCAPE.sub(lambda m: chr(int(m[1], 16)) if chr(int(m[1], 16)) in _UNRESERVED else f"%{m[1].upper()}", raw)


def _odd_segments(path: str) -> str | None:
    """Which kind of segment servers resolve differently (`.`, `..`, empty but not last) `path` has, if any."""
    segments = path.split("/")[1:]
    if any(seg in (".", "..") for seg in segments):
        return "a '.' or '..' segment"
    if "" in segments[:-1]:
        return "an empty segment ('//')"
    return None


def path_ambiguity(raw: str) -> str | None:
    """Why servers could read the path `raw` more than one way, or None when they cannot.

    After decoding escapes of unreserved characters: `.`/`..` or empty segments (`//`, except a trailing `/`), a
    backslash (raw or `%5C`), a raw `;` (path parameters, which some servers drop and others keep; `%3B` is data), a
    raw `#`, or `%2F` that hides dot segments from a server that decodes it (`a%2F..%2Fadmin`; `group%2Fname` and
    an escaped URL `https%3A%2F%2Fexample.com` are fine).
    """
    if not raw.startswith("/"):
        return None
    path = _normalise(raw)
    if "\\" in path or "%5C" in path:
        return "a backslash, which some servers read as '/'"
    if ";" in path:
        return "a ';' starts path parameters, which some servers drop and others keep (write it as %3B if it is data)"
    if odd := _odd_segments(path):
        return f"{odd}, which servers resolve differently"
    if "#" in path:
        return "a raw '#', which servers that drop fragments cut the path at"
    if "%2F" in path and any(seg in (".", "..") for seg in path.replace("%2F", "/").split("/")):
        return "an escaped '/' (%2F) makes a '.' or '..' segment for servers that decode it"
    return None


def canonical_path(raw: str) -> str | None:
    """The path as policies match it, or None when servers could read it more than one way (see `path_ambiguity`).

    Escapes of unreserved characters are decoded (`/%61dmin` is `/admin`, RFC 3986 6.2.2.2) and other escapes are
    upper-cased; an ambiguous path is refused rather than guessed at.
    """
    if not raw.startswith("/"):
        return raw
    return None if path_ambiguity(raw) else _normalise(raw)


def decoded_readings(path: str) -> list[tuple[str, str | None]]:
    """Other paths servers may read this canonical path as: (how, the path read that way, or None when that reading
    is itself ambiguous). `%2F` decoded to `/`, and every escape decoded a second time (`/%2561dmin` is `/admin` to a
    server, or a proxy and a server, that decode twice)."""
    out: list[tuple[str, str | None]] = []
    if "%2F" in path:
        out.append(("servers that decode %2F", path.replace("%2F", "/")))
    if "%25" in path:
        out.append(("servers that decode twice", canonical_path(path.replace("%25", "%"))))
    return out


_CHUNK_SIZE = re.compile(rb"([0-9A-Fa-f]{1,16})(?:;[^\r\n]*)?\r\n")
_TRAILERS = re.compile(rb"(?:[!-9;-~]+:[^\r\n]*\r\n)*\r\n")


def aws_unchunked(body: bytes) -> bytes:
    """The payload of an `aws-chunked` body (S3 streaming uploads): its chunks joined, without sizes, chunk signatures
    or trailers, as S3 reads it. Raises ValueError when the framing is broken."""
    chunks, pos = [], 0
    while True:
        size_line = _CHUNK_SIZE.match(body, pos)
        if size_line is None:
            raise ValueError(f"no aws-chunked chunk size at byte {pos}")
        size, pos = int(size_line[1], 16), size_line.end()
        if size == 0:
            break
        if body[pos + size:pos + size + 2] != b"\r\n":
            raise ValueError(f"the aws-chunked chunk at byte {size_line.start()} is not {size} bytes and a CRLF")
        chunks.append(body[pos:pos + size])
        pos += size + 2
    if _TRAILERS.fullmatch(body, pos) is None:
        raise ValueError(f"bytes after the last aws-chunked chunk are not trailer fields (at byte {pos})")
    return b"".join(chunks)


#: bytes that may precede the `{` or `[` of a JSON body in the encodings `json.loads` detects: whitespace, BOMs, NULs.
_JSON_LEAD = b" \t\r\n\x00\xef\xbb\xbf\xfe\xff"


#: RFC 9110 5.6.2: the characters of a token, which a field name and a method must be (what `bytes.translate` deletes:
#: a token has nothing left, checked in C; a loop over each byte cost ~10 us a request's header list).
_TCHAR = bytes(sorted(set(b"!#$%&'*+-.^_`|~" + string.ascii_letters.encode() + string.digits.encode())))
#: Bytes no field value may hold (RFC 9110 5.5, RFC 9113 8.2.1): written into HTTP/1.1 they end the line.
_LINE_BREAKING = re.compile(rb"[\r\n\x00]")


def field_problem(fields: Iterable[tuple[bytes, bytes]], what: str = "header", quote: bool = True) -> str | None:
    """Why a message's header (or trailer) fields could be re-read as other fields or another message, if they could:
    a name that is not a token, or a value holding CR, LF or NUL (HTTP/2 and HTTP/3 carry such bytes unframed; sent on
    as HTTP/1.1 they would start a line of their own). Without `quote` (an upstream's fields: its bytes may hold an
    injected secret, and a cut one passes the scrubber), the field is named by its place, not its name."""
    for place, (name, value) in enumerate(fields, start=1):
        if not name or name.translate(None, _TCHAR):
            named = f"{name[:60]!r}" if quote else f"number {place}"
            return f"the {what} name {named} is not a token" if quote else f"the name of {what} {named} is not a token"
        if _LINE_BREAKING.search(value) is not None:
            named = repr(name[:60].decode("latin-1")) if quote else f"number {place}"
            return f"the value of the {what} {named} holds a CR, LF or NUL byte"
    return None


def token_problem(method: str) -> str | None:
    """Why a request method is not a token, if it is not."""
    if not method or method.encode("utf-8", "surrogateescape").translate(None, _TCHAR):
        return f"the method {method[:60]!r} is not a token"
    return None


#: Where frameworks read a method that replaces the request line's (Express's method-override, Rails, Laravel, Symfony).
METHOD_OVERRIDE_HEADERS = ("x-http-method-override", "x-http-method", "x-method-override")


def readings(view: RequestView) -> list[tuple[str, RequestView, bool]]:
    """Other ways common servers read this request: (how, the view read that way, whether that reading must be allowed
    rather than merely not denied). A method override runs as the method it names, so it must be allowed; every
    `_method` value counts, in the query as in the form. (Paths as lenient routers read them and keys sent twice are
    decided by the policy engine itself: `policy.decide`.)"""
    return [(f"as the method override {method} names", with_changes(view, method=method), True)
            for method in sorted(view.override_methods - {view.method})]


def _override_form(view: RequestView, content_type: str) -> tuple[tuple[str, str], ...]:
    """The form's pairs as a server reads them for `_method`: a body that is not UTF-8, which has no pairs to the
    policy, its UTF-8 read as such and other bytes kept (its `_method` is ASCII either way, or upcases to it as
    Unicode does); and a body without a Content-Type or a multipart one, which Rack reads as a urlencoded form (a
    POST's without a Content-Type; a multipart one's whose boundary it cannot read, or has none). `content_type`:
    the request's, as sent."""
    pairs = view.form_pairs
    if pairs or not view.body:
        return pairs
    lowered = content_type.lower()
    if "application/x-www-form-urlencoded" in lowered or not content_type or (
            "multipart/" in lowered and _RACK_BOUNDARY.match(content_type) is None):
        return _pairs_naming_method(view.body)
    return ()


#: A multipart Content-Type whose boundary Rack (2.2) reads (`Rack::Multipart::MULTIPART`); without one, Rack reads
#: the body as a urlencoded form.
_RACK_BOUNDARY = re.compile(r"multipart/.*?boundary\s*=\"?[^\";,]", re.IGNORECASE)


#: What a urlencoded pair whose key names `_method` holds: `method`, its letters perhaps percent-encoded. Past
#: `_MOST_METHOD_PAIRS` such pairs, one more is read as no method (which no rule allows).
_METHOD_LETTERS = re.compile(rb"(?:m|%6[dD])(?:e|%65)(?:t|%74)(?:h|%68)(?:o|%6[fF])(?:d|%64)")
_METHOD_WORD = re.compile(rb"method")  # the same without a `%` in the body: searched for in C, not tried at each byte
_MOST_METHOD_PAIRS = 1000


def _pairs_naming_method(body: bytes) -> tuple[tuple[str, str], ...]:
    """The pairs of a body read as a urlencoded form that hold `method` (so each that may name `_method`), without
    parsing the others: a multipart upload of any size costs a search or so a pair."""
    pairs: list[tuple[str, str]] = []
    letters = _METHOD_LETTERS if b"%" in body else _METHOD_WORD
    end = 0
    for _ in range(_MOST_METHOD_PAIRS):
        if (found := letters.search(body, end)) is None:
            return tuple(pairs)
        start = body.rfind(b"&", end, found.start()) + 1 or end  # searched back only to the pair before
        end = body.find(b"&", found.end())
        end = len(body) if end < 0 else end
        pairs += form_pairs(body[start:end].decode("utf-8", "surrogateescape"))
    return (*pairs, multipart.UNREADABLE)


#: The longest override value read as a method (methods are short: `PROPPATCH`, `VERSION-CONTROL`).
_MOST_METHOD_CHARS = 64
#: What PHP's `trim` takes off a value, as text.
_PHP_TRIMMED = multipart.PHP_TRIMMED.decode("ascii")


#: A key Rack's `normalize_params` names `_method`: brackets before it and `]` after it dropped (`[_method]`).
_RACK_METHOD_KEY = re.compile(r"[\[\]]*_method\]*")


def _is_method_key(key: str) -> bool:
    """Whether PHP or Rack names this query or form key `_method` (neither reads letters the key does not hold)."""
    return "method" in key and (php_name(key)[0] == "_method" or _RACK_METHOD_KEY.fullmatch(key) is not None)


def with_changes(view: RequestView, **changes: Any) -> RequestView:
    """`view` with `changes`, sharing what it has already parsed of the body (which a reading never changes)."""
    out = dataclasses.replace(view, **changes)
    for name in ("json", "form_pairs"):
        if name in view.__dict__:
            out.__dict__[name] = view.__dict__[name]
    return out


#: A key the query or the form has more than once: where ("query" or "form"), the key, and its values in order.
RepeatedKey = tuple[str, str, tuple[str, ...]]


def repeated_keys(view: RequestView) -> list[RepeatedKey]:
    """The keys the query, or a body declared `application/x-www-form-urlencoded`, has more than once.

    Servers differ on such a key: Go and Flask read its first value, PHP and Rails its last, Express and ASP.NET a
    list of them all. (A JSON object with a key twice is refused before policy instead, by `body_ambiguity`: no JSON
    encoder writes one, whereas forms and queries repeat keys on purpose, as in `ids=1&ids=2`.)"""
    out: list[RepeatedKey] = []
    for where, pairs in (("query", view.query), ("form", view.form_pairs)):
        if len(pairs) < 2 or len({key for key, _ in pairs}) == len(pairs):
            continue
        values: dict[str, list[str]] = {}
        for key, value in pairs:
            values.setdefault(key, []).append(value)
        out += [(where, key, tuple(vs)) for key, vs in values.items() if len(vs) > 1]
    return out


_PHP_MANGLED = re.compile(r"[ .]")


def php_name(key: str) -> tuple[str, tuple[str, ...]]:
    """The parameter name PHP registers for a query or form key, and its bracket groups: leading spaces dropped,
    cut at a NUL, `.` and spaces in the name turned into `_`, an unmatched `[` turned into `_`, spaces at the start
    of a group dropped (`[ ]` is `[]`), and whatever follows a group other than another group ignored."""
    key = key.split("\0", 1)[0].lstrip(" ")
    base, bracket, rest = key.partition("[")
    if bracket and "]" not in rest:
        return _PHP_MANGLED.sub("_", base) + "_" + rest, ()
    groups: list[str] = []
    more = bool(bracket)
    while more and "]" in rest:
        inner, _, rest = rest.partition("]")
        groups.append(inner.lstrip(" \t\n\r\v\f"))
        more, rest = rest[:1] == "[", rest[1:]
    return _PHP_MANGLED.sub("_", base), tuple(groups)


def key_collision(view: RequestView) -> str | None:
    """Why two differently spelled keys of the query or a urlencoded form would be read as one parameter by some
    server, if they would (see `php_name`): `channel.id` and `channel_id`, ` channel` and `channel`, `channel[]` or
    `channel[x]` beside `channel` (PHP and Rails read the later), `ids[]` beside `ids[0]` (PHP appends, then
    overwrites). Bracketed keys that differ inside their brackets (`filter[a]`, `filter[b]`) are distinct everywhere."""
    for where, pairs in (("query", view.query), ("form", view.form_pairs)):
        by_name: dict[tuple[str, tuple[str, ...]], str] = {}
        by_base: dict[str, list[tuple[str, tuple[str, ...]]]] = {}
        for key in dict.fromkeys(key for key, _ in pairs):
            name = php_name(key)
            if name in by_name and by_name[name] != key:
                return f"the {where} keys {by_name[name]!r} and {key!r} are one parameter to PHP"
            by_name[name] = key
            by_base.setdefault(name[0], []).append((key, name[1]))
        for base, keys in by_base.items():
            firsts = {groups[0] if groups else None for _, groups in keys}
            if len(keys) > 1 and (None in firsts or ("" in firsts and any(f and f.isdigit() for f in firsts))):
                spelled = " and ".join(repr(k) for k, _ in sorted(keys))
                return f"the {where} keys {spelled} are one parameter to PHP and Rails ({base!r}), which read the last"
    return None


def reading_count(repeated: list[RepeatedKey]) -> int:
    """How many readings `value_readings` makes: one per combination of the repeated keys' distinct values."""
    return math.prod(len(set(values)) for _, _, values in repeated)


def value_readings(view: RequestView) -> list[tuple[str, RequestView]]:
    """The request read with one value of each repeated key, for every combination of their distinct values but the
    first (every key's first value, which is what the view itself shows): (how, the view read that way).

    Each reading is a server that takes just those values, so a condition that holds in every reading holds for
    whichever value a server takes first, last or acts on in a list. Only `request.query` and `request.form` change;
    see `reading_count` for how many there are."""
    repeated = repeated_keys(view)
    choices = [[(where, key, value) for value in dict.fromkeys(values)] for where, key, values in repeated]
    out = []
    for picked in itertools.islice(itertools.product(*choices), 1, None):
        how = " and ".join(f"the {where}'s {key!r} as {value!r}" for where, key, value in picked)
        out.append((how, with_changes(view, picked=picked)))
    return out


#: The most fields a body declared a urlencoded form may have: each is parsed on the event loop, where 2.5 million
#: (10 MB of `a=b&`) took seconds, every other agent's requests waiting. PHP reads 1,000 (`max_input_vars`).
MOST_FORM_FIELDS = 10_000


def form_size_problem(body: bytes, content_type: str) -> str | None:
    """Why a body declared a urlencoded form is refused before policy, if it is: more fields than MOST_FORM_FIELDS
    (counted in C, by its `&`s)."""
    if "application/x-www-form-urlencoded" not in content_type.lower() or body.count(b"&") < MOST_FORM_FIELDS:
        return None
    return (f"the form has more than {MOST_FORM_FIELDS:,} fields, more than goex-proxy reads to decide on it; send "
            "fewer, or the data in another form (JSON)")


def content_type_problem(view: RequestView) -> str | None:
    """Why the body's bytes and its Content-Type tell different stories, if they do: JSON declared but not JSON, or a
    form declared over JSON bytes (servers then read other fields than the policy did). Only those two types are
    checked, and the body is parsed at most once (`RequestView.json`, which the policy's conditions share)."""
    declared = (view.header("content-type") or "").split(";", 1)[0].strip().lower()
    json_declared = declared == "application/json" or declared.endswith("+json")
    if not (json_declared or declared == "application/x-www-form-urlencoded") or not view.body.strip():
        return None
    parsed = view.json
    if json_declared and parsed is None and view.body.strip() != b"null":
        return f"the body is declared {declared} but is not JSON"
    if not json_declared and isinstance(parsed, dict | list):
        return "the body is declared a form but is JSON"
    return None


def upgrade_protocol(values: Iterable[str]) -> str:
    """What a request's `Upgrade` header values ask to switch to: "http" for none or WebSocket (which the proxy
    inspects), else the one protocol token, lower-cased. Several protocols offered at once raise ValueError: the
    server would pick one, and the policy could not know which."""
    tokens = [t.strip().lower() for v in values for t in v.split(",") if t.strip()]
    other = sorted({t for t in tokens if t != "websocket"})
    if not other:
        return "http"
    if len(tokens) > 1:
        raise ValueError(f"the request offers several protocols to upgrade to ({', '.join(tokens)}); the server "
                         "would pick one, so send only the one policy allows")
    return other[0]


class _DuplicateKey(Exception):
    """Raised from inside `json.loads` at the first object with a key twice (not a ValueError: not a parse error)."""


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """`object_pairs_hook` that builds the object, or raises `_DuplicateKey` naming a key it has twice."""
    obj = dict(pairs)
    if len(obj) == len(pairs):
        return obj
    seen: set[str] = set()
    for key, _ in pairs:
        if key in seen:
            raise _DuplicateKey(key)
        seen.add(key)
    raise AssertionError("unreachable: fewer keys than pairs means one repeats")


#: What `checked_json` gives for a body it did not parse (not starting like a JSON object or array, or refused).
NOT_PARSED: Any = object()


def body_ambiguity(body: bytes) -> str | None:
    """Why servers could read the (decoded) body `body` differently from `RequestView.json`, or None (see
    `checked_json`)."""
    return checked_json(body)[0]


def _json_loads(body: bytes, **options: Any) -> Any:
    """`json.loads`, with an integer past Python's digit limit read as a float, as PHP and JavaScript read it: one
    such number made the whole body "not JSON" to the policy while servers read every field (a `_method`, a field a
    condition checks). Parsed again only for such a body."""
    try:
        return json_loads(body, **options)
    except ValueError as exc:
        if type(exc) is not ValueError:  # JSONDecodeError: not JSON; the limit's is a plain ValueError
            raise
    return json_loads(body, parse_int=_int_or_float, **options)


def _int_or_float(digits: str) -> int | float:
    try:
        return int(digits)
    except ValueError:  # past the digit limit
        return float(digits)


def checked_json(body: bytes) -> tuple[str | None, Any]:
    """Why servers could read the (decoded) body `body` differently from `RequestView.json` (or None), and the body
    as `RequestView.json` reads it (or `NOT_PARSED`), from one parse.

    A JSON object with a key twice is read with the last value by `json.loads` and with the first by some servers,
    so a policy could pass one value while the upstream acts on the other. Only a body whose first byte past
    whitespace and BOMs is `{` or `[` is parsed, in one pass; a duplicate met before the body turns out not to be
    JSON still counts, since lenient parsers would read it. Without a duplicate, the parse builds what `json.loads`
    builds (the same pairs, in order), so a view can be given it instead of parsing the body again (`with_json`).
    """
    if body.lstrip(_JSON_LEAD)[:1] not in (b"{", b"["):
        return None, NOT_PARSED
    try:
        parsed = _json_loads(body, object_pairs_hook=_no_duplicates)
    except _DuplicateKey as dup:
        key = str(dup.args[0])
        return (f"the JSON body has the key {key[:100]!r} twice in one object; servers differ on which value they "
                "read"), NOT_PARSED
    except RecursionError:
        return "the JSON body nests too deeply to be checked for duplicate keys", NOT_PARSED
    except (ValueError, UnicodeDecodeError):
        return None, None  # not JSON: what `RequestView.json` says of it too
    return None, parsed


def with_json(view: RequestView, parsed: Any) -> RequestView:
    """`view`, its `json` already known (`checked_json` parsed its body): conditions reading it do not parse again."""
    if parsed is not NOT_PARSED:
        view.__dict__["json"] = parsed
    return view


@dataclass(frozen=True)
class RequestView:
    """What the policy engine may look at: who asks, for what, with which body."""

    agent: str | None
    method: str
    scheme: str
    host: str
    port: int
    path: str
    query: tuple[tuple[str, str], ...] = ()
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = field(default=b"", repr=False)
    protocol: str = "http"  # "http" (WebSocket too: it is inspected), "tcp", or the token of an HTTP Upgrade
    #: (where, key, value): in a reading of a repeated key (`value_readings`), the value conditions see for it
    picked: tuple[tuple[str, str, str], ...] = ()

    def describe(self) -> str:
        """The request in a few words, for a denial."""
        host = f"[{self.host}]" if ":" in self.host else self.host  # an IPv6 address, as a URL writes it
        if self.protocol == "tcp":
            return f"raw TCP to {host}:{self.port}"
        upgrade = f" upgrading to {self.protocol!r}" if self.protocol != "http" else ""
        return f"{self.method} {host}{self.path}{upgrade}"

    @property
    def url(self) -> str:
        default = {"http": 80, "https": 443}.get(self.scheme)
        netloc = self.host if self.port == default else f"{self.host}:{self.port}"
        query = "&".join(f"{k}={v}" for k, v in self.query)
        return f"{self.scheme}://{netloc}{self.path}" + (f"?{query}" if query else "")

    def header(self, name: str) -> str | None:
        values = [v for k, v in self.headers if k == name]
        return ", ".join(values) if values else None

    @cached_property
    def json(self) -> Any:
        """The body parsed as JSON, or None when it is not JSON."""
        if not self.body:
            return None
        try:
            return _json_loads(self.body)
        except (ValueError, UnicodeDecodeError):
            return None

    @cached_property
    def form_pairs(self) -> tuple[tuple[str, str], ...]:
        """The (key, value) pairs of a body declared `application/x-www-form-urlencoded`, in order (else none)."""
        if not self.body:   # nothing to parse, whatever the header says (spares most requests the header scan)
            return ()
        content_type = (self.header("content-type") or "").lower()
        if "application/x-www-form-urlencoded" not in content_type:
            return ()
        try:
            return tuple(form_pairs(self.body.decode("utf-8")))
        except UnicodeDecodeError:
            return ()

    @cached_property
    def override_methods(self) -> frozenset[str]:
        """The methods the request's overrides name (a header, `_method` in the query or a urlencoded or multipart
        form, each spelled as servers read it), which servers run it as: read once a view, by the decide stage and by
        the record stage. A value is read both stripped of white space and as PHP's `trim` leaves it (a NUL off too).
        A JSON body's top-level `_method` too: Laravel reads a JSON body as its form (`isJson`: a Content-Type holding
        `/json` or `+json`), and Symfony's `getMethod` then reads `_method` there."""
        values = [v for k, v in self.headers if k.replace("_", "-") in METHOD_OVERRIDE_HEADERS]
        sent_type = (self.header("content-type") or "") if self.body else ""
        values += [v for k, v in self.query + _override_form(self, sent_type) if _is_method_key(k)]
        content_type = sent_type.lower()
        # multipart/mixed and multipart/related too, which Rack parses as it parses a form
        if "multipart/" in content_type:
            values += [v for _, v in multipart.method_fields(self.body, _is_method_key)]
        if ("/json" in content_type or "+json" in content_type) and isinstance(self.json, dict):
            values += [v for k, v in self.json.items() if isinstance(v, str) and _is_method_key(k)]
        methods = {v.strip().upper() for v in values} | {v.strip(_PHP_TRIMMED).upper() for v in values}
        # a value longer than any method is read as none (which no rule allows), not carried into the reasons
        methods = {m if len(m) <= _MOST_METHOD_CHARS else "" for m in methods}
        return frozenset(methods)

    @property
    def form(self) -> dict[str, str]:
        """The form's first value of each key (or the value this reading picked)."""
        return self._first_values("form", self.form_pairs)

    def _header_map(self) -> dict[str, str]:
        headers: dict[str, str] = {}
        for k, v in self.headers:
            headers[k] = f"{headers[k]}, {v}" if k in headers else v
        return headers

    def _query_map(self) -> dict[str, str]:
        return self._first_values("query", self.query)

    def _first_values(self, where: str, pairs: Iterable[tuple[str, str]]) -> dict[str, str]:
        """Each key's first value, but the value this reading picked for a repeated key (`value_readings`)."""
        out: dict[str, str] = {}
        for k, v in pairs:
            out.setdefault(k, v)
        out.update((k, v) for w, k, v in self.picked if w == where)
        return out

    def cel_context(self, now: float, paths: Iterable[tuple[str, ...]] | None = None) -> dict[str, Any]:
        """The variables a CEL condition sees: all of them, or only the subtrees on `paths`."""
        if paths is None:
            paths = _ALL_VARIABLES
        out: dict[str, Any] = {}
        for path in sorted(set(paths), key=len):
            root = path[0]
            if root == "agent":
                out["agent"] = self.agent or ""
            elif root == "now":
                out["now"] = int(now)
            elif root != "request":
                continue
            elif len(path) == 1:
                out["request"] = _Whole((name, read(self)) for name, read in _REQUEST_FIELDS.items())
            else:
                request = out.setdefault("request", {})
                read = _REQUEST_FIELDS.get(path[1])
                if read is not None and not isinstance(request, _Whole):
                    _graft(request, path[1], read(self), path[2:])
        return out


#: Every variable, for `cel_context` without paths.
_ALL_VARIABLES = (("agent",), ("now",), ("request",))

#: What `request.NAME` reads from a view, by NAME: functions of the view, made once rather than per context (a
#: decision builds a context for nearly every request with a condition).
_REQUEST_FIELDS: dict[str, Callable[[RequestView], Any]] = {
    "method": lambda view: view.method,
    "scheme": lambda view: view.scheme,
    "host": lambda view: view.host,
    "port": lambda view: view.port,
    "path": lambda view: view.path,
    "url": lambda view: view.url,
    "query": lambda view: view._query_map(),
    "headers": lambda view: view._header_map(),
    "body": lambda view: view.body.decode("utf-8", "replace"),
    "json": lambda view: view.json,
    "form": lambda view: view.form,
}


class _Whole(dict):  # type: ignore[type-arg]
    """A subtree copied in full, so that longer paths into it add nothing."""


_MISSING = object()


def _graft(target: dict[str, Any], key: str, value: Any, rest: tuple[str, ...]) -> None:
    """Copy into `target[key]` the part of `value` that the selector chain `rest` reaches (all of it if empty)."""
    current = target.get(key, _MISSING)
    if isinstance(current, _Whole) or (current is not _MISSING and not isinstance(current, dict)):
        return
    if not rest or not isinstance(value, dict):
        target[key] = _Whole(value) if isinstance(value, dict) else value
        return
    sub = target.setdefault(key, {})
    if rest[0] in value:
        _graft(sub, rest[0], value[rest[0]], rest[1:])
