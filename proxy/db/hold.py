"""Held transactions (`transaction: hold`): each agent's work on a database runs in one transaction the gateway holds
open across its connections, until a person commits or rolls it back (`goex-proxy db commit|rollback ID`, polled
from the audit database) or its timeout rolls it back. The agent's connections attach to it one at a time; what they
send is relayed a round trip at a time, so that the gateway can put its own savepoints around it."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import secrets
import sqlite3
import time
from dataclasses import dataclass
from typing import Any

from ..dbconfig import Database
from ..durations import format_duration
from ..errors import GoexError
from ..policy.engine import Decision
from ..policy.sqlparse import parse
from . import holdsql, holdstore, record, rowundo
from .fastpath import parse_statements
from .session import Refused, Session, _Pending
from .upstream import Upstream, connect
from .wire import Framer, Message, ProtocolError, error_fields, error_response, message, parse_message, query_text

log = logging.getLogger("goex_proxy.db")

#: Seconds a second connection of the same agent waits for the held transaction before it is refused.
ATTACH_SECONDS = 25.0
#: Seconds a statement still running when its connection ends may take before it is cancelled (then as long again).
IDLE_SECONDS = 30.0
#: How often the gateway looks for people's decisions and timeouts.
POLL_SECONDS = 0.5
#: The server's own limit on a transaction left idle would end a held one behind everyone's back (its work lost,
#: found out only at the next statement): `hold_timeout` is the limit here.
NO_IDLE_LIMIT = "SET idle_in_transaction_session_timeout = 0"
#: What the gateway runs between two connections, as PostgreSQL does at a disconnect: cursors, prepared statements,
#: settings, listens and session advisory locks do not carry over to the next connection.
RESET = f"CLOSE ALL; DEALLOCATE ALL; RESET ALL; {NO_IDLE_LIMIT}; UNLISTEN *; SELECT pg_advisory_unlock_all()"


class HoldBroken(Exception):
    """The held transaction is no longer in a state the gateway can carry on with (it is rolled back)."""


class HoldLost(HoldBroken):
    """The server's connection ended: whatever was in flight, a COMMIT included, has an outcome no one was told."""


class _Plain:
    """A scrubber with nothing to scrub (rows the gateway writes itself)."""

    @staticmethod
    def text(value: str) -> str:
        return value


@dataclass
class _Unit:
    """One round trip upstream: the gateway's own statements (`hidden`), or the agent's message(s) up to its
    ReadyForQuery, `wrapped` in an automatic savepoint, or its transaction control translated (`tag`, `after`)."""

    hidden: bool
    wrapped: bool = False
    tag: str | None = None
    after: bytes | None = None
    tagged: bool = False


class Hold:
    """One held transaction: the server connection it lives in, and which agent connection uses it now."""

    def __init__(self, holds: Holds, hold_id: str, agent: str, database: Database, upstream: Upstream) -> None:
        self.holds, self.id, self.agent, self.database, self.upstream = holds, hold_id, agent, database, upstream
        self.frames = Framer(upstream.reader)
        self.lock = asyncio.Lock()
        suffix = secrets.token_hex(8)  # names the agent cannot guess, so it cannot release or roll back to them
        self.mine, self.auto = f"goex_a_{suffix}", f"goex_s_{suffix}"
        self.created = time.time()
        self.started: float | None = None
        self.statements = 0
        self.writes = False
        self.counted: tuple[int, float | None] = (0, None)
        self.session: Session | None = None
        self.broken: str | None = None
        self.deciding = False
        self.finished = False
        self.state = b"I"            # the agent's own transaction status: I outside, T inside, E inside and failed
        self.dirty: bytes | None = None  # the upstream status after the last wrapped unit, its savepoint still open
        self.units: collections.deque[_Unit] = collections.deque()
        self.idle = asyncio.Event()
        self.idle.set()
        self.in_unit = False         # the agent began a unit whose Query, Sync or function call has not come yet
        self.gone = False            # the attached connection's relay forth has ended

    def mark(self, row: dict[str, Any]) -> dict[str, Any]:
        """A statement's audit row, as it belongs to this hold: its undo is the hold's rollback."""
        self.statements += 1
        if self.started is None:
            self.started = float(row["ts"])
        if row.get("undo_class"):
            self.writes = True
            row["undo_class"] = f"held: undone by `goex-proxy db rollback {self.id}` until committed"
        elif row.get("decision") != "deny":  # a read sees the hold's writes: its row names the hold too
            row["undo_class"] = rowundo.held_nothing(self.id)
        return row

    async def relay(self, session: Session) -> None:
        """Relay the attached connection until it ends; the statement in flight then is let finish."""
        self.state, self.dirty, self.gone = b"I", None, False
        back = asyncio.create_task(self._back_loop(session))
        try:
            await self._forth_loop(session)
        finally:
            self.gone = True  # what the server still answers is for no one: the agent's side has ended
            if self.in_unit:  # ended halfway through a batch: the server would wait for its Sync
                session._send(message(b"S"))
                session.pending.append(_Pending("ready", None, time.time()))
            if session.copy_in is not None:  # or for the end of its COPY
                session._send(message(b"f", b"the connection ended\0"))
            with contextlib.suppress(OSError, ConnectionError):
                await self._flush(session)
            await self._quiet(session)
            back.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await back
            session._finish_all("the connection ended before the statement's outcome was known")

    async def _quiet(self, session: Session) -> None:
        if self.broken is not None or self.holds.stopping:
            return
        for _ in range(2):
            try:
                await asyncio.wait_for(self.idle.wait(), IDLE_SECONDS)
                return
            except TimeoutError:
                await session.cancel()
        self._break("a statement was still running long after its connection ended")

    async def _flush(self, session: Session) -> None:
        if session._out:
            self.upstream.writer.write(b"".join(session._out))
            session._out.clear()
        await self.upstream.writer.drain()

    async def _forth_loop(self, session: Session) -> None:
        frames = Framer(session.reader)
        self.in_unit = False
        while self.broken is None:
            batch = await frames.batch()
            if batch is None:
                return
            for msg in batch:
                if msg.kind == b"X":
                    return  # the held transaction's connection stays: nothing of the Terminate goes upstream
                if msg.kind in (b"d", b"c", b"f") or (msg.kind == b"H" and not self.in_unit):
                    await session._forth(msg)  # COPY data belongs to the unit that began the COPY; a Flush to none
                    continue
                if not self.in_unit:
                    await self._flush(session)
                    await self.idle.wait()
                    if self.broken is not None:
                        return
                    self.idle.clear()
                    self.in_unit = True
                    if msg.kind == b"Q" and await self._transaction(session, msg):
                        self.in_unit = False
                        continue
                    self._open(wrap=self.state == b"I")
                elif msg.kind == b"Q" and not session.in_batch and \
                        (found := holdsql.transaction_nodes(query_text(msg.payload))) and found[1]:
                    await self._refuse_simple(session, query_text(msg.payload), holdsql.MIXED)
                    self.in_unit = False
                    continue
                if msg.kind == b"P" and await self._extended_transaction(session, msg):
                    continue
                await session._forth(msg)
                if msg.kind in (b"Q", b"F", b"S"):
                    self.in_unit = False
            await self._flush(session)

    def _open(self, wrap: bool) -> None:
        """Begin a unit: close the last one's automatic savepoint (rolled back to if it failed), and take one for this
        unit if the agent is outside a transaction of its own, so that its error does not abort the held work."""
        sql = []
        if self.dirty is not None:
            if self.dirty == b"E":
                sql.append(f"ROLLBACK TO SAVEPOINT {self.auto}")
            sql.append(f"RELEASE SAVEPOINT {self.auto}")
            self.dirty = None
        if wrap:
            sql.append(f"SAVEPOINT {self.auto}")
        if sql:
            self.units.append(_Unit(hidden=True))
            assert self.session is not None
            self.session._send(message(b"Q", "; ".join(sql).encode() + b"\0"))
        self.units.append(_Unit(hidden=False, wrapped=wrap))

    async def _transaction(self, session: Session, msg: Message) -> bool:
        """An agent's Query of transaction control, translated; False when it has none (relayed as any other)."""
        sql = query_text(msg.payload)
        found = holdsql.transaction_nodes(sql)
        if found is None or not found[1]:
            return False
        count, nodes = found
        if count > 1:
            self._open(wrap=self.state == b"I")
            await self._refuse_simple(session, sql, holdsql.MIXED)
            return True
        done = holdsql.translate(nodes[0], self.state, self.mine)
        if done is None:
            return False  # the agent's own savepoints, relayed as they are
        session._policies = await session.gate.policies()
        statements, decision = await session._decide(sql)
        if isinstance(done, holdsql.Refusal) or decision.effect == "deny":
            self._open(wrap=self.state == b"I")
            why = done.reason if isinstance(done, holdsql.Refusal) else decision.reason
            await session._refuse_simple(why, sql, statements, Decision("deny", why))
            return True
        self._open(wrap=False)
        self.units[-1].tag, self.units[-1].after = done.tag, done.after
        request_id = await session._record(sql, None, statements, decision)
        now = time.time()
        session.pending.extend((_Pending("query", request_id, now), _Pending("ready", None, now)))
        session._send(message(b"Q", done.sql.encode() + b"\0"))
        return True

    async def _refuse_simple(self, session: Session, sql: str, why: str) -> None:
        statements, _ = await parse_statements(sql)
        await session._refuse_simple(why, sql, statements, Decision("deny", why))

    async def _extended_transaction(self, session: Session, msg: Message) -> bool:
        """A Parse of transaction control is refused (it could run at any later Execute, in any state)."""
        if session.skipping:
            return False
        parsed = parse_message(msg.payload)
        found = holdsql.transaction_nodes(parsed.sql)
        if found is None or not found[1]:
            return False
        session.in_batch = True
        statements, _ = await parse_statements(parsed.sql)
        await session._record(parsed.sql, None, statements, Decision("deny", holdsql.EXTENDED))
        session.prepared.pop(parsed.statement, None)
        session._refuse_extended(holdsql.EXTENDED, parsed.statement)
        return True

    async def _back_loop(self, session: Session) -> None:
        try:
            while True:
                batch = await self.frames.batch()
                if batch is None:
                    raise HoldLost("the server closed the held transaction's connection")
                out = b"".join(self._back(session, msg) for msg in batch)
                with contextlib.suppress(OSError, ConnectionError):  # the agent gone: its units still end upstream
                    if out and not self.gone:
                        session.writer.write(out)
                    if batch[-1].kind in (b"Z", b"G", b"H", b"W"):
                        await session.writer.drain()
        except Exception as exc:  # noqa: BLE001 - whatever stops the relay back ends the hold, never leaves it waiting
            self._break(str(exc) if isinstance(exc, HoldBroken | ProtocolError | OSError) else f"internal error: {exc!r}")
            self.kick(f"goex-proxy ended the held transaction {self.id}: {exc}; it is rolled back")

    def _back(self, session: Session, msg: Message) -> bytes:
        if not self.units:
            return msg.encode()  # a notice or notification between units
        unit, kind = self.units[0], msg.kind
        if unit.hidden:
            if kind == b"E":
                fields = error_fields(msg.payload)
                raise HoldBroken(f"goex-proxy's own savepoint statement failed: {fields.get('M', '')}")
            if kind == b"Z":
                self.units.popleft()
                if msg.payload[:1] != b"T":
                    raise HoldBroken("the held transaction is no longer open")
                self._idle()
                return b""
            if kind == b"S":
                self._parameter(msg)
            return msg.encode() if kind in (b"S", b"A") else b""
        if kind == b"S":
            self._parameter(msg)
        if kind == b"Z":
            status = msg.payload[:1]
            if status not in (b"T", b"E"):  # only a COMMIT or ROLLBACK that got through ends it: never the agent's
                raise HoldBroken("the held transaction ended without a person's decision")
            if unit.wrapped:
                self.dirty, self.state = status, b"I"
            elif unit.after is not None:
                self.state = b"E" if status == b"E" else unit.after
            else:
                self.state = status
            self.units.popleft()
            out = session._back(Message(b"Z", self.state))
            self._idle()
            return out
        if unit.tag is not None and kind in (b"C", b"I"):
            if unit.tagged:
                return b""
            unit.tagged = True
            msg = Message(b"C", unit.tag.encode() + b"\0")
        return session._back(msg)

    def _idle(self) -> None:
        if not self.units:
            self.idle.set()

    def _break(self, why: str) -> None:
        if self.broken is None:
            self.broken = why
            log.error("held transaction %s of agent %s on %s: %s", self.id, self.agent, self.database.name, why)
        self.idle.set()

    def kick(self, why: str) -> None:
        """End the attached agent connection (a decision or a failure): it is told why."""
        session = self.session
        if session is None:
            return
        with contextlib.suppress(OSError, ConnectionError, RuntimeError):
            session.writer.write(error_response("57P01", why, "FATAL"))
        session.writer.close()

    async def detach(self, session: Session) -> None:
        """The connection ended: the agent's open transaction rolled back and its session state reset, as PostgreSQL
        does at a disconnect; the held work stays for a person. A hold that wrote nothing is rolled back now."""
        try:
            if self.holds.stopping:
                return  # `close` ends every held transaction with its connection
            if self.broken is None and not self.upstream.writer.is_closing():
                sql = []
                if self.dirty is not None:
                    sql += [f"ROLLBACK TO SAVEPOINT {self.auto}"] if self.dirty == b"E" else []
                    sql.append(f"RELEASE SAVEPOINT {self.auto}")
                if self.state in (b"T", b"E"):
                    sql += [f"ROLLBACK TO SAVEPOINT {self.mine}", f"RELEASE SAVEPOINT {self.mine}"]
                _, status = await self.exchange("; ".join([*sql, RESET]))
                if status != b"T":
                    raise HoldBroken("the held transaction is no longer open")
                self.state, self.dirty = b"I", None
        except (HoldBroken, OSError, ConnectionError, ProtocolError, TimeoutError) as exc:
            self._break(f"resetting it for the next connection failed: {exc}")
        finally:
            self.session = None
            try:
                if self.holds.stopping:
                    pass
                elif self.broken is not None:
                    await self.holds.finish(self, "rollback", "goex-proxy", f"it failed: {self.broken}")
                elif not self.writes and not self.finished and not self.deciding:
                    await self.holds.finish(self, "rollback", "goex-proxy", "it wrote nothing")
            finally:
                self.lock.release()

    def _parameter(self, msg: Message) -> None:
        """A setting the server reports (ParameterStatus), kept for what the next connection is told at its start."""
        name = msg.payload.split(b"\0", 1)[0]
        kept = [m for m in self.upstream.parameters if m.payload.split(b"\0", 1)[0] != name]
        self.upstream.parameters = [*kept, msg]

    async def adopt(self, params: dict[str, str]) -> None:
        """A later connection's own startup settings (time zone, date style, application name), as the first
        connection's were given at login; in a savepoint, so that a value the server refuses costs nothing held."""
        sets = ", ".join(f"pg_catalog.set_config('{name}', '{value.replace(chr(39), chr(39) * 2)}', false)"
                         for name, value in sorted(params.items()))
        try:
            await self.exchange(f"SAVEPOINT {self.auto}; SELECT {sets}; RELEASE SAVEPOINT {self.auto}")
        except HoldLost:
            raise
        except HoldBroken as exc:
            await self.exchange(f"ROLLBACK TO SAVEPOINT {self.auto}; RELEASE SAVEPOINT {self.auto}")
            raise Refused("22023", f"invalid connection setting: {exc}") from None

    async def exchange(self, sql: str, timeout: float | None = IDLE_SECONDS) -> tuple[list[str], bytes]:
        """Run the gateway's own statements (nothing attached): their command tags and the status after; an error
        is HoldBroken."""
        self.upstream.writer.write(message(b"Q", sql.encode() + b"\0"))
        await self.upstream.writer.drain()
        tags: list[str] = []
        error = None
        while True:
            batch = await asyncio.wait_for(self.frames.batch(), timeout)
            if batch is None:
                raise HoldLost("the server closed the held transaction's connection")
            for msg in batch:
                if msg.kind == b"S":
                    self._parameter(msg)
                elif msg.kind == b"C":
                    tags.append(msg.payload.rstrip(b"\0").decode("utf-8", "replace"))
                elif msg.kind == b"E":
                    error = error_fields(msg.payload).get("M", "an error")
                elif msg.kind == b"Z":
                    if error is not None:
                        raise HoldBroken(error)
                    return tags, msg.payload[:1]


class Holds:
    """The held transactions of one gateway, by (agent, database), and the loop that carries out decisions."""

    def __init__(self, gate: Any, writer: Any) -> None:
        self.gate, self.writer = gate, writer
        self.by_key: dict[tuple[str, str], Hold] = {}
        self._making = asyncio.Lock()
        self._poller: asyncio.Task[None] | None = None
        self._reader: sqlite3.Connection | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self.stopping = False  # the gateway stops: connections end without waiting for their statements

    async def start(self) -> None:
        """Holds left open by a gateway process that ended are recorded as rolled back (the server did so when its
        connection closed); then the poll for decisions and timeouts starts."""
        config = self.gate.config
        found = await self._apply(lambda conn: holdstore.orphans(conn, config.audit_db))
        why = "its goex-proxy process ended, so the server rolled it back"
        for entry in found:
            if await self._apply(lambda conn, e=entry: holdstore.settle(conn, e["id"], holdstore.ROLLED_BACK,
                                                                         "goex-proxy", why)):
                database = config.databases.by_name.get(entry["database"])
                if database is not None:
                    await self._record(database, entry["agent"], entry["id"], "rollback", "goex-proxy", why, None,
                                       None, entry["statements"] or 0)
        self._poller = asyncio.create_task(self._poll())

    async def _apply(self, fn: Any) -> Any:
        return await asyncio.wrap_future(self.writer.apply(lambda conn, _: fn(conn)))

    async def attach(self, session: Session, database: Database, password: str, passed: dict[str, str]) -> Hold:
        """The agent's held transaction on this database, begun if it has none, for this connection alone (a second
        one waits for the first to end)."""
        key = (session.agent, database.name)
        async with self._making:
            hold = self.by_key.get(key)
            if hold is None:
                hold = await self._begin(session.agent, database, password, passed)
                await hold.lock.acquire()
                self.by_key[key] = hold
                hold.session = session
                session.upstream = hold.upstream
                return hold
        try:
            await asyncio.wait_for(hold.lock.acquire(), ATTACH_SECONDS)
        except TimeoutError:
            raise Refused("55006", f"agent {session.agent!r}'s held transaction {hold.id} on database "
                                   f"{database.name!r} is in use by another of its connections; goex-proxy lets one "
                                   "connection at a time use it") from None
        if hold.finished or hold.deciding:
            hold.lock.release()
            return await self.attach(session, database, password, passed)
        try:
            await hold.adopt(passed)
        except (HoldBroken, OSError, ConnectionError, ProtocolError, TimeoutError) as exc:
            hold._break(f"taking a new connection's settings failed: {exc}")
            hold.session = None
            await self.finish(hold, "rollback", "goex-proxy", f"it failed: {hold.broken}")
            hold.lock.release()
            raise Refused("08006", f"goex-proxy lost the held transaction {hold.id}: {exc}") from None
        except Refused:
            hold.lock.release()
            raise
        hold.session = session
        session.upstream = hold.upstream
        return hold

    async def _begin(self, agent: str, database: Database, password: str, passed: dict[str, str]) -> Hold:
        upstream = await connect(database, password, passed)
        hold = Hold(self, self.gate.new_id(), agent, database, upstream)
        try:
            tags, status = await hold.exchange(f"{NO_IDLE_LIMIT}; BEGIN")
            if tags != ["SET", "BEGIN"] or status != b"T":
                raise HoldBroken(f"BEGIN answered {tags} {status!r}")
            await self._apply(lambda conn: holdstore.insert(conn, hold.id, database.name, agent, hold.created))
        except (HoldBroken, OSError, TimeoutError, ProtocolError, GoexError) as exc:  # GoexError: the log's
            upstream.writer.close()
            raise Refused("08006", f"goex-proxy could not begin the held transaction on database "
                                   f"{database.name!r}: {exc}") from None
        except BaseException:
            upstream.writer.close()
            raise
        log.info("held transaction %s begun for agent %s on %s", hold.id, agent, database.name)
        return hold

    async def decide(self, hold: Hold, action: str, by: str, why: str = "") -> None:
        """A person's (or the timeout's) decision: the attached connection, if any, is ended first."""
        if hold.deciding or hold.finished:
            return
        hold.deciding = True
        verb = "committed" if action == "commit" else "rolled back"
        hold.kick(f"the held transaction {hold.id} is being {verb} by {by}; this connection is ended")
        async with hold.lock:
            if not hold.finished:
                await self.finish(hold, action, by, why)

    async def finish(self, hold: Hold, action: str, by: str, why: str = "", send: bool = True) -> None:
        """Commit or roll back (the caller holds its lock, or the gateway stops), recorded in the audit chain first
        and in the holds table after."""
        if hold.finished:
            return
        hold.finished = True
        self.by_key.pop((hold.agent, hold.database.name), None)
        request_id = self.gate.new_id()
        started = time.time()
        try:
            await self._record(hold.database, hold.agent, hold.id, action, by, why, request_id, None, hold.statements)
        except Refused as exc:  # the log cannot take it: nothing is committed
            log.error("held transaction %s: %s; it is rolled back", hold.id, exc)
            action, request_id = "rollback", None
        tag, error, lost = None, None, False
        if send and hold.broken is None and not hold.upstream.writer.is_closing():
            try:  # however long a COMMIT takes: given up on, its outcome would be unknown
                tags, _ = await hold.exchange("COMMIT" if action == "commit" else "ROLLBACK", timeout=None)
                tag = tags[-1] if tags else None
            except (HoldLost, OSError, ConnectionError, ProtocolError) as exc:
                error, lost = str(exc), True
            except HoldBroken as exc:  # the server's error (a deferred constraint at COMMIT): it rolled back
                error = str(exc)
        elif hold.broken is not None:
            error = hold.broken
        hold.upstream.writer.close()  # whatever was not committed the server rolls back
        state = holdstore.COMMITTED if action == "commit" and tag == "COMMIT" else holdstore.ROLLED_BACK
        result = {holdstore.COMMITTED: "committed",
                  holdstore.ROLLED_BACK: "rolled back"}[state] + (f" ({why})" if why else "")
        if action == "commit" and state != holdstore.COMMITTED:
            result = f"not committed: {error or 'it had failed, so the server rolled it back'}"
            if lost:  # the COMMIT was sent and no answer came: the server may have committed it
                state, result = holdstore.UNKNOWN, f"commit sent, outcome unknown: {error}"
        if request_id is not None:
            self.gate.record_outcome(request_id, record.outcome([tag] if tag else [], error, started, _Plain(),
                                                                self.gate.config.max_body_bytes))
        await self._apply(lambda conn: holdstore.settle(conn, hold.id, state, by, result, hold.statements))
        log.info("held transaction %s of agent %s on %s: %s by %s", hold.id, hold.agent, hold.database.name, result,
                 by)

    async def _record(self, database: Database, agent: str, hold_id: str, action: str, by: str, why: str,
                      request_id: str | None, tag: str | None, statements: int) -> None:
        """The decision's row in the audit chain: method COMMIT or ROLLBACK, who decided it, and why."""
        sql = "COMMIT" if action == "commit" else "ROLLBACK"
        verb = "commit" if action == "commit" else "roll back"
        reason = (f"{by} chose to {verb} held transaction {hold_id} ({statements} statement"
                  f"{'' if statements == 1 else 's'})" + (f": {why}" if why else ""))
        row = record.statement_row(request_id or self.gate.new_id(), database, agent, "goex-proxy", sql, None,
                                   parse(sql), Decision("allow", reason, "builtin/held-transaction"), _Plain(),
                                   self.gate.config.max_body_bytes)
        row["method"] = sql  # the statement's kind would say TRANSACTION
        if request_id is None:  # already done (by the server): the row with its outcome
            row |= record.outcome([tag] if tag else [], None, row["ts"], _Plain(), self.gate.config.max_body_bytes)
        await self.gate.record_intent(row)

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(POLL_SECONDS)
            try:
                await self._poll_once()
            except Exception:  # one failed look is logged; the next may succeed
                log.exception("held transactions: polling for decisions failed")

    async def _poll_once(self) -> None:
        holds = {h.id: h for h in self.by_key.values()}
        if not holds:
            return
        for hold in holds.values():
            if (hold.statements, hold.started) != hold.counted:
                hold.counted = (hold.statements, hold.started)
                await self._apply(lambda conn, h=hold, c=hold.counted: holdstore.count(conn, h.id, *c))
            timeout = hold.database.hold_timeout
            if hold.started is not None and time.time() - hold.started >= timeout:
                self._spawn(self.decide(hold, "rollback", "goex-proxy",
                                        f"its timeout ran out ({format_duration(timeout)})"))
        if self._reader is None:
            from ..audit.store import open_db

            self._reader = open_db(self.gate.config.audit_db, readonly=True)
        reader = self._reader
        for hold_id, action, who in await asyncio.to_thread(holdstore.requested, reader, list(holds)):
            if action in holdstore.ACTIONS:
                self._spawn(self.decide(holds[hold_id], action, who))

    def _spawn(self, work: Any) -> None:
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        """The gateway stops: its held transactions end with their connections (the server rolls them back)."""
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._poller
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(task, 10)
        for hold in list(self.by_key.values()):
            with contextlib.suppress(Exception):
                await self.finish(hold, "rollback", "goex-proxy", "goex-proxy stopped", send=False)
        if self._reader is not None:
            self._reader.close()
