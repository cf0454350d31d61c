"""What never reaches the audit log or the agent: credential headers are redacted, injected secrets scrubbed."""

from __future__ import annotations

import bisect
import builtins
import itertools
import json
import re
from collections.abc import Callable, Iterable, Mapping

import re2

#: Header names whose values carry credentials (lower case).
SENSITIVE_HEADERS = frozenset({
    "authorization", "proxy-authorization", "cookie", "set-cookie", "x-api-key", "api-key", "x-auth-token",
    "x-goog-api-key", "x-amz-security-token", "x-csrf-token", "private-token", "x-github-token",
})
REDACTED = "<redacted>"


def redact_value(name: str, value: str) -> str:
    """Keep an auth scheme word (`Bearer`, `Basic`) so the log still says what kind of credential it was."""
    if name.lower() not in SENSITIVE_HEADERS:
        return value
    scheme, sep, _ = value.partition(" ")
    if sep and name.lower() in ("authorization", "proxy-authorization") and scheme.isalpha():
        return f"{scheme} {REDACTED}"
    return REDACTED


def redacted_headers_json(headers: Iterable[tuple[str, str]], scrub: SecretScrubber | None = None) -> str:
    """Headers as a JSON list of [name, value] pairs, sensitive values redacted, order and repeats kept."""
    pairs = [[k, redact_value(k, v)] for k, v in headers]
    if scrub:
        pairs = [[k, scrub.text(v)] for k, v in pairs]
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


class SecretScrubber:
    """Replaces every known spelling of every injected secret with that credential's placeholder."""

    def __init__(self, forms: Mapping[str, str]) -> None:
        """`forms` maps each spelling (raw, URL-encoded, base64, hex, …) to the placeholder that replaces it."""
        self._forms = dict(forms)
        self._encoded = {f.encode(): p.encode() for f, p in self._forms.items()}
        ordered = sorted(self._forms, key=len, reverse=True)
        # RE2 runs the alternation of literals as one automaton: 15 times faster than `re` on a 60 KB body. Long
        # secrets (a service account's JSON) outgrow its default memory, and it would say so on every search.
        options = re2.Options()
        options.max_mem, options.log_errors = 256 << 20, False
        self._text = re2.compile("|".join(map(re.escape, ordered)), options) if ordered else None
        self._bytes = re2.compile(b"|".join(re.escape(f.encode()) for f in ordered), options) if ordered else None
        self.longest = max(map(len, self._encoded), default=0)
        # Every PARTIAL_MIN-byte piece of a spelling: runs of them at segment edges are withheld.
        self._grams = {f[i:i + PARTIAL_MIN] for f in self._encoded for i in range(len(f) - PARTIAL_MIN + 1)}

    def __bool__(self) -> bool:
        return self._text is not None

    def text(self, value: str) -> str:
        if self._text is None:
            return value
        return str(self._text.sub(lambda m: self._forms[m.group(0)], value))

    def bytes(self, value: bytes) -> bytes:
        """`value` with every spelling replaced, including spellings broken across lines (MIME base64 wraps its
        lines every 76 characters): such a line-broken one is replaced whole, its line breaks dropped."""
        if self._bytes is None or not value:
            return value
        return self._across_lines(self._bytes.sub(lambda m: self._encoded[m.group(0)], value))

    def _across_lines(self, value: builtins.bytes) -> builtins.bytes:
        assert self._bytes is not None
        if b"\n" not in value and b"\r" not in value:
            return value
        joined = value.replace(b"\r", b"").replace(b"\n", b"")
        if not self._bytes.search(joined):
            return value
        original = _positions(value)
        out, cursor = bytearray(), 0
        for m in self._bytes.finditer(joined):
            out += value[cursor:original(m.start())] + self._encoded[m.group(0)]
            cursor = original(m.end() - 1) + 1
        return bytes(out + value[cursor:])

    def touches(self, segments: list[builtins.bytes]) -> bool:
        """Whether a stream of these segments could need scrubbing at all: a spelling in them joined, a line break,
        or a piece of a spelling at or across a segment's edge (the quick no that spares most header blocks)."""
        assert self._bytes is not None
        joined = b"".join(segments)
        if self._bytes.search(joined) is not None or b"\n" in joined or b"\r" in joined:
            return True
        edge = 0
        for segment in segments:
            for at in (edge, edge + len(segment)):
                if any(joined[i:i + PARTIAL_MIN] in self._grams for i in range(max(at - PARTIAL_MIN, 0), at + 1)):
                    return True
            edge += len(segment)
        return False

    def edge_runs(self, text: builtins.bytes, head: int) -> tuple[int, int]:
        """Within `text[head:]`, the end of a run of spelling pieces covering its start (which may begin before
        `head`), and the start of one covering its end: (head, len(text)) when there are none. A run is followed at
        most the length of the longest spelling (a piece of one cannot reach further), so a long periodic run (a
        secret with `AAAA` in it, a body of `A`s) costs no more than that."""
        n, grams, most = PARTIAL_MIN, self._grams, self.longest
        lead = head
        first = next((i for i in range(max(head - n + 1, 0), head + 1) if text[i:i + n] in grams), None)
        if first is not None:
            j, stop = first, min(len(text) - n, first + most)
            while j <= stop and text[j:j + n] in grams:
                j += 1
            lead = j + n - 1
        k, stop = len(text) - n, max(len(text) - n - most - 1, head - n, -1)  # windows overlapping the segment
        while k > stop and text[k:k + n] in grams:
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

    def touches(self, segments: list[bytes]) -> bool:
        """Whether feeding these segments next could change any of them (see `SecretScrubber.touches`)."""
        return self._scrubber.touches([self._carry, *segments])

    def skip(self, segment: bytes) -> None:
        """Take `segment` as passed on unchanged (it was checked otherwise), keeping the state for what follows."""
        self._carry = (self._carry + _LINE_BREAK.sub(b"", segment))[-self._keep():]

    def _keep(self) -> int:
        return max(self._scrubber.longest - 1, PARTIAL_MIN)

    def feed(self, segment: bytes, keep_length: bool = False) -> bytes:
        """`segment` scrubbed; with `keep_length` (a byte range of a body), what is taken out becomes `*`s instead
        (line breaks kept), and a segment too short to hold a piece is starred whole if it is part of a spelling."""
        scrub = self._scrubber
        pattern = scrub._bytes
        if pattern is None or not segment:
            return segment
        broken = b"\n" in segment or b"\r" in segment
        joined = segment.replace(b"\r", b"").replace(b"\n", b"") if broken else segment
        head = len(self._carry)
        text = self._carry + joined
        self._carry = text[-self._keep():]
        # What to take out, in `text` positions: whole spellings (one wholly before was replaced there), then runs
        # of pieces of one at either edge of this segment.
        cuts = [(max(m.start(), head), m.end(), scrub._encoded[m.group(0)])
                for m in pattern.finditer(text) if m.end() > head]
        lead, tail = scrub.edge_runs(text, head)
        if lead > head:
            cuts.append((head, lead, WITHHELD))
        if tail < len(text):
            cuts.append((tail, len(text), WITHHELD))
        if keep_length and len(joined) < PARTIAL_MIN and any(joined in form for form in scrub._encoded):
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
