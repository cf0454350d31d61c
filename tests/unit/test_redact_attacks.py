"""The scrubber attacked as an upstream that reflects the injected secret would: spellings overlapping each other, hex
and escapes in mixed case, a line break inside a secret in text, a token refreshed while a stream is open, secrets
that are hard for Hyperscan's literals (NUL, backslashes, metacharacters, Unicode, very long), chunks of every size."""

from __future__ import annotations

import base64
import json
import re
import threading
from urllib.parse import quote

import pytest

from goex_proxy.credentials.kinds import Credential, Injection
from goex_proxy.credentials.redact import PARTIAL_MIN, UNSCANNED, SecretScrubber
from goex_proxy.secretref import SecretRef

#: Holds every character an encoder escapes, and ends with the letter its base64 starts with ("eG94…").
SECRET = "xoxb-UNIT&<b>\"q'+/=end-7f3a9c2e"
CREDENTIAL = Credential("unit", SecretRef(vault="unit"), (), Injection("header"))
PLACEHOLDER = CREDENTIAL.placeholder.encode()


def scrubber(*secrets: str) -> SecretScrubber:
    return SecretScrubber({form: CREDENTIAL.placeholder for s in secrets for form in CREDENTIAL.forms(s)})


def pieces_of(secret: str) -> set[bytes]:
    """Every PARTIAL_MIN-byte piece of every spelling: none may reach the agent (lower case: decoders ignore it)."""
    return {f.encode().lower()[i:i + PARTIAL_MIN] for f in CREDENTIAL.forms(secret)
            for i in range(len(f) - PARTIAL_MIN + 1)}


def leaked(out: bytes, secret: str) -> set[bytes]:
    """The pieces of the secret's spellings in `out`, read apart from the placeholders (whose letters could complete a
    piece the stream rightly let through at a cut)."""
    low = out.replace(PLACEHOLDER, b"\n").lower()
    return {p for p in pieces_of(secret) if p in low}


def overlapping_pairs(secret: str) -> list[tuple[str, str, int]]:
    """Pairs of spellings where the end of the first is the start of the second (k letters shared)."""
    forms = CREDENTIAL.forms(secret)
    return [(a, b, k) for a in forms for b in forms
            for k in [max((k for k in range(1, min(len(a), len(b))) if a[-k:] == b[:k]), default=0)] if k]


def test_spellings_that_overlap_are_taken_out_together() -> None:
    """The secret ends with the letter its base64 starts with: echoed as `secret` + `base64(secret)` sharing that
    letter, the leftmost spelling was replaced and the second one skipped as overlapping, so the base64 less its
    first letter reached the agent (which guesses one letter and decodes the secret)."""
    pairs = overlapping_pairs(SECRET)
    assert (SECRET, base64.b64encode(SECRET.encode()).decode(), 1) in pairs
    s = scrubber(SECRET)
    for a, b, k in pairs:
        body = b"<<" + a.encode() + b[k:].encode() + b">>"
        assert s.bytes(body) == b"<<" + PLACEHOLDER + b">>", (a, b)
        assert s.text(body.decode()) == "<<" + PLACEHOLDER.decode() + ">>"
        for cut in range(1, len(body)):  # and the same cut into two stream segments anywhere
            stream = s.stream()
            out = stream.feed(body[:cut]) + stream.feed(body[cut:])
            assert not leaked(out, SECRET), (a, b, cut, out)


def test_two_secrets_overlapping_leave_nothing_of_the_second() -> None:
    """One secret's end is another's start (an access token and a refresh token sharing letters by chance)."""
    first, second = "tok-AAAA-shared-part", "shared-part-BBBBBBBBBBBBBBBB"
    s = scrubber(first, second)
    assert s.bytes(b"(tok-AAAA-shared-part-BBBBBBBBBBBBBBBB)") == b"(" + PLACEHOLDER + b")"


def _mixed(text: str) -> str:
    """Upper case at every third character: what a hex or percent decoder reads as it reads the lower case spelling
    (hex letters fall on both halves of a byte, so neither the lower nor the upper case spelling is left)."""
    return "".join(c.upper() if i % 3 == 0 else c.lower() for i, c in enumerate(text))


@pytest.mark.parametrize("spelling", [
    _mixed(SECRET.encode().hex()),
    re.sub("%[0-9A-F]{2}", lambda m: m.group(0).lower() if m.start() % 2 else m.group(0), quote(SECRET, safe="")),
    json.dumps(SECRET)[1:-1].replace("&", "\\u0026").replace("<", "\\u003C").replace(">", "\\u003e"),
    "".join(f"\\u{ord(c):04x}" if c in "&<>'+\"" else c for c in SECRET),  # as .NET writes it, in lower case
])
def test_hex_and_escapes_in_mixed_case_are_found(spelling: str) -> None:
    """Hex, percent escapes and JSON's `\\u00XX` decode the same in either case, letter by letter: a spelling in mixed
    case is replaced like the listed one (it passed whole before), in a body, in text and in a stream cut anywhere."""
    s = scrubber(SECRET)
    body = b"x=" + spelling.encode() + b";"
    assert s.bytes(body) == b"x=" + PLACEHOLDER + b";"
    assert s.text(body.decode()) == "x=" + PLACEHOLDER.decode() + ";"
    for cut in range(1, len(body)):
        stream = s.stream()
        out = stream.feed(body[:cut]) + stream.feed(body[cut:])
        assert spelling.encode().lower()[PARTIAL_MIN:] not in out.lower(), (cut, out)


def test_byte_ranges_of_mixed_case_hex_are_starred() -> None:
    """Ranges of a mixed-case hex echo too short to hold a spelling (one to seven bytes) are starred as the lower case
    ones are; longer ones lose their edges."""
    s = scrubber(SECRET)
    body = b"0123456789" + _mixed(SECRET.encode().hex()).encode() + b"abcdefghij"
    for size in (3, 7, 12):
        rebuilt = b"".join(s.stream().feed(body[i:i + size], keep_length=True) for i in range(0, len(body), size))
        assert len(rebuilt) == len(body) and not leaked(rebuilt, SECRET), (size, rebuilt)


def test_text_with_a_line_break_inside_the_secret_is_scrubbed() -> None:
    """`text` (a WebSocket close reason, an error message, a log line) reads lines joined as `bytes` does: a reason
    of `bad token: xoxb-UNIT…\\n…e` reached the agent whole before, which drops the line break."""
    s = scrubber(SECRET)
    reason = "bad token: " + SECRET[:12] + "\r\n" + SECRET[12:] + " (retry)"
    assert s.text(reason) == "bad token: " + PLACEHOLDER.decode() + " (retry)"
    assert s.text("line one\nline two") == "line one\nline two"


def test_a_stream_begun_before_a_refresh_scrubs_the_new_token() -> None:
    """A WebSocket opened before an OAuth2 refresh keeps its stream: the token issued after (which the upstream gets
    on the agent's next request and can send back over the socket) must be scrubbed from its next message on."""
    old = scrubber(SECRET)
    stream = old.stream()
    assert stream.feed(b"hello") == b"hello"
    fresh = "ya29.a0AfH6SM-refreshed-token-0123456789"
    forms = {form: CREDENTIAL.placeholder for s in (SECRET, fresh) for form in CREDENTIAL.forms(s)}
    new = SecretScrubber(forms, base=old)
    newer = SecretScrubber({**forms, "another-token-abcdefgh": "<other>"}, base=new)
    assert stream.feed(b"your token is " + fresh.encode() + b", enjoy") == b"your token is " + PLACEHOLDER + b", enjoy"
    assert newer.stream().feed(fresh.encode()) == PLACEHOLDER


@pytest.mark.parametrize("secret", [
    "nul\0in\0the\0middle\0-key",  # Hyperscan reads a literal up to its first NUL byte
    "\0\0\0\0\0\0\0\0",  # NUL bytes only
    r"\d+.*?[x](y)|z^$\\{2}",  # regular-expression metacharacters and backslashes
    "pässwörd-ünï-\U0001f511-key",  # Unicode: its UTF-8, JSON's \\u escapes (surrogate pairs), hex
    "Ab" * 20,  # periodic: overlaps with itself everywhere
])
def test_secrets_hard_for_literals_are_found_at_every_cut(secret: str) -> None:
    """Every spelling of a secret Hyperscan could misread, echoed between other bytes, replaced whole, and split into
    two stream segments at every offset: at most PARTIAL_MIN - 1 of its bytes at the cut."""
    s = scrubber(secret)
    for form in CREDENTIAL.forms(secret):
        data = form.encode()
        body = b"[" + data + b"]"
        assert s.bytes(body) == b"[" + PLACEHOLDER + b"]", form
        for cut in range(1, len(body)):
            stream = s.stream()
            out = stream.feed(body[:cut]) + stream.feed(body[cut:])
            assert not leaked(out, secret), (form, cut, out)


def test_a_long_secret_in_one_byte_chunks() -> None:
    """A 4 KB secret (a PEM key, a service-account JSON) compiles as one literal and is caught fed a byte at a time."""
    secret = "-----BEGIN KEY-----" + "".join(f"{i:03x}" for i in range(1400)) + "-----END KEY-----"
    s = scrubber(secret)
    stream = s.stream()
    body = b"key: " + secret.encode() + b" end"
    out = b"".join(stream.feed(body[i:i + 1]) for i in range(len(body)))
    assert not leaked(out, secret)
    assert s.bytes(body) == b"key: " + PLACEHOLDER + b" end"


def test_every_spelling_in_one_byte_chunks_gives_back_at_most_a_few_bytes() -> None:
    """A chunked answer, a WebSocket message per byte: every spelling of the secret, fed a byte at a time, never shows
    a piece of PARTIAL_MIN bytes (what comes through at the start, before anything could be known, is shorter)."""
    s = scrubber(SECRET)
    for form in CREDENTIAL.forms(SECRET):
        stream = s.stream()
        body = b"a: " + form.encode() + b" z"
        out = b"".join(stream.feed(body[i:i + 1]) for i in range(len(body)))
        assert not leaked(out, SECRET), (form, out)


def test_threads_scanning_at_once_each_find_every_spelling() -> None:
    """Hyperscan's scratch space is one thread's at a time: threads scrubbing at once (the record stage's worker and
    the event loop) each get their own and find the same spellings."""
    s = scrubber(SECRET)
    body = b"filler " * 2000 + SECRET.encode().hex().encode() + b" filler" * 2000
    results: list[bytes] = []

    def work() -> None:
        for _ in range(20):
            results.append(s.bytes(body + bytes(len(results) % 3)))

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 80 and all(PLACEHOLDER in r and not leaked(r, SECRET) for r in results)


def test_a_websocket_open_across_a_token_refresh_gets_the_new_token_scrubbed(tmp_path) -> None:
    """The scrub stage keeps one stream per WebSocket; the OAuth2 keeper refreshes the token while it is open (the
    upstream gets the new one on the agent's next request and sends it back over the socket): the message carrying
    it reaches the agent with the placeholder, as the first token does."""
    from mitmproxy.test import taddons, tflow
    from mitmproxy.websocket import WebSocketMessage
    from wsproto.frame_protocol import Opcode

    from goex_proxy.addons.scrub import Scrub
    from goex_proxy.credentials.oauth import OAuth2, Provider, TokenSet
    from tests.conftest import stage_state

    oauth = Credential("gmail", SecretRef(vault="gmail"), (), Injection("oauth2", oauth2=OAuth2(Provider("generic"), "id")))
    first, second = "ya29.first-access-token-0001", "ya29.second-access-token-0002"
    with stage_state(tmp_path, "version: 1\nname: p\nrules: []\n") as state, taddons.context():
        state.remember_tokens(oauth, TokenSet(first, "1//refresh-token-abcdef"))
        scrub, flow = Scrub(state), tflow.twebsocketflow()

        def upstream_sends(text: str) -> bytes:
            flow.websocket.messages.append(WebSocketMessage(Opcode.TEXT, False, text.encode()))
            scrub.websocket_message(flow)
            return flow.websocket.messages[-1].content

        assert upstream_sends(f"token {first} ok") == f"token {oauth.placeholder} ok".encode()
        state.remember_tokens(oauth, TokenSet(second, "1//refresh-token-abcdef"))
        assert upstream_sends(f"token {second} ok") == f"token {oauth.placeholder} ok".encode()


def test_a_secret_split_between_the_body_and_a_trailer_is_not_given_back(tmp_path) -> None:
    """HTTP/2 trailers come after the body (mitmproxy relays them after the response hook): the body ending with the
    secret's first part and a trailer holding the rest, and a trailer's name holding its hex, reach the agent without
    a piece of it; the answer is one stream from its reason to its last trailer."""
    from mitmproxy import http
    from mitmproxy.test import taddons, tflow

    from goex_proxy.addons.scrub import Scrub
    from tests.conftest import stage_state

    with stage_state(tmp_path, "version: 1\nname: p\nrules: []\n") as state, taddons.context():
        state.scrubber = scrubber(SECRET)
        f = tflow.tflow(resp=True)
        f.response.content = b"data " + SECRET[:12].encode()
        f.response.trailers = http.Headers([(b"x-rest", SECRET[12:].encode() + b" end"),
                                            (b"x-" + SECRET.encode().hex().upper().encode(), b"1")])
        Scrub(state).response(f)
        seen = f.response.content + b"".join(k + v for k, v in f.response.trailers.fields)
    assert f.response.status_code == 200 and not leaked(seen, SECRET), seen
    assert f.response.content.endswith(b"<withheld>") and PLACEHOLDER in seen


def test_hyperscan_failing_mid_scan_withholds_the_answer(tmp_path, monkeypatch) -> None:
    """Hyperscan raising during a scan (scratch space in use, out of memory) must not let the unscrubbed answer
    through: the scrub stage fails closed with a 502 that quotes nothing of the upstream's. (Before, the failure was
    logged through the log filter, which scrubs with the same scrubber: it raised again, out of the fail-closed
    wrapper, and mitmproxy treats an addon's exception as an error to log, not a reason to hold the answer.)"""
    import hyperscan
    from mitmproxy.test import taddons, tflow

    from goex_proxy.addons.scrub import Scrub
    from goex_proxy.credentials import redact
    from tests.conftest import stage_state

    def failing(self, data, out) -> None:
        raise hyperscan.error("simulated: scratch in use")

    with stage_state(tmp_path, "version: 1\nname: p\nrules: []\n") as state, taddons.context():
        state.scrubber = scrubber(SECRET)
        monkeypatch.setattr(redact._Layer, "occurrences", failing)
        f = tflow.tflow(resp=True)
        f.response.content = b"echo: " + SECRET.encode()
        Scrub(state).response(f)
        assert state.scrubber.text("a log line: " + SECRET) == UNSCANNED
    assert f.response.status_code == 502 and SECRET.encode()[:PARTIAL_MIN] not in f.response.content


@pytest.mark.parametrize("spelling", [SECRET, SECRET.encode().hex(), base64.b64encode(SECRET.encode()).decode()])
def test_the_502_for_an_unknown_content_encoding_does_not_quote_it(tmp_path, spelling: str) -> None:
    """An upstream names the secret (as it is, in hex, in base64) as its Content-Encoding: the proxy's own 502, which
    the scrub stage does not scrub again, must not quote it back (it did, repr'd and cut at 200 characters)."""
    from mitmproxy.test import taddons, tflow

    from goex_proxy.addons.scrub import Scrub
    from tests.conftest import stage_state

    with stage_state(tmp_path, "version: 1\nname: p\nrules: []\n") as state, taddons.context():
        state.scrubber = scrubber(SECRET)
        f = tflow.tflow(resp=True)
        f.response.headers["Content-Encoding"] = spelling
        Scrub(state).response(f)
    assert f.response.status_code == 502 and b"content encoding" in f.response.content
    shown = json.loads(f.response.content)["reason"].encode()
    assert not leaked(shown, SECRET) and not leaked(shown.decode("unicode_escape").encode(), SECRET), shown


@pytest.mark.parametrize("secret", [SECRET, "pa'ss\"w\\rd-é-0c1e", "plain-0c1e\x7fend"])
def test_a_secret_quoted_as_python_quotes_text_is_found(secret: str) -> None:
    """mitmproxy's errors quote what an upstream sent as Python does (`unknown transfer-encoding header: '...'`,
    `b'...'`), escaping a quote when both kinds are in the text, a backslash, a byte beyond ASCII: an upstream that
    echoed a secret with a `'` and a `"` in it into a Transfer-Encoding header had it in the agent's 502 page and in
    the audit row, one backslash apart from its spelling."""
    scrub = scrubber(secret)
    for quoted in (repr(f"chunked, {secret}"), repr(f"'\"{secret}"), repr(f"{secret}'"), repr(secret),
                   repr(f"x {secret}".encode()), repr(f"'\"{secret}".encode()), repr(f"'{secret}".encode())):
        out = scrub.text(f"unknown transfer-encoding header: {quoted}")
        assert CREDENTIAL.placeholder in out and not leaked(out.encode(), secret), (quoted, out)


def test_a_secret_split_between_a_header_name_and_its_value_is_not_in_the_row() -> None:
    """Rows scrubbed each header name and value alone: an upstream that echoed a secret across a field's name and
    value (`X-notes-SECR: ET-4c1d9e`) had it in the row in two pieces, which the agent, scrubbed as one stream, never
    saw. A header list with a spelling in it is scrubbed as the agent's is."""
    from goex_proxy.credentials.redact import redacted_headers_json

    secret = "notes-SECRET-4c1d9e"
    for cut in (4, 8, 10, 15):
        row = redacted_headers_json([(f"X-{secret[:cut]}", secret[cut:]), ("Content-Length", "2")], scrubber(secret))
        assert secret[:cut] + '", "' + secret[cut:] not in row and CREDENTIAL.placeholder in row, row
        assert not leaked(row.replace('", "', "").encode(), secret), row
    assert redacted_headers_json([("X-A", "b"), ("X-B", "é")], scrubber(secret)) == '[["X-A", "b"], ["X-B", "é"]]'
