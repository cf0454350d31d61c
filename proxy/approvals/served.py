"""uvicorn inside goex-proxy's own event loop, for the link server and the console: no signal handlers of its own;
a connection whose request head is not complete a few seconds after it began is closed (uvicorn has no such timeout),
and only requests being served count against the cap, never connections that merely hold a socket open."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Generator
from typing import Any, cast

import uvicorn
from starlette.types import ASGIApp, Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol

log = logging.getLogger(__name__)

#: Seconds from a connection's start (or, on a kept-alive connection, from the first byte of its next request) to a
#: complete request head; then it is closed, whether it was silent or sending a byte at a time (slowloris). A browser
#: or a script sends its head in one packet, milliseconds after connecting.
HEAD_SECONDS = 5.0
#: Requests served at once; past it, 503. Counted by the app, so idle or half-open connections take no share of it
#: (uvicorn's limit_concurrency counts every open connection: 64 half-open ones made it answer 503 to everyone).
MAX_REQUESTS = 64
#: Connections held at once: past it, the oldest one that has waited at least EVICT_AFTER for its request head is
#: closed to make room (file descriptors are finite); a person's connection sends its head at once, so it is not the
#: one closed unless the flood is faster than the server reads.
MAX_CONNECTIONS = 256
EVICT_AFTER = 1.0
#: Seconds an answer may wait for its reader: a client that sends requests (pipelined, thousands at once) and never
#: reads the answers would otherwise hold a request in progress, and its place under MAX_REQUESTS, for good.
WRITE_SECONDS = 10.0
#: Options every embedded server runs with: short keep-alive, and no limit_concurrency (see MAX_REQUESTS).
OPTIONS: dict[str, Any] = {"timeout_keep_alive": 5, "backlog": 512, "http": "h11"}


def listening_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket whose connections send at once (TCP_NODELAY, which accepted sockets inherit): asyncio
    sets it only on sockets it made, so a page's body, written after its head, otherwise waited for the browser's
    delayed ACK, 40 ms, on every request after a connection's first. OSError if the address cannot be had."""
    sock = socket.create_server((host, port), family=socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


class Capped:
    """The app, answering 503 past MAX_REQUESTS requests in progress (the console puts it behind its sign-in check,
    so that only a signed-in person's requests count)."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app, self.limit, self.active = app, limit, 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self.active < self.limit:
            self.active += scope["type"] == "http"
            try:
                await self.app(scope, receive, send)
            finally:
                self.active -= scope["type"] == "http"
            return
        await send({"type": "http.response.start", "status": 503,
                    "headers": [(b"content-type", b"text/plain; charset=utf-8"), (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": b"busy: too many requests at once; try again\n"})


class HeadTimedProtocol(H11Protocol):
    """uvicorn's h11 protocol, closed when its request head is late, and making room past MAX_CONNECTIONS."""

    head_seconds = HEAD_SECONDS
    max_connections = MAX_CONNECTIONS

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._head_timer: asyncio.TimerHandle | None = None
        self._write_timer: asyncio.TimerHandle | None = None
        self._timed: Any = None
        self._waiting_since = self.loop.time()
        super().connection_made(transport)
        self._arm()
        if len(self.connections) > self.max_connections:
            now = self.loop.time()
            waiting = [c for c in self.connections if isinstance(c, HeadTimedProtocol) and c is not self
                       and c.waiting_for_head() and not c.transport.is_closing()
                       and now - c._waiting_since >= EVICT_AFTER]
            if waiting:
                min(waiting, key=lambda c: c._waiting_since).transport.close()

    def waiting_for_head(self) -> bool:
        """Whether no request is in progress on it (it is new, or between two requests)."""
        return self.cycle is None or self.cycle.response_complete

    def data_received(self, data: bytes) -> None:
        if self.waiting_for_head() and (self._head_timer is None or self._timed is not self.cycle):
            self._waiting_since = self.loop.time()  # the first byte of the next request: its clock starts
            self._arm()
        super().data_received(data)

    def connection_lost(self, exc: Exception | None) -> None:
        for timer in (self._head_timer, self._write_timer):
            if timer is not None:
                timer.cancel()
        self._head_timer = self._write_timer = None
        super().connection_lost(exc)

    def pause_writing(self) -> None:
        """The reader stopped reading: closed unless it reads again within WRITE_SECONDS."""
        super().pause_writing()
        if self._write_timer is None:
            self._write_timer = self.loop.call_later(WRITE_SECONDS, self.transport.abort)  # close() would wait to flush

    def resume_writing(self) -> None:
        super().resume_writing()
        if self._write_timer is not None:
            self._write_timer.cancel()
            self._write_timer = None

    def _arm(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
        self._timed = self.cycle
        self._head_timer = self.loop.call_later(self.head_seconds, self._late, self.cycle)

    def _late(self, cycle: Any) -> None:
        """HEAD_SECONDS after the clock started: closed unless a request head arrived since (a new cycle)."""
        self._head_timer = None
        if self.cycle is cycle and self.waiting_for_head() and not self.transport.is_closing():
            self.transport.close()


class EmbeddedServer(uvicorn.Server):
    """A uvicorn server whose owner decides when it stops, whose connections must send their request head in time,
    and which answers 503 only when MAX_REQUESTS requests are in progress."""

    def __init__(self, config: uvicorn.Config, capped: bool = False) -> None:
        """`capped`: the app already has its Capped inside (behind its sign-in check); else it is put around it."""
        assert not isinstance(config.app, str), "an embedded server is given its app, not an import string"
        if not capped:
            config.app = Capped(cast(ASGIApp, config.app), MAX_REQUESTS)
        config.http = HeadTimedProtocol
        config.limit_concurrency = None
        super().__init__(config)

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        """uvicorn's start-up, with a TLS handshake held to HEAD_SECONDS (asyncio's default is 60 s, and a connection
        is not ours to time or count until its handshake ends: thousands that never finish one held the process's
        files)."""
        loop = asyncio.get_running_loop()
        create_server = loop.create_server

        async def with_handshake_timeout(*args: Any, **kwargs: Any) -> asyncio.Server:
            if kwargs.get("ssl") is not None:
                kwargs.setdefault("ssl_handshake_timeout", HEAD_SECONDS)
            return await create_server(*args, **kwargs)

        loop.create_server = with_handshake_timeout  # type: ignore[method-assign]
        try:
            await super().startup(sockets)
        finally:
            del loop.create_server

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


async def stop(server: uvicorn.Server, task: asyncio.Task[None], what: str) -> None:
    """Stop an embedded server: let it finish what it serves (5 s at most), else cancel it and say so."""
    server.should_exit = True
    try:
        if not task.done():
            await asyncio.wait_for(asyncio.shield(task), 5)
    except Exception as exc:  # it stops either way; say why it did not stop cleanly
        task.cancel()
        log.warning("the %s did not stop cleanly: %s", what, type(exc).__name__)
