"""Serving the console: bound before it starts (a taken port is one clear error), inside a running event loop (for
`run`, next to the approval links) or on its own (`goex-proxy console`)."""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
from collections.abc import Callable
from dataclasses import dataclass

import uvicorn

from ..approvalconfig import is_loopback, netloc
from ..approvals.served import OPTIONS, EmbeddedServer, stop
from ..config import Config
from ..consoleconfig import exposure_problem
from ..errors import StateError
from .app import Console, build
from .auth import Guard, Keys

log = logging.getLogger(__name__)


@dataclass
class ConsoleServer:
    """A running console: its address, the link that signs in (printed once, never logged), `close()` to stop it."""

    server: uvicorn.Server
    task: asyncio.Task[None]
    console: Console
    address: tuple[str, int]
    scheme: str

    @property
    def base(self) -> str:
        return f"{self.scheme}://{netloc(*self.address)}"

    @property
    def link(self) -> str:
        return f"{self.base}/?token={self.console.keys.token}"

    async def close(self) -> None:
        self.console.closing.set()
        await stop(self.server, self.task, "console")
        await asyncio.to_thread(self.console.db.close)


def bind(config: Config, listen: tuple[str, int]) -> socket.socket:
    """The console's socket, or one clear error: an address beyond this machine without TLS, or a taken port."""
    if (problem := exposure_problem(listen, config.console.tls)) is not None:
        raise StateError(f"{problem} ({config.file})")
    host, port = listen
    try:
        return socket.create_server((host, port), family=socket.AF_INET6 if ":" in host else socket.AF_INET)
    except OSError as exc:
        raise StateError(f"cannot serve the console on {netloc(host, port)}: {exc.strerror or exc} (is another "
                         f"goex-proxy running? change console.listen in {config.file}, or pass --listen)") from None


def hosts_of(address: tuple[str, int]) -> frozenset[str]:
    """The Host headers the console answers under: its address, and `localhost` for a loopback one."""
    host, port = address
    names = {netloc(host, port).lower()}
    if is_loopback(host):
        names.add(f"localhost:{port}")
    return frozenset(names)


def _log_end(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("the console stopped: %s", task.exception())


async def serve_console(config: Config, listen: tuple[str, int] | None = None) -> ConsoleServer | None:
    """Serve the console in the running event loop on `listen` (default `console.listen`); None when neither says
    where. Raises StateError when the address may not or cannot be had."""
    listen = listen or config.console.listen
    if listen is None:
        return None
    sock = bind(config, listen)
    address = sock.getsockname()[:2]
    scheme = "https" if config.console.tls else "http"
    hosts = hosts_of(address)
    console = Console(config, Keys())
    app = Guard(build(console), console.keys, hosts, frozenset(f"{scheme}://{h}" for h in hosts),
                secure=config.console.tls, port=address[1])
    tls = config.console.tls
    server = EmbeddedServer(uvicorn.Config(app, log_config=None, log_level="warning", access_log=False, lifespan="off",
                                    server_header=False, proxy_headers=False, ws="none", timeout_graceful_shutdown=2, **OPTIONS,
                                    ssl_certfile=str(config.console.tls_cert) if tls else None,
                                    ssl_keyfile=str(config.console.tls_key) if tls else None))
    task = asyncio.get_running_loop().create_task(server.serve(sockets=[sock]))
    task.add_done_callback(_log_end)
    while not server.started and not task.done():
        await asyncio.sleep(0.01)
    if task.done():
        sock.close()
        raise StateError("the console could not start" + (" (are console.tls_cert and tls_key a certificate and its "
                                                           "key?)" if tls else ""))
    return ConsoleServer(server, task, console, address, scheme)


def run_alone(config: Config, listen: tuple[str, int], say: Callable[[str], None]) -> None:
    """`goex-proxy console`: serve until SIGINT or SIGTERM, the sign-in link said once through `say`."""

    async def main() -> None:
        served = await serve_console(config, listen)
        assert served is not None
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        say(served.link)
        try:
            await stop.wait()
        finally:
            await served.close()

    asyncio.run(main())
