"""Runs mitmproxy in-process with a minimal set of its addons followed by the goex-proxy pipeline."""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
import sys
import threading
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Protocol

import certifi
from mitmproxy import master, options
from mitmproxy.addons import core, disable_h2c, errorcheck, next_layer, proxyserver, termlog, tlsconfig

from . import mitmtrim
from .config import Config
from .errors import StateError
from .policy.engine import PolicySet

if TYPE_CHECKING:
    from goex_proxy.addons.state import ProxyState

log = logging.getLogger(__name__)


class Closing(Protocol):
    async def close(self) -> None: ...


#: A server `run` starts in its loop next to the proxy: started when the proxy starts, closed when it stops.
Serving = Callable[[], Awaitable[Closing]]


def upstream_ca_bundle(config: Config) -> Path | None:
    """Public roots plus `upstream.extra_ca`, as one file mitmproxy can trust (None: public roots only)."""
    if not config.extra_ca:
        return None
    bundle = config.state_dir / "upstream-ca-bundle.pem"
    parts = [Path(certifi.where()).read_text(encoding="utf-8")]
    parts += [p.read_text(encoding="utf-8") for p in config.extra_ca]
    bundle.write_text("\n".join(parts), encoding="utf-8")
    return bundle


def proxy_options(config: Config) -> dict[str, Any]:
    """The mitmproxy options goex-proxy runs with (`ProxyState.REQUIRED_OPTIONS` says why the safety-relevant ones)."""
    bundle = upstream_ca_bundle(config)
    return {
        "listen_host": config.listen_host,
        "listen_port": config.listen_port,
        "confdir": str(config.state_dir),
        "mode": ["regular"],
        "connection_strategy": "lazy",
        "stream_large_bodies": None,
        "rawtcp": True,  # relays raw TCP only where a `protocol: tcp` rule allows it (the decide stage refuses the rest)
        "ssl_insecure": False,
        "ssl_verify_upstream_trusted_ca": str(bundle) if bundle else None,
        "http2": True,
        "websocket": True,
    }


def build_master(config: Config, policies: PolicySet, undo_token: str | None = None,
                 file_config: Config | None = None, live: bool = False, maintain: bool = False,
                 log_to: IO[str] | None = None, state: ProxyState | None = None) -> master.Master:
    """A mitmproxy master with only the addons goex-proxy needs, then the pipeline in its one order (and, for `run`,
    the line per request when `live`, the audit log's retention when `maintain`). `state`: the pipeline's state when
    the caller keeps it (`run`'s, whose rows a writer process writes); else one of its own. Its log goes to stdout, as
    mitmdump's does, or to `log_to` (a proxy running beside a command: stdout is the command's)."""
    from goex_proxy.addons import pipeline
    from goex_proxy.addons.hooksnow import hooks_at_once
    from goex_proxy.addons.livelog import LiveLog
    from goex_proxy.addons.retention import Retention
    from goex_proxy.addons.stages import index_hooks
    from goex_proxy.addons.state import ProxyState

    mitmtrim.trim()
    opts = options.Options()
    m = master.Master(opts, event_loop=asyncio.get_running_loop(), with_termlog=log_to is None)
    if log_to is not None:
        m.addons.add(termlog.TermLog(out=log_to))  # its handler taken off by `_uninstall_log` once the master ends
    index_hooks(m.addons)
    hooks_at_once()
    # mitmproxy turns every log record into a deprecated `add_log` event for every addon (none of these has one): a
    # wake-up of the event loop and a dispatch for each request's line.
    legacy = getattr(m, "_legacy_log_events", None)
    if legacy is not None:
        legacy.uninstall()
    m.addons.add(
        core.Core(),
        disable_h2c.DisableH2C(),
        proxyserver.Proxyserver(),
        next_layer.NextLayer(),
        tlsconfig.TlsConfig(),
        errorcheck.ErrorCheck(repeat_errors_on_stderr=True),
    )
    opts.update(**proxy_options(config))
    state = state or ProxyState(config, policies)
    state.undo_token = undo_token
    state.file_config = file_config
    after = ((LiveLog(state),) if live else ()) + ((Retention(state),) if maintain else ())
    m.addons.add(*pipeline(state, after))
    return m


def _quiet_shutdown(loop: asyncio.AbstractEventLoop) -> None:
    """Connections still open at shutdown are cancelled; Python 3.11's stream callback then reports each
    CancelledError as an "exception in callback" traceback. That is the expected end, not an error."""
    def handle(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        if not isinstance(context.get("exception"), asyncio.CancelledError):
            loop.default_exception_handler(context)
    loop.set_exception_handler(handle)


def _free_loopback_port() -> int:
    """A loopback port free at this moment (another process may take it before it is bound: see InProcessProxy)."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def _stopped_at_startup(m: master.Master) -> None:
    """What mitmproxy leaves undone when an error stops it before it runs (its process would exit next; ours goes
    on): its log handlers stay installed, and they would swallow the next master's errors, and its addons' `done`."""
    if (check := m.addons.get("errorcheck")) is not None:
        check.finish()
    await m.done()


def _uninstall_log(m: master.Master) -> None:
    """Take off the root logger the handler of a log that `build_master` sent elsewhere than stdout (mitmproxy
    takes off only its own), so that it neither outlives its master nor doubles the next one's lines."""
    added = m.addons.get("termlog")
    if added is not None:
        added.uninstall()


class _PortTaken(Exception):
    """The port chosen for the in-process proxy was taken by another process before mitmproxy could bind it."""


#: The youngest generation's threshold under `run` (see `_freeze_what_starting_made`).
YOUNG_COLLECTED_AFTER = 10_000


def _freeze_what_starting_made() -> None:
    """What `run` made to start (mitmproxy, the policies, the undo packs, CEL programs: about 110,000 objects) moved
    out of the cyclic collector's sight (`gc.freeze`), after one collection so that starting's garbage is not frozen
    with it: under load a full collection came every few seconds and walked all of it, holding the event loop 43 ms
    each time (2-3 ms once frozen). Objects freed later are freed as before; a cycle among them (the first policy set,
    after a reload) is kept. Done before anything listens: in mitmproxy's `running` hook a worker had already
    accepted the connections waiting on the socket the first process made for it, and those, frozen, were never
    collected once they closed (their objects hold cycles).

    The youngest generation is then collected after 10,000 more objects than were freed (700 by default): under load
    a worker collected it every 21 GETs, 20 µs a GET in all, each time walking the objects of the requests in flight,
    which outlive a collection either way."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(YOUNG_COLLECTED_AFTER, *gc.get_threshold()[1:])


class _Listening:
    """Sets an event when mitmproxy's servers are bound and every addon has started (the `running` hook)."""

    def __init__(self, event: threading.Event) -> None:
        self.event = event

    def running(self) -> None:
        self.event.set()


def check_can_start(config: Config) -> None:
    """Raise a GoexError naming the file when the pipeline could not start on this state directory: the audit
    database, its seal (the chain key, the anchor and the anchor's lock) and the CA mitmproxy signs with. `run`,
    `undo` and `exec` then say so in one line before mitmproxy starts; found there, a damaged anchor stopped it with
    its dump of every error logged during startup (and `undo` then with an internal error), a damaged CA with
    mitmproxy's traceback."""
    from .audit import store as audit
    from .audit.seal import Seal

    audit.connect(config).close()
    seal = Seal(config.state_dir)
    seal.anchor()
    with seal.locked():
        pass
    _check_ca(config.state_dir)


def _check_ca(state_dir: Path) -> None:
    """StateError when the CA in the state directory is there but cannot be read as mitmproxy reads it (a missing one
    mitmproxy makes, as `goex-proxy init` does)."""
    from mitmproxy.certs import CertStore

    ca = state_dir / "mitmproxy-ca.pem"
    if not ca.exists():
        return
    try:
        CertStore.from_files(ca, state_dir / "mitmproxy-dhparam.pem")
    except OSError as exc:
        raise StateError(f"cannot read the CA {ca}: {exc.strerror or exc}") from None
    except (ValueError, TypeError, IndexError):  # cryptography's words for a key or certificate it cannot load
        raise StateError(f"the CA {ca} does not hold a private key and its certificate in PEM (unencrypted); restore "
                         "it, or move it aside and run `goex-proxy init` for a new one (agents must then trust "
                         "the new mitmproxy-ca-cert.pem)") from None


class InProcessProxy:
    """The pipeline on an ephemeral loopback port in a background thread, for `undo` and `exec --jail` (whether or
    not `run` runs). mitmproxy binds the port itself, so a port free when chosen can be taken by then (tests and
    sessions start proxies side by side): it then starts again on another port, up to ATTEMPTS times."""

    ATTEMPTS = 5

    def __init__(self, config: Config, policies: PolicySet, undo_token: str | None = None) -> None:
        self.file_config = config
        check_can_start(config)
        for attempt in range(self.ATTEMPTS):
            try:
                self._start(config, policies, undo_token)
                return
            except _PortTaken:
                if attempt == self.ATTEMPTS - 1:
                    raise RuntimeError(f"the in-process proxy found its port taken {self.ATTEMPTS} times") from None

    def _start(self, config: Config, policies: PolicySet, undo_token: str | None) -> None:
        import dataclasses

        self.port = _free_loopback_port()
        self.config = dataclasses.replace(config, listen_host="127.0.0.1", listen_port=self.port)
        self._listening = threading.Event()
        self._error: BaseException | None = None
        self._port_taken = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._master: master.Master | None = None
        self._thread = threading.Thread(target=self._run, args=(policies, undo_token), name="goex-undo-proxy",
                                        daemon=True)
        self._thread.start()
        self._wait_listening()

    def _run(self, policies: PolicySet, undo_token: str | None) -> None:
        async def main() -> None:
            self._loop = asyncio.get_running_loop()
            _quiet_shutdown(self._loop)
            self._master = build_master(self.config, policies, undo_token, self.file_config, log_to=sys.stderr)
            self._master.addons.add(_Listening(self._listening))
            try:
                await self._master.run()
            except SystemExit:
                await _stopped_at_startup(self._master)
                raise
            finally:
                _uninstall_log(self._master)

        try:
            asyncio.run(main())
        except BaseException as exc:  # reported to the caller by _wait_listening
            self._port_taken = self._failed_to_bind()
            self._error = exc

    def _failed_to_bind(self) -> bool:
        """Whether mitmproxy stopped because its listen address was in use (its server keeps the error)."""
        import errno

        if self._master is None:
            return False
        servers = getattr(self._master.addons.get("proxyserver"), "servers", ())
        return any(isinstance(s.last_exception, OSError) and s.last_exception.errno == errno.EADDRINUSE
                   for s in servers)

    def _wait_listening(self) -> None:
        """Until mitmproxy says its servers listen (its `running` event), not until the port answers: a port taken
        by another process answers too."""
        import time

        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and self._thread.is_alive():
            if self._listening.wait(0.05):
                return
        self._thread.join(15)
        if self._port_taken:
            raise _PortTaken()
        raise RuntimeError(f"the in-process proxy did not start: {self._error or 'no listener'}")

    def close(self) -> None:
        if self._loop is not None and self._master is not None:
            self._loop.call_soon_threadsafe(self._master.shutdown)
        self._thread.join(15)


async def serve(config: Config, policies: PolicySet, quiet: bool = False, also: Sequence[Serving] = (),
                worker: int | None = None, sockets: Sequence[Any] = (), writer_process: bool = False,
                writer_link: Any = None) -> str | None:
    """Run the proxy until SIGINT or SIGTERM, writing what it does (reloads, holds, approvals, warnings, errors;
    unless quiet, a line per request), each line with its time, coloured on a terminal. `also` starts servers in the
    same loop next to the approval links (the console: given by the caller, since it imports undo, which imports this
    module), each closed when the proxy stops. Given the sockets of several workers it starts the others and watches
    them (why they kept dying, if they did, is returned); as one of those (`worker` set) it serves the proxy only:
    the first serves the links, the console and the retention. `writer_process`: the record stage's rows are written
    by a process of its own (`audit.offload`), the first's for every worker (`writer_link`: a worker's link to it)."""
    from goex_proxy.addons import livelog
    from goex_proxy.addons.state import ProxyState
    from goex_proxy.approvals.linkserver import serve_links

    from .workers import Workers

    logging.getLogger("goex_proxy").setLevel(logging.INFO)
    first = worker is None
    share = writer_process and first and len(sockets) > 1
    state = ProxyState(config, policies, writer_process=writer_process, share_writer=share, writer_link=writer_link)
    m = build_master(config, policies, live=not quiet, maintain=first, state=state)
    livelog.format_output()
    loop = asyncio.get_running_loop()
    _quiet_shutdown(loop)
    link = getattr(state.writer, "link_worker", None) if share else None  # the writer the workers are linked to
    others = Workers(config.file, list(sockets), quiet, lambda: _same_listen(config), link) \
        if first and len(sockets) > 1 else None

    def stop() -> None:
        if others is not None:
            others.terminate()  # a worker ending now is not started again; they stop beside this one (the writer
            # they share waits for them to stop before it does)
        m.shutdown()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop)
    _freeze_what_starting_made()  # before the first server (links, console, proxy) accepts anything
    links = await serve_links(config) if first else None  # approval links (`approvals.listen`) until the proxy stops
    started: list[Closing] = []
    watching: asyncio.Task[None] | None = None
    try:
        for start in also if first else ():
            started.append(await start())
        if others is not None:
            others.start()
            watching = loop.create_task(others.watch())
        if not first:  # its config and policies are loaded: from now on it reloads them when they change
            logging.getLogger("goex_proxy.workers").info("worker %d started (pid %d)", worker, os.getpid())
        await m.run()
    finally:
        if others is not None:
            if watching is not None:
                watching.cancel()
            await asyncio.to_thread(others.stop)
        for server in reversed(started):
            await server.close()
        if links is not None:
            await links.close()
        _ignore_further_stops(loop)
    return others.failed if others is not None else None


def _ignore_further_stops(loop: asyncio.AbstractEventLoop) -> None:
    """Once stopped, a second SIGINT or SIGTERM (a process group signalled, then `run` signalling its workers) is
    ignored: left to the loop, it would arrive while the loop closes the pipe its handler writes to, and Python would
    print that as an ignored exception; left to the default, it would kill the process before the audit is closed."""
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.remove_signal_handler(sig)
        signal.signal(sig, signal.SIG_IGN)


def _same_listen(running: Config) -> str | None:
    """Why a worker must not be started from the config file as it is now (None: it may): it does not load, or it
    changes what a running proxy takes over only at a restart (listen, state_dir, audit.db, upstream.extra_ca,
    limits, approvals): every worker runs with what `run` started with."""
    from goex_proxy.addons.state import config_changes

    from .config import RESTART_ONLY, load_config
    from .errors import GoexError

    try:
        now = load_config(running.file)
    except GoexError as exc:
        return f"{running.file} does not load ({str(exc).splitlines()[0]})"
    changed = sorted({RESTART_ONLY[name] for name in config_changes(running, now) if name in RESTART_ONLY})
    if changed:
        return f"{running.file} changes {', '.join(changed)} since `run` started (restart `run` to use it)"
    return None


def check_can_listen(config: Config, console: tuple[str, int] | None = None) -> None:
    """Raise StateError if `run` could not listen where the config says (the port taken, the address not ours), for
    the proxy and the approval links, so that it says so before it starts rather than in mitmproxy's words after."""
    import socket

    wanted = [((config.listen_host, config.listen_port), "listen")]
    if config.approvals.listen is not None:
        wanted.append((config.approvals.listen, "approvals.listen"))
    if console is not None:
        wanted.append((console, "console.listen"))
    if config.databases.by_name:
        wanted.append((config.databases.listen, "databases.listen"))
    for (host, port), key in wanted:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((host, port))
            except OSError as exc:
                raise StateError(f"cannot listen on {host}:{port}: {exc.strerror or exc} (is another goex-proxy "
                                 f"running? change `{key}` in {config.file})") from None


def run(config: Config, policies: PolicySet, quiet: bool = False, also: Sequence[Serving] = (), workers: int = 1,
        worker: int | None = None, listen_fd: int | None = None, writer_fd: int | None = None) -> None:
    """`serve` in a loop of its own. With several workers, the first makes one listening socket per worker and its
    loop serves the proxy on the first; a worker serves on the one it was handed (`listen_fd`), its rows written by
    the first's writer process over the link it was handed (`writer_fd`). StateError when the workers kept dying."""
    import socket

    from .workers import SharedPortLoop, default_count, listen_sockets

    sockets: list[socket.socket] = []
    if worker is not None:
        sockets = [socket.socket(fileno=listen_fd)] if listen_fd is not None else []
        if not sockets:
            raise StateError("a worker is started by `goex-proxy run`, with the socket it accepts on")
    elif workers > 1:
        try:
            sockets = listen_sockets(config.listen_host, config.listen_port, workers)
        except OSError as exc:
            raise StateError(f"cannot listen on {config.listen_host}:{config.listen_port}: {exc.strerror or exc}") from None
    factory = (lambda: SharedPortLoop(config.listen_port, sockets[0])) if sockets else None
    # On a machine of two cores or more the rows are written by a process of its own, the first's for every worker:
    # its Python no longer holds the GIL the event loop waits for (bench/README.md: one worker 0.89 -> 0.99 of bare
    # mitmdump), and one writer for all the workers reads nothing again that another wrote.
    writer_process = default_count() > 1
    with asyncio.Runner(loop_factory=factory) as runner:
        link = socket.socket(fileno=writer_fd) if writer_fd is not None and writer_process else None
        failed = runner.run(serve(config, policies, quiet, also, worker, sockets, writer_process, link))
    if failed:
        raise StateError(f"stopped: {failed}")
