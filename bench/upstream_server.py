"""A minimal, fast HTTP/1.1 keep-alive upstream for the throughput benchmark: plain HTTP and HTTPS listeners.

Every request gets the same small JSON body. Run as a child process:
    python bench/upstream_server.py --http-port N --https-port M --cert C --key K
It prints `ready` on stdout once both listeners accept connections.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import ssl
import sys

BODY = b'{"ok": true, "id": 42, "items": [1, 2, 3], "note": "goex-proxy bench upstream"}\n'
RESPONSE = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
            + str(len(BODY)).encode() + b"\r\nServer: bench-upstream\r\n\r\n" + BODY)


class Http11(asyncio.Protocol):
    """Parses just enough of HTTP/1.1 (head, Content-Length body, pipelining) to answer each request."""

    __slots__ = ("transport", "buf")

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.buf = b""

    def data_received(self, data: bytes) -> None:
        buf = self.buf + data if self.buf else data
        out = []
        close = False
        while True:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                break
            head = buf[:end].lower()
            length = 0
            at = head.find(b"\r\ncontent-length:")
            if at >= 0:
                stop = head.find(b"\r\n", at + 2)
                length = int(head[at + 17:stop if stop >= 0 else None])
            if len(buf) < end + 4 + length:
                break
            buf = buf[end + 4 + length:]
            out.append(RESPONSE)
            if b"\r\nconnection: close" in head:
                close = True
                break
        self.buf = buf
        if out:
            self.transport.write(b"".join(out))  # type: ignore[attr-defined]
        if close:
            self.transport.close()


async def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--http-port", type=int, required=True)
    p.add_argument("--https-port", type=int, required=True)
    p.add_argument("--cert", required=True, help="PEM file with the server certificate chain")
    p.add_argument("--key", required=True, help="PEM file with the private key")
    args = p.parse_args()
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(args.cert, args.key)
    loop = asyncio.get_running_loop()
    plain = await loop.create_server(Http11, "127.0.0.1", args.http_port, backlog=1024)
    tls = await loop.create_server(Http11, "127.0.0.1", args.https_port, ssl=ctx, backlog=1024)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print("ready", flush=True)
    await stop.wait()
    plain.close()
    tls.close()


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        sys.exit(0)
