"""Header fields that could be re-read as other fields or another message are refused before policy, both ways: an
HTTP/2 client sends raw bytes no HTTP/1.1 message may hold, and an HTTP/2 upstream answers with them."""

from __future__ import annotations

import pytest

from tests.conftest import GITHUB_POLICY
from tests.e2e.test_request_framing import _h2

pytestmark = pytest.mark.e2e

SMUGGLED = b"v\r\nContent-Length: 0\r\n\r\nPOST /api/files.delete HTTP/1.1\r\nHost: evil.example\r\nX-Rest: x"


def h2_request(proxy, headers: list[tuple[bytes, bytes]], trailers: list[tuple[bytes, bytes]] | None = None,
               path: bytes = b"/repos/octo/hello") -> tuple[int, bytes]:
    """One HTTP/2 GET to api.github.com through the proxy, its header bytes sent exactly as given (the client checks
    nothing); the answer's status and body."""
    status, body, _ = _h2(proxy, b"GET", path, headers, b"", trailers, host="api.github.com", strict=False)
    return status, body


@pytest.mark.parametrize(("name", "headers", "trailers"), [
    ("CRLF in a header value", [(b"x-note", SMUGGLED)], None),
    ("a bare CR in a header value", [(b"x-note", b"a\rb")], None),
    ("a bare LF in a header value", [(b"x-note", b"a\nb")], None),
    ("NUL in a header value", [(b"x-note", b"a\x00b")], None),
    ("a header name with a colon and space", [(b"x-a: b\r\nx-c", b"d")], None),
    ("CRLF in a trailer", [], [(b"x-trailer", SMUGGLED)]),
    ("CRLF in the path", [], None),
])
def test_fields_that_would_split_the_message_are_refused_before_policy(make_proxy, upstream, name, headers,
                                                                        trailers):
    """Over HTTP/2, bytes that end a line in HTTP/1.1 never reach the upstream: the request is refused (403, recorded
    as such) and the upstream sees nothing, neither the allowed GET nor a smuggled request."""
    proxy = make_proxy(GITHUB_POLICY)
    path = b"/repos/octo/hello HTTP/1.1\r\nHost: evil.example\r\n\r\nGET /x" if name == "CRLF in the path" else None
    status, body = h2_request(proxy, headers, trailers, path or b"/repos/octo/hello")
    assert upstream.seen_paths() == []
    if name == "a header name with a colon and space":  # mitmproxy's own HTTP/2 validation answers this one first
        assert status == 400 and b"smuggling" in body
        return
    assert status == 403, body
    assert b"refused before policy" in body
    [row] = proxy.rows()
    assert row["decision"] == "deny" and row["status"] == 403


def test_a_well_formed_http2_request_still_goes_through(make_proxy, upstream):
    """The same client with ordinary headers is allowed and answered: the refusals above are about the bytes."""
    proxy = make_proxy(GITHUB_POLICY)
    status, body = h2_request(proxy, [(b"x-note", b"plain words")])
    assert status == 200, body
    assert upstream.seen_paths() == ["/repos/octo/hello"]


def test_a_decompression_bomb_is_refused_and_the_proxy_stays_small(make_proxy, upstream):
    """A brotli body of a few hundred bytes that would decode to 400 MiB is refused before policy, the upstream sees
    nothing, and the proxy's peak memory stays far below what decoding it whole would take."""
    import brotli
    import requests

    proxy = make_proxy({"notes": """
        version: 1
        name: notes
        rules:
          - name: post notes
            allow: {host: api.github.com, methods: [POST], path: "/repos/**"}
    """})
    bomb = brotli.compress(b"\0" * (400 << 20), quality=5)
    r = requests.post("https://api.github.com/repos/octo/hello/notes", data=bomb, timeout=60,
                      headers={"Content-Encoding": "br", "Content-Type": "application/octet-stream"},
                      proxies={"https": proxy.proxy_url()}, verify=str(proxy.ca_cert))
    assert r.status_code == 403 and "decodes to more than" in r.json()["reason"]
    assert upstream.seen_paths() == []
    peak_kb = int(next(line.split()[1] for line in open(f"/proc/{proxy.proc.pid}/status")
                       if line.startswith("VmHWM:")))
    assert peak_kb < 300 * 1024, f"the proxy's peak RSS reached {peak_kb // 1024} MiB"
