"""The record stage's rows written by a process of its own (`run`): their Python (columns, blobs, hashes, SQLite)
off the proxy's GIL, for which the event loop waited while the writer's thread held it; all else stays with the
thread writer. Each turn of the event loop hands its rows over in one write, and their commits come back together."""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import fcntl
import functools
import logging
import math
import os
import select
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack

from ..errors import AuditError
from ..policy.engine import Limit
from ..policy.limits import Charge
from .link import Link, hand_over, ready, received
from .seal import Seal
from .store import INTERRUPTED
from .writer import AuditWriter

log = logging.getLogger(__name__)

_LENGTH = struct.Struct(">I")
#: How long `close` waits for the writer process to write what it was handed and stop.
STOP_SECONDS = 10.0
#: How many bytes the pipe took before they are let go of in the buffer (compacting at every write of a large body,
#: 64 KiB at a time, copied the rest each time).
_COMPACT_AT = 1 << 20
#: The pipe's size asked for (Linux lets a process have up to 1 MiB without privilege): fewer writes for a large row.
_PIPE_BYTES = 1 << 20
#: How long after the log did not take a read's row it is handed over again (and again, while it takes none).
AGAIN_SECONDS = 1.0
#: How long a row handed to the writer process may go unanswered while the process says nothing at all before it is
#: taken for hung (stopped with SIGSTOP, stuck on its disk) and killed: its waiters refused, the thread writing on.
ANSWER_SECONDS = 30.0
GONE = "the audit writer process ended"
#: The outcome of a row the writer process may have committed before it ended, its commit never answered: the request
#: was refused (fail closed), never sent.
UNANSWERED = f"refused: {GONE} before it said whether the row was written; not sent"


def _frame(message: Any) -> bytes:
    """A message as sent: its length, then it in MessagePack (data only: texts, bytes, numbers, lists and maps; a
    text's lone surrogates, which a path that was not UTF-8 holds, as they are)."""
    data: bytes = msgpack.packb(message, use_bin_type=True, unicode_errors="surrogatepass")
    return _LENGTH.pack(len(data)) + data


def _frames(buffer: bytearray) -> Iterator[Any]:
    """The whole messages at the start of `buffer`, each taken out of it as it is read: one that cannot be read
    raises, those before it already given (unpacked all before any was given, they were lost with it)."""
    while len(buffer) >= _LENGTH.size:
        (size,) = _LENGTH.unpack_from(buffer)
        if len(buffer) < _LENGTH.size + size:
            break
        message = msgpack.unpackb(bytes(buffer[_LENGTH.size:_LENGTH.size + size]), raw=False,
                                  unicode_errors="surrogatepass", strict_map_key=False)
        del buffer[:_LENGTH.size + size]
        yield message


#: What `_frame` raises for a value it cannot send: one MessagePack cannot carry, or a message past 4 GiB.
_UNSENDABLE = (TypeError, ValueError, OverflowError, struct.error)


#: The variables the writer process keeps of the proxy's environment: what Python, its imports and SQLite need.
CHILD_ENV = ("PATH", "HOME", "LANG", "TZ", "TMPDIR", "SQLITE_TMPDIR", "PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV",
             "PYTHONDONTWRITEBYTECODE", "PYTHONUNBUFFERED")


def _child_env() -> dict[str, str]:
    """The writer process's environment: nothing of the proxy's secrets (the vault's key, credentials named by
    environment variable), which it never needs and whose every copy is one more place to read them from."""
    return {k: v for k, v in os.environ.items() if k in CHILD_ENV or k.startswith("LC_")}


def _sendable(turn: list[Any]) -> tuple[list[Any], list[Any]]:
    """A turn's ops that can be sent to the process, and those the thread writes: each that cannot be sent, and every
    later op of the same request (an outcome follows its row to its writer). One hostile value sent its whole turn
    to the thread, other rows' outcomes too: the process, their rows still in flight for it, recorded them
    interrupted over the real outcomes when it stopped."""
    sendable: list[Any] = []
    local: list[Any] = []
    kept: set[str] = set()
    for op in turn:
        request_id = op[1] if op[0] == "outcome" else str(op[2].get("id"))
        if request_id not in kept:
            try:
                _frame(op)
            except _UNSENDABLE:
                pass
            else:
                sendable.append(op)
                continue
        kept.add(request_id)
        local.append(op)
    return sendable, local


def _charge_out(charge: Charge | None) -> Any:
    return None if charge is None else [charge.agent, list(charge.keys), charge.at,
                                        [[key, limit.count, limit.per, limit.text] for key, limit in charge.caps]]


def _charge_in(data: Any) -> Charge | None:
    if data is None:
        return None
    agent, keys, at, caps = data
    return Charge(agent, tuple(keys), at, tuple((key, Limit(count, per, text)) for key, count, per, text in caps))


class OffloadedWriter:
    """An AuditWriter whose record-stage rows (`awaited_intent`) and their outcomes go to a writer process; every
    other call, and every call once that process is gone, goes to the thread writer it wraps. An outcome goes to the
    writer that wrote its row (the gate writes a held request's row; the record stage ends it).

    `share`: the process also writes the rows of the other workers of this `run`, each over a link this one hands it
    (`link_worker`); `link`: a worker's end of such a link, written to instead of a process of its own. Two writers
    taking turns on one log each read again what the other wrote before each batch, and write batches half as large:
    one for both served two workers 10-17% more (bench/README.md)."""

    def __init__(self, local: AuditWriter, share: bool = False, link: socket.socket | None = None) -> None:
        self.local = local
        self._loop: asyncio.AbstractEventLoop | None = None
        self._process: subprocess.Popen[bytes] | Link | None = None
        self._control: socket.socket | None = None  # the first process's way to hand the process workers' links
        self._turn: list[Any] = []
        self._out = bytearray()  # messages not yet taken by the pipe, from `_sent` on
        self._sent = 0
        self._in = bytearray()
        self._waiters: dict[int, asyncio.Future[str | None]] = {}
        self._tokens = 0
        self._asked: dict[int, float] = {}  # token -> when its row was handed over, while unanswered
        self._heard = time.monotonic()  # when the process last answered anything
        self._watch: asyncio.TimerHandle | None = None
        self._theirs: set[str] = set()  # ids whose row the process was handed, and not yet their outcome
        self._rows: dict[int, str] = {}  # token -> id of a row of `_theirs`, while unanswered
        #: ids of rows the process wrote, and ended before their outcome came: the thread writes it, or, the proxy
        #: stopping first, records them interrupted (the thread's writer knows nothing of them)
        self._left: set[str] = set()
        #: (the last token handed over before it, id, fields) of each outcome handed over that the process may not
        #: have written yet: the answer to a later token says it has
        self._unsure: collections.deque[tuple[int, str, dict[str, Any]]] = collections.deque()
        self._ready = False  # the process said it opened the log
        self._reads: dict[int, dict[str, Any]] = {}  # token -> a read's row handed over, while unanswered
        #: id -> [row, outcome or None] of each read the log did not take (or did not say it took): handed over again
        #: whenever it takes a row, and until then the record stage waits for every read's row
        self._unrecorded: dict[str, list[Any]] = {}
        self._again: dict[str, bool] = {}  # id of each of `_unrecorded` handed over again, unanswered: with its outcome
        self._retry: asyncio.TimerHandle | None = None
        self._failing: str | None = None  # why the process's last answered row was not written, until one is
        if link is not None:
            # The first's writer process, started before this worker: what is sent waits in the link until it reads
            # it. Rows held back for its word went to this worker's thread writer, and were left in flight when the
            # worker was killed (stopped with SIGSTOP as `run` stopped) before their requests ended.
            self._process = Link(link)
            self._ready = True
        else:
            self._start(share)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.local, name)

    def _start(self, share: bool) -> None:
        """Start the writer process (`share`: with the end of a control link of its own, over which it is handed the
        links of workers); rows go to it once it says it has opened the log (until then, and if it never does, the
        thread writes them)."""
        argv = [sys.executable, "-m", "goex_proxy.audit.offload", str(self.local.path),
                str(self.local.seal.key_path.parent), str(os.getpid())]
        theirs: socket.socket | None = None
        if share:
            self._control, theirs = socket.socketpair()
            argv.append(str(theirs.fileno()))
        try:
            # A session of its own: Ctrl-C and Ctrl-Z at the terminal go to the proxy, which stops it in turn (its rows
            # in flight recorded as interrupted); it ends with the proxy (PR_SET_PDEATHSIG, and its input closing).
            process = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, close_fds=True,
                                       pass_fds=(theirs.fileno(),) if theirs is not None else (),
                                       start_new_session=True, env=_child_env())
        except OSError as exc:
            log.error("audit: could not start the writer process (%s); the proxy's own thread writes every row", exc)
            self._close_control()
            return
        finally:
            if theirs is not None:
                theirs.close()
        assert process.stdout is not None and process.stdin is not None
        with contextlib.suppress(OSError):
            fcntl.fcntl(process.stdin.fileno(), fcntl.F_SETPIPE_SZ, _PIPE_BYTES)
        os.set_blocking(process.stdin.fileno(), False)
        os.set_blocking(process.stdout.fileno(), False)
        self._process = process

    def link_worker(self) -> socket.socket | None:
        """A worker's end of a new link to this process's writer, to pass to the worker as it starts (and close
        here then); None when there is none to share (not sharing, or the process is gone): the worker then starts a
        writer process of its own."""
        if self._control is None or not isinstance(self._process, subprocess.Popen):
            return None
        mine, theirs = socket.socketpair()
        handed = hand_over(self._control, theirs)
        theirs.close()
        if not handed:
            mine.close()
            return None
        return mine

    def _close_control(self) -> None:
        if self._control is not None:
            self._control.close()
            self._control = None

    @property
    def failing(self) -> str | None:
        """Why the log failed to take its last rows (the process's answers, or the thread's own), until it takes one
        again: the record stage then waits for a read's row too."""
        if self._unrecorded:
            return self._failing or f"{len(self._unrecorded)} read(s) not yet in the audit log"
        return self._failing or self.local.failing

    def takes_reads(self) -> bool:
        """Whether the record stage may send a read as its row is handed over (`read_intent`): when the process writes
        this loop's rows and the log took the last ones (with every read it did not take written since)."""
        return self.failing is None and self._takes(asyncio.get_running_loop())

    def awaited_intent(self, row: dict[str, Any], charge: Charge | None = None) -> asyncio.Future[str | None]:
        loop = asyncio.get_running_loop()
        if not self._takes(loop):
            return self.local.awaited_intent(row, charge)
        future: asyncio.Future[str | None] = loop.create_future()
        token = self._hand_row("intent", row, _charge_out(charge))
        self._waiters[token] = future
        if token in self._rows:
            future.add_done_callback(functools.partial(_unwritten, self._theirs, self._rows[token]))
        return future

    def read_intent(self, row: dict[str, Any]) -> None:
        """The row of a read the record stage sends without waiting for its commit (asked `takes_reads` first): to the
        process with this turn's other ops (where it may wait a moment for company, and be written with its outcome
        in one INSERT). Nobody waits for its answer; kept until it comes, the row is handed over again if the log did
        not take it, and written by the thread if the process ends first."""
        token = self._hand_row("read", row)
        self._reads[token] = row

    def _hand_again(self) -> None:
        """Hand over again the reads the log did not take, each with its outcome if it came (written unless the log
        holds its id: a row committed whose anchor failed was answered as not written)."""
        if self._process is None or self._loop is None:
            return
        for request_id, (row, outcome) in self._unrecorded.items():
            if request_id not in self._again:
                self._again[request_id] = outcome is not None
                self._reads[self._hand_row("again", row, outcome)] = row

    def _hand_again_later(self) -> None:
        """Hand the reads the log did not take over again in AGAIN_SECONDS (and then again, while it takes none)."""
        if self._retry is None and self._loop is not None and not self._loop.is_closed():
            self._retry = self._loop.call_later(AGAIN_SECONDS, self._retried)

    def _retried(self) -> None:
        self._retry = None
        if self._unrecorded:
            self._hand_again()
            self._hand_again_later()

    def _takes(self, loop: asyncio.AbstractEventLoop) -> bool:
        """Whether the process writes the rows asked for on `loop` (the first loop to ask is the one it answers)."""
        if self._process is not None and self._loop is None:
            self._loop = loop  # the loop whose rows the process writes; it hears the process from now on
            assert self._process.stdout is not None
            loop.add_reader(self._process.stdout.fileno(), self._on_answers)
        return self._process is not None and self._ready and loop is self._loop

    def _hand_row(self, kind: str, row: dict[str, Any], *rest: Any) -> int:
        """Hand a row over in this turn, under a new token, watched until answered; the token."""
        assert self._loop is not None
        self._tokens += 1
        token = self._tokens
        self._asked[token] = time.monotonic()
        if self._watch is None:
            self._watch = self._loop.call_later(ANSWER_SECONDS, self._check_answered)
        if row.get("status") is None and row.get("error") is None:  # its outcome is to come (else the row has it)
            self._theirs.add(str(row.get("id")))
            self._rows[token] = str(row.get("id"))
        self._in_turn([kind, token, row, *rest])
        return token

    def outcome_in_turn(self, request_id: str, fields: dict[str, Any]) -> None:
        if self._to_loop(request_id, fields) or self._kept_unrecorded(request_id, fields):
            return
        if not self._is_theirs(request_id):
            self._left.discard(request_id)
            self.local.outcome_in_turn(request_id, fields)
            return
        self._outcome_to_process(request_id, fields)

    def record_outcome(self, request_id: str, fields: dict[str, Any]) -> concurrent.futures.Future[str | None]:
        if not self._to_loop(request_id, fields) and not self._kept_unrecorded(request_id, fields):
            if not self._is_theirs(request_id):
                self._left.discard(request_id)
                return self.local.record_outcome(request_id, fields)
            self._outcome_to_process(request_id, fields)
        done: concurrent.futures.Future[str | None] = concurrent.futures.Future()
        done.set_result(None)  # as the thread writer's: nobody waits for an outcome's commit
        return done

    def _kept_unrecorded(self, request_id: str, fields: dict[str, Any]) -> bool:
        """Whether this is the outcome of a read the log did not take: kept with it, to be handed over with it."""
        kept = self._unrecorded.get(request_id)
        if kept is None:
            return False
        kept[1] = fields
        if self._again.get(request_id) is False and self._process is not None:
            # Its row is on its way again without it: the outcome goes right behind it (kept too, should that fail).
            # Held for the answer, it was dropped when that answer was read by `close()`, the process already gone.
            self._again[request_id] = True
            self._in_turn(["outcome", request_id, fields])
        self._hand_again()  # with it now, if it is not on its way again already
        return True

    def _outcome_to_process(self, request_id: str, fields: dict[str, Any]) -> None:
        """Hand an outcome over, kept until the process is known to have written it (else, the process ended, the
        thread writes it: lost with the process, its row was left looking in flight though its request had ended)."""
        self._theirs.discard(request_id)
        self._unsure.append((self._tokens, request_id, fields))
        self._in_turn(["outcome", request_id, fields])

    def _to_loop(self, request_id: str, fields: dict[str, Any]) -> bool:
        """Whether the outcome of a row the process wrote, asked for off its loop (a thread), was passed to the loop,
        which routes it: written by the thread writer, the process, its row still in flight for it, recorded it
        interrupted over it when it stopped."""
        loop = self._loop
        if self._process is None or loop is None or request_id not in self._theirs or loop.is_closed():
            return False
        try:
            if asyncio.get_running_loop() is loop:
                return False
        except RuntimeError:
            pass
        try:
            loop.call_soon_threadsafe(self.outcome_in_turn, request_id, fields)
        except RuntimeError:  # closed meanwhile
            return False
        return True

    def _is_theirs(self, request_id: str) -> bool:
        """Whether the process wrote this row and is there to end it, and this is its loop's thread."""
        if self._process is None or request_id not in self._theirs:
            return False
        try:
            return asyncio.get_running_loop() is self._loop
        except RuntimeError:
            return False

    def _in_turn(self, op: Any) -> None:
        if not self._turn:
            assert self._loop is not None
            self._loop.call_soon(self._hand_over)
        self._turn.append(op)

    def _hand_over(self) -> None:
        """Write this turn's ops to the process, in one message (what the pipe does not take now, when it can)."""
        if not self._turn:
            return
        turn, self._turn = self._turn, []
        if self._process is None:
            self._to_thread(turn)
            return
        try:
            frame = _frame(turn)
        except _UNSENDABLE as exc:  # a value MessagePack cannot carry (an int past 64 bits)
            turn, local = _sendable(turn)
            log.warning("audit: %d records written by the proxy's own thread (%s)", len(local), exc)
            self._to_thread(local)
            if not turn:
                return
            frame = _frame(turn)
        pending = bool(self._out)
        self._out += frame
        if not pending:
            self._write_out()

    def _write_out(self) -> None:
        assert self._process is not None and self._process.stdin is not None and self._loop is not None
        fd = self._process.stdin.fileno()
        try:
            with memoryview(self._out) as view, view[self._sent:] as rest:
                written = os.write(fd, rest)
        except BlockingIOError:
            written = 0
        except OSError:
            self._gone()
            return
        self._sent += written
        if self._sent == len(self._out):
            self._out.clear()
            self._sent = 0
            return
        if self._sent >= _COMPACT_AT:  # what was sent goes now and then, not at every write (a body of megabytes)
            del self._out[:self._sent]
            self._sent = 0
        self._loop.add_writer(fd, self._write_more)

    def _write_more(self) -> None:
        assert self._process is not None and self._process.stdin is not None and self._loop is not None
        self._loop.remove_writer(self._process.stdin.fileno())
        self._write_out()

    def _on_answers(self) -> None:
        """Settle the waiters of the rows the process committed (or refused)."""
        assert self._process is not None and self._process.stdout is not None
        try:
            chunk = os.read(self._process.stdout.fileno(), 1 << 20)
        except BlockingIOError:
            return
        except OSError:
            chunk = b""
        if not chunk:
            self._gone()
            return
        self._in += chunk
        self._heard = time.monotonic()
        took = False
        for answers in _frames(self._in):
            if answers == "ready":
                self._ready = True
                continue
            if answers == ENDED:  # the shared writer ended this worker's link (its end follows)
                continue
            for token, result in answers:
                future = self._waiters.pop(token, None)
                self._asked.pop(token, None)
                read = self._reads.pop(token, None)
                if future is not None:
                    _tell(future, result)
                elif read is not None:
                    self._read_answered(str(read.get("id")), read, result)
                if isinstance(result, list):
                    self._failing = result[1]
                elif result is None:  # a row written (a cap's refusal writes none)
                    self._failing = None
                    took = True
                self._answered(token)
        if took and self._unrecorded:
            self._hand_again()

    def _read_answered(self, request_id: str, row: dict[str, Any], result: Any) -> None:
        """A read (or one handed over again) answered: written, or kept among `_unrecorded`, its outcome kept with
        it from now on (a row the log did hold, its anchor failed, gets it when it is handed over again)."""
        with_outcome = self._again.pop(request_id, None)
        if result is None:
            kept = self._unrecorded.pop(request_id, None)
            if kept is not None and kept[1] is not None and not with_outcome:  # it came while the row was on its way
                self._outcome_to_process(request_id, kept[1])
            elif with_outcome:  # written with its outcome: none is to come for it
                self._theirs.discard(request_id)
        elif isinstance(result, list):  # an outcome handed over after it failed with it, or came too late
            handed = next((fields for _, other, fields in self._unsure if other == request_id), None)
            self._unrecorded.setdefault(request_id, [row, handed])
            self._theirs.discard(request_id)
            self._hand_again_later()

    def _answered(self, token: int) -> None:
        """The process answered this row: it has written every op handed over before it."""
        self._rows.pop(token, None)
        while self._unsure and self._unsure[0][0] < token:
            self._unsure.popleft()

    def _check_answered(self) -> None:
        """Take the process for gone when its oldest unanswered row has waited ANSWER_SECONDS and it has said nothing
        for as long: the thread writer's own wait for the log's write lock gives up after seconds, and a request
        waiting for a process that never answers waited for ever."""
        self._watch = None
        if self._process is None or not self._asked:
            return
        assert self._loop is not None
        now = time.monotonic()
        since = max(min(self._asked.values()), self._heard)
        if now - since < ANSWER_SECONDS:
            self._watch = self._loop.call_later(ANSWER_SECONDS - (now - since), self._check_answered)
            return
        log.error("audit: the writer process has not answered for %g s (stopped or hung?); killed", ANSWER_SECONDS)
        self._gone()

    def _gone(self) -> None:
        """The process ended (killed, crashed): its waiters are refused (fail closed), and from now on the thread
        writes every row, and the outcomes of the rows the process wrote (found in the log)."""
        process, self._process = self._process, None
        if process is None:
            return
        self._close_control()
        log.error("audit: %s; the proxy's own thread writes every row from now on", GONE)
        lost = self._lost()
        if self._loop is not None and process.stdout is not None:
            self._loop.remove_reader(process.stdout.fileno())
            if self._out and process.stdin is not None:
                self._loop.remove_writer(process.stdin.fileno())
        for future in self._waiters.values():
            if not future.done():
                future.set_exception(AuditError(f"audit write failed: {GONE}"))
        self._waiters.clear()
        self._asked.clear()
        self._theirs.clear()
        process.kill()
        process.wait()
        self._reads_to_thread()
        self._end_lost(lost)

    def _lost(self) -> dict[str, dict[str, Any]]:
        """The outcomes of the rows the process may have left without one, were it to end now: those handed over and
        not known written, and for each row handed over and unanswered (its request refused), UNANSWERED. Every other
        row of its still awaiting an outcome is `_left` to the thread."""
        ended = time.time()
        lost = {self._rows[token]: {"error": UNANSWERED, "ended": ended}
                for token, future in self._waiters.items() if token in self._rows and not future.done()}
        lost.update((request_id, fields) for _, request_id, fields in self._unsure)
        self._rows.clear()
        self._unsure.clear()
        self._left |= self._theirs - lost.keys()
        return lost

    def _reads_to_thread(self) -> None:
        """The rows of reads handed to a process that ended before it answered for them, and of those the log did not
        take, written by the thread (each unless the log holds its id): their requests went on."""
        for row in self._reads.values():
            if str(row.get("id")) not in self._unrecorded:
                self.local.queue_again(row, None)
        for row, outcome in self._unrecorded.values():
            self.local.queue_again(row, outcome)
        self._reads.clear()
        self._unrecorded.clear()
        self._again.clear()
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None

    def _end_lost(self, lost: dict[str, dict[str, Any]]) -> None:
        """Write, by the thread, each of these outcomes whose row the process wrote and did not end (it ended first):
        left in flight, such a row was ended by no one (the rows the process ends when it stops are those it knows),
        not even at the next start while this proxy runs, its process tag held."""
        if lost:
            self.local.apply(functools.partial(_end_unended, lost))

    def _to_thread(self, ops: list[Any]) -> None:
        """Ops the process is not to write after all (it is gone, or they cannot be sent to it), written by the thread
        writer in order: a row whose waiter still waits (not refused with the process), and every outcome (its row,
        if the process wrote it, is in the log: its request went on after the commit)."""
        for op in ops:
            if op[0] == "outcome":
                self.local.record_outcome(op[1], op[2])
                continue
            if op[0] in ("read", "again"):
                self._asked.pop(op[1], None)
                self._rows.pop(op[1], None)
                row = self._reads.pop(op[1], None)  # None: the thread has it already (handed over as the process ended)
                if row is not None:
                    self._theirs.discard(str(row.get("id")))
                    self._again.pop(str(row.get("id")), None)
                    kept = self._unrecorded.pop(str(row.get("id")), None)
                    self.local.queue_again(row, kept[1] if kept is not None else None)
                continue
            waiter = self._waiters.pop(op[1], None)
            self._asked.pop(op[1], None)
            self._rows.pop(op[1], None)
            self._theirs.discard(str(op[2].get("id")))
            if waiter is not None and not waiter.done():
                written = self.local.record_intent(op[2], _charge_in(op[3]))
                written.add_done_callback(functools.partial(_told_on_loop, waiter))

    def close(self) -> None:
        """Hand over what is left, let the process write it and stop (its rows still in flight recorded as
        interrupted), then close the thread writer."""
        process = self._process
        if process is not None:
            assert process.stdin is not None and process.stdout is not None
            if self._loop is not None and not self._loop.is_closed():
                self._loop.remove_reader(process.stdout.fileno())
                if self._out:
                    self._loop.remove_writer(process.stdin.fileno())
            turn, self._turn = self._turn, []
            if turn:
                self._out += _frame(turn)
            self._out += _frame([["stop"]])
            deadline, killed = time.monotonic() + STOP_SECONDS, False
            _write_by(process.stdin.fileno(), self._out[self._sent:], deadline)
            try:
                process.stdin.close()
            except OSError:
                pass
            try:
                process.wait(max(deadline - time.monotonic(), 0.0))
            except subprocess.TimeoutExpired:
                log.error("audit: the writer process did not stop within %g s (stopped or hung?); killed, the rows it "
                          "was handed refused", STOP_SECONDS)
                process.kill()
                process.wait()
                killed = True
            self._process = None
            self._close_control()
            os.set_blocking(process.stdout.fileno(), True)
            self._in += process.stdout.read()
            told = list(_frames(self._in))
            answered = {token: result for answers in told if answers not in ("ready", ENDED)
                        for token, result in answers}
            # A link's end says nothing of what the shared writer did: it wrote what it was handed only if it said so
            # (it may have been killed, by the first process, stopped with SIGSTOP).
            killed = killed or (isinstance(process, Link) and ENDED not in told)
            # A process that ended on its own (killed by the OOM killer, crashed) before `_gone` saw it did not write
            # what it was handed: its outcomes are the thread's to write, as `_gone` has them written.
            killed = killed or (isinstance(process, subprocess.Popen) and process.returncode != 0)
            for token, result in answered.items():
                read = self._reads.pop(token, None)
                if read is not None:
                    self._read_answered(str(read.get("id")), read, result)
            lost: dict[str, dict[str, Any]] = {}
            if killed:
                for token in answered:
                    self._answered(token)
                lost = self._lost()
            self._reads_to_thread()  # those it never answered (it died) or did not take: their requests went on
            self._end_lost(lost)  # after them: an outcome it was handed may be a read's
            for token, future in self._waiters.items():
                result = answered.get(token, ["error", "the audit log is closed: goex-proxy is stopping"])
                if not future.get_loop().is_closed():
                    future.get_loop().call_soon_threadsafe(_tell, future, result)
            self._waiters.clear()
            self._asked.clear()
            self._rows.clear()
            self._unsure.clear()
        if self._left:
            self._end_lost(dict.fromkeys(self._left, {"error": INTERRUPTED, "ended": time.time()}))
            self._left.clear()
        if self._watch is not None:
            self._watch.cancel()
            self._watch = None
        self.local.close()


def _end_unended(lost: dict[str, dict[str, Any]], _conn: Any, writer: AuditWriter) -> None:
    for request_id, fields in lost.items():
        writer.end_unended(request_id, fields)


def _write_by(fd: int, data: bytes | bytearray, deadline: float) -> bool:
    """Write `data` to the non-blocking `fd` unless the reader has not taken it by `deadline` (a writer process
    stopped with SIGSTOP, or hung, never empties its pipe: a blocking write there never returned, nor `close`)."""
    view = memoryview(bytes(data))
    while view:
        left = deadline - time.monotonic()
        if left <= 0 or not ready(fd, True, left):
            return False
        try:
            view = view[os.write(fd, view):]
        except BlockingIOError:
            continue
        except OSError:
            return False
    return True


def _tell(future: asyncio.Future[str | None], result: Any) -> None:
    """Settle a waiter with the process's answer: None (committed), why a cap refused it, or ("error", why)."""
    if future.done():
        return
    if isinstance(result, list):
        future.set_exception(AuditError(result[1]))
    else:
        future.set_result(result)


def _told_on_loop(waiter: asyncio.Future[str | None], written: concurrent.futures.Future[str | None]) -> None:
    """Settle `waiter`, on its loop, as the thread writer's `written` was."""
    exc = written.exception()
    result: Any = ["error", str(exc)] if exc is not None else written.result()
    loop = waiter.get_loop()
    if not loop.is_closed():
        loop.call_soon_threadsafe(_tell, waiter, result)


#: What the shared writer process says on a worker's link once it has written everything that worker handed it and
#: ended its rows in flight, before it closes the link.
ENDED = "ended"
#: How long the shared writer process goes on writing for the workers still linked to it once the first process has
#: stopped (`run` stops its workers as it stops itself): half of the STOP_SECONDS the first waits for this process
#: before it kills it, the other half left for its last writes (the rows of a worker stopped with SIGSTOP ended as
#: interrupted; with 2 s left, a loaded machine had it killed first now and then, a row left in flight).
SHARED_STOP_SECONDS = STOP_SECONDS / 2


class _Peer:
    """A proxy process whose rows this writer process writes: the one that started it (its input and output) or, when
    shared, a worker (a link): what it sent not yet read whole, and, for a worker, the rows it handed over whose
    outcome has not come, ended as interrupted when its link ends."""

    def __init__(self, read_fd: int, answer_fd: int, sock: socket.socket | None = None) -> None:
        self.read_fd, self.answer_fd, self.sock = read_fd, answer_fd, sock
        self.incoming = bytearray()
        self.answering = True
        self.rows: set[str] = set()
        self.ended = False  # its input ended, or it said stop


#: A row queued for a proxy: the proxy, its token, whether it was written, whether the proxy waits for that.
_Asked = tuple[_Peer, int, concurrent.futures.Future[str | None], bool]


def _serve(path: Path, state_dir: Path, parent: int, control_fd: int | None = None) -> None:
    """The writer process: ops from stdin, written in this thread by an AuditWriter without a thread of its own,
    what arrived together in one transaction; answers on stdout, one message a transaction. (A loop handing its turns
    to the writer's thread, as the proxy does, cost a wake-up through the loop's self-pipe per batch, and the two
    threads' GIL, for a process that has nothing else to do.) With `control_fd`, it is handed links of workers over
    it and writes their rows too, in the same transactions."""
    answers_fd = os.dup(1)
    os.dup2(2, 1)  # nothing else this process prints reaches the answers
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    os.set_blocking(0, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGTERM, lambda *_: None)  # seen through `wake_r`: see `_terminated`
    writer = AuditWriter(path, Seal(state_dir), threaded=False)
    first = _Peer(0, answers_fd)
    peers = {0: first}
    control = [socket.socket(fileno=control_fd)] if control_fd is not None else []
    first.answering = _answer(answers_fd, "ready")
    stop_at: float | None = None
    try:
        while True:
            wait = None if stop_at is None else max(0.0, stop_at - time.monotonic())
            asked, taken, stop = _read_ops(peers, control, writer, wake_r, parent, wait, stop_at is not None)
            if taken and not stop:
                asked, stop = _gathered(asked, peers, control, writer, wake_r, parent, stop_at)
            writer.write_queued()
            _answer_all(asked)
            for peer in [p for p in peers.values() if p.ended and p is not first]:
                _end_peer(writer, peer)
                del peers[peer.read_fd]
            # The proxy that started it stops (or ended: killed, its workers are sent SIGTERM as this process is):
            # the workers still linked stop with it, or soon after, handing over the outcomes of the requests they
            # answered meanwhile (stopped at once, this process recorded their rows interrupted, and no one wrote
            # those outcomes over that after).
            if first.ended or stop:
                stop_at = stop_at or time.monotonic() + SHARED_STOP_SECONDS
                if len(peers) == 1 or time.monotonic() >= stop_at:
                    break
    finally:
        writer.close()


def _gathered(asked: list[_Asked], peers: dict[int, _Peer], control: list[socket.socket], writer: AuditWriter,
              wake_r: int, parent: int, stop_at: float | None) -> tuple[list[_Asked], bool]:
    """Outcomes and reads, which nobody waits for, wait for company while more keep coming within GATHER_GAP_SECONDS,
    up to GATHER_SECONDS in all, until a row that is waited for comes: under load a read and its outcome are written
    together (one INSERT) and a transaction carries many rows, for little more than one of a few; an idle proxy's
    rows are written at once. The rows to answer, and whether to stop."""
    deadline = time.monotonic() + GATHER_SECONDS
    if stop_at is not None:
        deadline = min(deadline, stop_at)
    stop, waited = False, any(waited for *_, waited in asked)
    while not stop and not waited and (left := deadline - time.monotonic()) > 0:
        more, taken, stop = _read_ops(peers, control, writer, wake_r, parent, min(left, GATHER_GAP_SECONDS),
                                      stop_at is not None)
        asked += more
        waited = any(waited for *_, waited in more)
        if not taken:
            break
    return asked, stop


def _read_ops(peers: dict[int, _Peer], control: list[socket.socket], writer: AuditWriter, wake_r: int, parent: int,
              wait: float | None, stopping: bool = False) -> tuple[list[_Asked], bool, bool]:
    """Queue on `writer` the ops that arrive within `wait` seconds (None: once some do), up to PEER_TURN_BYTES of
    each proxy's unless `stopping` (then every one there is): the rows queued, to be answered; whether any op was;
    and whether to stop after writing them (the process that started this one ended). A link handed over on
    `control` becomes a peer."""
    listening = [p.read_fd for p in peers.values() if not p.ended] + [wake_r] + [c.fileno() for c in control]
    ready = select.select(listening, [], [], wait)[0]
    stop = wake_r in ready and _terminated(wake_r, parent)
    asked: list[_Asked] = []
    taken = False
    if control and control[0].fileno() in ready:
        link = received(control[0])
        if link is None:  # the first process closed its end: no more workers
            control.pop().close()
        else:
            link.setblocking(False)
            peer = peers[link.fileno()] = _Peer(link.fileno(), link.fileno(), link)
            peer.answering = _answer(peer.answer_fd, "ready", ANSWER_SECONDS)
    most = math.inf if stopping or stop else PEER_TURN_BYTES  # stopping, all: nothing is to be left unread
    for peer in [p for p in peers.values() if p.read_fd in ready and not p.ended]:
        if _read_peer(peer, writer, asked, most):
            taken = True
    return asked, taken, stop or (peers[0].ended and len(peers) == 1)


#: How long outcomes and reads alone wait for company in the writer process at most, and for the next op: what a
#: proxy killed at the wrong moment can lose of its reads' rows (nothing else: every other row is waited for).
GATHER_SECONDS = 0.020
GATHER_GAP_SECONDS = 0.005

#: The most bytes read from one proxy for one transaction: the rest waits for the next. A worker whose agent sends
#: large bodies without pause kept the others' rows waiting behind one transaction of everything it had sent.
PEER_TURN_BYTES = 4 << 20


def _read_peer(peer: _Peer, writer: AuditWriter, asked: list[_Asked], most: float = math.inf) -> bool:
    """Read what `peer` sent (up to `most` bytes, the rest left for the next call), queue its ops on `writer` (the
    rows in `asked`: an intent waited for, a read not); whether it sent any."""
    taken = False
    left = most
    while left > 0:
        try:
            chunk = os.read(peer.read_fd, int(min(1 << 20, left)))
        except BlockingIOError:
            break
        except OSError:
            chunk = b""
        if not chunk:  # the proxy closed its end, or ended
            peer.ended = True
            break
        peer.incoming.extend(chunk)
        left -= len(chunk)
    try:
        for ops in _frames(peer.incoming):
            for op in ops:
                taken = True
                if op[0] in ("intent", "read", "again"):
                    waited = op[0] == "intent"
                    written = (writer.record_intent(op[2], _charge_in(op[3])) if waited
                               else writer.queue_intent(op[2]) if op[0] == "read" else writer.queue_again(op[2], op[3]))
                    asked.append((peer, op[1], written, waited))
                    ended = (op[0] == "again" and op[3] is not None) or op[2].get("status") is not None
                    if peer.sock is not None and not ended and op[2].get("error") is None:
                        request_id = str(op[2].get("id"))
                        peer.rows.add(request_id)
                        written.add_done_callback(functools.partial(_unwritten, peer.rows, request_id))
                elif op[0] == "outcome":
                    writer.queue_outcome(op[1], op[2])
                    peer.rows.discard(op[1])
                elif op[0] == "stop":
                    peer.ended = True
                    return taken
    except Exception as exc:  # a message it cannot read stays at the head of `incoming`: every read after failed
        log.error("a message from the proxy could not be read (%s); stopping, the proxy's thread writes on", exc)
        peer.ended = True
    return taken


def _unwritten(rows: set[str], request_id: str,
               written: asyncio.Future[str | None] | concurrent.futures.Future[str | None]) -> None:
    """A row not written (refused by a cap, failed, its waiter gone) gets no outcome: it is not remembered among
    `rows` for one (a million refusals, ~100 MB)."""
    if written.cancelled() or written.exception() is not None or written.result() is not None:
        rows.discard(request_id)


def _answer_all(asked: list[_Asked]) -> None:
    """Tell each proxy whether its rows of this batch were written, in one message each."""
    answers: dict[int, tuple[_Peer, list[Any]]] = {}
    for peer, token, future, _ in asked:
        answers.setdefault(peer.read_fd, (peer, []))[1].append((token, _result(future)))
    for peer, told in answers.values():
        if peer.answering:
            peer.answering = _answer(peer.answer_fd, told, ANSWER_SECONDS if peer.sock is not None else None)
            if not peer.answering and peer.sock is not None:
                peer.ended = True  # a worker that no longer reads its answers: its link ends


def _end_peer(writer: AuditWriter, peer: _Peer) -> None:
    """A worker's link ended (it stopped, or died): the rows it handed over still in flight are recorded interrupted,
    as its own writer process recorded them when it stopped, and the link is closed (the worker waits for that)."""
    left = [request_id for request_id in peer.rows if writer.in_flight(request_id)]
    if left:
        now = time.time()
        # Unless the log holds an outcome (the worker's thread wrote it, having taken this process for gone).
        writer.apply(functools.partial(_end_unended, dict.fromkeys(left, {"error": INTERRUPTED, "ended": now})))
        writer.write_queued()
        log.warning("a goex-proxy worker stopped with %d request%s in flight, recorded as interrupted", len(left),
                    "" if len(left) == 1 else "s")
    if peer.answering:
        _answer(peer.answer_fd, ENDED, ANSWER_SECONDS)
    assert peer.sock is not None
    peer.sock.close()


def _terminated(wake_r: int, parent: int) -> bool:
    """After a signal: whether it was the proxy's end (PR_SET_PDEATHSIG sends SIGTERM), so that this process stops,
    writing what it was handed; else it was one sent to every process of the service (systemd stopping it), and the
    proxy, stopping too, stops this one after handing over its last outcomes (dying now lost them, and left its rows
    in flight to the next start)."""
    with contextlib.suppress(BlockingIOError):
        os.read(wake_r, 512)
    return os.getppid() != parent


def _result(future: concurrent.futures.Future[str | None]) -> Any:
    """A written intent's answer: None (committed), why a cap refused it, or ["error", why]."""
    exc = future.exception(timeout=0)
    return ["error", str(exc)] if exc is not None else future.result()


def _answer(fd: int, message: Any, within: float | None = None) -> bool:
    """Send `message` to the proxy; False when nobody reads the answers any more (the proxy ended). The process then
    goes on to the end of its input: the outcomes the proxy handed over before it ended are still to be written (ended
    at the broken pipe, it recorded their rows interrupted over requests that had ended). `within`: to a worker's
    link, which is not to hold up the others' answers for ever (a worker stopped with SIGSTOP reads none)."""
    data = _frame(message)
    if within is not None:
        return _write_by(fd, data, time.monotonic() + within)
    view = memoryview(data)
    try:
        while view:
            view = view[os.write(fd, view):]
    except BrokenPipeError:
        return False
    return True


if __name__ == "__main__":
    from ..hardening import harden_process
    from ..workers import die_with_parent

    harden_process()  # as the proxy: it holds the chain key, and what reaches its input is written to the log
    logging.basicConfig(stream=sys.stderr, level=logging.WARNING, format="goex-proxy audit writer: %(message)s")
    die_with_parent(int(sys.argv[3]))  # as a worker does
    _serve(Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]) if len(sys.argv) > 4 else None)
