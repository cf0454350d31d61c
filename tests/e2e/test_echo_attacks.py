"""An upstream that reflects the injected credential, attacking the scrubber through the proxy: spellings overlapping
each other (also gzipped), hex and percent escapes in mixed case in a header and a redirect, a body sent a byte per
chunk, and byte ranges of a mixed-case echo; nothing of the secret comes back."""

from __future__ import annotations

import base64
import gzip
import re
import socketserver
import ssl
import threading
import zlib
from collections.abc import Callable, Iterator
from urllib.parse import quote

import pytest

from goex_proxy.credentials.kinds import Credential, Injection
from goex_proxy.credentials.redact import PARTIAL_MIN
from goex_proxy.secretref import SecretRef
from tests.conftest import read_head
from tests.e2e.test_echoes import HOST, fetch, tls_tunnel

pytestmark = pytest.mark.e2e

#: Holds every character an encoder escapes, and ends with the letter its base64 starts with ("eG94…").
SECRET = "xoxb-ECHO&<b>\"q'+/=end-7f3a9c2e"
CREDENTIALS = f"""credentials:
  echo:
    secret: {{env: GOEX_TEST_ECHO_SECRET}}
    hosts: [{HOST}]
    inject: {{header: Authorization, value: "Bearer {{secret}}"}}
"""
POLICY = {"echo": f"""
    version: 1
    rules:
      - name: the echo server
        allow: {{hosts: [{HOST}], methods: [GET]}}
      - name: a protocol the upstream upgrades to
        allow: {{host: {HOST}, path: /upgrade, protocol: foo}}
"""}


def _mixed_hex(secret: str) -> bytes:
    """Hex in upper case at every third digit: `bytes.fromhex` reads it as the lower case spelling."""
    return "".join(c.upper() if i % 3 == 0 else c for i, c in enumerate(secret.encode().hex())).encode()


def _overlap(secret: str) -> bytes:
    """The secret, then its base64 sharing the secret's last letter (which is where the base64 starts)."""
    b64 = base64.b64encode(secret.encode())
    assert b64[:1] == secret.encode()[-1:]
    return secret.encode() + b64[1:]


def _response(status: bytes, headers: list[bytes], body: bytes) -> bytes:
    return b"\r\n".join([status, *headers, f"Content-Length: {len(body)}".encode(), b"Connection: close", b"",
                         b""]) + body


def _chunked(body: bytes) -> bytes:
    chunks = b"".join(b"1\r\n" + body[i:i + 1] + b"\r\n" for i in range(len(body)))
    return b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n" + chunks + b"0\r\n\r\n"


RANGED = b"0123456789" * 3 + _mixed_hex(SECRET) + b"abcdefghij" * 3

#: path -> the whole answer, made from the secret the upstream got (and the request's headers)
ANSWERS: dict[str, Callable[[str, dict[str, str]], bytes]] = {
    "/overlap": lambda s, h: _response(b"HTTP/1.1 200 OK", [], b"[" + _overlap(s) + b"]"),
    "/overlap-gzip": lambda s, h: _response(b"HTTP/1.1 200 OK", [b"Content-Encoding: gzip"],
                                            gzip.compress(b"[" + _overlap(s) + b"]", mtime=0)),
    "/mixed-hex-header": lambda s, h: _response(b"HTTP/1.1 200 OK", [b"X-Trace: id=" + _mixed_hex(s) + b";"], b"ok"),
    "/mixed-percent-location": lambda s, h: _response(b"HTTP/1.1 302 Found", [b"Location: /login?next=" + re.sub(
        "%[0-9A-F]{2}", lambda m: m.group(0).lower() if m.start() % 2 else m.group(0), quote(s, safe="")).encode()],
        b""),
    "/chunked-hex": lambda s, h: _chunked(b"token=" + s.encode().hex().encode() + b"&end"),
    "/deflate-then-plain": lambda s, h: _response(b"HTTP/1.1 200 OK", [b"Content-Encoding: deflate"],
                                                  zlib.compress(b"ok") + s.encode()),  # decoders stop before it
}


def _range(headers: dict[str, str]) -> bytes:
    first, last = (int(n) for n in headers["range"].removeprefix("bytes=").split("-"))
    part = RANGED[first:last + 1]
    return _response(b"HTTP/1.1 206 Partial Content",
                     [f"Content-Range: bytes {first}-{first + len(part) - 1}/{len(RANGED)}".encode()], part)


class _Reflector(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


@pytest.fixture
def attacker(upstream_ca) -> Iterator[tuple[int, list[str]]]:
    """The upstream: answers each path as ANSWERS says, with the secret it was sent; `/range` a byte range of RANGED."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    upstream_ca[0].issue_cert(HOST).configure_cert(context)
    seen: list[str] = []

    class Handler(socketserver.StreamRequestHandler):
        def handle(self) -> None:
            conn = context.wrap_socket(self.request, server_side=True)
            reader = conn.makefile("rb")
            path = reader.readline().decode().split()[1]
            headers: dict[str, str] = {}
            while (line := reader.readline()) not in (b"\r\n", b""):
                name, _, value = line.decode().partition(":")
                headers[name.strip().lower()] = value.strip()
            secret = headers.get("authorization", "").removeprefix("Bearer ")
            seen.append(secret)
            if path == "/upgrade":  # raw bytes after 101: the secret whole, then cut in two sends
                conn.sendall(b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: foo\r\n\r\n")
                for part in (b"welcome " + secret.encode() + b"\n", b"id " + secret.encode()[:15],
                             secret.encode()[15:] + b" bye\n"):
                    reader.readline()  # the agent asks for each part: each is its own message at the proxy
                    conn.sendall(part)
            else:
                answer = ANSWERS[path](secret, headers) if path != "/range" else _range(headers) if "range" in headers \
                    else _response(b"HTTP/1.1 200 OK", [], b"whole: " + _mixed_hex(secret))
                conn.sendall(answer)
            conn.close()

    server = _Reflector(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1], seen
    server.shutdown()
    server.server_close()


def _proxy_injecting(make_proxy, attacker, secret: str):
    """A proxy that injects `secret` into every request to the attacker's host."""
    proxy = make_proxy(POLICY, start=False, extra_config=CREDENTIALS,
                       routes={HOST: f"https://127.0.0.1:{attacker[0]}"})
    proxy.env["GOEX_TEST_ECHO_SECRET"] = secret
    return proxy.start()


@pytest.fixture
def attacked_proxy(make_proxy, attacker):
    return _proxy_injecting(make_proxy, attacker, SECRET)


SHORT_SECRET = "pw-Sh0rt-9x7Kq2"  # 15 characters: two ranges (7 bytes back at each end) would give all but one


@pytest.fixture
def short_secret_proxy(make_proxy, attacker):
    return _proxy_injecting(make_proxy, attacker, SHORT_SECRET)


def test_a_short_secret_goes_without_byte_ranges(short_secret_proxy, attacker):
    """Each range of an echo gives back up to 7 bytes at either end of the secret, so a secret under 24 characters
    could be joined from a few ranges: its requests go without Range, and the whole answer comes back scrubbed."""
    status, _, body = fetch(short_secret_proxy, "/range", {"Range": "bytes=0-6"})
    assert attacker[1] == [SHORT_SECRET], "the upstream got the real secret"
    assert status.startswith(b"HTTP/1.1 200") and b"goex-placeholder-echo" in body, (status, body)
    assert not {p for p in pieces(SHORT_SECRET) if p in body.lower()}, body


def pieces(secret: str) -> set[bytes]:
    """Every PARTIAL_MIN-byte piece of every spelling of the secret, in lower case (hex and escapes ignore case)."""
    credential = Credential("echo", SecretRef(vault="echo"), (), Injection("header"))
    return {f.encode().lower()[i:i + PARTIAL_MIN] for f in credential.forms(secret)
            for i in range(len(f) - PARTIAL_MIN + 1)}


def shown(status: bytes, fields: list[tuple[bytes, bytes]], body: bytes) -> bytes:
    """Everything the agent got, joined, the body decoded as its client would."""
    if any(k.lower() == b"content-encoding" and v.lower() == b"gzip" for k, v in fields):
        body = gzip.decompress(body)
    return (status + b"".join(k + b":" + v for k, v in fields) + body).lower()


@pytest.mark.parametrize("path", sorted(ANSWERS))
def test_no_attack_gives_any_piece_of_the_secret_back(attacked_proxy, attacker, path):
    """Spellings overlapping (the base64 left less one letter before), mixed-case hex in a header and percent escapes
    in a redirect, the secret after the end of a deflate stream (passed whole before), a body a byte per chunk: the
    agent gets the placeholder, or a 502 for an answer that cannot be cleaned, and no piece."""
    status, fields, body = fetch(attacked_proxy, path)
    assert attacker[1] == [SECRET], "the upstream got the real secret"
    seen = shown(status, fields, body)
    assert not {p for p in pieces(SECRET) if p in seen}, seen
    assert b"goex-placeholder-echo" in seen or (status.startswith(b"HTTP/1.1 502") and path == "/deflate-then-plain")


def test_byte_ranges_of_a_mixed_case_hex_echo_rebuild_nothing(attacked_proxy, attacker):
    """The resource echoes the secret's hex in mixed case; asked for a few bytes at a time (each too short to hold a
    spelling) the agent joins the ranges: every byte of it comes back starred."""
    start = RANGED.index(_mixed_hex(SECRET))
    for size in (5, 12):
        rebuilt = b""
        for first in range(0, len(RANGED), size):
            status, _, part = fetch(attacked_proxy, "/range", {"Range": f"bytes={first}-{first + size - 1}"})
            assert status.startswith(b"HTTP/1.1 206") and len(part) == min(size, len(RANGED) - first)
            rebuilt += part
        assert not {p for p in pieces(SECRET) if p in rebuilt.lower()}, (size, rebuilt)
        assert set(rebuilt[start + PARTIAL_MIN:start + len(_mixed_hex(SECRET)) - PARTIAL_MIN]) == {ord("*")}


def test_a_raw_stream_after_an_upgrade_is_scrubbed(attacked_proxy, attacker):
    """A rule allows an upgrade to a protocol the proxy cannot read; its request had the credential injected, and the
    upstream sends it back over the raw stream, whole and cut in two: the agent gets neither (relayed blind before)."""
    tls = tls_tunnel(attacked_proxy, HOST)
    tls.sendall(f"GET /upgrade HTTP/1.1\r\nHost: {HOST}\r\nConnection: Upgrade\r\nUpgrade: foo\r\n\r\n".encode())
    got = read_head(tls)
    assert got.startswith(b"HTTP/1.1 101")
    got = got.partition(b"\r\n\r\n")[2]
    for _ in range(3):
        tls.sendall(b"next\n")
        before = len(got)
        while len(got) == before:  # one message per part (the upstream waits for the next ask)
            got += tls.recv(4096)
    while b"bye" not in got:
        got += tls.recv(4096)
    tls.close()
    assert attacker[1] == [SECRET]
    assert not {p for p in pieces(SECRET) if p in got.lower()}, got
    assert got.startswith(b"welcome goex-placeholder-echo\n") and b"<withheld>" in got
