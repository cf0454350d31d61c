"""The one-pass scrubber against its contract, stated directly: leftmost-longest spellings over the text with line
breaks ignored, overlapping ones taken out together, found however the stream is cut (random split points, secrets
overlapping each other, one a prefix of another, secrets at chunk edges), the same as the whole text scanned again at
every segment."""

from __future__ import annotations

import re

from hypothesis import given, settings
from hypothesis import strategies as st

from goex_proxy.credentials.kinds import Credential, Injection
from goex_proxy.credentials.redact import _LINE_BREAK_OR_NOT, PARTIAL_MIN, WITHHELD, SecretScrubber, _positions, _star
from goex_proxy.secretref import SecretRef

SETTINGS = settings(max_examples=250, deadline=None, derandomize=True)
#: few letters, so that secrets overlap, share prefixes and turn up by chance
LETTERS = "abcd"


def find(text: bytes, forms: dict[bytes, bytes]) -> list[tuple[int, int, bytes]]:
    """The contract: from the left, the longest spelling starting at each place; a spelling that starts inside one
    taken out and ends past it extends what is taken out (named by the first), so none of it is left."""
    out: list[tuple[int, int, bytes]] = []
    for i in range(len(text)):
        best = max((f for f in forms if text.startswith(f, i)), key=len, default=None)
        if best is None:
            continue
        if out and i < out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], i + len(best)), out[-1][2])
        else:
            out.append((i, i + len(best), best))
    return out


def joined_of(data: bytes) -> bytes:
    return data.replace(b"\r", b"").replace(b"\n", b"")


def expected_bytes(data: bytes, forms: dict[bytes, bytes]) -> bytes:
    """`SecretScrubber.bytes`: every spelling in the text without line breaks replaced, mapped back onto the text."""
    original = _positions(data)
    out, cursor = b"", 0
    for start, end, form in find(joined_of(data), forms):
        out += data[cursor:original(start)] + forms[form]
        cursor = original(end - 1) + 1
    return out + data[cursor:]


class ReferenceStream:
    """`ScrubStream.feed` as it was before the one-pass matcher: the carry and the whole segment scanned together at
    every segment (only the finder differs: the contract's instead of RE2's alternation, longest first)."""

    def __init__(self, scrubber: SecretScrubber, forms: dict[bytes, bytes]) -> None:
        self.scrubber, self.forms, self.carry = scrubber, forms, b""

    def feed(self, segment: bytes, keep_length: bool = False) -> bytes:
        s = self.scrubber
        if not segment:
            return segment
        joined = joined_of(segment)
        head, text = len(self.carry), self.carry + joined
        self.carry = text[-max(s.longest - 1, PARTIAL_MIN):]
        cuts = [(max(a, head), b, self.forms[f]) for a, b, f in find(text, self.forms) if b > head]
        lead, tail = s.edge_runs(text, head)
        if lead > head:
            cuts.append((head, lead, WITHHELD))
        if tail < len(text):
            cuts.append((tail, len(text), WITHHELD))
        if keep_length and 0 < len(joined) < PARTIAL_MIN and any(joined in form for form in self.forms):
            cuts.append((head, len(text), WITHHELD))
        original = _positions(segment)
        out, cursor = b"", 0
        for start, end, replacement in sorted(cuts, key=lambda cut: (cut[0], cut[2] is WITHHELD)):
            begin, finish = original(start - head), original(end - head - 1) + 1
            if keep_length:
                out += segment[cursor:begin] + _LINE_BREAK_OR_NOT.sub(_star, segment[max(begin, cursor):finish])
            elif begin >= cursor:
                out += segment[cursor:begin] + replacement
            cursor = max(cursor, finish)
        return out + segment[cursor:]


secrets_st = st.lists(st.text(LETTERS, min_size=8, max_size=14), min_size=1, max_size=4, unique=True)


@st.composite
def cases(draw: st.DrawFn) -> tuple[dict[str, str], bytes, list[int]]:
    """Spellings (some overlapping, one maybe a prefix of another), a text of them and filler with line breaks here and
    there, and the points where the stream is cut (edges of spellings among them)."""
    secrets = draw(secrets_st)
    if draw(st.booleans()):  # one secret is a prefix of another
        secrets.append(secrets[0] + draw(st.text(LETTERS, min_size=1, max_size=6)))
    forms = {s: f"<P{i % 2}>" for i, s in enumerate(dict.fromkeys(secrets))}
    pieces = draw(st.lists(st.one_of(st.sampled_from(list(forms)), st.text(LETTERS + "x\n\r", max_size=12),
                                     st.sampled_from(list(forms)).map(lambda s: s[len(s) // 2:] + s),
                                     st.tuples(st.sampled_from(list(forms)), st.sampled_from(list(forms))).map(
                                         lambda ab: overlapped(*ab))),  # one spelling's end the other's start
                           max_size=8))
    text = "".join(pieces)
    if draw(st.booleans()) and len(text) > 4:  # a line break inside a spelling (as MIME base64 wraps lines)
        at = draw(st.integers(1, len(text) - 1))
        text = text[:at] + "\r\n" + text[at:]
    data = text.encode()
    cuts = draw(st.lists(st.integers(0, len(data)), max_size=6))
    return forms, data, sorted({0, len(data), *cuts})


def overlapped(a: str, b: str) -> str:
    """`a` then `b` sharing the longest end of `a` that starts `b` (just `a + b` if none does)."""
    k = max((k for k in range(1, min(len(a), len(b))) if a[-k:] == b[:k]), default=0)
    return a + b[k:]


def encoded(forms: dict[str, str]) -> dict[bytes, bytes]:
    return {f.encode(): p.encode() for f, p in forms.items()}


@SETTINGS
@given(cases())
def test_bytes_replaces_the_leftmost_longest_spellings_with_line_breaks_ignored(case) -> None:
    forms, data, _ = case
    assert SecretScrubber(forms).bytes(data) == expected_bytes(data, encoded(forms))


@SETTINGS
@given(cases())
def test_bytes_equals_the_old_two_pass_scrubber_where_no_two_spellings_overlap(case) -> None:
    """Before, `bytes` replaced spellings within lines first (a regex alternation, longest first), then spellings across
    line breaks in what was left. Where no two occurrences overlap both choose the same ones."""
    forms, data, _ = case
    enc = encoded(forms)
    joined = joined_of(data)
    every = [(i, i + len(f)) for f in enc for i in range(len(joined)) if joined.startswith(f, i)]
    if any(a < d and c < b for a, b in every for c, d in every if (a, b) != (c, d)):
        return
    pattern = re.compile(b"|".join(re.escape(f) for f in sorted(enc, key=len, reverse=True)))
    old = pattern.sub(lambda m: enc[m.group(0)], data)
    if b"\n" in old or b"\r" in old:
        original, out, cursor = _positions(old), b"", 0
        for m in pattern.finditer(joined_of(old)):
            out += old[cursor:original(m.start())] + enc[m.group(0)]
            cursor = original(m.end() - 1) + 1
        old = out + old[cursor:]
    assert SecretScrubber(forms).bytes(data) == old


@SETTINGS
@given(cases(), st.booleans())
def test_a_stream_cut_anywhere_scrubs_as_the_whole_text_scanned_at_every_segment(case, keep_length) -> None:
    """The segment's own spellings are found once (and remembered), the carry only checked for one reaching into
    the segment: the same cuts as scanning carry and segment together every time."""
    forms, data, points = case
    scrubber = SecretScrubber(forms)
    stream, reference = scrubber.stream(), ReferenceStream(scrubber, encoded(forms))
    for a, b in zip(points, points[1:], strict=False):
        scrubber.bytes(data[a:b])  # as the record stage does first (the stream then finds it remembered)
        assert stream.feed(data[a:b], keep_length) == reference.feed(data[a:b], keep_length)


@SETTINGS
@given(cases())
def test_no_spelling_of_any_secret_reaches_the_agent_however_the_stream_is_cut(case) -> None:
    forms, data, points = case
    stream = SecretScrubber(forms).stream()
    out = joined_of(b"".join(stream.feed(data[a:b]) for a, b in zip(points, points[1:], strict=False)))
    for form in forms:
        assert form.encode() not in out.replace(b"<P0>", b"|").replace(b"<P1>", b"|")


@settings(max_examples=40, deadline=None, derandomize=True)
@given(st.lists(st.text("abcdefghijklmnopqrstuvwxyz0123456789-_", min_size=12, max_size=40), min_size=2, max_size=6,
                unique=True), st.binary(max_size=64))
def test_every_spelling_of_every_credential_is_found_at_any_split_point(values, filler) -> None:
    """Real spellings (raw, URL-encoded, base64 at three alignments, hex, JSON…), each echoed in a body cut at every
    point: none comes through whole, and at most PARTIAL_MIN - 1 of its bytes at the cut."""
    credential = Credential("c", SecretRef(vault="c"), (), Injection("header"))
    forms = {f: credential.placeholder for v in values for f in credential.forms(v)}
    scrubber = SecretScrubber(forms)
    for form in list(forms)[::3]:
        data = filler + b" " + form.encode() + b" " + filler
        at = len(filler) + 1 + len(form) // 2
        stream = scrubber.stream()
        # (the placeholder set apart: seven bytes let through before it and its own first letter are no piece)
        out = (stream.feed(data[:at]) + stream.feed(data[at:])).replace(credential.placeholder.encode(), b"|")
        assert form.encode() not in out and form.encode()[:PARTIAL_MIN] not in out
        assert scrubber.bytes(data).count(credential.placeholder.encode()) >= 1


@SETTINGS
@given(st.lists(secrets_st, min_size=2, max_size=5), st.text(LETTERS + "x\n", max_size=80))
def test_a_scrubber_made_on_a_previous_one_matches_a_fresh_one(batches, text) -> None:
    """At each OAuth2 refresh the scrubber is made on the previous one (its compiled spellings kept, a small layer
    for the new ones): it finds what a scrubber made from scratch finds."""
    forms: dict[str, str] = {}
    scrubber = SecretScrubber({})
    for batch in batches:
        forms.update({s: "<P>" for s in batch})
        scrubber = SecretScrubber(forms, base=scrubber)
        data = (text + "".join(batch) + text).encode()
        assert scrubber.bytes(data) == SecretScrubber(forms).bytes(data)
        assert scrubber.text(data.decode()) == SecretScrubber(forms).text(data.decode())


def test_layers_stay_few_and_the_last_one_small() -> None:
    forms = {f"secret-{i:04d}-abcdefgh": "<P>" for i in range(300)}
    scrubber = SecretScrubber(forms)
    for i in range(300, 340):
        forms[f"secret-{i:04d}-abcdefgh"] = "<P>"
        scrubber = SecretScrubber(forms, base=scrubber)
        assert len(scrubber._layers) <= 2
    assert len(scrubber._layers[-1].encoded) == 40
    assert scrubber.bytes(b"x secret-0339-abcdefgh secret-0001-abcdefgh") == b"x <P> <P>"


def test_a_spelling_with_nul_bytes_or_line_breaks_is_found() -> None:
    """Hyperscan reads a literal up to a NUL: such a spelling is found by a piece and checked whole. A secret with a
    line break in it (a PEM key) is found also with its line breaks dropped, as the stream joins lines."""
    scrubber = SecretScrubber({"ab\0cdefgh": "<N>", "\0\0\0\0": "<Z>", "-----BEGIN\nKEYDATA-----": "<K>"})
    assert scrubber.bytes(b"x ab\0cdefgh ab\0cdefgX \0\0\0\0") == b"x <N> ab\0cdefgX <Z>"
    assert scrubber.bytes(b"key: -----BEGIN\nKEYDATA----- end") == b"key: <K> end"
    assert scrubber.stream().feed(b"key: -----BEGIN\r\nKEYDATA----- end") == b"key: <K> end"
    assert scrubber.text("t ab\0cdefgh \udcff") == "t <N> \udcff"
