"""A response's head and a small body reach the agent in one write of the proxy's (`mitmtrim.joined_sends`): one TCP
segment, and over TLS one record, where mitmproxy wrote two. Counted by the agent's own socket (Linux's TCP_INFO)."""

from __future__ import annotations

import base64
import socket
import ssl
import struct

import pytest

from tests.conftest import GITHUB_POLICY, TOKENS

pytestmark = pytest.mark.e2e

CREDS = base64.b64encode(f"mailbot:{TOKENS['mailbot']}".encode()).decode()
#: Where `struct tcp_info` (linux/tcp.h) holds tcpi_data_segs_in: the segments with data this socket received.
_DATA_SEGS_IN = 152


def data_segments_in(sock: socket.socket) -> int:
    info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 256)
    assert len(info) >= _DATA_SEGS_IN + 4, "this kernel's tcp_info has no tcpi_data_segs_in (Linux 4.6+)"
    return int(struct.unpack_from("I", info, _DATA_SEGS_IN)[0])


def records(raw: bytes) -> list[int]:
    """The content types of the TLS records in `raw`, which holds whole records."""
    types, at = [], 0
    while at < len(raw):
        kind, _, length = struct.unpack_from("!BHH", raw, at)
        types.append(kind)
        at += 5 + length
    assert at == len(raw)
    return types


def _response_end(head_and_body: bytes) -> bool:
    head, sep, body = head_and_body.partition(b"\r\n\r\n")
    if not sep:
        return False
    length = next(int(line.split(b":", 1)[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:"))
    return len(body) >= length


class TlsAgent:
    """An agent's TLS 1.2 connection through the proxy's CONNECT tunnel (1.2: its records after the handshake are
    all application data), kept in memory so that each record the proxy sends is seen."""

    def __init__(self, port: int, ca: str, host: str) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.sock.sendall(f"CONNECT {host}:443 HTTP/1.1\r\nHost: {host}:443\r\nProxy-Authorization: Basic {CREDS}"
                          "\r\n\r\n".encode())
        assert self.sock.recv(4096).startswith(b"HTTP/1.1 200")
        context = ssl.create_default_context(cafile=ca)
        context.maximum_version = ssl.TLSVersion.TLSv1_2
        context.set_alpn_protocols(["http/1.1"])
        self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.tls = context.wrap_bio(self.incoming, self.outgoing, server_hostname=host)
        while True:
            try:
                self.tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                self._flush()
                self.incoming.write(self.sock.recv(65536))
        self._flush()

    def _flush(self) -> None:
        if pending := self.outgoing.read():
            self.sock.sendall(pending)

    def get(self, path: str, host: str) -> tuple[bytes, bytes]:
        """The response to a GET of `path`, and the raw bytes that carried it."""
        self.tls.write(f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
        self._flush()
        raw = response = b""
        while not _response_end(response):
            chunk = self.sock.recv(65536)
            assert chunk, "the proxy closed the connection"
            raw += chunk
            self.incoming.write(chunk)
            try:
                while piece := self.tls.read(65536):
                    response += piece
            except ssl.SSLWantReadError:
                pass
        return response, raw


def test_a_response_over_tls_reaches_the_agent_in_one_record_and_one_segment(make_proxy) -> None:
    proxy = make_proxy(GITHUB_POLICY)
    agent = TlsAgent(proxy.port, str(proxy.ca_cert), "api.github.com")
    try:
        for _ in range(2):  # the first request on a connection, and one kept alive
            before = data_segments_in(agent.sock)
            response, raw = agent.get("/repos/octo/hello", "api.github.com")
            assert response.startswith(b"HTTP/1.1 200") and b'"hello"' in response, response[:300]
            assert records(raw) == [23], "the head and the body were sent as records of their own"
            assert data_segments_in(agent.sock) - before == 1
    finally:
        agent.sock.close()


def test_a_plain_http_answer_reaches_the_agent_in_one_segment(make_proxy) -> None:
    proxy = make_proxy(GITHUB_POLICY)
    sock = socket.create_connection(("127.0.0.1", proxy.port), timeout=10)
    try:
        for path in ("/repos/octo/hello", "/orgs/octo"):  # an answer from upstream, then the proxy's own denial
            before = data_segments_in(sock)
            sock.sendall(f"GET http://api.github.com{path} HTTP/1.1\r\nHost: api.github.com\r\n"
                         f"Proxy-Authorization: Basic {CREDS}\r\n\r\n".encode())
            response = b""
            while not _response_end(response):
                chunk = sock.recv(65536)
                assert chunk, "the proxy closed the connection"
                response += chunk
            assert response.split(b" ", 2)[1] in (b"200", b"403"), response[:300]
            assert data_segments_in(sock) - before == 1, response[:300]
    finally:
        sock.close()
