"""The connections stage, right after identify: client connections held to `limits:`, how many are open (in all, per
agent, per address before a request names an agent) and how long one may go without a request head or sit idle."""

from __future__ import annotations

import asyncio
import errno
import logging
import resource
import time
from typing import Any

from mitmproxy import connection, ctx, http, tcp

from goex_proxy.addons import flowmeta, replies
from goex_proxy.addons.failclosed import fail_closed
from goex_proxy.addons.state import ProxyState
from goex_proxy.net.clientlimits import ClientLimits
from goex_proxy.net.conntable import ConnectionTable
from goex_proxy.policy.engine import Decision
from goex_proxy.quietlog import QuietLog

log = logging.getLogger(__name__)
quiet = QuietLog(log)
#: Seconds between passes over the open connections, at most (shorter when a timeout is shorter).
TICK = 1.0
#: What asyncio's accept loop reports when the process is out of file descriptors (it retries every second).
_OUT_OF_FILES = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
_accept_failures = QuietLog(log, interval=60.0)


def _peer(client: connection.Client) -> str:
    return f"{client.peername[0]}:{client.peername[1]}" if client.peername else "an unknown peer"


def quiet_accept_failures(loop: asyncio.AbstractEventLoop) -> None:
    """Wrap the loop's exception handler (mitmproxy's, while it runs): an accept that fails for want of file
    descriptors becomes one line a minute instead of a traceback a second."""
    previous = loop.get_exception_handler()

    def handle(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        exc = context.get("exception")
        if isinstance(exc, OSError) and exc.errno in _OUT_OF_FILES:
            soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
            _accept_failures.warning("accept", f"goex-proxy cannot accept connections: {exc.strerror} (open-file "
                                               f"limit {soft}); they wait until some close. Lower "
                                               "limits.max_connections or raise the limit (ulimit -n)")
        elif previous is not None:
            previous(loop, context)
        else:
            loop.default_exception_handler(context)

    loop.set_exception_handler(handle)


class Connections:
    """Admits, counts and closes client connections. A refused one is closed before anything is read from it; one
    whose agent is at its cap has its request answered 429 (and, over HTTP/1, is closed)."""

    def __init__(self, state: ProxyState) -> None:
        self.state = state
        self._table: ConnectionTable | None = None
        self._sweeper: asyncio.Task[None] | None = None

    @property
    def table(self) -> ConnectionTable:
        """Made on first use, from the config in force then (`limits:` is read at start, like `listen:`)."""
        if self._table is None:
            limits = self.state.config.limits if self.state.config is not None else ClientLimits()
            self._table = ConnectionTable(limits, limits.connection_cap())
        return self._table

    def client_connected(self, client: connection.Client) -> None:
        address = client.peername[0] if client.peername else ""
        admission = self.table.open(client.id, address, time.monotonic())
        if not admission.admitted:
            client.error = f"goex-proxy: {admission.why}"
            quiet.warning("refused", f"refused a connection from {_peer(client)}: {admission.why}")
            return
        for key in admission.evict:
            self.close(key)
        if admission.evict:
            quiet.warning("evicted", f"closed {len(admission.evict)} connection(s) that had not sent a request naming "
                                     f"an agent, to admit one from {_peer(client)} (limits.max_unidentified_per_address"
                                     f" {self.table.limits.max_unidentified_per_address}, limits.max_connections "
                                     f"{self.table.total})")

    def client_disconnected(self, client: connection.Client) -> None:
        self.table.close(client.id)

    @fail_closed("connections")
    def requestheaders(self, flow: http.HTTPFlow) -> None:
        self.table.begin(flow.client_conn.id, flow.id)
        self._identify(flow)

    @fail_closed("connections")
    def http_connect(self, flow: http.HTTPFlow) -> None:
        if self._identify(flow):
            self.table.awaiting(flow.client_conn.id, time.monotonic())

    def _identify(self, flow: http.HTTPFlow) -> bool:
        """Count the connection for the agent identify named; False if that agent's cap refused it (answered 429)."""
        agent = flowmeta.agent(flow)
        if agent is None or flow.response is not None or flow.error is not None:
            return False
        if self.table.identify(flow.client_conn.id, agent):
            return True
        cap = self.table.limits.max_connections_per_agent
        why = f"agent {agent!r} already has {cap} connections open (limits.max_connections_per_agent)"
        quiet.warning(f"agent cap {agent}", f"refused a connection of agent {agent!r} from {_peer(flow.client_conn)}: "
                                            f"it already has {cap} open (limits.max_connections_per_agent)")
        flowmeta.set_decision(flow, Decision("deny", f"too many connections: {why}"))
        close = {"Connection": "close"} if flow.request.http_version.startswith("HTTP/1") else {}
        replies.reply(flow, 429, {"error": "goex-proxy: too many connections", "reason": why,
                                  "hint": "reuse connections (keep-alive) or close idle ones"},
                      {"Retry-After": "1", "X-Goex-Decision": "deny", **close})
        return False

    def response(self, flow: http.HTTPFlow) -> None:
        self.table.end(flow.client_conn.id, flow.id, time.monotonic())

    def error(self, flow: http.HTTPFlow) -> None:
        self.table.end(flow.client_conn.id, flow.id, time.monotonic())

    def websocket_start(self, flow: http.HTTPFlow) -> None:
        self.table.begin(flow.client_conn.id, f"{flow.id} websocket")

    def websocket_end(self, flow: http.HTTPFlow) -> None:
        self.table.end(flow.client_conn.id, f"{flow.id} websocket", time.monotonic())

    def tcp_start(self, flow: tcp.TCPFlow) -> None:
        self.table.begin(flow.client_conn.id, flow.id)

    def tcp_end(self, flow: tcp.TCPFlow) -> None:
        self.table.end(flow.client_conn.id, flow.id, time.monotonic())

    def tcp_error(self, flow: tcp.TCPFlow) -> None:
        self.tcp_end(flow)

    def running(self) -> None:
        if self._sweeper is None:
            loop = asyncio.get_running_loop()
            quiet_accept_failures(loop)
            self._sweeper = loop.create_task(self._sweep_forever())

    def done(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None

    async def _sweep_forever(self) -> None:
        limits = self.table.limits
        tick = min(TICK, limits.header_timeout / 4, limits.idle_timeout / 4)
        while True:
            await asyncio.sleep(tick)
            try:
                self.sweep(time.monotonic())
            except Exception as exc:  # the sweeper must outlive one bad pass; the next one tries again
                log.error("goex-proxy could not check connections for timeouts: %s: %s", type(exc).__name__, exc)

    def sweep(self, now: float) -> None:
        """Close every connection past its header or idle timeout (one still writing an answer is not idle)."""
        closed: dict[str, int] = {}
        for key, why in self.table.overdue(now):
            if self._still_writing(key):
                self.table.touch(key, now)
                continue
            self.close(key)
            closed[why] = closed.get(why, 0) + 1
        for why, count in closed.items():
            quiet.warning(f"timeout {why}", f"closed {count} connection(s) {why}")

    def _still_writing(self, key: str) -> bool:
        io = _client_io(key)
        transport = getattr(getattr(io, "writer", None), "transport", None)
        return transport is not None and transport.get_write_buffer_size() > 0

    def close(self, key: str) -> None:
        self.table.close(key)
        hang_up(key, "connection limits")


def _client_io(key: str) -> Any:
    """mitmproxy's reader, writer and handler task of a client connection (None once it is gone)."""
    server = ctx.master.addons.get("proxyserver")
    handler = server.connections.get(key) if server is not None else None
    return handler.transports.get(handler.client) if handler is not None else None


def hang_up(key: str, why: str) -> None:
    """Close a client connection as mitmproxy closes one on its own inactivity timeout (its handler is cancelled, and
    its layers see the client go), and close its socket too: a handler cancelled before it first ran (one accepted in
    the same burst) never closes it, and the socket would stay open with nothing to read it."""
    io = _client_io(key)
    if io is None:
        return
    if io.handler is not None:
        io.handler.cancel(f"goex-proxy: {why}")
    if io.writer is not None:
        io.writer.close()
