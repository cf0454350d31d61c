"""goex-proxy's own answers (a denial, a 407, a 502) to a HEAD request: headers only on the wire, as HTTP has it
(RFC 9110 9.3.2), the reason still in the row and the live line."""

from __future__ import annotations

import socket

import h2.events
import pytest

from tests.conftest import GoexProxy, LoopbackServer, answer_to, read_head
from tests.e2e.test_audit_layout_attacks import HOST, POLICY, logged
from tests.e2e.test_request_framing import CREDS, _h2

pytestmark = pytest.mark.e2e


def _head_then_get(proxy: GoexProxy) -> tuple[bytes, bytes]:
    """A HEAD, then a GET on the same connection sent with it: the first answer's head, and all that came after it."""
    sent = (f"HEAD http://{HOST}/notes HTTP/1.1\r\nHost: {HOST}\r\nProxy-Authorization: Basic {CREDS}\r\n\r\n"
            f"GET http://{HOST}/notes/1 HTTP/1.1\r\nHost: {HOST}\r\nProxy-Authorization: Basic {CREDS}\r\n"
            "Connection: close\r\n\r\n").encode()
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=20) as sock:
        sock.sendall(sent)
        got = answer_to(sock, 20)
    first, _, rest = got.partition(b"\r\n\r\n")
    return first, rest


def test_a_denied_head_request_is_answered_without_a_body_and_the_connection_goes_on(make_proxy) -> None:
    """The 403's JSON went after its head: a client reads no body for HEAD, so on a kept-alive connection it read
    that JSON as the start of the next answer (Python's http.client: BadStatusLine)."""
    proxy = make_proxy(POLICY)
    first, rest = _head_then_get(proxy)
    assert first.startswith(b"HTTP/1.1 403 ") and b"x-goex-decision: deny" in first.lower()
    assert rest.startswith(b"HTTP/1.1 "), rest[:200]  # the next answer straight after the head: no body between
    rows = logged(proxy)
    head_row = next(r for r in rows if r["method"] == "HEAD")
    assert head_row["decision"] == "deny" and head_row["status"] == 403
    assert "no rule allows HEAD" in proxy.log_text()


def test_a_denied_head_request_over_http2_ends_its_stream_without_data(make_proxy) -> None:
    """Over HTTP/2 the body went as DATA frames after a HEAD's headers (an h2 client refused them)."""
    proxy = make_proxy(POLICY)
    status, body, seen = _h2(proxy, b"HEAD", b"/notes", [], b"", None)
    assert status == 403 and body == b""
    assert not [e for e in seen if isinstance(e, h2.events.DataReceived) and e.data]
    assert any(isinstance(e, h2.events.StreamEnded) for e in seen)


HEADS = {"notes": f"""
    version: 1
    rules:
      - name: the notes API
        allow: {{host: {HOST}, methods: [GET, HEAD]}}
"""}


def _hang_up(conn: socket.socket) -> None:
    """An upstream that reads the request and closes without an answer: mitmproxy's own 502 (its error path)."""
    conn.settimeout(10)
    read_head(conn)


def test_a_head_request_whose_upstream_fails_gets_mitmproxys_502_without_a_body(make_proxy) -> None:
    """The 502 of mitmproxy's error path (the upstream hung up, refused the connection, or sent an answer mitmproxy
    refuses) is not sent through `send_response`: its HTML went after a HEAD's head, so a client that pipelined
    another request read that HTML as the next answer."""
    server = LoopbackServer(_hang_up)
    try:
        proxy = make_proxy(HEADS, routes={HOST: f"http://127.0.0.1:{server.port}"})
        first, rest = _head_then_get(proxy)
        assert first.startswith(b"HTTP/1.1 502 ")
        assert rest == b"" or rest.startswith(b"HTTP/1.1 "), rest[:200]  # closed, or the next answer: no HTML
    finally:
        server.close()


def test_a_head_request_over_http2_whose_upstream_fails_ends_its_stream_without_data(make_proxy) -> None:
    """Over HTTP/2 mitmproxy's error path sent its 502 page as DATA after a HEAD's headers: the h2 client refused
    the stream (InvalidBodyLengthError: expected 0 bytes, received 144)."""
    server = LoopbackServer(_hang_up)
    try:
        proxy = make_proxy(HEADS, routes={HOST: f"http://127.0.0.1:{server.port}"})
        status, body, seen = _h2(proxy, b"HEAD", b"/notes", [], b"", None)
        assert status == 502 and body == b""
        assert not [e for e in seen if isinstance(e, h2.events.DataReceived) and e.data]
        assert any(isinstance(e, h2.events.StreamEnded) for e in seen)
    finally:
        server.close()
