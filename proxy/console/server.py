"""Serving the console: bound before it starts (a taken port is one clear error), inside a running event loop (for
`run`, next to the approval links) or on its own (`goex-proxy console`); while it runs, a file in the state directory
says where (for `goex-proxy console link` and the SSRF guard)."""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import uvicorn

from ..approvalconfig import is_loopback, netloc
from ..approvals.served import MAX_REQUESTS, OPTIONS, Capped, EmbeddedServer, listening_socket, stop
from ..config import Config
from ..consoleconfig import exposure_problem, say_running
from ..errors import StateError
from .app import Console, build
from .auth import Guard, Keys, mint_link, redeem_link

log = logging.getLogger(__name__)


@dataclass
class ConsoleServer:
    """A running console: its address, where people open it, new sign-in links (printed, never logged), `close()` to
    stop it."""

    server: uvicorn.Server
    task: asyncio.Task[None]
    console: Console
    address: tuple[str, int]
    base: str
    running_file: Path

    async def new_link(self) -> str:
        """A sign-in link, good once, for LINK_SECONDS."""
        return f"{self.base}/?token={await self.console.read(mint_link)}"

    async def close(self) -> None:
        self.console.closing.set()
        self.running_file.unlink(missing_ok=True)
        await stop(self.server, self.task, "console")
        await asyncio.to_thread(self.console.db.close)


def bind(config: Config, listen: tuple[str, int]) -> socket.socket:
    """The console's socket, or one clear error: an address beyond this machine without TLS, or a taken port."""
    if (problem := exposure_problem(listen, config.console.tls, config.console.public_url)) is not None:
        raise StateError(f"{problem} ({config.file})")
    host, port = listen
    try:
        return listening_socket(host, port)
    except OSError as exc:
        raise StateError(f"cannot serve the console on {netloc(host, port)}: {exc.strerror or exc} (is another "
                         f"goex-proxy running? change console.listen in {config.file}, or pass --listen)") from None


def _own_names(address: tuple[str, int]) -> set[str]:
    """Its address as a Host (unless it listens on every interface, which is no name to open it at), and
    `localhost` for a loopback one."""
    host, port = address
    names = set() if host in ("0.0.0.0", "::") else {netloc(host, port).lower()}
    if is_loopback(host):
        names.add(f"localhost:{port}")
    return names


def _public_names(public_url: str | None) -> set[str]:
    """`console.public_url`'s host as a Host: with its port, and without it when it is the scheme's default."""
    if public_url is None:
        return set()
    parts = urlsplit(public_url)
    default = 443 if parts.scheme == "https" else 80
    name, given = (parts.hostname or "").lower(), parts.port or default
    return {netloc(name, given)} | ({f"[{name}]" if ":" in name else name} if given == default else set())


def hosts_of(address: tuple[str, int], public_url: str | None = None) -> frozenset[str]:
    """The Host headers the console answers under: its own address's and `console.public_url`'s."""
    return frozenset(_own_names(address) | _public_names(public_url))


def origins_of(scheme: str, address: tuple[str, int], public_url: str | None) -> frozenset[str]:
    """The Origin headers the console's own pages send: its scheme with its own names, and `public_url`'s."""
    public = {f"{urlsplit(public_url).scheme}://{h}" for h in _public_names(public_url)} if public_url else set()
    return frozenset({f"{scheme}://{h}" for h in _own_names(address)} | public)


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
    tls, public_url = config.console.tls, config.console.public_url
    scheme = "https" if tls else "http"
    hosts = hosts_of(address, public_url)
    console = Console(config, Keys())

    async def redeem(token: str) -> bool:
        return bool(await console.read(lambda conn: redeem_link(conn, token)))

    secure = tls or (public_url or "").startswith("https:")
    # Only a signed-in person's requests count against the cap: the guard's refusals are answered before it.
    app = Guard(Capped(build(console), MAX_REQUESTS), console.keys, redeem, hosts,
                origins_of(scheme, address, public_url), secure=secure, port=address[1])
    server = EmbeddedServer(uvicorn.Config(app, log_config=None, log_level="warning", access_log=False, lifespan="off",
                                    server_header=False, proxy_headers=False, ws="none", timeout_graceful_shutdown=2, **OPTIONS,
                                    ssl_certfile=str(config.console.tls_cert) if tls else None,
                                    ssl_keyfile=str(config.console.tls_key) if tls else None), capped=True)
    task = asyncio.get_running_loop().create_task(server.serve(sockets=[sock]))
    task.add_done_callback(_log_end)
    while not server.started and not task.done():
        await asyncio.sleep(0.01)
    if task.done():
        sock.close()
        raise StateError("the console could not start" + (" (are console.tls_cert and tls_key a certificate and its "
                                                           "key?)" if tls else ""))
    base = public_url or f"{scheme}://{netloc(*address)}"
    try:
        running = await asyncio.to_thread(say_running, config.state_dir, address, base)
    except OSError as exc:
        await stop(server, task, "console")
        raise StateError(f"cannot write the console's address in {config.state_dir}: {exc.strerror or exc}") from None
    return ConsoleServer(server, task, console, address, base, running)


def run_alone(config: Config, listen: tuple[str, int], say: Callable[[str, str], None]) -> None:
    """`goex-proxy console`: serve until SIGINT or SIGTERM, its address and a first sign-in link said through `say`."""

    async def main() -> None:
        served = await serve_console(config, listen)
        assert served is not None
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        say(served.base, await served.new_link())
        try:
            await stop.wait()
        finally:
            await served.close()

    asyncio.run(main())
