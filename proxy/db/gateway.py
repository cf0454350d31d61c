"""The database gateway's server: a PostgreSQL listener on this machine, the policies it reloads when their files
change, the vault, the audit writer its sessions share, and the cancel keys it handed out."""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import ssl
from pathlib import Path
from typing import Any

from ..audit.seal import Seal
from ..audit.writer import AuditWriter
from ..config import Config
from ..errors import AuditError, ConfigError, GoexError
from ..ids import RequestIds
from ..policy.engine import Decision, Policy
from ..policy.limits import Charge
from ..policy.load import load_policy_set
from ..policy.sqlparse import Statement
from . import access, agenttls
from .fastpath import DecisionCache
from .hold import Holds
from .rowcapture import Planned
from .session import Refused, Session
from .waits import Admitted, Waits

log = logging.getLogger("goex_proxy.db")

#: How often the gateway looks for edits of its config and policies while no statement does (as `run` does).
RELOAD_SECONDS = 1.0


class Gateway:
    """Serves the agents' PostgreSQL connections for one config (`serve_gateway` starts it)."""

    def __init__(self, config: Config, writer: AuditWriter | None = None, quiet: bool = True) -> None:
        self.config = config
        self.quiet = quiet
        self._writer = writer or AuditWriter(config.audit_db, Seal(config.state_dir))
        self._owns_writer = writer is None
        self._ids = RequestIds()
        self._stamps: tuple[tuple[Path, int | None], ...] = ()
        self._policies: tuple[Policy, ...] = ()
        self._lock = asyncio.Lock()
        self._sessions: dict[tuple[int, int], Session] = {}
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._undo_classes: dict[str, str] = {}  # request id -> the undo class its outcome will carry
        self._waits = Waits(self)
        self._grants: dict[tuple[int, int], access.Grant] = {}  # what admitted each connection, by its cancel key
        self._watcher: asyncio.Task[None] | None = None
        self.holds = Holds(self, self._writer)
        self.decisions = DecisionCache()
        self._connections: dict[tuple[str, str], int] = {}  # (agent, database) -> its upstream connections open
        self._certificates = agenttls.Certificates()

    @property
    def writer(self) -> AuditWriter:
        return self._writer

    async def start(self) -> None:
        await self.policies()  # a policy that does not load is a reason not to start (run checked it already)
        await self.holds.start()
        if self.config.databases.tls != "off":
            try:
                self.tls_context()
            except Refused as exc:  # before listening: an agent is not offered TLS the gateway cannot give
                raise GoexError(str(exc)) from None
        host, port = self.config.databases.listen
        self._server = await asyncio.start_server(self._serve, host, port)
        self._watcher = asyncio.get_running_loop().create_task(self._watch())

    async def close(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
        self.holds.stopping = True
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
        self._waits.close()
        await self.holds.close()
        if self._owns_writer:
            await asyncio.to_thread(self._writer.close)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            await Session(self, reader, writer).run()
        except Exception:  # one connection's failure is logged; the gateway serves the others
            log.exception("database connection failed")
        finally:
            self._tasks.discard(task)

    def _stamp(self) -> tuple[tuple[Path, int | None], ...]:
        """The config file's and each policy file's modification time (None: unreadable), the config's first."""
        out: list[tuple[Path, int | None]] = []
        for path in (self.config.file, *(path for path, _ in self.config.policy_sources)):
            try:
                out.append((path, path.stat().st_mtime_ns))
            except OSError:
                out.append((path, None))
        return tuple(out)

    async def policies(self) -> tuple[Policy, ...]:
        """The policies in force: read again when a file changed since (a file with a mistake keeps the last good
        set, and says so); the config too, when its file changed (`access`)."""
        stamps = self._stamp()
        if stamps == self._stamps:
            return self._policies
        async with self._lock:
            if self._stamps and stamps[0] != self._stamps[0]:
                await self._reload_config()
                stamps = self._stamp()  # the config's own, and those of the policy files it names now
            elif stamps != self._stamps:
                try:
                    loaded = await asyncio.to_thread(load_policy_set, self.config.policy_sources)
                except ConfigError as exc:
                    if not self._stamps:
                        raise
                    log.error("database gateway: policy reload rejected; keeping the last good policies: %s", exc)
                else:
                    self._policies = tuple(loaded.policies)
            self._stamps = stamps
        return self._policies

    async def _reload_config(self) -> None:
        """Take over an edited config with its policies, all or nothing (its `databases.listen` only at a restart,
        which `run` says)."""
        try:
            config, policies = await asyncio.to_thread(access.read_again, self.config)
        except GoexError as exc:
            log.error("database gateway: config reload rejected; keeping the last good config and policies: %s", exc)
            return
        if config.databases != self.config.databases:
            log.info("database gateway: databases reloaded: %s", ", ".join(config.databases.by_name) or "(none)")
        self.config, self._policies = config, policies

    async def _watch(self) -> None:
        """Pick up edits while no statement comes (new connections are admitted under the config as it is)."""
        while True:
            await asyncio.sleep(RELOAD_SECONDS)
            try:
                await self.policies()
            except Exception:  # the watcher must outlive any one bad edit
                log.exception("database gateway: reload failed")

    async def check_admitted(self, session: Session) -> None:
        """Refuse the statement about to run, and end its connection, if the config in force no longer admits the
        connection (its database removed or changed, its agent removed or no longer among the database's)."""
        await self.policies()
        if (why := self.revoked(session)) is not None:
            raise Refused(*why)

    def revoked(self, session: Session) -> tuple[str, str] | None:
        """Why the config in force no longer admits the session's connection (SQLSTATE, message), if it does not."""
        grant = self._grants.get(session.key)
        if grant is None:
            return None
        if self.config.databases.tls == "require" and not session.encrypted:  # made in plaintext before a reload
            return "28000", f"{agenttls.REQUIRED}; the connection is closed"
        return access.revoked(grant, session.agent, self.config)

    def secrets(self) -> dict[str, str]:
        from ..credentials.vault import Vault

        try:
            return Vault(self.config.state_dir).all()
        except GoexError as exc:
            raise Refused("28000", f"goex-proxy cannot read its vault: {exc}") from None

    async def admit(self, session: Session, sql: str, params: list[Any] | None, statements: tuple[Statement, ...],
                    decision: Decision, policies: tuple[Policy, ...], planned: Planned | None) -> Admitted | None:
        """An allowed statement counted against its rules' limits, held or delayed as they say (`waits`)."""
        return await self._waits.admit(session, sql, params, statements, decision, policies, planned)

    async def record_intent(self, row: dict[str, Any], charge: Charge | None = None) -> str | None:
        """Commit a statement's row before it is sent; a log that cannot take it refuses the statement. With a charge:
        why a cap it counts against is reached (and the row is not written), or None."""
        try:
            over = await asyncio.wrap_future(self._writer.record_intent(self.class_later(row), charge))
        except AuditError as exc:
            self._undo_classes.pop(row["id"], None)
            raise Refused("58000", f"goex-proxy could not record the statement, so it was not sent: {exc}") from None
        if over is not None:
            self._undo_classes.pop(row["id"], None)
        return over

    def class_later(self, row: dict[str, Any]) -> dict[str, Any]:
        """The row without its undo class, kept for its outcome: the class is under the outcome's hash (as an HTTP
        row's is), and a row in flight with one reads as edited to `log verify`."""
        if row.get("undo_class") is None or row.get("status") is not None or row.get("error") is not None:
            return row
        self._undo_classes[row["id"]] = row["undo_class"]
        return {k: v for k, v in row.items() if k != "undo_class"}

    def record_outcome(self, request_id: str, fields: dict[str, Any]) -> None:
        """Queue a statement's outcome, with the undo class its row was written with unless the outcome says another
        (a captured statement's, known once its transaction ended)."""
        undo_class = self._undo_classes.pop(request_id, None)
        if undo_class is not None and "undo_class" not in fields:
            fields = fields | {"undo_class": undo_class}
        self._writer.record_outcome(request_id, fields)

    def log_failing(self) -> bool:
        """Whether the log failed to take its last rows (a full disk) and has taken none since."""
        return self._writer.failing is not None

    def queue_intent(self, row: dict[str, Any]) -> concurrent.futures.Future[str | None]:
        """Queue a read's row without waiting for its commit: it is written in order with every row queued before
        and after it (a write queued later is committed only with or after it); the future says if it failed."""
        return self._writer.queue_intent(self.class_later(row))  # a held read's class names its hold

    def admit_connection(self, agent: str, database: str, most: int) -> bool:
        """Count one more upstream connection of an agent to a database, unless it has `most` open already."""
        key = (agent, database)
        if self._connections.get(key, 0) >= most:
            return False
        self._connections[key] = self._connections.get(key, 0) + 1
        return True

    def leave_connection(self, agent: str, database: str) -> None:
        key = (agent, database)
        left = self._connections.get(key, 0) - 1
        if left > 0:
            self._connections[key] = left
        else:
            self._connections.pop(key, None)

    def new_id(self) -> str:
        return self._ids.new()

    def tls_context(self) -> ssl.SSLContext | None:
        """What answers a client's SSLRequest under `databases.tls` as the config in force says: None for off."""
        if self.config.databases.tls == "off":
            return None
        try:
            return self._certificates.context(self.config.state_dir, self.config.databases.listen[0])
        except (OSError, ValueError) as exc:
            raise Refused("58000", f"goex-proxy cannot make the database gateway's TLS certificate from its CA "
                                   f"({self.config.state_dir / agenttls.CA_FILE}): "
                                   f"{getattr(exc, 'strerror', None) or exc}") from None

    def register(self, key: tuple[int, int], session: Session | None) -> None:
        if session is None:
            self._sessions.pop(key, None)
            self._grants.pop(key, None)
        else:
            self._sessions[key] = session
            assert session.database is not None
            self._grants[key] = access.Grant(self.config.agents.get(session.agent), session.database)

    def session_for(self, key: tuple[int, int]) -> Session | None:
        return self._sessions.get(key)

    async def attach_hold(self, session: Session, database: Any, password: str, params: dict[str, str]) -> Any:
        """`transaction: hold`: the agent's held transaction on this database, for this connection alone."""
        return await self.holds.attach(session, database, password, params)


async def serve_gateway(config: Config, quiet: bool = True) -> Gateway:
    """The gateway, listening on `databases.listen` until closed; a line per statement unless `quiet`."""
    gateway = Gateway(config, quiet=quiet)
    try:
        await gateway.start()
    except BaseException:
        await gateway.close()
        raise
    host, port = config.databases.listen
    log.info("database gateway on %s:%d for %s (TLS: %s)", host, port, ", ".join(config.databases.by_name),
             config.databases.tls)
    return gateway


class InProcessGateway:
    """The gateway on an ephemeral loopback port in a thread of its own, for `exec --jail` without `run`; `config` is
    the config with that address as `databases.listen`."""

    def __init__(self, config: Config) -> None:
        import dataclasses
        import threading

        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._gateway: Gateway | None = None
        self._error: BaseException | None = None
        self._stop: asyncio.Event | None = None
        local = dataclasses.replace(config, databases=dataclasses.replace(config.databases, listen=("127.0.0.1", 0)))
        self._thread = threading.Thread(target=self._run, args=(local,), name="goex-db-gateway", daemon=True)
        self._thread.start()
        self._ready.wait(30)
        if self._gateway is None or self._gateway._server is None:
            raise GoexError(f"the database gateway did not start: {self._error or 'it did not answer in time'}")
        port = self._gateway._server.sockets[0].getsockname()[1]
        self.config: Config = dataclasses.replace(config, databases=dataclasses.replace(
            config.databases, listen=("127.0.0.1", port)))

    def _run(self, config: Config) -> None:
        async def main() -> None:
            self._loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()
            try:
                self._gateway = await serve_gateway(config)
            finally:
                self._ready.set()
            await self._stop.wait()
            await self._gateway.close()

        try:
            asyncio.run(main())
        except BaseException as exc:  # said by __init__
            self._error = exc
            self._ready.set()

    def close(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(15)
