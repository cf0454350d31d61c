"""A listener on this machine's loopback that counts who reaches it: what a jailed command must never reach."""

from __future__ import annotations

import socket
import threading
from types import TracebackType


class Canary:
    """Listens on 127.0.0.1 and ::1 (same port, where IPv6 exists), answers HTTP 200, and counts connections."""

    def __init__(self) -> None:
        self.hits = 0
        self._sockets = [socket.create_server(("127.0.0.1", 0))]
        self.port = int(self._sockets[0].getsockname()[1])
        try:
            self._sockets.append(socket.create_server(("::1", self.port), family=socket.AF_INET6))
        except OSError:  # no IPv6 loopback here
            pass
        self._threads = [threading.Thread(target=self._serve, args=(s,), daemon=True) for s in self._sockets]

    def _serve(self, listener: socket.socket) -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:  # closed
                return
            self.hits += 1
            with conn:
                try:
                    conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Length: 6\r\n\r\ncanary")
                except OSError:
                    pass

    def __enter__(self) -> Canary:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        for s in self._sockets:
            s.close()
