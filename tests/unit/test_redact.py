"""The scrubber: spellings replaced across line breaks, header fields, stream segments and byte ranges."""

from __future__ import annotations

import base64
import re

from hypothesis import example, given, settings
from hypothesis import strategies as st

from goex_proxy.credentials.kinds import Credential, Injection
from goex_proxy.credentials.redact import PARTIAL_MIN, WITHHELD, SecretScrubber
from goex_proxy.secretref import SecretRef

SECRET = "xoxb-UNIT&<b>\"q'+/=end-7f3a9c2e"
PLACEHOLDER = "goex-placeholder-unit"


def scrubber() -> SecretScrubber:
    credential = Credential("unit", SecretRef(vault="unit"), (), Injection("header"))
    return SecretScrubber({form: PLACEHOLDER for form in credential.forms(SECRET)})


def test_base64_wrapped_across_lines_is_replaced() -> None:
    """MIME wraps base64 every 76 characters; the secret's base64 spelling broken by a line break is still found."""
    wrapped = base64.encodebytes(b"padding " * 9 + SECRET.encode() + b" trailing text")
    cleaned = scrubber().bytes(wrapped)
    assert PLACEHOLDER.encode() in cleaned
    letters = re.sub(rb"[^A-Za-z0-9+/]", b"", cleaned)  # as a lenient decoder reads it
    assert SECRET.encode()[4:20] not in base64.b64decode(letters[:len(letters) // 4 * 4])


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=0, max_size=9),
       st.text(st.characters(codec="ascii", categories=["L", "N"]), min_size=8, max_size=12)
       | st.text(st.characters(codec="utf-8"), min_size=8, max_size=24),
       st.binary(min_size=0, max_size=3), st.booleans())
def test_a_secret_inside_longer_base64_text_is_found_at_any_alignment(before, secret, after, url_safe) -> None:
    """`base64("Bearer " + secret + …)`: whatever bytes surround the secret, the base64 of the whole holds one of the
    secret's spellings, even for a secret of 8 characters (the spelling kept two characters too few before)."""
    encode = base64.urlsafe_b64encode if url_safe else base64.b64encode
    credential = Credential("unit", SecretRef(vault="unit"), (), Injection("header"))
    text = encode(before + secret.encode() + after).decode()
    assert any(form in text for form in credential.forms(secret)), (text, secret)


def test_a_stream_withholds_pieces_at_every_cut_even_with_other_fields_between() -> None:
    """Header fields fed as one stream: a secret's first piece at the end of one value and the rest at the start of
    another, with fields between them, are both withheld; a name holding a spelling is replaced; the ordinary
    fields pass unchanged."""
    stream = scrubber().stream()
    fed = [stream.feed(x) for x in (b"OK", b"X-A", SECRET[:10].encode(), b"Date", b"Thu, 03 Dec 2026",
                                    b"X-B", SECRET[10:].encode() + b" tail", SECRET.encode().hex().encode(), b"1")]
    assert fed[:2] == [b"OK", b"X-A"] and fed[2] == WITHHELD and fed[3:6] == [b"Date", b"Thu, 03 Dec 2026", b"X-B"]
    assert fed[6] == WITHHELD + b" tail" and fed[7] == PLACEHOLDER.encode()


def test_a_stream_joins_lines_across_segments() -> None:
    """A log line wrapped into two WebSocket messages, the break inside the secret, is still caught."""
    stream = scrubber().stream()
    first, second = stream.feed(b"Bearer " + SECRET[:14].encode() + b"\n"), stream.feed(SECRET[14:].encode())
    assert SECRET.encode()[:PARTIAL_MIN] not in first + second and SECRET.encode()[14:] not in first + second


@settings(max_examples=200, deadline=None, derandomize=True)
@given(st.lists(st.integers(min_value=1, max_value=len(SECRET) - 1), max_size=6, unique=True),
       st.binary(max_size=20), st.binary(max_size=20))
def test_a_stream_cut_anywhere_gives_back_at_most_a_few_bytes_of_the_secret(cuts, before, after) -> None:
    """However the secret is cut into segments (WebSocket messages), the agent's joined view holds fewer than
    PARTIAL_MIN of its leading bytes and none of the rest."""
    data = before + SECRET.encode() + after
    points = sorted({0, len(data), *(len(before) + c for c in cuts)})
    stream = scrubber().stream()
    joined = b"".join(stream.feed(data[a:b]) for a, b in zip(points, points[1:], strict=False))
    assert SECRET.encode()[:PARTIAL_MIN] not in joined
    assert all(SECRET.encode()[i:i + PARTIAL_MIN] not in joined for i in range(1, len(SECRET) - PARTIAL_MIN))


def test_a_part_keeps_its_length_and_hides_pieces_at_its_edges() -> None:
    """A byte range keeps its length; a piece of the secret of PARTIAL_MIN bytes or more at either edge becomes
    `*`s, as does a whole spelling inside, also wrapped across lines, while ordinary bytes and line breaks stay."""
    s, body = scrubber(), b"0123456789" + SECRET.encode() + b"abcdefghij"

    def part(data: bytes) -> bytes:
        return s.stream().feed(data, keep_length=True)

    assert part(body) == b"0123456789" + b"*" * len(SECRET) + b"abcdefghij"
    cut = 10 + 12
    assert part(body[:cut]) == b"0123456789" + b"*" * 12
    assert part(body[cut:]) == b"*" * (len(SECRET) - 12) + b"abcdefghij"
    assert part(b"plain text, nothing secret") == b"plain text, nothing secret"
    wrapped = b"0123456789" + SECRET[:15].encode() + b"\r\n" + SECRET[15:].encode() + b"abcdefghij"
    assert part(wrapped) == b"0123456789" + b"*" * 15 + b"\r\n" + b"*" * (len(SECRET) - 15) + b"abcdefghij"


def test_a_header_ending_in_a_piece_is_not_passed_over_by_the_quick_no() -> None:
    """`touches` must say yes wherever `feed` would change something: a value ending in a long piece of a secret."""
    s = scrubber()
    segments = [b"OK", b"X-A", b"t=" + SECRET[:20].encode(), b"X-C", b"(" + SECRET[20:].encode() + b")"]
    assert s.stream().touches(segments)
    stream = s.stream()
    assert SECRET.encode()[:PARTIAL_MIN] not in b"".join(stream.feed(x) for x in segments)


def test_a_long_periodic_run_costs_no_more_than_the_longest_spelling() -> None:
    """A secret with a repeated character and a body of that character: the edge runs stop at the longest spelling
    (the walk is bounded), and the body keeps everything past it."""
    s = SecretScrubber({"tok-AAAAAAAAAAAA-x": "<p>"})
    body = b"A" * 200_000
    cleaned = s.stream().feed(body)
    assert cleaned.startswith(WITHHELD) and cleaned.endswith(WITHHELD) and b"A" * 100_000 in cleaned


def test_a_part_of_line_breaks_only_passes_unchanged() -> None:
    """A byte range holding only a line break is nothing of a secret (it failed with an IndexError before)."""
    assert scrubber().stream().feed(b"\r\n", keep_length=True) == b"\r\n"
    assert scrubber().stream().feed(b"\n") == b"\n"


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(["", "plain", "a\r\nb", "\n", SECRET, SECRET[:9], SECRET[9:], SECRET.upper(),
                                 base64.b64encode(SECRET.encode()).decode(), "x\udcff"])
                | st.text(max_size=12), max_size=8))
def test_values_scrubbed_together_come_back_as_each_scrubbed_alone(values: list[str]) -> None:
    """`texts` (one scan for a row's header values, or its path and URL) gives what `text` gives for each value: a
    secret split between two values is not joined into one, a secret in one is replaced there."""
    scrub = scrubber()
    assert scrub.texts(values) == [scrub.text(value) for value in values]
    assert SecretScrubber({}).texts(values) == values


def _touches_window_by_window(scrub: SecretScrubber, segments: list[bytes]) -> bool:
    """The quick no read the slow way: every window of PARTIAL_MIN bytes touching a segment edge, looked up."""
    joined = b"".join(segments)
    if b"\n" in joined or b"\r" in joined or scrub._find(joined):
        return True
    edges = [sum(map(len, segments[:k])) for k in range(len(segments) + 1)]
    near = {i for edge in edges for i in range(max(edge - PARTIAL_MIN, 0), edge + 1)}
    return any(joined.lower()[i:i + PARTIAL_MIN] in scrub._grams for i in near)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.lists(st.sampled_from([b"", b"OK", b"Content-Type", b"application/json", b"X-Id", b"a" * 9,
                                          SECRET.encode()[:12], SECRET.encode()[12:], SECRET.upper().encode()[3:14],
                                          b"Q9-other-tok", b"\xff\xfe"]), max_size=8), min_size=1, max_size=6))
@example([[b"X-Id", b"Q9-other-tok"], [b"X-Id", b"Q9-other-tok"]])
def test_the_quick_no_remembered_edge_by_edge_answers_as_reading_every_window(blocks: list[list[bytes]]) -> None:
    """`touches` remembers its answer near each edge; block after block (repeated ones looked up) it answers as the
    window-by-window reading does, also once a refresh has added spellings (and pieces) the old scrubber shares."""
    scrub = scrubber()
    for k, segments in enumerate(blocks):
        if k == len(blocks) // 2:
            credential = Credential("other", SecretRef(vault="other"), (), Injection("header"))
            SecretScrubber({**scrub._forms, **{f: "goex-placeholder-other" for f in credential.forms("Q9-other-tok")}},
                           base=scrub)
        assert scrub.touches(segments) == _touches_window_by_window(scrub, segments), segments
        assert scrub.touches(segments) == _touches_window_by_window(scrub, segments), segments


@settings(max_examples=200, deadline=None)
@given(st.sampled_from([600, 5000]), st.integers(min_value=0, max_value=600 - len(SECRET)),
       st.sampled_from([0, 1, 63, 64, 65, -1]), st.booleans())
def test_a_remembered_body_of_the_same_length_never_answers_for_another(size, at, differs_at, broken) -> None:
    """Bodies are remembered with what was found in them, and looked up by their bytes (the scrub stage finds the
    record stage's scan): one of the same length that differs anywhere, its end compared first, is scanned itself."""
    scrub = scrubber()
    at = at * (size - len(SECRET)) // (600 - len(SECRET))
    clean = bytearray(b"x" * size)
    if broken:
        clean[100::50] = b"\n" * len(clean[100::50])
    with_secret = bytearray(clean)
    with_secret[at:at + len(SECRET)] = SECRET.encode()
    plain = bytes(clean)
    twin = bytearray(plain)
    twin[differs_at] = ord("y")
    for _ in range(2):  # the second time, each is found remembered
        assert scrub.bytes(plain) is plain and scrub.bytes(bytes(twin)) == bytes(twin)
        assert SECRET.encode() not in scrub.bytes(bytes(with_secret)).replace(b"\n", b"")
        assert PLACEHOLDER.encode() in scrub.bytes(bytes(with_secret))


def test_a_text_remembered_clean_is_scrubbed_once_its_secret_is_known() -> None:
    """Short texts found clean are remembered by the scrubber that scanned them; a refresh (a new token) makes a
    scrubber that scans them again, so a text the old one passed, once it holds the new secret, is scrubbed."""
    old = scrubber()
    token = "ya29.REFRESHED-token-4d7a1c9e0b"
    shown = [f"GET https://api.example/items?access_token={token}", "mailbot", "GET"]
    assert old.texts(shown) == shown and [old.text(v) for v in shown] == shown  # remembered now
    credential = Credential("gmail", SecretRef(vault="gmail"), (), Injection("header"))
    refreshed = SecretScrubber({**old._forms, **{f: credential.placeholder for f in credential.forms(token)}},
                               base=old)
    assert refreshed.text(shown[0]) == "GET https://api.example/items?access_token=goex-placeholder-gmail"
    assert refreshed.texts(shown)[0] == refreshed.text(shown[0]) and refreshed.texts(shown)[1:] == shown[1:]


@settings(max_examples=100, deadline=None)
@given(st.lists(st.sampled_from(["GET", "x" * 600, SECRET[:9], SECRET[9:], SECRET, "a\n" + SECRET[:5],
                                 SECRET[5:] + "\r\nb", f"Bearer {SECRET}", "mailbot"]), min_size=1, max_size=6),
       st.integers(min_value=0, max_value=5000))
def test_texts_remembered_clean_answer_as_a_scan_does(values, filler) -> None:
    """Whatever was remembered before (a full memory cleared, a long text never kept), `text` and `texts` give what
    a scrubber that remembers nothing gives."""
    scrub, fresh = scrubber(), scrubber()
    for i in range(filler):
        scrub.text(f"filler {i}")
    for v in values:
        scrub.text(v)
    scrub.texts(values)
    assert [scrub.text(v) for v in values] == [scrubber().text(v) for v in values]
    assert scrub.texts(values) == fresh.texts(values) == [fresh.text(v) for v in values]
    assert all(SECRET not in v.replace("\n", "").replace("\r", "") for v in scrub.texts(values))
