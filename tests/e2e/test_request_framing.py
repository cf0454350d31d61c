"""An agent's request framed as the upstream reads it: HTTP/2 bodies relayed over HTTP/1.1, trailer fields, and the
bounds of a chunked body's framing."""

from __future__ import annotations

import base64
import socket
import time

import h2.config
import h2.connection
import h2.events
import pytest

from tests.conftest import TOKENS, GoexProxy, LoopbackServer, answer_to, tunnel
from tests.e2e.test_audit_layout_attacks import HOST, POLICY, _until, logged

pytestmark = pytest.mark.e2e

CREDS = base64.b64encode(f"mailbot:{TOKENS['mailbot']}".encode()).decode()


def _recording_upstream(answer: bytes = b"HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok",
                        linger: float = 1.0) -> tuple[LoopbackServer, list[bytes]]:
    """An upstream that records everything each connection sends (until quiet for `linger` s or closed) and answers
    once, after the first head."""
    seen: list[bytes] = []

    def serve(conn: socket.socket) -> None:
        conn.settimeout(linger)
        data = b""
        answered = False
        try:
            while True:
                chunk = conn.recv(65536)
                if not chunk:
                    break
                data += chunk
                if not answered and b"\r\n\r\n" in data:
                    conn.sendall(answer)
                    answered = True
        except OSError:
            pass
        seen.append(data)

    return LoopbackServer(serve), seen


def _raw(proxy: GoexProxy, data: bytes, pause_after: int | None = None, timeout: float = 20) -> bytes:
    """Send `data` as an agent (split at `pause_after` with a pause between), read until the proxy closes."""
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=timeout) as sock:
        if pause_after is None:
            sock.sendall(data)
        else:
            sock.sendall(data[:pause_after])
            time.sleep(0.5)
            sock.sendall(data[pause_after:])
        return answer_to(sock, timeout)


def _h2(proxy: GoexProxy, method: bytes, path: bytes, headers: list[tuple[bytes, bytes]], body: bytes,
        trailers: list[tuple[bytes, bytes]] | None, timeout: float = 20, host: str = HOST,
        strict: bool = True) -> tuple[int, bytes, list]:
    """One HTTP/2 request to `host` through the proxy's CONNECT tunnel (with `strict` false, its header bytes sent
    exactly as given: the client checks nothing); the answer's status, body and the HTTP/2 events seen."""
    sock = tunnel(proxy, host, "h2", timeout=timeout)
    conn = h2.connection.H2Connection(h2.config.H2Configuration(
        client_side=True, header_encoding=None, validate_outbound_headers=strict, normalize_outbound_headers=strict,
        validate_inbound_headers=strict))
    conn.initiate_connection()
    stream = conn.get_next_available_stream_id()
    base = [(b":method", method), (b":scheme", b"https"), (b":authority", host.encode()), (b":path", path)]
    conn.send_headers(stream, base + headers, end_stream=not body and trailers is None)
    if body:
        conn.send_data(stream, body, end_stream=trailers is None)
    if trailers is not None:
        conn.send_headers(stream, trailers, end_stream=True)
    sock.sendall(conn.data_to_send())
    status, got, events_seen = 0, b"", []
    with sock:
        try:
            while True:
                data = sock.recv(65536)
                if not data:
                    break
                for event in conn.receive_data(data):
                    events_seen.append(event)
                    if isinstance(event, h2.events.ResponseReceived):
                        status = int(dict(event.headers)[b":status"])
                    elif isinstance(event, h2.events.DataReceived):
                        got += event.data
                        conn.acknowledge_received_data(event.flow_controlled_length, stream)
                    elif isinstance(event, h2.events.StreamEnded | h2.events.StreamReset):
                        return status, got, events_seen
                sock.sendall(conn.data_to_send())
        except TimeoutError:
            pytest.fail(f"the h2 agent was still waiting after {timeout}s: {events_seen}")
    return status, got, events_seen


def _requests_parsed(data: bytes) -> list[tuple[bytes, bytes, bytes]]:
    """What an HTTP/1.1 server makes of `data`: each request's method, target and body, in order (h11 frames them
    as RFC 9112 has every server do: no Content-Length and no Transfer-Encoding is no body)."""
    import h11

    server = h11.Connection(h11.SERVER)
    server.receive_data(data)
    found: list[tuple[bytes, bytes, bytes]] = []
    current: list[bytes] = []
    while True:
        try:
            event = server.next_event()
        except h11.RemoteProtocolError:
            break
        if event in (h11.NEED_DATA, h11.PAUSED) or isinstance(event, h11.ConnectionClosed):
            if event is h11.PAUSED and server.our_state is h11.SEND_RESPONSE:
                server.send(h11.Response(status_code=204, headers=[]))
                server.send(h11.EndOfMessage())
                server.start_next_cycle()
                continue
            break
        if isinstance(event, h11.Request):
            current = [event.method, event.target, b""]
        elif isinstance(event, h11.Data):
            current[2] += bytes(event.data)
        elif isinstance(event, h11.EndOfMessage):
            found.append((current[0], current[1], current[2]))
    return found


#: Agents may POST notes, nothing else.
POST_ONLY = {"notes": f"""
    version: 1
    rules:
      - name: post notes
        allow: {{host: {HOST}, methods: [POST], path: /notes}}
"""}
SMUGGLED = b"DELETE /everything HTTP/1.1\r\nHost: notes.example\r\nContent-Length: 0\r\n\r\n"


def test_an_http2_body_without_content_length_is_framed_for_an_http1_upstream(make_proxy) -> None:
    """An HTTP/2 request needs no Content-Length (DATA frames carry the body): mitmproxy relays it to an HTTP/1.1
    upstream with neither Content-Length nor Transfer-Encoding, so the upstream reads no body and takes the body's
    bytes as the next request. An agent allowed one POST had the upstream run any request it wrote into the body
    (here a DELETE the policy denies), never seen by policy and in no row."""
    upstream, seen = _recording_upstream()
    try:
        proxy = make_proxy(POST_ONLY, routes={HOST: f"http://127.0.0.1:{upstream.port}"})
        status, _, _ = _h2(proxy, b"POST", b"/notes", [(b"content-type", b"text/plain")], SMUGGLED, None)
        assert status == 201
        _until(lambda: seen, "the upstream's connection to end")
        assert _requests_parsed(seen[0]) == [(b"POST", b"/notes", SMUGGLED)], seen[0]
        assert [(r["method"], r["path"]) for r in logged(proxy)] == [("POST", "/notes")]
    finally:
        upstream.close()


def test_http2_request_trailers_are_refused_and_recorded(make_proxy) -> None:
    """An HTTP/2 request's trailer fields: relayed to an HTTP/1.1 upstream, mitmproxy's HTTP/1 client had no way to
    send them ("mitmproxy has crashed! (AssertionError: Unexpected event: RequestTrailers...)") after it had sent the
    head and the body; relayed to an HTTP/2 one, they went unseen by policy and the audit row. The request is refused
    before policy (as an HTTP/1 request with trailers is), its row saying why, and nothing is sent upstream."""
    upstream, seen = _recording_upstream()
    try:
        proxy = make_proxy(POLICY, routes={HOST: f"http://127.0.0.1:{upstream.port}"})
        status, body, _ = _h2(proxy, b"POST", b"/notes", [(b"content-type", b"text/plain")], b"hello",
                              [(b"x-checksum", b"abc")])
        assert status == 403 and b"trailer fields" in body, (status, body)
        assert upstream.accepted == 0 and "crashed" not in proxy.log_text(), proxy.log_text()
        [row] = logged(proxy)
        assert row["decision"] == "deny" and "trailer fields" in str(row["reason"]), row
    finally:
        upstream.close()


@pytest.mark.parametrize(("lead", "filler"), [
    (b"", b"0" * 65536),  # a chunk-size line without end
    (b"1;", b"a" * 65536),  # a chunk extension without end
    (b"2\r\nok\r\n0\r\n", b"X-A: " + b"b" * 65000 + b"\r\n"),  # a trailer section without end
], ids=["chunk-size", "extension", "trailers"])
def test_a_chunked_requests_framing_is_bounded(make_proxy, lead: bytes, filler: bytes) -> None:
    """The upstream side bounds a chunked answer's framing; an agent's chunked request had no such bound: h11 keeps a
    chunk-size line, a chunk extension or a trailer section until its end, no body cap counts them, and
    limits.max_header_bytes bounds only the head. 64 MiB of one were all taken and buffered (the proxy's memory grew
    by as much), the agent never answered. Past the head's bound the request is refused (400) and closed."""
    upstream, seen = _recording_upstream()
    try:
        proxy = make_proxy(POLICY, routes={HOST: f"http://127.0.0.1:{upstream.port}"})
        head = (f"POST http://{HOST}/notes HTTP/1.1\r\nHost: {HOST}\r\nProxy-Authorization: Basic {CREDS}\r\n"
                "Transfer-Encoding: chunked\r\n\r\n").encode()
        sent, out = 0, b""
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=20) as sock:
            sock.sendall(head + lead)
            try:
                while sent < (64 << 20):
                    sock.sendall(filler)
                    sent += len(filler)
            except OSError:
                pass
            try:
                while chunk := sock.recv(65536):
                    out += chunk
            except OSError:
                pass
        assert sent < (16 << 20), f"the proxy took {sent >> 20} MiB of chunked framing"
        assert out.startswith(b"HTTP/1.1 400") and b"chunked" in out, out[:300]
        assert upstream.accepted == 0
    finally:
        upstream.close()
