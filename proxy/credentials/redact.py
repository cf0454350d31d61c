"""What never reaches the audit log or the agent: credential headers are redacted, injected secrets scrubbed."""

from __future__ import annotations

import bisect
import builtins
import itertools
import json
import re
import threading
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import hyperscan

#: Header names whose values carry credentials (lower case).
SENSITIVE_HEADERS = frozenset({
    "authorization", "proxy-authorization", "cookie", "set-cookie", "x-api-key", "api-key", "x-auth-token",
    "x-goog-api-key", "x-amz-security-token", "x-csrf-token", "private-token", "x-github-token",
})
REDACTED = "<redacted>"
#: What `text` gives when Hyperscan fails on it: none of the text (it may hold a secret), and no exception, since text
#: is scrubbed in log filters and on the fail-closed path itself (an exception there escaped the 502 it was logging).
UNSCANNED = "(not shown: the secret scrubber failed on it)"


def redact_value(name: str, value: str) -> str:
    """Keep an auth scheme word (`Bearer`, `Basic`) so the log still says what kind of credential it was."""
    if name.lower() not in SENSITIVE_HEADERS:
        return value
    scheme, sep, _ = value.partition(" ")
    if sep and name.lower() in ("authorization", "proxy-authorization") and scheme.isalpha():
        return f"{scheme} {REDACTED}"
    return REDACTED


def redacted_headers_json(headers: Iterable[tuple[str, str]], scrub: SecretScrubber | None = None) -> str:
    """Headers as a JSON list of [name, value] pairs, sensitive values redacted, order and repeats kept; with
    `scrub`, secrets replaced in names as well as values (an upstream can echo one into a header's name)."""
    pairs = [[k, redact_value(k, v)] for k, v in headers]
    if scrub:
        flat = [text for pair in pairs for text in pair]
        texts = scrub.texts(flat)
        if texts is not flat:  # a spelling in them: one may span a name and its value (or two fields), which a reader
            stream = scrub.stream()  # of the row joins as the agent would; scrubbed as one stream, as for the agent
            texts = [stream.feed(t.encode("utf-8", "surrogatepass")).decode("utf-8", "replace") for t in flat]
        pairs = [[texts[i], texts[i + 1]] for i in range(0, len(texts), 2)]
    return json.dumps(pairs, ensure_ascii=False)


#: A run of at least this many bytes that could be a piece of a secret's spelling is withheld where it touches the
#: edge of a stream segment (a header field, a WebSocket message, a byte range), since the agent can join segments:
#: at most this less one of the secret's bytes leak at each cut. (Eight: a piece of a hex spelling six long would
#: turn up by chance in hex-heavy headers once in a few thousand answers.)
PARTIAL_MIN = 8
#: What stands in for the start of a possible spelling withheld at the end of a segment.
WITHHELD = b"<withheld>"
_TEXT_RUNS = re.compile(rb"[^\r\n]+")
_LINE_BREAK = re.compile(rb"[\r\n]+")
_LINE_BREAK_OR_NOT = re.compile(rb"[\r\n]+|[^\r\n]+")


class _Layer:
    """One compiled literal database (Hyperscan: one pass over the bytes for all its spellings, whatever their number)
    over some of the spellings. Hyperscan reads a literal up to its first NUL byte, so a spelling holding one is
    found by its longest NUL-free piece and checked whole. ASCII case is ignored: hex, percent escapes, JSON's
    `\\u00XX` and HTML's `&#X27;` decode the same in either case, letter by letter (`7F3a`, `%2f`)."""

    def __init__(self, encoded: Mapping[bytes, bytes]) -> None:
        self.encoded = dict(encoded)
        #: per expression id: its length, its offset in the spelling, the spelling, whether it is the spelling whole
        self.pieces: list[tuple[int, int, builtins.bytes, bool]] = []
        self.nul_only: list[builtins.bytes] = []  # spellings of NUL bytes only: found with bytes.find
        for form in self.encoded:
            piece = max(form.split(b"\0"), key=len)
            if piece:
                self.pieces.append((len(piece), form.index(piece), form, piece == form))
            else:
                self.nul_only.append(form)
        self.db: Any = None
        if self.pieces:
            self.db = hyperscan.Database(mode=hyperscan.HS_MODE_BLOCK)
            self.db.compile(expressions=[p[2][p[1]:p[1] + p[0]] for p in self.pieces],
                            ids=list(range(len(self.pieces))), flags=hyperscan.HS_FLAG_CASELESS, literal=True)
        self._local = threading.local()  # a scan's scratch space belongs to one thread at a time

    def occurrences(self, data: builtins.bytes, out: list[tuple[int, int, builtins.bytes]]) -> None:
        """Append every occurrence (start, end, spelling) of this layer's spellings in `data`, overlapping ones too."""
        if self.db is not None:
            scratch = getattr(self._local, "scratch", None)
            if scratch is None:
                scratch = self._local.scratch = hyperscan.Scratch(self.db)
            pieces, add = self.pieces, out.append

            def hit(index: int, _from: int, end: int, _flags: int, _context: object) -> None:
                length, offset, form, whole = pieces[index]
                if whole:
                    add((end - length, end, form))
                    return
                start = end - length - offset
                if start >= 0 and data[start:start + len(form)].lower() == form.lower():
                    add((start, start + len(form), form))

            self.db.scan(data, match_event_handler=hit, scratch=scratch)
        for form in self.nul_only:
            at = data.find(form)
            while at >= 0:
                out.append((at, at + len(form), form))
                at = data.find(form, at + 1)


#: Bodies at least this long are remembered (the last few, by value) with what the scrubber found in them: the record
#: stage scrubs an answer's body for the audit log, then the scrub stage the same bytes for the agent; one scan. At
#: most 4 bodies of up to 4 MiB each, with their joined lines, are held (32 MiB); a larger body is scanned twice. A
#: shorter text is not (a row's header values and URL, the live log's parts: `text` remembers those found clean).
_MEMO_MIN, _MEMO_MAX, _MEMO_ENTRIES = 512, 4 << 20, 4
#: How many last bytes of a body are compared before all of them, when looking for it among the remembered ones.
_MEMO_TAIL = 64
#: How many segment edges' answers `touches` remembers (cleared when full): a header block mostly repeats from one
#: answer to the next (names, content type, server), so most of its edges are looked up, not read window by window.
_EDGES_REMEMBERED = 4096
#: Texts of up to this many characters found to hold no spelling are remembered (this many at most, cleared when
#: full): a request's method, agent, URL and most header values repeat from one request to the next, and each was a
#: scan of its own in every stage that records or shows it (the row, the live log), a dozen per request.
_CLEAN_TEXT_CHARS, _CLEAN_TEXTS_REMEMBERED = 512, 4096


class SecretScrubber:
    """Replaces every known spelling of every injected secret with that credential's placeholder."""

    _grams: set[builtins.bytes]
    _layers: tuple[_Layer, ...]

    def __init__(self, forms: Mapping[str, str], base: SecretScrubber | None = None) -> None:
        """`forms` maps each spelling (raw, URL-encoded, base64, hex, …) to the placeholder that replaces it. With
        `base` (the scrubber these forms extend, as at an OAuth2 refresh), what was compiled for its spellings is kept
        and only the new ones are compiled, into a second, small layer, until that grows past an eighth of all."""
        self._forms = dict(forms)
        #: the scrubber made from this one (an OAuth2 refresh): a stream begun with this one follows it
        self._newer: SecretScrubber | None = None
        encoded: dict[builtins.bytes, builtins.bytes] = {}
        for form, placeholder in self._forms.items():
            raw = form.encode()
            encoded[raw] = placeholder.encode()
            flat = raw.translate(None, b"\r\n")  # line breaks in it (a secret that is a PEM key or JSON): as joined
            if flat != raw and len(flat) >= 4:
                encoded.setdefault(flat, placeholder.encode())
        self._encoded = encoded
        self.longest = max(map(len, encoded), default=0)
        #: whether a spelling has a space in it: only such a one can span two texts shown with a space between them
        self.spaced = any(b" " in form for form in encoded)
        self._recent: deque[tuple[builtins.bytes, builtins.bytes, list[tuple[int, int, builtins.bytes]]]] = deque(
            maxlen=_MEMO_ENTRIES)
        #: the quick no's answer near a segment edge, by the bytes around it (`touches`); for `_edges_for` grams
        self._edges: dict[tuple[int, builtins.bytes], bool] = {}
        self._edges_for = 0
        #: texts `text` found no spelling in (this scrubber's spellings: one made at a refresh starts anew)
        self._clean: set[str] = set()
        if base is not None:
            base._newer = self
        if base is not None and base._forms.items() <= self._forms.items():
            new = {f: p for f, p in encoded.items() if f not in base._encoded}
            # Every PARTIAL_MIN-byte piece of a spelling: runs of them at segment edges are withheld. Spellings only
            # ever get added, so the set is shared and extended (an older scrubber then withholds a little more).
            self._grams = base._grams
            self._grams.update(_grams(new))
            small = max(256, len(encoded) // 8)
            layers = base._layers
            if not new:
                self._layers = layers
            elif len(layers) > 1 and len(layers[-1].encoded) + len(new) <= small:
                self._layers = (*layers[:-1], _Layer({**layers[-1].encoded, **new}))
            elif len(layers) == 1 and len(new) <= small:
                self._layers = (*layers, _Layer(new))
            else:
                self._layers = (_Layer(encoded),)
        else:
            self._grams = _grams(encoded)
            self._layers = (_Layer(encoded),) if encoded else ()

    def __bool__(self) -> bool:
        return bool(self._encoded)

    def _find(self, data: builtins.bytes) -> list[tuple[int, int, builtins.bytes]]:
        """The spans of `data` to replace, leftmost first, each named by the spelling it starts with: spellings that
        overlap make one span (one spelling's end the next one's start, `secret` + `base64(secret)` sharing a
        letter: the second must not be left with one letter taken)."""
        found: list[tuple[int, int, builtins.bytes]] = []
        if not data:
            return found
        for layer in self._layers:
            layer.occurrences(data, found)
        if len(found) < 2:
            return found
        found.sort(key=lambda m: (m[0], m[0] - m[1]))
        picked, cursor = [found[0]], found[0][1]
        for m in found[1:]:
            if m[0] >= cursor:
                picked.append(m)
            elif m[1] > cursor:
                picked[-1] = (picked[-1][0], m[1], picked[-1][2])
            cursor = max(cursor, m[1])
        return picked

    def _joined(self, segment: builtins.bytes) -> tuple[builtins.bytes, list[tuple[int, int, builtins.bytes]]]:
        """`segment` without its line breaks, and the spellings found in that (remembered for large segments)."""
        recent = tuple(self._recent)
        for seen, joined, found in recent:  # the same bytes object first (the record stage's body, then the scrub's)
            if seen is segment:
                return joined, found
        # Then equal bytes (the same answer decoded twice, or answered twice). Answers of one size are often the same
        # length and differ only near their end (a page of records, an id, a time), where a comparison from the start
        # learns it last: their last bytes are compared first, which spares a new answer a full comparison with each.
        for seen, joined, found in recent:
            if len(seen) == len(segment) and seen[-_MEMO_TAIL:] == segment[-_MEMO_TAIL:] and seen == segment:
                return (segment if joined is seen else joined), found
        broken = b"\n" in segment or b"\r" in segment
        joined = segment.translate(None, b"\r\n") if broken else segment
        found = self._find(joined)
        if _MEMO_MIN <= len(segment) <= _MEMO_MAX:
            self._recent.append((segment, joined, found))
        return joined, found

    def text(self, value: str) -> str:
        if not self._encoded or not value or value in self._clean:
            return value
        data = value.encode("utf-8", "surrogatepass")
        try:
            cleaned = self.bytes(data)  # with lines joined, as a reader of a wrapped message or close reason would
        except hyperscan.error:
            return UNSCANNED
        if cleaned is data:
            self._remember_clean([value])
            return value
        return cleaned.decode("utf-8", "surrogatepass")

    def _remember_clean(self, values: list[str]) -> None:
        """Remember these texts as holding no spelling (`text` gives each back as it is)."""
        clean = self._clean
        if len(clean) + len(values) > _CLEAN_TEXTS_REMEMBERED:
            clean.clear()
        clean.update(v for v in values if len(v) <= _CLEAN_TEXT_CHARS)

    def texts(self, values: list[str]) -> list[str]:
        """`text` of each value, with one scan for them all when none holds a spelling (the common case: a row's
        header values, or its path and URL; a scan costs about a microsecond, whatever the length). A spelling in one
        value, lines joined, is also in all of them run together, lines joined: a scan of that finding nothing means
        every value comes back unchanged. Anything found (even across two values) has each value scrubbed alone."""
        if not self._encoded or not values:
            return values
        clean = self._clean
        if all(v in clean for v in values):
            return values
        data = "".join(values).encode("utf-8", "surrogatepass")
        if b"\n" in data or b"\r" in data:
            data = data.translate(None, b"\r\n")
        try:
            if not self._find(data):
                self._remember_clean(values)
                return values
        except hyperscan.error:
            pass  # each value then gets its own scan, and its own UNSCANNED if that fails too
        return [self.text(value) for value in values]

    def bytes(self, value: bytes) -> bytes:
        """`value` with every spelling replaced, including spellings broken across lines (MIME base64 wraps its
        lines every 76 characters): such a line-broken one is replaced whole, its line breaks dropped."""
        if not self._encoded or not value:
            return value
        joined, found = self._joined(value)
        if not found:
            return value
        original = _positions(value) if joined is not value else (lambda index: index)
        out, cursor = bytearray(), 0
        for start, end, form in found:
            out += value[cursor:original(start)] + self._encoded[form]
            cursor = original(end - 1) + 1
        return builtins.bytes(out + value[cursor:])

    def touches(self, segments: list[builtins.bytes]) -> bool:
        """Whether a stream of these segments could need scrubbing at all: a spelling in them joined, a line break,
        or a piece of a spelling at or across a segment's edge (the quick no that spares most header blocks)."""
        joined = b"".join(segments)
        if b"\n" in joined or b"\r" in joined or self._find(joined):
            return True
        n, grams, low = PARTIAL_MIN, self._grams, joined.lower()
        if self._edges_for != len(grams) or len(self._edges) >= _EDGES_REMEMBERED:  # grams only ever get added
            self._edges.clear()
            self._edges_for = len(grams)
        known = self._edges
        for edge in itertools.accumulate(map(len, segments), initial=0):
            # The windows touching this edge start at most n before it and at most at it: all inside these bytes.
            start = max(edge - n, 0)
            key = (edge - start, low[start:edge + n])
            near = known.get(key)
            if near is None:
                near = known[key] = not grams.isdisjoint([key[1][i:i + n] for i in range(key[0] + 1)])
            if near:
                return True
        return False

    def edge_runs(self, text: builtins.bytes, head: int) -> tuple[int, int]:
        """Within `text[head:]`, the end of a run of spelling pieces covering its start (which may begin before
        `head`), and the start of one covering its end: (head, len(text)) when there are none. A run is followed at
        most the length of the longest spelling (a piece of one cannot reach further), so a long periodic run (a
        secret with `AAAA` in it, a body of `A`s) costs no more than that."""
        n, grams, most = PARTIAL_MIN, self._grams, self.longest
        lead = head
        base = max(head - n + 1, 0)
        low = text[base:head + most + n].lower()  # only what the walk can reach is lowered (grams are lower case)
        first = next((i for i in range(base, head + 1) if low[i - base:i - base + n] in grams), None)
        if first is not None:
            j, stop = first, min(len(text) - n, first + most)
            while j <= stop and low[j - base:j - base + n] in grams:
                j += 1
            lead = j + n - 1
        k, stop = len(text) - n, max(len(text) - n - most - 1, head - n, -1)  # windows overlapping the segment
        base = stop + 1
        low = text[base:].lower()
        while k > stop and low[k - base:k - base + n] in grams:
            k -= 1
        tail = max(k + 1, head) if k + 1 <= len(text) - n else len(text)
        return min(lead, len(text)), tail

    def stream(self) -> ScrubStream:
        """A matcher for one stream of segments (a header block, a WebSocket's messages) that keeps state across them."""
        return ScrubStream(self)

class ScrubStream:
    """Scrubs one message's bytes as the agent could join them (its reason, header names and values, body, trailers;
    or a WebSocket's messages), segment by segment, ignoring line breaks: a spelling spanning segments is replaced in
    the segment it ends in, and a run of pieces of one at either edge of a segment is withheld, so that at most
    PARTIAL_MIN - 1 bytes of a secret reach the agent at each place the stream is cut."""

    def __init__(self, scrubber: SecretScrubber) -> None:
        self._scrubber = scrubber
        self._carry = b""  # the last bytes received (unscrubbed, line breaks dropped), to find spellings begun before

    def _current(self) -> SecretScrubber:
        """The newest scrubber: a token refreshed while a WebSocket is open is scrubbed from its next message on."""
        while self._scrubber._newer is not None:
            self._scrubber = self._scrubber._newer
        return self._scrubber

    def touches(self, segments: list[bytes]) -> bool:
        """Whether feeding these segments next could change any of them (see `SecretScrubber.touches`)."""
        return self._current().touches([self._carry, *segments])

    def skip(self, segment: bytes) -> None:
        """Take `segment` as passed on unchanged (it was checked otherwise), keeping the state for what follows."""
        self._carry = (self._carry + _LINE_BREAK.sub(b"", segment))[-self._keep():]

    def _keep(self) -> int:
        return max(self._current().longest - 1, PARTIAL_MIN)

    def feed(self, segment: bytes, keep_length: bool = False) -> bytes:
        """`segment` scrubbed; with `keep_length` (a byte range of a body), what is taken out becomes `*`s instead
        (line breaks kept), and a segment too short to hold a piece is starred whole if it is part of a spelling."""
        scrub = self._current()
        if not scrub or not segment:
            return segment
        joined, found = scrub._joined(segment)
        broken = joined is not segment
        head = len(self._carry)
        text = self._carry + joined
        self._carry = text[-self._keep():]
        # What to take out, in `text` positions: whole spellings (one wholly before was replaced there), then runs
        # of pieces of one at either edge of this segment. The segment's own spellings were found in it alone; only
        # one begun in the carry and ending in it makes the scan of the whole text needed (the same leftmost-longest
        # choice otherwise: nothing found before the segment reaches into it).
        if head and any(start < head < end for start, end, _ in scrub._find(text[:head + scrub.longest - 1])):
            found = [m for m in scrub._find(text) if m[1] > head]
        else:
            found = [(start + head, end + head, form) for start, end, form in found]
        cuts = [(max(start, head), end, scrub._encoded[form]) for start, end, form in found]
        lead, tail = scrub.edge_runs(text, head)
        if lead > head:
            cuts.append((head, lead, WITHHELD))
        if tail < len(text):
            cuts.append((tail, len(text), WITHHELD))
        if keep_length and 0 < len(joined) < PARTIAL_MIN and any(joined.lower() in form.lower()
                                                                  for form in scrub._encoded):
            cuts.append((head, len(text), WITHHELD))
        if not cuts:
            return segment
        original = _positions(segment) if broken else (lambda index: index)
        out, cursor = bytearray(), 0
        for start, end, replacement in sorted(cuts, key=lambda cut: (cut[0], cut[2] is WITHHELD)):  # spellings first
            begin, finish = original(start - head), original(end - head - 1) + 1
            if keep_length:  # every byte of the cut but line breaks becomes a '*'
                out += segment[cursor:begin] + _LINE_BREAK_OR_NOT.sub(_star, segment[max(begin, cursor):finish])
            elif begin >= cursor:
                out += segment[cursor:begin] + replacement
            cursor = max(cursor, finish)
        return bytes(out + segment[cursor:])


def _grams(encoded: Iterable[bytes]) -> set[bytes]:
    """Every PARTIAL_MIN-byte piece of the spellings, in lower case (looked up with the text lowered too)."""
    return {f[i:i + PARTIAL_MIN] for f in map(bytes.lower, encoded) for i in range(len(f) - PARTIAL_MIN + 1)}


def _star(run: re.Match[bytes]) -> bytes:
    return run.group(0) if run.group(0)[:1] in (b"\r", b"\n") else b"*" * len(run.group(0))


def _positions(segment: bytes) -> Callable[[int], int]:
    """Where each byte of `segment` without its CR and LF bytes sits in `segment` (its length past the end)."""
    runs = [(m.start(), len(m.group(0))) for m in _TEXT_RUNS.finditer(segment)]
    starts = list(itertools.accumulate((length for _, length in runs), initial=0))

    def original(index: int) -> int:
        if index >= starts[-1]:
            return len(segment)
        run = bisect.bisect_right(starts, index) - 1
        return runs[run][0] + index - starts[run]

    return original
