"""The audit log's one writer: a thread that takes intents and outcomes off the event loop, batches them into
transactions, and chains their hashes; its turns to write are shared with every other process writing the log."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import fcntl
import logging
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import ids
from ..errors import AuditError
from . import blobs, layout, names
from .layout import hex_of
from .seal import Anchor, Seal, flock_within
from .store import (
    BUSY_TIMEOUT_S,
    INTERRUPTED,
    ORPHANED,
    OUTCOME_COLUMNS,
    UNANCHORED,
    charged,
    open_db,
    outcome_hash,
    present_columns,
    row_hash,
)

#: The error of a row whose outcome held a value the log cannot store (followed by why).
OUTCOME_NOT_STORED = "ended, but its outcome could not be stored"

if TYPE_CHECKING:
    from ..policy.limits import Charge

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Intent:
    row: dict[str, Any]
    charge: Charge | None
    approval: dict[str, Any] | None = None   # the approvals entry of a request that waits, written with its row
    unwaited: bool = False   # nobody waits for its commit (`queue_intent`)


@dataclass(frozen=True)
class _Apply:
    """Any other write, run in the writer's transaction (in order with the rows): `fn(conn, writer)` gives the result."""

    fn: Callable[[sqlite3.Connection, AuditWriter], Any]


@dataclass(frozen=True)
class _Outcome:
    id: str
    fields: dict[str, Any]
    stands_in: bool = False   # written in place of an outcome that could not be stored (never replaced in turn)


@dataclass(frozen=True)
class _Again:
    """A read's row handed over again (`queue_again`), with its outcome if it came: its first write failed, or its
    writer process ended before saying. Written unless the log holds its id; if it does, only its outcome, unless
    the row has one."""

    row: dict[str, Any]
    outcome: dict[str, Any] | None


_STOP = object()


class _OnLoop:
    """A waiter on an event loop (`AuditWriter.awaited_intent`): its asyncio future is settled on that loop together
    with the rest of its batch's, one wake-up of the loop per batch. A concurrent future under `asyncio.wrap_future`
    cost the loop a wake-up through its self-pipe per row, and a thread-safe future and a callback chain each."""

    __slots__ = ("loop", "future")

    def __init__(self, loop: asyncio.AbstractEventLoop, future: asyncio.Future[Any]) -> None:
        self.loop, self.future = loop, future


def _settle(waiters: list[tuple[Any, Any]]) -> None:
    """Give each (future, result) its result, or its exception when the result is one; a waiter on an event loop is
    settled on that loop, all of one loop's in one call."""
    on_loops: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[Any], Any]]] = {}
    for future, result in waiters:
        if future is None:  # nobody asks (`queue_outcome`)
            continue
        if isinstance(future, _OnLoop):
            on_loops.setdefault(future.loop, []).append((future.future, result))
            continue
        # Cancelled by its waiter (`asyncio.wrap_future` cancels it with the task awaiting it), maybe just now: its
        # InvalidStateError would end the writer's thread, and every waiter after it would wait forever.
        with contextlib.suppress(concurrent.futures.InvalidStateError):
            _tell(future, result)
    for loop, settled in on_loops.items():
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits on it any more
            loop.call_soon_threadsafe(_settle_on_loop, settled)


def _settle_on_loop(settled: list[tuple[asyncio.Future[Any], Any]]) -> None:
    for future, result in settled:
        if not future.done():  # done: its waiter went away (as `wrap_future` would have cancelled it), or was told
            _tell(future, result)


def _tell(future: Any, result: Any) -> None:
    """Give a future its result, or its exception when the result is one."""
    if isinstance(result, Exception):
        future.set_exception(result)
    else:
        future.set_result(result)


def _running_loop() -> asyncio.AbstractEventLoop | None:
    """The event loop running in this thread, if one is."""
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


class _OneByOne:
    """What `_commit` gives for a batch to be written again op by op."""


_ONE_BY_ONE = _OneByOne()

#: The blob columns an outcome writes (its response's headers and body).
_OUTCOME_BLOBS = tuple(c for c in layout.BLOB_COLUMNS if c in OUTCOME_COLUMNS)

#: Errors of an op that cannot be stored (a number too large for SQLite, text that is not UTF-8, a row whose id the
#: log already holds), which fail only that op; any other error (disk full, a locked or broken database) fails the
#: whole batch.
_VALUE_ERRORS = (ValueError, TypeError, OverflowError, sqlite3.InterfaceError, sqlite3.ProgrammingError,
                 sqlite3.IntegrityError)


class UnknownRequest(AuditError):
    """An outcome for a row the log does not hold (a row queued without waiting, whose batch failed)."""


def _with_outcomes(batch: list[tuple[Any, Any]]) -> list[Any]:
    """The batch's operations, each unwaited row whose outcome is in the same batch given it, and that outcome None:
    one INSERT with both hashes instead of an INSERT and an UPDATE (the same hashes, the same row)."""
    ops = [op for op, _ in batch]
    rows = {str(op.row["id"]): index for index, op in enumerate(ops) if isinstance(op, _Intent) and op.unwaited}
    for index, op in enumerate(ops):
        if isinstance(op, _Outcome) and (at := rows.pop(op.id, None)) is not None and at < index:
            ops[at] = dataclasses.replace(ops[at], row={**ops[at].row, **op.fields})
            ops[index] = None
    return ops


def _unwaited(item: Any) -> bool:
    """An outcome, or a row queued with `queue_intent`: nothing waits for its commit."""
    return isinstance(item, tuple) and (isinstance(item[0], (_Outcome, _Again))
                                        or isinstance(item[0], _Intent) and item[0].unwaited)


#: How long a batch of outcomes and unwaited rows alone waits for company (an intent waited for ends the wait at once).
OUTCOME_GATHER_SECONDS = 0.005


def write_lock(path: Path) -> Path:
    """The lock file beside an audit database by which its writers take turns (hidden from every jail: one that
    held it would stall every request)."""
    return path.with_name(f".{path.name}.write-lock")


class TurnNotTaken(AuditError):
    """Another writer of the audit log held its write turn past the wait."""


class _WriteTurns:
    """Writers of one audit log (the workers of `run`, an `undo` beside it) take turns through a lock file beside it,
    held from BEGIN to COMMIT and asked again within 50 µs to 1 ms. Left to SQLite's busy handler, the loser of each
    race slept 1 ms or more before trying again, and two workers served no more than one."""

    def __init__(self, path: Path) -> None:
        try:
            self._fd: int | None = os.open(write_lock(path), os.O_RDWR | os.O_CREAT, 0o600)
        except OSError:
            self._fd = None  # SQLite's own lock still keeps writers apart, just more slowly

    @contextlib.contextmanager
    def taken(self) -> Iterator[None]:
        """Hold the turn; TurnNotTaken when another writer has held it for BUSY_TIMEOUT_S (stopped with Ctrl-Z, say):
        the batch then fails closed, as SQLite's lock made it fail, not wait forever."""
        if self._fd is None:
            yield
            return
        try:
            self._take()
        except OSError:  # a filesystem without locks (ENOLCK): SQLite's own lock keeps writers apart, more slowly
            self.close()
            yield
            return
        try:
            yield
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    def _take(self) -> None:
        """The lock (`seal.flock_within`: a turn lasts a fraction of a millisecond)."""
        assert self._fd is not None
        if not flock_within(self._fd, BUSY_TIMEOUT_S):
            raise TurnNotTaken(f"another writer of the audit log has held its write lock for over {BUSY_TIMEOUT_S:g} s "
                               "(a stopped `goex-proxy undo` or worker?)")

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class AuditWriter:
    """The only writer: a thread that takes intents and outcomes, batches them into transactions, and chains hashes."""

    def __init__(self, path: Path, seal: Seal, threaded: bool = True) -> None:
        """`threaded`: a thread writes what is queued; else the caller does, with `write_queued` (the writer
        process, which has nothing else to do: a thread there cost it a wake-up of its loop per batch)."""
        self.path = path
        self.seal = seal
        self._conn = open_db(path, seal=seal)
        self._turns = _WriteTurns(path)
        ids.claim(path)  # the ids this process makes are its own among all that write this log
        self._key = seal.key(create=True)
        #: request id -> (hash, seq, agent, host and method, ts) of rows awaiting their outcome
        self._pending: dict[str, tuple[str, int, tuple[Any, ...], Any]] = {}
        #: ids the transaction being written added to `_pending`: what its failure takes back (and nothing else: a
        #: row refused because its id is taken must not let go of the row in flight under that id)
        self._added: list[str] = []
        #: rows the transaction being written ended (taken out of `_pending`): what its failure puts back, so that
        #: an outcome lost with it (a full disk) leaves its row to be recorded interrupted when the writer stops, not
        #: looking as if it were still going on
        self._ended: dict[str, tuple[str, int, tuple[Any, ...], Any]] = {}
        #: rows in `_pending` written with blobs in the columns their outcome writes (a response, without a status or
        #: an error): their first outcome lets go of those blobs too, as an outcome written again does (`_update`)
        self._early: set[str] = set()
        self._blobs = blobs.BlobStore()
        #: what the record stage asked for in this turn of each event loop, queued at the turn's end (`_in_turn`)
        self._loop_turns: dict[asyncio.AbstractEventLoop, list[Any]] = {}
        self._names = names.Names()
        #: The log as this writer's last transaction left it: SQLite's data_version then, and the hash of the newest
        #: row. While no other connection has written since (the data_version is the same), the next transaction
        #: builds on that without reading it again, nor the anchor's row, nor the names it holds (`_commit`).
        self._left: tuple[int, str | None] | None = None
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        # Set when something someone waits for is queued: it ends a gathering, which what nobody waits for does not
        # interrupt (a wake-up per outcome would take the event loop's GIL as often).
        self._waited = threading.Event()
        # Why the last batch failed, until one writes a row again: the gateway then waits for a read's row too.
        self.failing: str | None = None
        started: concurrent.futures.Future[Any] = concurrent.futures.Future()
        self._write([(_Apply(self._end_orphans), started)])  # before any row of its own
        if started.exception() is not None:
            log.error("could not record the outcome of requests left in flight: %s", started.exception())
        self._thread = threading.Thread(target=self._run, name="goex-audit-writer", daemon=True)
        if threaded:
            self._thread.start()

    def record_intent(self, row: dict[str, Any], charge: Charge | None = None) -> concurrent.futures.Future[str | None]:
        """Queue a request row (with its outcome too, if it already has one) and its limit charge. The future resolves
        once committed to None, or, without writing the row, to why a cap it is charged against was already reached by
        the hits of every proxy writing this log (the check and the hit share the write lock)."""
        future: concurrent.futures.Future[str | None] = concurrent.futures.Future()
        self._put((_Intent(row, charge), future), waited=True)
        return future

    def awaited_intent(self, row: dict[str, Any], charge: Charge | None = None) -> asyncio.Future[str | None]:
        """`record_intent` for a caller on the running event loop (the record stage): the same, as an asyncio future
        settled on that loop with the rest of its batch."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[str | None] = loop.create_future()
        self._in_turn(loop, (_Intent(row, charge), _OnLoop(loop, future)))
        return future

    def _in_turn(self, loop: asyncio.AbstractEventLoop, item: Any) -> None:
        """Take `item` into this turn of `loop` (the running one), to be queued with the rest at the turn's end. The
        writer wakes at the first item queued: rows queued one by one as they came were written a transaction (and
        an anchor) for every two or three, each writing some 27 pages of the log."""
        turn = self._loop_turns.get(loop)
        if turn is None:
            turn = self._loop_turns[loop] = []
            loop.call_soon(self._hand_over_turn, loop)
        turn.append(item)

    def _hand_over_turn(self, loop: asyncio.AbstractEventLoop) -> None:
        """Queue what `loop`'s turn took, in the order it was asked for."""
        turn = self._loop_turns.pop(loop, None)
        if not turn:
            return
        for item in turn:
            self._queue.put(item)
        if not all(_unwaited(item) for item in turn):
            self._waited.set()

    def _put(self, item: Any, waited: bool) -> None:
        """Queue `item` now, after what this thread's event loop took into its turn before it (so that everything
        asked for on a loop is queued in the order it was asked for); `waited`: someone waits for its commit."""
        loop = _running_loop()
        if loop is not None and loop in self._loop_turns:
            self._hand_over_turn(loop)
        self._queue.put(item)
        if waited:
            self._waited.set()

    def queue_intent(self, row: dict[str, Any]) -> concurrent.futures.Future[str | None]:
        """Queue a request row whose request goes on without waiting for its commit (the database gateway's reads):
        like an outcome it may wait OUTCOME_GATHER_SECONDS for company, so that many share a transaction; every row
        queued after it is written with it or after it, in order. The future says whether it was written."""
        future: concurrent.futures.Future[str | None] = concurrent.futures.Future()
        self._put((_Intent(row, None, unwaited=True), future), waited=False)
        return future

    def takes_reads(self) -> bool:
        """Whether the record stage may send a read before its row is committed: not through this writer (the
        writer process does it, `offload`), whose rows are all written ahead."""
        return False

    def queue_again(self, row: dict[str, Any], outcome: dict[str, Any] | None) -> concurrent.futures.Future[str | None]:
        """Queue a read's row again (its request went on): written, with `outcome`, unless the log already holds its
        id; then only `outcome`, unless the row has one."""
        future: concurrent.futures.Future[str | None] = concurrent.futures.Future()
        self._put((_Again(row, outcome), future), waited=False)
        return future

    def record_outcome(self, request_id: str, fields: dict[str, Any]) -> concurrent.futures.Future[str | None]:
        future: concurrent.futures.Future[str | None] = concurrent.futures.Future()
        self._put((_Outcome(request_id, fields), future), waited=False)
        return future

    def queue_outcome(self, request_id: str, fields: dict[str, Any]) -> None:
        """`record_outcome` for a caller that never asks what became of it (the writer process, for what a proxy
        hands over): no future is made for it, nor settled."""
        self._put((_Outcome(request_id, fields), None), waited=False)

    def outcome_in_turn(self, request_id: str, fields: dict[str, Any]) -> None:
        """`record_outcome` for the record stage, on the running event loop, which never waits for it: queued with
        the rest of this turn of the loop (an outcome queued alone woke the writer, which took the GIL to gather it);
        at once when no loop runs."""
        item = (_Outcome(request_id, fields), None)
        loop = _running_loop()
        if loop is None:
            self._put(item, waited=False)
        else:
            self._in_turn(loop, item)

    def record_wait(self, row: dict[str, Any], approval: dict[str, Any]) -> concurrent.futures.Future[str | None]:
        """Queue the row of a request that waits (held or delayed) with its approvals entry, in one transaction."""
        future: concurrent.futures.Future[str | None] = concurrent.futures.Future()
        self._put((_Intent(row, None, approval), future), waited=True)
        return future

    def apply(self, fn: Callable[[sqlite3.Connection, AuditWriter], Any]) -> concurrent.futures.Future[Any]:
        """Queue `fn(conn, writer)`, run in a write transaction in order with rows and outcomes; the future has its
        result (or its exception)."""
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        self._put((_Apply(fn), future), waited=True)
        return future

    def close(self) -> None:
        for loop in list(self._loop_turns):  # what the turn that closes the writer took is written before it stops
            self._hand_over_turn(loop)
        if self._thread.is_alive():
            self._queue.put(_STOP)
            self._waited.set()
            self._thread.join(timeout=10)
        elif self._thread.ident is None:  # never started: what is queued is written here, as the thread would
            self.write_queued()
            self._interrupt()
            self.write_queued()
        self._conn.close()
        self._turns.close()
        ids.release(self.path)

    def write_queued(self) -> None:
        """Write everything queued, in the calling thread (a writer made without its thread): in one transaction, then
        what that queued in turn (the outcome of a row it could not anchor, say)."""
        while batch := self._queued():
            try:
                self._write(batch)
            except Exception as exc:  # as `_run`: refused, never taken for written
                self._failed(batch, exc)

    def _queued(self) -> list[Any]:
        batch = []
        while True:
            try:
                batch.append(self._queue.get_nowait())
            except queue.Empty:
                return batch

    def _run(self) -> None:
        while True:
            batch = self._next_batch()
            stop = _STOP in batch
            work = [b for b in batch if b is not _STOP]
            if work:
                try:
                    self._write(work)
                except Exception as exc:  # never as written: refused (fail closed), not every request after waiting
                    self._failed(work, exc)  # forever on a writer that is gone
            if stop:
                self._interrupt()
                return

    def _interrupt(self) -> None:
        """Rows still waiting for their outcome when the writer stops (the proxy was stopped with requests in flight)
        get one, `interrupted`, so that no row of this proxy's is left looking as if it were still going on."""
        if not self._pending:
            return
        now, count = time.time(), len(self._pending)
        self._write([(_Outcome(request_id, {"error": INTERRUPTED, "ended": now}, stands_in=True),
                      concurrent.futures.Future()) for request_id in list(self._pending)])
        log.warning("goex-proxy stopped with %d request%s in flight, recorded as interrupted (%s may have reached the "
                    "upstream)", count, "" if count == 1 else "s", "it" if count == 1 else "each")

    def _end_orphans(self, conn: sqlite3.Connection, _: AuditWriter) -> int:
        """Rows left in flight by processes that ended without stopping (a worker killed, a crash) get their outcome,
        `interrupted`: a row's id names the process tag that made it, and a tag no live process holds has no one left
        to record the outcome (held meanwhile, so that no process starting now takes it and writes under it). Rows
        that wait for a person are the gate's to end."""
        in_flight: dict[int, list[str]] = {}
        for stored_id, decision in conn.execute("SELECT id, decision FROM requests WHERE outcome_hash IS NULL"):
            request_id = layout.id_read(stored_id)
            if decision not in ("hold", "delay") and ids.is_request_id(request_id):
                in_flight.setdefault(ids.tag_of(request_id), []).append(request_id)
        ended, now = 0, time.time()
        for tag, orphans in sorted(in_flight.items()):
            with ids.unheld(self.path, tag) as free:
                if free:
                    for request_id in orphans:
                        self._update(_Outcome(request_id, {"error": ORPHANED, "ended": now}))
                    ended += len(orphans)
        if ended:
            log.warning("%d request%s left in flight by a goex-proxy process that ended without stopping, recorded as "
                        "interrupted", ended, "" if ended == 1 else "s")
        return ended

    def _next_batch(self) -> list[Any]:
        """Everything queued, at least one item. A batch of outcomes and unwaited rows alone (nobody waits for them)
        also gathers what arrives within OUTCOME_GATHER_SECONDS, so that a busy proxy writes one transaction where it
        would write several; an intent waited for (a request waiting to be forwarded) or the stop ends the gathering
        at once."""
        batch = [self._queue.get()]
        if _unwaited(batch[0]):
            self._waited.wait(OUTCOME_GATHER_SECONDS)  # at once if something waited for was queued since
        self._waited.clear()  # whatever set it is taken below, or by the next get (which does not wait for company)
        return batch + self._queued()

    def _write(self, batch: list[tuple[Any, concurrent.futures.Future[str | None]]]) -> None:
        """One transaction for the batch, in this writer's turn; then the anchor (outside the turn: the next writer
        need not wait for it), and only then its waiters (a request goes upstream once its row is anchored)."""
        try:
            with self._turns.taken():
                written = self._commit(batch)
        except TurnNotTaken as exc:
            self._failed(batch, exc)
            return
        if isinstance(written, _OneByOne):
            for item in batch:  # in order, each in a transaction of its own: only the op that cannot be stored fails
                self._write([item])
            return
        if written is None:
            return
        head, refused = written
        if head is not None:
            unanchored = self._anchor(head)
            self.failing = unanchored
            if unanchored is not None:  # its requests are refused: rows cut from the end now would go unseen
                for index, (op, _) in enumerate(batch):
                    if isinstance(op, (_Intent, _Again)) and index not in refused:
                        refused[index] = AuditError(f"audit write failed: {unanchored}")
                        # Its outcome, with the next batch: not in flight. Not a row queued without waiting (a
                        # gateway's read): that request went on before its commit, and its session records what
                        # became of it; a second outcome would overwrite it (and break its outcome hash). Nor a
                        # row that waits for a person: the gate ends its approvals entry and its row together.
                        if (isinstance(op, _Intent) and not op.unwaited and op.approval is None
                                and str(op.row.get("id")) in self._pending):
                            self._queue.put((_Outcome(str(op.row["id"]), {"error": UNANCHORED, "ended": time.time()}),
                                             concurrent.futures.Future()))
        _settle([(future, refused.get(index)) for index, (_, future) in enumerate(batch)])

    def _commit(self, batch: list[tuple[Any, concurrent.futures.Future[str | None]]]
                ) -> tuple[Anchor | None, dict[int, Any]] | _OneByOne | None:
        """Write the batch; the newest row it wrote, and what each refused op gets instead of its result (None: the
        transaction failed, and every waiter was told; _ONE_BY_ONE: a value of one op of several could not be stored,
        nothing was written, and the ops are to be written one by one)."""
        head: Anchor | None = None
        refused: dict[int, Any] = {}
        self._added, self._ended = [], {}
        left, self._left = self._left, None  # known again once this transaction commits
        applied = False
        try:
            with self._conn:
                # Another process (an `undo` next to `goex-proxy run`) may have appended since: lock, then read the head.
                self._conn.execute("BEGIN IMMEDIATE")
                (version,) = self._conn.execute("PRAGMA data_version").fetchone()
                if left is not None and left[0] == version:
                    last = (left[1],) if left[1] is not None else None  # nobody else wrote since this writer did
                else:
                    self._names.begin()  # a prune (in another process) may have removed names since
                    newest = self._conn.execute("SELECT seq, id, hash FROM requests ORDER BY seq DESC LIMIT 1").fetchone()
                    self._check_anchor(newest)
                    last = (hex_of(newest[2]),) if newest else None
                for index, op in enumerate(_with_outcomes(batch)):
                    if op is None:
                        continue  # an outcome written with its row
                    if isinstance(op, _Apply):
                        applied = True  # it may write anything (a prune, rows): the next transaction reads again
                        self._blobs.write_counts(self._conn)  # it may read or change counts, or remove blobs
                        try:
                            with _savepoint(self._conn):
                                refused[index] = op.fn(self._conn, self)
                                self._blobs.write_counts(self._conn)
                        except Exception as exc:  # its own failure: its waiter is told, the batch goes on
                            self._forget()  # what it stored is gone with its savepoint
                            refused[index] = exc
                        # A prune may have removed names this writer checked before it (in this transaction or, the
                        # log unchanged since, an earlier one): each is read again before a row after it names it.
                        self._names.begin()
                    elif isinstance(op, _Again):
                        if (inserted := self._again(op, head.hash if head else last[0] if last else "")) is not None:
                            head = inserted
                    elif not isinstance(op, _Intent):
                        try:
                            self._update(op)
                        except UnknownRequest as exc:  # nothing written: it fails alone (its row's batch failed)
                            log.error("audit: %s", exc)
                            refused[index] = exc
                    elif (over := self._over_cap(op.charge)) is not None:
                        refused[index] = over
                    else:
                        head = self._insert(op, head.hash if head else last[0] if last else "")
                self._blobs.write_counts(self._conn)  # the rows counted in memory, in this transaction
            if not applied:
                self._left = (version, head.hash if head else last[0] if last else None)
            if self._early:
                self._early.difference_update(self._ended)  # ended for good (a rollback keeps them, to end again)
        except Exception as exc:  # sqlite3.Error, disk full, a locked database: every waiter fails closed
            self._pending.update(self._ended)  # their outcomes rolled back: still in flight
            for request_id in self._added:  # rolled back (a row ended in the same batch too)
                self._pending.pop(request_id, None)
                self._early.discard(request_id)
            if len(batch) > 1 and isinstance(exc, _VALUE_ERRORS):  # one op's value: the others are not to fail with it
                self._forget()
                return _ONE_BY_ONE
            self._failed(batch, exc)
            if isinstance(exc, _VALUE_ERRORS) and isinstance(op := batch[0][0], _Outcome) and not op.stands_in:
                # The request ended: its row says so, and why its outcome is not there, with the next batch (not left
                # looking as if it were still going on, and forgotten by the writer: never even `interrupted`).
                self._queue.put((_Outcome(op.id, {"error": f"{OUTCOME_NOT_STORED}: {exc}", "ended": time.time()},
                                          stands_in=True), concurrent.futures.Future()))
            return None
        return head, refused

    def _failed(self, batch: list[tuple[Any, concurrent.futures.Future[str | None]]], exc: Exception) -> None:
        """Nothing of the batch was written: every waiter is told (its request is refused)."""
        log.error("audit write failed (%d records): %s", len(batch), exc)
        self.failing = str(exc)
        self._forget()
        _settle([(future, AuditError(f"audit write failed: {exc}")) for _, future in batch])

    def _forget(self) -> None:
        """Let go of the blob and name ids a rolled-back transaction stored: another writer may take them."""
        self._blobs.forget()
        self._names.forget()

    def in_flight(self, request_id: str) -> bool:
        """Whether this writer wrote the row of this request and has not written its outcome yet."""
        return request_id in self._pending

    def update_outcome(self, request_id: str, fields: dict[str, Any]) -> None:
        """Write a row's outcome now (call inside `apply`, in the writer's transaction)."""
        self._update(_Outcome(request_id, fields))

    def end_unended(self, request_id: str, fields: dict[str, Any]) -> None:
        """Write a row's outcome now unless it has one, or the log holds no such row (call inside `apply`): what
        another writer may or may not have written before it ended."""
        with contextlib.suppress(UnknownRequest):
            self._update(_Outcome(request_id, fields, stands_in=True))

    def over_cap(self, charge: Charge | None) -> str | None:
        """Why a cap this charge counts against is reached by the hits already stored, if one is (call inside
        `apply`, where the write lock is held)."""
        return self._over_cap(charge)

    def _over_cap(self, charge: Charge | None) -> str | None:
        """Why a cap this charge counts against is reached by the hits already stored, if one is."""
        if charge is None:
            return None
        for key, limit in charge.caps:
            since = charge.at - limit.per if limit.per is not None else float("-inf")
            (hits,) = self._conn.execute("SELECT count(*) FROM limit_hits WHERE key = ? AND agent = ? AND ts > ?",
                                         (key, charge.agent, since)).fetchone()
            if hits + charge.keys.count(key) > limit.count:  # a message of several SQL statements: a hit each
                return (f"limit reached: rule '{key.partition('/')[2]}' allows {limit.describe()} for agent "
                        f"'{charge.agent}', counted across every proxy writing this audit log")
        return None

    def _check_anchor(self, newest: tuple[Any, ...] | None) -> None:
        """Refuse to extend a log that no longer holds the row its anchor names: new rows would reuse the seq of
        removed ones and chain cleanly onto what is left, and the removal would pass `log verify`. `newest`: the seq,
        id and hash of the log's newest row, which the anchor mostly names."""
        anchor = self.seal.anchor()
        if anchor is None:
            return
        found = newest[1:] if newest is not None and newest[0] == anchor.seq else self._conn.execute(
            "SELECT id, hash FROM requests WHERE seq = ?", (anchor.seq,)).fetchone()
        if found is None or (layout.id_read(found[0]), hex_of(found[1])) != (anchor.id, anchor.hash):
            raise AuditError(f"the audit log no longer holds the row its anchor names (seq {anchor.seq}, id "
                             f"{anchor.id}): rows were removed or rewritten; `goex-proxy log verify` says more")

    def _anchor(self, head: Anchor) -> str | None:
        """Keep the newest row outside the database, after its commit (an anchor may lag the log, never lead it);
        another writer's newer anchor is never replaced by an older one (they compare and replace under a lock).
        Why it could not, if it could not."""
        try:
            with self.seal.locked():
                kept = self.seal.anchor()
                if kept is None or kept.seq < head.seq:
                    self.seal.set_anchor(head, before_new=self._durable)
        except (OSError, AuditError) as exc:
            log.error("could not keep the audit anchor in %s: %s", self.seal.anchor_path, exc)
            return f"could not keep the audit anchor in {self.seal.anchor_path}: {exc}"
        return None

    def _durable(self) -> None:
        """Put the log on disk before a new anchor file (a state directory's first, or one over a version before's),
        which is synced: SQLite syncs the WAL only at a checkpoint (synchronous=NORMAL), and after a power loss the
        first anchor was there and the new log it anchors was not, not even its tables; every write was then refused
        as if rows had been cut. Once: the anchors after it are written in place, and reach the disk with the log's
        pages, by the kernel's writeback (which of the two first is not promised: a window of milliseconds).

        The WAL holds every transaction since the last checkpoint, and SQLite syncs the database itself at each
        checkpoint: the WAL and the directory are synced here. Never the database file: opened and closed here, it
        dropped SQLite's locks on it (POSIX locks belong to the process and the file, and any close lets go of them),
        and another process's connection, closing as if the last, then checkpointed and removed the WAL this writer
        went on writing into, losing the rows after it. Nor a checkpoint: it needs room for the database to grow,
        which a full disk refused, and the first row with it."""
        for name in (f"{self.path}-wal", str(self.path.parent)):  # SQLite takes no lock on the WAL file itself
            try:
                fd = os.open(name, os.O_RDONLY)
            except FileNotFoundError:
                continue
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    def _again(self, op: _Again, prev: str) -> Anchor | None:
        """Write a read's row again (`_Again`): the newest row if it was inserted, None if the log held it."""
        term, forms = layout.id_term(str(op.row["id"]))
        if self._conn.execute(f"SELECT 1 FROM requests WHERE {term}", forms).fetchone() is None:
            return self._insert(_Intent({**op.row, **(op.outcome or {})}, None, unwaited=True), prev)
        if op.outcome is not None:
            with contextlib.suppress(UnknownRequest):
                self._update(_Outcome(str(op.row["id"]), op.outcome, stands_in=True))
        return None

    def _insert(self, op: _Intent, prev: str) -> Anchor:
        row = storable(op.row)
        if op.charge is not None and op.charge.keys:
            row["charged"] = charged(op.charge.keys, op.charge.at)
        row["prev_hash"] = prev
        row["hash"] = row_hash(self._key, prev, row)
        if row.get("status") is not None or row.get("error") is not None:
            row["outcome_hash"] = outcome_hash(self._key, row["hash"], row)
        kind = (row.get("agent"), row.get("host"), row.get("method"))
        kept = self._stored(row, kind)
        kept["prev_hash"] = layout.DERIVED  # always the hash of the row before this one (the newest so far)
        if "outcome_hash" not in row and layout.OUTCOME_ROOM:
            kept[layout.ROOM] = layout.OUTCOME_ROOM
        cursor = self._conn.execute(f"INSERT INTO requests ({', '.join(kept)}) VALUES ({', '.join('?' * len(kept))})",
                                    tuple(kept.values()))
        if "outcome_hash" not in row:
            self._pending[str(row["id"])] = (row["hash"], int(cursor.lastrowid or 0), kind, row.get("ts"))
            self._added.append(str(row["id"]))
            if any(c in kept for c in _OUTCOME_BLOBS):
                self._early.add(str(row["id"]))
        if op.approval is not None:
            entry = {"request_id": row["id"], **op.approval}
            self._conn.execute(f"INSERT INTO approvals ({', '.join(entry)}) VALUES ({', '.join('?' * len(entry))})",
                               tuple(entry.values()))
        if op.charge is not None:  # counted at the time it was decided, the time the in-memory counters use
            self._conn.executemany("INSERT INTO limit_hits (key, agent, ts, request_id) VALUES (?, ?, ?, ?)",
                                   [(key, op.charge.agent, op.charge.at, row["id"]) for key in op.charge.keys])
        return Anchor(int(cursor.lastrowid or 0), str(row["id"]), str(row["hash"]))

    def _update(self, op: _Outcome) -> None:
        pending, again = self._pending.pop(op.id, None), False
        if pending is not None and op.stands_in and self._has_outcome(pending[1]):
            return  # another writer ended it (a worker's thread, taking the shared writer for gone): not overwritten
        # Whether the row may already name blobs in the columns this outcome writes: only one written again, or one
        # written with a response but no status or error (`_early`), or one this writer did not write (not pending).
        earlier = pending is None or op.id in self._early
        if pending is not None:
            self._ended[op.id] = pending
        else:
            # Read as written (the agent and host as names, as `_insert` has them); lenient: a name missing reads
            # as one that fails `verify`, and only names the family its blobs are deflated in.
            term, forms = layout.id_term(op.id)
            found = next(layout.read(self._conn, "SELECT hash, seq, agent, host, method, outcome_hash, ts FROM "
                                     f"requests WHERE {term}", forms, lenient=True), None)
            if found is None:
                raise UnknownRequest(f"outcome for unknown request {op.id}")
            pending = (found["hash"], found["seq"], (found["agent"], found["host"], found["method"]), found["ts"])
            if found["outcome_hash"] is not None and op.stands_in:  # it has one after all: nothing to stand in for
                return
            again = found["outcome_hash"] is not None
            if again:  # written again: nothing of it is built on the first one's values, let go of below
                self._blobs.write_counts(self._conn)
                self._blobs.forget()
        hash_, seq, kind, started = pending
        fields = storable(op.fields)
        fields["outcome_hash"] = outcome_hash(self._key, hash_, fields)
        kept = self._stored(fields, kind, started)
        if again:  # what the first outcome set and this one does not goes: the new hash covers this one's alone
            present = present_columns(self._conn)
            kept = {**dict.fromkeys(c for c in OUTCOME_COLUMNS if c in present), **kept}
        named = [c for c in layout.BLOB_COLUMNS if c in kept] if earlier else []
        if named:  # an outcome written over blobs the row named (never, as the proxy goes) lets go of them
            self._blobs.write_counts(self._conn)  # a count kept in memory first: a release deletes what has none
            before = self._conn.execute(f"SELECT {', '.join(named)} FROM requests WHERE seq = ?", (seq,)).fetchone()
            blobs.release(self._conn, [ref for ref in before or () if ref is not None])
        if layout.OUTCOME_ROOM:
            kept[layout.ROOM] = None  # the outcome takes its place
        sets = ", ".join(f"{k} = ?" for k in kept)
        self._conn.execute(f"UPDATE requests SET {sets} WHERE seq = ?", (*kept.values(), seq))  # by rowid

    def _has_outcome(self, seq: int) -> bool:
        found = self._conn.execute("SELECT outcome_hash FROM requests WHERE seq = ?", (seq,)).fetchone()
        return found is not None and found[0] is not None

    def _stored(self, fields: dict[str, Any], kind: tuple[Any, ...], started: Any = None) -> dict[str, Any]:
        """The columns that keep these fields (hashed as they are): headers and bodies as blobs, and so on; `kind`
        is the row's agent, host and method, whose blobs are deflated on top of the last ones of the same field;
        `started`, for an outcome's, its row's ts.

        The agent is part of it, and owns the blobs it may name again: a value deflated on top of another agent's, or
        stored once for both, would make what one agent sends cost the log less the closer it is to what another
        sent or received, and a jailed agent sees the log's disk fill (its workspace layer is on the same one)."""
        return layout.stored(
            fields, lambda value, family: self._blobs.put(self._conn, value, family, owner=kind[0]), kind,
            started=started if type(started) is float else None, name=lambda name: self._names.id_of(self._conn, name))


def storable(fields: dict[str, Any]) -> dict[str, Any]:
    """A copy of `fields` whose texts SQLite can store (UTF-8), as `layout.stored_text` makes them. One text that
    could not be stored would fail its whole transaction: every other row and outcome written with it, whatever
    agent's."""
    return {key: layout.stored_text(value) if isinstance(value, str) else value for key, value in fields.items()}


class _savepoint:
    """A SAVEPOINT around one `apply`: its failure rolls back only its own writes."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def __enter__(self) -> None:
        self.conn.execute("SAVEPOINT goex_apply")

    def __exit__(self, kind: Any, *_: Any) -> None:
        if kind is not None:
            self.conn.execute("ROLLBACK TO goex_apply")
        self.conn.execute("RELEASE goex_apply")
