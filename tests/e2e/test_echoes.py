"""An upstream that reflects the injected credential every way an agent could reassemble it: none of them gives it back."""

from __future__ import annotations

import base64
import gzip
import html
import json
import re
import socket
import socketserver
import ssl
import threading
from collections.abc import Callable, Iterator
from urllib.parse import quote, unquote

import pytest
from websockets.sync.client import connect
from websockets.sync.server import serve

from goex_proxy.credentials.redact import PARTIAL_MIN
from tests.conftest import TOKENS, free_port, read_head

pytestmark = pytest.mark.e2e

#: Holds every character an encoder escapes: & < > " ' + / (HTML, Go's JSON, URL encoding).
SECRET = "xoxb-ECHO&<b>\"q'+/=end-7f3a9c2e"
HOST, WS_HOST = "echo.example", "ws.echo.example"
CREDENTIALS = f"""credentials:
  echo:
    secret: {{env: GOEX_TEST_ECHO_SECRET}}
    hosts: [{HOST}, {WS_HOST}]
    inject: {{header: Authorization, value: "Bearer {{secret}}"}}
"""
POLICY = {"echo": f"""
    version: 1
    rules:
      - name: the echo server
        allow: {{hosts: [{HOST}, {WS_HOST}], methods: [GET]}}
"""}
BODY = b"0123456789" * 3 + SECRET.encode() + b"abcdefghij" * 3


def _gzip(data: bytes) -> bytes:
    return gzip.compress(data, mtime=0)


def _mime(secret: str) -> bytes:
    return b"Content-Transfer-Encoding: base64\r\n\r\n" + base64.encodebytes(b"x" * 50 + secret.encode())


#: path -> (status line, extra header lines, body): how the upstream reflects the Authorization it got.
REFLECTIONS: dict[str, Callable[[str], tuple[bytes, list[bytes], bytes]]] = {
    "/reason": lambda s: (b"HTTP/1.1 200 " + s.encode(), [], b"ok"),
    "/header-name": lambda s: (b"HTTP/1.1 200 OK", [b"X-" + s.encode().hex().encode() + b": 1"], b"ok"),
    "/two-headers": lambda s: (b"HTTP/1.1 200 OK", [b"X-A: " + s[:11].encode(), b"X-B: " + s[11:].encode()], b"ok"),
    "/one-header-twice": lambda s: (b"HTTP/1.1 200 OK", [b"X-Part: " + s[:9].encode(), b"X-Part: " + s[9:].encode()],
                                    b"ok"),
    "/te-gzip": lambda s: (b"HTTP/1.1 200 OK", [b"Transfer-Encoding: gzip"], _gzip(s.encode())),
    "/gzip-in-gzip": lambda s: (b"HTTP/1.1 200 OK", [b"Content-Encoding: gzip"], _gzip(_gzip(s.encode()))),
    "/mime-base64": lambda s: (b"HTTP/1.1 200 OK", [b"Content-Type: message/rfc822"], _mime(s)),
    "/html": lambda s: (b"HTTP/1.1 200 OK", [b"Content-Type: text/html"],
                        b"<p title=\"" + html.escape(s, quote=True).encode() + b"\">hi</p>"),
    "/go-json": lambda s: (b"HTTP/1.1 200 OK", [b"Content-Type: application/json"],
                           json.dumps({"auth": s}).replace("&", "\\u0026").replace("<", "\\u003c")
                           .replace(">", "\\u003e").encode()),
    "/double-url": lambda s: (b"HTTP/1.1 200 OK", [], b"next=" + quote(quote(s, safe=""), safe="").encode()),
    "/header-then-body": lambda s: (b"HTTP/1.1 200 OK", [b"X-T: " + s[:12].encode(), b"X-Other: 1"], s[12:].encode()),
    "/reason-then-body": lambda s: (b"HTTP/1.1 200 " + s[:12].encode(), [], s[12:].encode()),
    "/encode-uri-component": lambda s: (b"HTTP/1.1 302 Found", [b"Location: /login?next=" + quote(
        s, safe="!'()*").encode()], b""),
}


def reassembled(path: str, status: bytes, fields: list[tuple[bytes, bytes]], body: bytes) -> str:
    """What the agent rebuilds from the answer, undoing the reflection `path` names."""
    values = b"".join(k + v for k, v in fields).decode("latin-1")  # joined as an attacker would, no separators
    text = body
    if path in ("/te-gzip", "/gzip-in-gzip"):
        while text[:2] == b"\x1f\x8b":
            text = gzip.decompress(text)
    if path == "/mime-base64":
        letters = re.sub(rb"[^A-Za-z0-9+/]", b"", text.split(b"\r\n\r\n", 1)[-1])  # as a lenient decoder does
        text = base64.b64decode(letters[:len(letters) // 4 * 4])
    if path == "/header-name":
        text = b"".join(bytes.fromhex(k[2:].decode()) if k.startswith(b"X-") and len(k) > 40 else b"" for k, _ in fields)
    decoded = text.decode("latin-1")
    reason = status.decode("latin-1").split(" ", 2)[-1]
    return " ".join([reason + values + decoded, html.unescape(decoded), unquote(unquote(values + decoded)),
                     decoded.encode().decode("unicode_escape", "replace")])


class _Reflector(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


def _serve(context: ssl.SSLContext) -> tuple[_Reflector, list[str]]:
    seen: list[str] = []

    class Handler(socketserver.StreamRequestHandler):
        def handle(self) -> None:
            conn = context.wrap_socket(self.request, server_side=True)
            reader = conn.makefile("rb")
            request_line = reader.readline().decode()
            headers: dict[str, str] = {}
            while (line := reader.readline()) not in (b"\r\n", b""):
                name, _, value = line.decode().partition(":")
                headers[name.strip().lower()] = value.strip()
            path = request_line.split()[1]
            secret = headers.get("authorization", "").removeprefix("Bearer ")
            seen.append(secret)
            if path == "/range":
                first, last = (int(n) for n in headers["range"].removeprefix("bytes=").split("-"))
                part = BODY[first:last + 1]
                head = [b"HTTP/1.1 206 Partial Content",
                        f"Content-Range: bytes {first}-{first + len(part) - 1}/{len(BODY)}".encode()]
                extra, body = [], part
                status = head[0]
                lines = [head[1]]
            else:
                status, lines, body = REFLECTIONS[path](secret)
                extra = []
            framing = [] if any(h.startswith(b"Transfer-Encoding") for h in lines) else [
                f"Content-Length: {len(body)}".encode()]
            conn.sendall(b"\r\n".join([status, *lines, *extra, *framing, b"Connection: close", b"", b""]) + body)
            conn.close()

    server = _Reflector(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, seen


@pytest.fixture
def reflector(upstream_ca) -> Iterator[tuple[int, list[str]]]:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    upstream_ca[0].issue_cert(HOST).configure_cert(context)
    server, seen = _serve(context)
    yield server.server_address[1], seen
    server.shutdown()
    server.server_close()


@pytest.fixture
def echo_proxy(make_proxy, reflector, ws_reflector):
    proxy = make_proxy(POLICY, start=False, extra_config=CREDENTIALS,
                       routes={HOST: f"https://127.0.0.1:{reflector[0]}", WS_HOST: f"https://127.0.0.1:{ws_reflector}"})
    proxy.env["GOEX_TEST_ECHO_SECRET"] = SECRET
    return proxy.start()


def fetch(proxy, path: str, headers: dict[str, str] | None = None) -> tuple[bytes, list[tuple[bytes, bytes]], bytes]:
    """One GET through the proxy on a raw TLS socket: the status line, header fields and body exactly as received."""
    auth = base64.b64encode(f"mailbot:{TOKENS['mailbot']}".encode()).decode()
    raw = socket.create_connection(("127.0.0.1", proxy.port), timeout=20)
    raw.sendall(f"CONNECT {HOST}:443 HTTP/1.1\r\nHost: {HOST}:443\r\nProxy-Authorization: Basic {auth}\r\n\r\n".encode())
    assert raw.recv(4096).startswith(b"HTTP/1.1 200")
    tls = ssl.create_default_context(cafile=str(proxy.ca_cert)).wrap_socket(raw, server_hostname=HOST)
    extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
    tls.sendall(f"GET {path} HTTP/1.1\r\nHost: {HOST}\r\n{extra}Connection: close\r\n\r\n".encode())
    data = b""
    while chunk := tls.recv(65536):
        data += chunk
    tls.close()
    head, _, body = data.partition(b"\r\n\r\n")
    status, *lines = head.split(b"\r\n")
    fields = [(k.strip(), v.strip()) for k, _, v in (line.partition(b":") for line in lines)]
    if any(k.lower() == b"transfer-encoding" and v.lower() == b"chunked" for k, v in fields):
        body = _dechunk(body)
    return status, fields, body


def _dechunk(body: bytes) -> bytes:
    out = b""
    while body:
        size, _, body = body.partition(b"\r\n")
        n = int(size.split(b";")[0], 16)
        if n == 0:
            break
        out, body = out + body[:n], body[n + 2:]
    return out


@pytest.mark.parametrize("path", sorted(REFLECTIONS))
def test_no_reflection_gives_the_secret_back(echo_proxy, reflector, path):
    """Each way the upstream reflects the injected secret reaches the agent scrubbed, withheld, or not at all."""
    status, fields, body = fetch(echo_proxy, path)
    assert reflector[1] == [SECRET], "the upstream got the real secret"
    seen = reassembled(path, status, fields, body)
    assert SECRET not in seen and SECRET[5:25] not in seen
    shown = status + b"".join(k + v for k, v in fields) + body
    assert status.startswith(b"HTTP/1.1 502") or b"goex-placeholder-echo" in shown or b"<withheld>" in shown


def test_byte_ranges_cut_through_the_secret_give_back_at_most_a_few_bytes(echo_proxy, reflector):
    """Asking for the reflected body a range at a time (every cut, and ranges of 1 to 12 bytes) rebuilds at most
    PARTIAL_MIN - 1 bytes at each end of the secret, never the secret."""
    from goex_proxy.credentials.redact import PARTIAL_MIN

    start = BODY.index(SECRET.encode())
    for size in (1, 3, 5, 7, 12, 20):
        rebuilt = b""
        for first in range(0, len(BODY), size):
            status, _, part = fetch(echo_proxy, "/range", {"Range": f"bytes={first}-{first + size - 1}"})
            assert status.startswith(b"HTTP/1.1 206") and len(part) == min(size, len(BODY) - first)
            rebuilt += part
        middle = rebuilt[start + PARTIAL_MIN - 1:start + len(SECRET) - PARTIAL_MIN + 1]
        assert SECRET.encode() not in rebuilt and set(middle) == {ord("*")}, (size, rebuilt)


@pytest.fixture
def ws_reflector(upstream_ca) -> Iterator[int]:
    """A WebSocket server that sends back the Authorization it was opened with, cut in two messages."""
    def reflect(conn):
        secret = conn.request.headers.get("Authorization", "").removeprefix("Bearer ")
        conn.recv()
        if conn.request.path == "/controls":  # in frames mitmproxy relays without a hook
            conn.ping(secret.encode()[:40])
            conn.close(4001, "bad token: " + secret)
            return
        if conn.request.path == "/controls-split":  # the secret in two pings, each too short to match alone
            conn.ping(b"x" + secret.encode()[:13])
            conn.ping(secret.encode()[13:40] + b"y")
            conn.close(4001, "bye")
            return
        conn.send("start " + secret[:13])
        conn.send(secret[13:] + " end")
        conn.recv()

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    upstream_ca[0].issue_cert(WS_HOST).configure_cert(context)
    port = free_port()
    server = serve(reflect, "127.0.0.1", port, ssl=context)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield port
    server.shutdown()


def test_a_secret_split_across_websocket_messages_is_not_given_back(echo_proxy):
    """The two halves arrive as two messages: the first half is withheld at the end of its message, the second
    becomes the placeholder."""
    client = ssl.create_default_context(cafile=str(echo_proxy.ca_cert))
    with connect(f"wss://{WS_HOST}/socket", proxy=echo_proxy.proxy_url("mailbot"), ssl=client, open_timeout=10) as ws:
        ws.send("go")
        first, second = ws.recv(timeout=10), ws.recv(timeout=10)
        ws.send("bye")
    joined = str(first) + str(second)
    assert SECRET not in joined and SECRET[:6] not in joined and SECRET[13:] not in joined
    assert first == "start <withheld>" and str(second).endswith(" end")


def tls_tunnel(proxy, host: str) -> ssl.SSLSocket:
    """A TLS connection to `host`:443 through a CONNECT tunnel of the proxy, as mailbot, with raw bytes to send."""
    auth = base64.b64encode(f"mailbot:{TOKENS['mailbot']}".encode()).decode()
    raw = socket.create_connection(("127.0.0.1", proxy.port), timeout=20)
    raw.sendall(f"CONNECT {host}:443 HTTP/1.1\r\nHost: {host}:443\r\nProxy-Authorization: Basic {auth}\r\n\r\n"
                .encode())
    assert raw.recv(4096).startswith(b"HTTP/1.1 200")
    return ssl.create_default_context(cafile=str(proxy.ca_cert)).wrap_socket(raw, server_hostname=host)


@pytest.mark.parametrize("path", ["/controls", "/controls-split"])
def test_websocket_ping_and_close_payloads_are_scrubbed(echo_proxy, path):
    """A ping whose payload is the secret and a close whose reason quotes it reach the agent scrubbed; so does a secret
    cut between two pings (each was scrubbed on its own before, and both halves passed)."""
    import os
    import struct

    tls = tls_tunnel(echo_proxy, WS_HOST)
    key = base64.b64encode(os.urandom(16)).decode()
    tls.sendall(f"GET {path} HTTP/1.1\r\nHost: {WS_HOST}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode())
    data = read_head(tls)
    head, _, data = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101")
    mask = os.urandom(4)
    tls.sendall(bytes([0x81, 0x82]) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(b"go")))
    tls.settimeout(5)
    try:
        while chunk := tls.recv(4096):
            data += chunk
    except (TimeoutError, ssl.SSLError, ConnectionError):
        pass
    frames = []
    while len(data) >= 2:
        opcode, size, data = data[0] & 0x0F, data[1] & 0x7F, data[2:]
        if size == 126:
            size, data = struct.unpack(">H", data[:2])[0], data[2:]
        frames.append((opcode, data[:size]))
        data = data[size:]
    pings = [payload for opcode, payload in frames if opcode == 9]
    everything = b"".join(payload for _, payload in frames)
    if path == "/controls":
        closes = [payload for opcode, payload in frames if opcode == 8]
        assert b"goex-placeholder-echo" in pings[0] and b"goex-placeholder-echo" in closes[0]
    else:
        assert len(pings) == 2 and pings[0].startswith(b"x") and pings[1].endswith(b"y"), pings
    assert not any(SECRET.encode()[i:i + PARTIAL_MIN] in everything for i in range(len(SECRET) - PARTIAL_MIN + 1))
