"""A request translated between HTTP/2 and HTTP/1.1 on its way upstream is the request the policy decided on and the
audit row records: the Host the upstream reads, its framing, and the fields a hop removes."""

from __future__ import annotations

import pytest

from tests.conftest import tunnel
from tests.e2e.test_audit_layout_attacks import HOST, POLICY, _until, logged
from tests.e2e.test_request_framing import CREDS, _h2, _raw, _recording_upstream

pytestmark = pytest.mark.e2e

EVIL = b"evil.example"


def _hosts(data: bytes) -> list[bytes]:
    """The Host header fields of the first request head in `data`, in order."""
    head = data.split(b"\r\n\r\n", 1)[0].split(b"\r\n")[1:]
    return [line.split(b":", 1)[1].strip() for line in head if line.split(b":", 1)[0].strip().lower() == b"host"]


def test_an_http2_request_with_a_second_host_field_is_refused(make_proxy) -> None:
    """h2 checks `:authority` against the last `host` field only, and goex-proxy read an HTTP/2 request's host from
    `:authority` alone: `host: evil.example` before `host: notes.example` went upstream over HTTP/1.1 as two Host
    headers, the first naming a host no policy allowed (servers that take the first, as Node does, serve it), while
    the row said notes.example."""
    upstream, seen = _recording_upstream()
    try:
        proxy = make_proxy(POLICY, routes={HOST: f"http://127.0.0.1:{upstream.port}"})
        status, body, _ = _h2(proxy, b"GET", b"/notes", [(b"host", EVIL), (b"host", HOST.encode())], b"", None)
        if upstream.accepted:
            _until(lambda: seen, "the upstream's connection to end")
            pytest.fail(f"the upstream got Host fields {_hosts(seen[0])} (status {status})")
        assert status == 403 and b"Host" in body, (status, body)
        [row] = logged(proxy)
        assert row["decision"] == "deny", row
    finally:
        upstream.close()


@pytest.mark.parametrize("tunnel", [False, True], ids=["plain", "tls-tunnel"])
def test_an_http1_request_labelled_http2_cannot_name_another_host(make_proxy, tunnel: bool) -> None:
    """An HTTP/1 request line may say `HTTP/2.0` (mitmproxy reads any `HTTP/d.d`): the request then counts as HTTP/2,
    so its host was read from the absolute-form URL alone and its Host header went unchecked; relayed upstream as
    HTTP/1.1, the Host header is what the upstream reads. Policy and the row said notes.example, the upstream got
    `Host: evil.example` (with the credentials bound to notes.example)."""
    upstream, seen = _recording_upstream()
    try:
        proxy = make_proxy(POLICY, routes={HOST: f"http://127.0.0.1:{upstream.port}"})
        request = (f"GET http://{HOST}/notes HTTP/2.0\r\nHost: evil.example\r\nProxy-Authorization: Basic {CREDS}\r\n"
                   "Connection: close\r\n\r\n").encode()
        if tunnel:
            out = _tls_raw(proxy, request.replace(b"http://", b"https://"))
        else:
            out = _raw(proxy, request)
        if upstream.accepted:
            _until(lambda: seen, "the upstream's connection to end")
            pytest.fail(f"the upstream got Host fields {_hosts(seen[0])}: {out[:200]!r}")
        assert out.split(b"\r\n", 1)[0].endswith(b" 403 Forbidden") and b"HTTP/2.0" in out, out[:500]
        [row] = logged(proxy)
        assert row["decision"] == "deny" and row["host"] == HOST, row
    finally:
        upstream.close()


def _tls_raw(proxy, data: bytes, timeout: float = 20) -> bytes:
    """`data` sent inside a CONNECT tunnel to HOST:443 over TLS (HTTP/1.1 only), read until the proxy closes."""
    import ssl

    out = b""
    with tunnel(proxy, HOST, "http/1.1", timeout=timeout) as sock:
        sock.sendall(data)
        try:
            while chunk := sock.recv(65536):
                out += chunk
        except (TimeoutError, ssl.SSLError, OSError):
            pass
    return out


#: Agents may POST notes whose body does not say `rm -rf`, and GET them only as a dry run.
GUARDED = {"notes": f"""
    version: 1
    rules:
      - name: post notes
        allow:
          host: {HOST}
          methods: [POST]
          path: /notes
          when: '!request.body.contains("rm -rf")'
      - name: dry runs
        allow:
          host: {HOST}
          methods: [GET]
          path: /notes
          when: '"x-dry-run" in request.headers'
"""}


def _refused(proxy, upstream, seen: list[bytes], out: bytes, said: bytes) -> None:
    """Nothing of the request reached the upstream; the agent got a 403 saying `said`, and its row is a denial."""
    if upstream.accepted:
        _until(lambda: seen, "the upstream's connection to end")
        pytest.fail(f"the upstream got {seen[0][:300]!r}; the agent {out[:120]!r}")
    assert out.startswith(b"HTTP/1.1 403") and said in out, out[:500]
    [row] = logged(proxy)
    assert row["decision"] == "deny", row


def test_a_request_body_under_a_transfer_coding_other_than_chunked_is_refused(make_proxy) -> None:
    """`Transfer-Encoding: gzip, chunked` passes mitmproxy's checks, which take the chunked coding off and leave the
    gzip one on: the policy (and the row) read the gzip bytes, which say nothing it forbids, and the request went on
    with its Transfer-Encoding as sent, so an upstream that undoes the coding ran `rm -rf /` (one reached over HTTP/2
    got the gzip bytes instead: the same request, two bodies)."""
    import gzip

    upstream, seen = _recording_upstream()
    try:
        proxy = make_proxy(GUARDED, routes={HOST: f"http://127.0.0.1:{upstream.port}"})
        packed = gzip.compress(b"rm -rf /")
        out = _raw(proxy, (f"POST http://{HOST}/notes HTTP/1.1\r\nHost: {HOST}\r\nProxy-Authorization: Basic {CREDS}\r\n"
                           "Content-Type: text/plain\r\nTransfer-Encoding: gzip, chunked\r\nConnection: close\r\n\r\n"
                           ).encode() + b"%x\r\n%s\r\n0\r\n\r\n" % (len(packed), packed))
        _refused(proxy, upstream, seen, out, b"Transfer-Encoding")
    finally:
        upstream.close()


def test_a_header_the_connection_header_nominates_is_refused(make_proxy) -> None:
    """`Connection: close, X-Dry-Run` makes X-Dry-Run hop-by-hop: the next HTTP/1.1 hop (a CDN or load balancer in
    front of the upstream) removes it, as RFC 9110 7.6.1 has every intermediary do. mitmproxy relays the field and the
    Connection header as they are, so the policy allowed a dry run that the application received as a real GET."""
    upstream, seen = _recording_upstream()
    try:
        proxy = make_proxy(GUARDED, routes={HOST: f"http://127.0.0.1:{upstream.port}"})
        out = _raw(proxy, (f"GET http://{HOST}/notes HTTP/1.1\r\nHost: {HOST}\r\nProxy-Authorization: Basic {CREDS}\r\n"
                           "X-Dry-Run: 1\r\nConnection: close, X-Dry-Run\r\n\r\n").encode())
        _refused(proxy, upstream, seen, out, b"Connection")
    finally:
        upstream.close()


@pytest.mark.parametrize("connection", ["close", "TE, close", "Keep-Alive, close"])
def test_a_connection_header_naming_only_hop_by_hop_fields_is_relayed(make_proxy, connection: str) -> None:
    """The control: what clients send (Perl's LWP says `TE, close`); WebSocket's `Upgrade` is in test_protocols."""
    upstream, seen = _recording_upstream()
    try:
        proxy = make_proxy(GUARDED, routes={HOST: f"http://127.0.0.1:{upstream.port}"})
        out = _raw(proxy, (f"GET http://{HOST}/notes HTTP/1.1\r\nHost: {HOST}\r\nProxy-Authorization: Basic {CREDS}\r\n"
                           f"X-Dry-Run: 1\r\nTE: trailers\r\nConnection: {connection}\r\n\r\n").encode())
        assert out.startswith(b"HTTP/1.1 201"), out[:500]
    finally:
        upstream.close()
