"""One agent's connection through the gateway: its own identity checked, the real one used upstream, and every
statement decided and recorded before it is sent, its outcome after."""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import logging
import secrets
import ssl
import struct
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..config import Config, weak_token
from ..dbconfig import Database
from ..policy.engine import Decision, Policy
from ..policy.sqlparse import Statement
from ..printable import shown
from . import agentauth, agenttls, capture, record, rowcapture
from .fastpath import DecisionCache, QueuedReads, only_reads, parse_statements
from .upstream import Upstream, UpstreamError, connect
from .wire import (
    CANCEL_REQUEST,
    GSSENC_REQUEST,
    PROTOCOL_3,
    SSL_REQUEST,
    Framer,
    Message,
    ProtocolError,
    auth,
    backend_key,
    bind_message,
    close_target,
    error_fields,
    error_response,
    execute_portal,
    message,
    parameter_types,
    parse_message,
    parse_params,
    parse_payload,
    query_text,
    read_startup,
)

log = logging.getLogger("goex_proxy.db")

#: SQL the server cannot parse, sent in place of a refused statement so that the server fails the statement as it
#: would any other (a transaction it was in is aborted, the rest of an extended-protocol batch skipped); the server's
#: syntax error is replaced by the refusal on its way back.
REFUSAL_PROBE = "goex-proxy refused this statement"
#: The statement name a refused Execute's probe is parsed into (the Parse fails, so it never exists).
REFUSED_STATEMENT = "goex-proxy refused"
#: Startup parameters passed on to the server; others (`options` sets any setting, `-c role=...` included) are not,
#: nor a value that prints rows inexactly for their capture (capture.prints_exactly).
PASSED_PARAMS = ("application_name", "DateStyle", "TimeZone", "extra_float_digits", "IntervalStyle")
#: Settings the gateway logs in with whatever the client asks: the server must read statements as the gateway's
#: parser did (UTF-8, standard-conforming strings). A client encoding such as SJIS or GBK has multibyte characters
#: whose second byte is a backslash: `E'Á\' ; DELETE ...'` is one string to a UTF-8 reader and two statements to
#: the server. The client is told UTF8 (ParameterStatus), as when it asks for it.
PINNED_PARAMS = {"client_encoding": "UTF8", "standard_conforming_strings": "on"}
INSUFFICIENT_PRIVILEGE = "42501"
#: Seconds a client has to start up and authenticate, and how often it may ask for TLS or GSS first.
LOGIN_SECONDS = 30.0
_NEGOTIATIONS = 2


class Gatekeeper(Protocol):
    """What a session needs from its gateway: the config, the policies in force, the secrets, the audit writer."""

    config: Config
    quiet: bool
    decisions: DecisionCache

    async def policies(self) -> tuple[Policy, ...]: ...

    def secrets(self) -> dict[str, str]: ...

    async def record_intent(self, row: dict[str, Any]) -> str | None: ...

    async def admit(self, session: Session, sql: str, params: list[Any] | None, statements: tuple[Statement, ...],
                    decision: Decision, policies: tuple[Policy, ...], planned: rowcapture.Planned | None) -> Any: ...

    def queue_intent(self, row: dict[str, Any]) -> concurrent.futures.Future[str | None]: ...

    def log_failing(self) -> bool: ...

    def record_outcome(self, request_id: str, fields: dict[str, Any]) -> None: ...

    def new_id(self) -> str: ...

    def tls_context(self) -> ssl.SSLContext | None: ...

    def admit_connection(self, agent: str, database: str, most: int) -> bool: ...

    def leave_connection(self, agent: str, database: str) -> None: ...

    def register(self, key: tuple[int, int], session: Session | None) -> None: ...

    async def check_admitted(self, session: Session) -> None: ...

    def session_for(self, key: tuple[int, int]) -> Session | None: ...

    async def attach_hold(self, session: Session, database: Database, password: str,
                          params: dict[str, str]) -> Any: ...


class Refused(Exception):
    """A connection the gateway ends before relaying anything, with the error the client is sent."""

    def __init__(self, sqlstate: str, text: str) -> None:
        super().__init__(text)
        self.sqlstate = sqlstate


@dataclass
class _Pending:
    """A message sent upstream whose response the gateway waits for: a simple query, an Execute, or a refusal."""

    kind: str                       # "query", "execute", "refusal", or "ready": where a ReadyForQuery will answer
    request_id: str | None
    started: float
    reason: str = ""
    tags: list[str] = field(default_factory=list)
    error: str | None = None
    copying: bool = False           # a COPY FROM STDIN the server has begun (CopyInResponse seen)
    approval: str | None = None     # what became of its wait (`db.waits`), for its outcome row
    maybe_for: _Pending | None = None  # "ready": a Sync sent during that COPY, which the server ignores once it began
    undo_class: str | None = None
    images: rowcapture.Images | None = None  # a captured statement's rows (rowcapture), kept until ReadyForQuery


@dataclass
class _Prepared:
    sql: str
    statements: tuple[Statement, ...]
    decision: Decision
    types: tuple[int, ...] = ()
    planned: rowcapture.Planned | None = None


class Session:
    """Relays one agent connection after it has authenticated; `run` returns when either side ends."""

    def __init__(self, gate: Gatekeeper, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.gate, self.reader, self.writer = gate, reader, writer
        peer = writer.get_extra_info("peername")
        self.client = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else "local"
        self.agent = ""
        self.database: Database | None = None
        self.upstream: Upstream | None = None
        self.scrub: Any = None
        self.pending: collections.deque[_Pending] = collections.deque()
        self.prepared: dict[str, _Prepared] = {}
        #: Statement names the server may hold (Parsed or SQL PREPAREd, not Closed since): it refuses a Parse into
        #: one and keeps the old statement, which the gateway would have taken for the new SQL.
        self.named: set[str] = set()
        self.portals: dict[str, tuple[_Prepared, list[Any]]] = {}
        #: Portal names SQL DECLAREd (or CLOSEd, which may fail) on this connection, for good: the server refuses a
        #: Bind into a cursor's name and keeps the cursor, whose rows a later Execute would return as the Bind's.
        self.cursors: set[str] = set()
        #: Whether the client's connection is in TLS (a reload to `databases.tls: require` ends one that is not).
        self.encrypted = False
        self.skipping = False
        self.in_batch = False   # extended-protocol messages sent since the last Sync
        self.copy_in: _Pending | None = None  # an allowed COPY FROM STDIN sent, its CopyDone or CopyFail not yet
        self.describing: collections.deque[_Prepared | None] = collections.deque()  # Describes of statements sent
        self.hold: Any = None   # `transaction: hold`: the held transaction this connection uses (db.hold.Hold)
        self.key = (secrets.randbits(31), secrets.randbits(32))
        self.cancelled_at = 0.0   # when the agent last sent a cancel request for this connection (monotonic)
        self._out: list[bytes] = []
        self._admitted: tuple[str, str] | None = None  # (agent, database) counted against its max_connections
        self.reads = QueuedReads()  # reads recorded without waiting for their row's commit
        self.capturer: rowcapture.Capturer | None = None
        self.binary_images: dict[str, bool] = {}  # portal: whether its image column comes in binary
        self._captured: rowcapture.Transactions[_Pending] = rowcapture.Transactions()  # ended, their commit unknown

    async def run(self) -> None:
        try:
            try:
                params = await asyncio.wait_for(self._startup(), LOGIN_SECONDS)
                if params is None:
                    return
                await asyncio.wait_for(self._authenticate(params), LOGIN_SECONDS + 15)  # the server's login within
            except TimeoutError:
                raise Refused("08006", "the client did not start up and authenticate in time") from None
            await self._relay()
        except Refused as exc:
            await self._fatal(exc.sqlstate, str(exc))
        except UpstreamError as exc:
            await self._fatal(exc.sqlstate, str(exc))
        except (ProtocolError, ConnectionError, asyncio.IncompleteReadError) as exc:
            log.debug("database connection from %s ended: %s", self.client, exc)
        finally:
            self.gate.register(self.key, None)
            if self._admitted is not None:
                self.gate.leave_connection(*self._admitted)
            if self.hold is not None:
                await self.hold.detach(self)  # the held transaction's connection stays open
            elif self.upstream is not None:
                self.upstream.writer.close()
            if self.capturer is not None:
                self.capturer.close()
            self.writer.close()

    async def _fatal(self, sqlstate: str, text: str) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            self.writer.write(error_response(sqlstate, text, "FATAL"))
            await self.writer.drain()

    async def _startup(self) -> dict[str, str] | None:
        """The startup packet, in TLS when the client asks and `databases.tls` offers it (GSS encryption declined);
        None when it was a cancel request, handled here."""
        encrypted = False
        for _ in range(_NEGOTIATIONS + 1):
            code, body = await read_startup(self.reader)
            if code in (SSL_REQUEST, GSSENC_REQUEST):
                if encrypted:
                    raise Refused("08P01", "an encryption request inside TLS")
                context = self.gate.tls_context() if code == SSL_REQUEST else None
                if context is not None:
                    await agenttls.upgrade(self.reader, self.writer, context)
                    encrypted = self.encrypted = True
                    continue
                self.writer.write(b"N")
                await self.writer.drain()
                continue
            if code == CANCEL_REQUEST and len(body) >= 8:
                target = self.gate.session_for(struct.unpack("!II", body[:8]))
                if target is not None:
                    await target.cancel()
                return None
            if code != PROTOCOL_3:
                raise Refused("08P01", f"unsupported protocol {code >> 16}.{code & 0xFFFF}: goex-proxy speaks 3.0")
            if not encrypted and self.gate.config.databases.tls == "require":
                raise Refused("28000", agenttls.REQUIRED)
            return parse_params(body)
        raise Refused("08P01", "too many encryption requests")

    async def _authenticate(self, params: dict[str, str]) -> None:
        """The agent proves its goex-proxy token (SCRAM-SHA-256, the token as the password); then the real server is
        reached."""
        config = self.gate.config
        agent = params.get("user", "")
        name = params.get("database") or agent
        if "replication" in params:
            raise Refused("42501", "replication connections are not relayed by goex-proxy")
        spec = config.agents.get(agent)
        token = spec.token.reveal() if spec is not None else None
        if token is not None and weak_token(token):
            token = None  # a token too weak to prove anything proves nothing
        if not await agentauth.prove(self.reader, self.writer, token):
            raise Refused("28P01", f"password authentication failed for agent {agent!r} (use the agent's name and its "
                                   "goex-proxy token, as `goex-proxy exec` and `env` give them)")
        database = config.databases.by_name.get(name)
        if database is None:
            raise Refused("3D000", f"no database named {name!r} in goex-proxy's config")
        if not database.admits(agent):
            raise Refused("42501", f"agent {agent!r} may not use database {name!r} (its 'agents' in the config)")
        vault = self.gate.secrets()
        password = database.password.reveal(vault)
        if password is None:
            raise Refused("28000", f"database {name!r} has no password: {database.password.describe()} is not set")
        if not self.gate.admit_connection(agent, name, database.max_connections):
            raise Refused("53300", f"agent {agent!r} has {database.max_connections} connections open to database "
                                   f"{name!r} already, its 'max_connections' in goex-proxy's config; close one first")
        self._admitted = (agent, name)
        from ..credentials.redact import SecretScrubber

        self.agent, self.database = agent, database
        assert token is not None  # proven above
        self.scrub = SecretScrubber({password: "[database password]", token: "[agent token]"})
        passed = {k: v for k, v in params.items()
                  if k in PASSED_PARAMS and capture.prints_exactly(k, v)} | PINNED_PARAMS
        if database.transaction == "hold":
            self.hold = await self.gate.attach_hold(self, database, password, passed)  # sets self.upstream
        else:  # a held transaction's rollback undoes its writes: rows are captured only in auto mode
            self.upstream = await connect(database, password, passed)
            self.capturer = rowcapture.Capturer(lambda: connect(database, password, passed), database.capture_rows)
        assert self.upstream is not None
        self.gate.register(self.key, self)
        out = auth(0) + b"".join(m.encode() for m in self.upstream.parameters) + backend_key(*self.key)
        self.writer.write(out + message(b"Z", self.upstream.status))
        await self.writer.drain()

    async def cancel(self) -> None:
        """Pass a cancel request on to the server, with the server's own key (the agent only knows ours)."""
        self.cancelled_at = time.monotonic()  # and a statement waiting for a person is not sent (`waits`)
        if self.upstream is None or self.database is None:
            return
        with contextlib.suppress(OSError):
            _, writer = await asyncio.open_connection(self.database.host, self.database.port)
            writer.write(struct.pack("!III", 16, CANCEL_REQUEST, self.upstream.pid) + struct.pack("!I", self.upstream.key))
            await writer.drain()
            writer.close()

    async def _relay(self) -> None:
        assert self.upstream is not None
        if self.hold is not None:
            await self.hold.relay(self)
            return
        back = asyncio.create_task(self._relay_back())
        try:
            await self._relay_forth()
        finally:
            back.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await back
            self._finish_all("the connection ended before the statement's outcome was known")
            self._end_captures(self._captured.drain("the connection ended before its transaction's end was seen"))

    async def _relay_forth(self) -> None:
        """The agent's messages, each decided before it is passed on; what it sent together goes on together."""
        assert self.upstream is not None
        up = self.upstream.writer
        frames = Framer(self.reader)
        while True:
            batch = await frames.batch()
            ended = batch is None
            for msg in batch or ():
                if msg.kind == b"X":
                    ended = True
                    break
                await self._forth(msg)
            if ended:
                self._send(message(b"X"))
            up.write(b"".join(self._out))
            self._out.clear()
            if ended:
                with contextlib.suppress(OSError, ConnectionError):
                    await up.drain()
                return
            await up.drain()

    def _send(self, data: bytes) -> None:
        """Queue bytes for the server, written once the agent's batch is through."""
        self._out.append(data)

    async def _forth(self, msg: Message) -> None:
        kind = msg.kind
        if self.skipping and kind != b"S":
            return  # the rest of a batch whose statement was refused: the server would skip it too
        if self.copy_in is not None and kind not in (b"d", b"c", b"f", b"H", b"S"):
            # In COPY FROM STDIN the server takes any other message as the end of the copy (an error) and ignores
            # it: a Query sent with the COPY would be recorded, never run, and take the next statement's outcome.
            raise Refused("08P01", "goex-proxy relays only CopyData, CopyDone, CopyFail, Flush and Sync while a "
                                   "COPY FROM STDIN is open")
        if kind in (b"c", b"f"):
            self.copy_in = None
        if kind in (b"Q", b"F") and self.in_batch:
            # The server ignores a Query after an error in an unsynced batch (no ReadyForQuery answers it), which
            # the gateway cannot know yet: outcomes would be matched to the wrong statements. libpq never does it.
            raise Refused("08P01", "goex-proxy does not relay a simple Query or function call inside an "
                                   "extended-protocol batch (send Sync first)")
        if kind in (b"P", b"B", b"E", b"D"):  # the messages that can fail (Close and Flush cannot)
            self.in_batch = True
        if kind in (b"Q", b"P", b"E"):
            await self.gate.check_admitted(self)  # a reloaded config may no longer admit this connection
        if kind == b"Q":
            await self._query(query_text(msg.payload))
        elif kind == b"P":
            await self._parse(msg)
        elif kind == b"B":
            await self._bind(msg)
        elif kind == b"E":
            await self._execute(msg)
        elif kind == b"S":
            self.skipping = self.in_batch = False
            if self.copy_in is None or not self.copy_in.copying:  # a Sync in a begun COPY is ignored: no answer
                self.pending.append(_Pending("ready", None, time.time(), maybe_for=self.copy_in))
            self._send(msg.encode())
        elif kind == b"C":
            what, name = close_target(msg.payload)
            (self.prepared if what == "S" else self.portals).pop(name, None)
            if what == "S":
                self.named.discard(name)
            self._send(msg.encode())
        elif kind in (b"D", b"H", b"d", b"c", b"f"):
            if kind == b"D" and (target := close_target(msg.payload))[0] == "S":
                self.describing.append(self.prepared.get(target[1]))  # the server's answer gives its types
            self._send(msg.encode())
        elif kind == b"F":
            why = "the function-call protocol calls a function by number, which the policy cannot see through"
            await self._refuse_simple(why, "(function-call protocol message)")
        else:
            raise Refused("08P01", f"goex-proxy does not relay protocol message {kind!r}")

    async def _decide(self, sql: str) -> tuple[tuple[Statement, ...], Decision]:
        assert self.database is not None
        statements, error = await parse_statements(sql)
        if error is not None:
            return (), Decision("deny", error)
        return statements, self.gate.decisions.decide(self._policies, self.database.name, self.agent, sql, statements)

    async def _record(self, sql: str, params: list[Any] | None, statements: tuple[Statement, ...],
                      decision: Decision, planned: rowcapture.Planned | None = None) -> str:
        assert self.database is not None
        request_id = self.gate.new_id()
        row = record.statement_row(request_id, self.database, self.agent, self.client, sql, params, statements,
                                   decision, self.scrub, self.gate.config.max_body_bytes)
        if decision.effect == "deny":
            row |= record.refused(decision.reason, row["ts"])
        elif planned is not None:
            row["undo_class"] = planned.undo_class
        if self.hold is not None:
            row = self.hold.mark(row)
        if self.reads.failed is not None:
            raise Refused("58000", f"goex-proxy could not record an earlier statement: {self.reads.failed}")
        if decision.effect == "allow" and only_reads(statements) and not self.gate.log_failing():
            # A read's row is queued, not waited for: the writer commits it in order, before any row queued after
            # it, and its outcome after it. A write waits for its own row, and so for every read's queued before.
            # While the log is failing (a disk an agent filled), reads wait too: a new connection's first read would
            # otherwise run unrecorded, as often as the agent connects.
            self.reads.add(self.gate.queue_intent(row))
        else:
            await self.gate.record_intent(row)
            if self.reads.failed is not None:
                self.gate.record_outcome(request_id, {"error": f"not sent: {self.reads.failed}", "ended": time.time()})
                raise Refused("58000", f"goex-proxy could not record an earlier statement, so this one was not sent: "
                                       f"{self.reads.failed}")
        if not self.gate.quiet:  # `run`'s line per statement (its own `--quiet` leaves them out)
            log.info("%s %s %s %s %s%s", decision.label, request_id, self.agent, row["method"], row["url"],
                     "" if decision.effect == "allow" else f": {shown(row['reason'])}")
        return request_id

    async def _query(self, sql: str) -> None:
        assert self.upstream is not None
        self._policies = await self.gate.policies()
        statements, decision = await self._decide(sql)
        if decision.effect == "deny":
            await self._refuse_simple(decision.reason, sql, statements, decision)
            return
        planned = await self._plan(sql, statements)
        admitted = await self.gate.admit(self, sql, None, statements, decision, self._policies, planned)  # limits, waits
        if admitted is not None and admitted.refusal is not None:
            await self._refuse_simple(admitted.refusal)
            return
        request_id = admitted.request_id if admitted is not None else \
            await self._record(sql, None, statements, decision, planned) if statements else None
        self._forget(statements)
        sent = _Pending("query", request_id, time.time(), approval=admitted.approval if admitted else None,
                        undo_class=planned.undo_class)
        if planned.capture is not None:
            sent.images = rowcapture.Images(planned.capture)
        self.pending.extend((sent, _Pending("ready", None, time.time())))
        if _copies_in(statements):
            self.copy_in = sent
        self._send(message(b"Q", planned.sql.encode() + b"\0"))

    async def _plan(self, sql: str, statements: tuple[Statement, ...]) -> rowcapture.Planned:
        """How an allowed statement is sent: rewritten to capture its rows' images when it can be (rowcapture); as
        written in a held transaction, whose rollback is its undo."""
        if self.capturer is None:
            return rowcapture.Planned(sql, None, record.undo_class(statements))
        return await self.capturer.plan(sql, statements)

    async def _refuse_simple(self, reason: str, sql: str | None = None, statements: tuple[Statement, ...] = (),
                             decision: Decision | None = None) -> None:
        assert self.upstream is not None
        if sql is not None:
            await self._record(sql, None, statements, decision or Decision("deny", reason))
        self.pending.extend((_Pending("refusal", None, time.time(), reason), _Pending("ready", None, time.time())))
        self._send(message(b"Q", REFUSAL_PROBE.encode() + b"\0"))

    def _refuse_extended(self, reason: str, statement: str = REFUSED_STATEMENT) -> None:
        """Fail the batch at the server in place of a refused message: a Parse (into the refused Parse's own
        statement name, which the server then drops as for any failed Parse) of SQL that cannot parse."""
        assert self.upstream is not None
        self.pending.append(_Pending("refusal", None, time.time(), reason))
        self._send(message(b"P", parse_payload(statement, REFUSAL_PROBE)))
        self.skipping = True

    async def _parse(self, msg: Message) -> None:
        assert self.upstream is not None
        parsed = parse_message(msg.payload)
        self._policies = await self.gate.policies()
        statements, decision = await self._decide(parsed.sql)
        if decision.effect != "deny" and parsed.statement in self.named:
            decision = Decision("deny", f"statement name {parsed.statement!r} may be in use on this connection "
                                        "(PostgreSQL keeps the old statement): Close it first")
        if decision.effect == "deny":
            await self._record(parsed.sql, None, statements, decision)
            self.prepared.pop(parsed.statement, None)
            self._refuse_extended(decision.reason, parsed.statement)
            return
        planned = await self._plan(parsed.sql, statements)
        if parsed.statement:
            self.named.add(parsed.statement)
        self.prepared[parsed.statement] = _Prepared(parsed.sql, statements, decision, parsed.types, planned)
        if planned.capture is not None:
            msg = Message(b"P", parse_payload(parsed.statement, planned.sql, parsed.types))
        self._send(msg.encode())

    async def _bind(self, msg: Message) -> None:
        bound = bind_message(msg.payload)
        if bound.portal in self.cursors:
            why = (f"portal name {bound.portal!r} may be a cursor DECLAREd on this connection (PostgreSQL keeps the "
                   "cursor and refuses the Bind): bind another name")
            await self._record(f"(Bind into portal {bound.portal!r})", None, (), Decision("deny", why))
            self._refuse_extended(why)
            return
        prepared = self.prepared.get(bound.statement)
        if prepared is not None:
            types = prepared.types + (0,) * (len(bound.params) - len(prepared.types))
            params = [record.param_value(v, f == 1, t) for v, f, t in zip(bound.params, bound.formats, types,
                                                                           strict=False)]
            self.portals[bound.portal] = (prepared, params)
            if prepared.planned is not None and prepared.planned.capture is not None:
                payload, binary = rowcapture.result_formats(msg.payload)
                self.binary_images[bound.portal] = binary
                msg = Message(b"B", payload)
        else:
            self.portals.pop(bound.portal, None)
        self._send(msg.encode())

    async def _execute(self, msg: Message) -> None:
        assert self.upstream is not None
        portal = execute_portal(msg.payload)
        found = self.portals.get(portal)
        if found is None:
            why = "the statement of this portal was not prepared through goex-proxy"
            await self._record(f"(Execute of portal {portal!r})", None, (), Decision("deny", why))
            self._refuse_extended(why)
            return
        prepared, params = found
        decision = prepared.decision
        if prepared.statements and decision.effect == "allow":
            # Decided again as it runs: a policy edited since the Parse applies to a prepared statement's next run
            # too (psycopg, JDBC and asyncpg prepare what they run often, and Parse it only once).
            assert self.database is not None
            self._policies = await self.gate.policies()
            decision = self.gate.decisions.decide(self._policies, self.database.name, self.agent, prepared.sql,
                                                  prepared.statements)
            if decision.effect == "deny":
                await self._record(prepared.sql, params, prepared.statements, decision)
                self._refuse_extended(decision.reason)
                return
        planned = prepared.planned
        admitted = await self.gate.admit(self, prepared.sql, params, prepared.statements, decision, self._policies,
                                         planned)
        if admitted is not None and admitted.refusal is not None:
            self._refuse_extended(admitted.refusal)
            return
        request_id = admitted.request_id if admitted is not None else \
            await self._record(prepared.sql, params, prepared.statements, decision, planned) \
            if prepared.statements else None
        self._forget(prepared.statements)
        sent = _Pending("execute", request_id, time.time(), approval=admitted.approval if admitted else None,
                        undo_class=planned.undo_class if planned else None)
        if planned is not None and planned.capture is not None:
            sent.images = rowcapture.Images(planned.capture, self.binary_images.get(portal, False))
        self.pending.append(sent)
        if _copies_in(prepared.statements):
            self.copy_in = sent
        self._send(msg.encode())

    _policies: tuple[Policy, ...] = ()

    def _forget(self, statements: tuple[Statement, ...]) -> None:
        """Statements and portals that SQL about to run makes or drops (PREPARE, DEALLOCATE, DECLARE, CLOSE,
        DISCARD ALL) are no longer known: a Bind or Execute naming them is refused. Else a name whose Parse the
        server failed (the gateway took it as made) and then PREPAREd as an UPDATE ran as the SELECT it was
        recorded as."""
        for statement in statements:
            for name in statement.names:
                what, _, which = name.partition(":")
                if what == "statement" and which != "*":  # PREPARE's (or a DEALLOCATE's, which may fail)
                    self.named.add(which)
                elif what == "portal" and which != "*":  # DECLARE's, or a CLOSE's (which may fail)
                    self.cursors.add(which)
                known = self.prepared if what == "statement" else self.portals
                if which == "*":
                    known.clear()
                else:
                    known.pop(which, None)

    async def _relay_back(self) -> None:
        """The server's messages to the agent, each refusal's syntax error replaced by the refusal, and each
        statement's outcome recorded; what the server sent together goes on together."""
        assert self.upstream is not None
        frames = Framer(self.upstream.reader)
        while True:
            batch = await frames.batch()
            if batch is None:
                self.writer.close()
                return
            self.writer.write(b"".join(self._back(msg) for msg in batch))
            if self.writer.transport.get_write_buffer_size() > 65536 or batch[-1].kind in (b"Z", b"G", b"H", b"W"):
                await self.writer.drain()

    def _back(self, msg: Message) -> bytes:
        """What the agent is sent for one of the server's messages."""
        head = self.pending[0] if self.pending else None
        if msg.kind == b"E":
            self._captured.error()  # an implicit transaction rolls back what was captured in it
        if msg.kind == b"E" and head is not None and head.kind != "ready":
            self.pending.popleft()
            if head.kind == "refusal":
                return error_response(INSUFFICIENT_PRIVILEGE, f"goex-proxy refused the statement: {head.reason}")
            fields = error_fields(msg.payload)
            head.error = f"{fields.get('C', '')} {fields.get('M', '')}".strip()
            if head.images is not None and self.capturer is not None and self.database is not None and \
                    (refused := self.capturer.refusal(head.error, self.database.name)) is not None:
                head.error = " ".join(refused)  # a failure of its capture's own: the statement changed nothing
                self._finish(head)
                return error_response(refused[0], f"goex-proxy refused the statement: {refused[1]}")
            self._finish(head)
        elif msg.kind == b"C" and head is not None and head.kind in ("query", "execute"):
            head.tags.append(msg.payload.rstrip(b"\0").decode("utf-8", "replace"))
            self._captured.tag(head.tags[-1])
            if head.kind == "execute":
                self.pending.popleft()
                self._finish(head)
        elif msg.kind in (b"I", b"s") and head is not None and head.kind == "execute":
            self.pending.popleft()
            self._finish(head)
        elif msg.kind == b"G" and head is not None and head.kind in ("query", "execute"):
            head.copying = True  # the server ignores the Syncs the client sent since, until the copy ends
            self.pending = collections.deque(p for p in self.pending if p.maybe_for is not head)
        elif msg.kind == b"t" and self.describing:
            # The parameter types the server inferred, for a client that sent none (asyncpg): its binary parameters
            # are then recorded (and scrubbed) as values, not hex.
            if (described := self.describing.popleft()) is not None:
                described.types = parameter_types(msg.payload)  # the types it was given, and those it inferred
        elif msg.kind == b"Z":
            self.describing.clear()  # a Describe after a failure in its batch got no answer
            self._finish_all("not run: an earlier message of its batch failed", through_ready=True)
            self._end_captures(self._captured.ready(msg.payload[:1]))
        elif (msg.kind == b"D" and head is not None and head.images is not None) or (
                msg.kind == b"T" and self.capturer is not None and self.capturer.marker_bytes in msg.payload):
            return self._strip_capture(msg, head)  # a captured statement's: reads pass by the two checks above
        return msg.encode()

    def _strip_capture(self, msg: Message, head: _Pending | None) -> bytes:
        """A RowDescription or DataRow of a captured statement without the image column (its value kept): what the
        agent would have been sent for its statement as written."""
        assert self.capturer is not None
        if msg.kind == b"T":
            if not rowcapture.is_captured(msg.payload, self.capturer.marker):
                return msg.encode()
            stripped = rowcapture.strip_description(msg.payload)
            if head is not None and head.kind == "query":  # a simple query's own description: none if no RETURNING
                return b"" if stripped is None else message(b"T", stripped)
            return message(b"n") if stripped is None else message(b"T", stripped)  # a Describe's answer
        images = head.images if head is not None and head.kind in ("query", "execute") else None
        if images is None:
            return msg.encode()
        row, value = rowcapture.strip_row(msg.payload)
        rowcapture.take(images, value)
        return message(b"D", row) if images.capture.returning else b""

    def _finish(self, pending: _Pending) -> None:
        if self.copy_in is pending:
            self.copy_in = None
        if pending.request_id is None or pending.kind == "refusal":
            return
        if pending.images is not None and pending.error is None:
            self._captured.hold(pending)  # its images count once its transaction is known to have committed
            return
        self._record_outcome(pending)

    def _record_outcome(self, pending: _Pending, more: dict[str, Any] | None = None) -> None:
        assert pending.request_id is not None
        fields = record.outcome(pending.tags, pending.error, pending.started, self.scrub,
                                self.gate.config.max_body_bytes)
        # A statement that failed changed nothing; one of several in a message that ran before the error may have.
        if pending.error is not None and not pending.tags:
            fields["undo_class"] = None  # else the class its row was written with (the gateway keeps it), or `more`'s
        if pending.approval:
            fields["approval"] = pending.approval
        self.gate.record_outcome(pending.request_id, fields | (more or {}))

    def _end_captures(self, ended: list[tuple[_Pending, str | None]]) -> None:
        """Record the outcomes of captured statements whose transaction's end is known, with their images if it
        committed (`why_not` None)."""
        for pending, why_not in ended:
            assert pending.images is not None
            self._record_outcome(pending, rowcapture.outcome(pending.images, why_not, self.scrub))

    def _finish_all(self, why: str, through_ready: bool = False) -> None:
        """At ReadyForQuery (`through_ready`: what was sent before the Query or Sync it answers; pipelined ones
        after it wait for their own): simple queries end; an Execute that got no answer did not run."""
        while self.pending:
            pending = self.pending.popleft()
            if pending.kind == "ready" and through_ready:
                return
            if pending.kind == "execute" and pending.error is None and not pending.tags:
                pending.error = why
            self._finish(pending)


def _copies_in(statements: tuple[Statement, ...]) -> bool:
    """Whether a statement is a COPY FROM STDIN (the client's CopyData follows)."""
    return any(s.kind == "copy" and "insert" in s.kinds for s in statements)
