"""Found by a red team of d98043f/ab3d285/1364578 (reads forwarded as their rows are handed to the writer process,
handed over again when the log did not take them): ways a read's real outcome was lost or overwritten, and the hash
chain broken, with no one touching the database. Each test fails on 1364578; its docstring says what happens and
what should hold."""

from __future__ import annotations

import asyncio
import fcntl
import os
import resource
import signal
from pathlib import Path
from typing import Any

from goex_proxy.audit import offload
from goex_proxy.audit import store as audit
from goex_proxy.audit.offload import OffloadedWriter
from goex_proxy.audit.seal import ANCHOR_FILE, Seal
from goex_proxy.errors import NotFound
from tests.unit.test_audit_offload import _answered, _no_writer_process_left, _row, _shared, _with_writer
from tests.unit.test_redteam23_reads import _until, linux_only

_ = _no_writer_process_left  # autouse here too: a writer process a failed test left (stopped, say) is killed



def _kept(tmp_path: Path, request_id: str) -> dict[str, Any] | None:
    conn = audit.open_db(tmp_path / "audit.db", readonly=True)
    try:
        return audit.get(conn, request_id)
    except NotFound:
        return None
    finally:
        conn.close()


def _verified(tmp_path: Path) -> Any:
    conn = audit.open_db(tmp_path / "audit.db", readonly=True)
    try:
        return audit.verify(conn, audit.chain_key(conn, Seal(tmp_path)), Seal(tmp_path).anchor())
    finally:
        conn.close()


@linux_only
def test_an_outcome_kept_while_its_read_is_handed_over_again_is_lost_when_run_stops(tmp_path: Path) -> None:
    """A read's row the log did not take (a full disk) is kept in `_unrecorded` and handed over again ('again') once
    the log takes a row, without its outcome (the upstream had not answered yet). Its response comes while that
    'again' is on its way: `_kept_unrecorded` keeps the outcome with it, to be handed over when the answer comes
    (`_read_answered` -> `_outcome_to_process`). `run` stops before the loop read that answer: `close()` reads it
    after the process has stopped, and `_outcome_to_process` then puts the outcome into a turn no one hands over
    (the process is gone; the thread writer, closed a moment later, never writes it). The process, holding the row it
    inserted for the 'again' with no outcome, recorded it `interrupted` as it stopped.

    Consequence: the agent got its answer (a read that went upstream), and the log says the request was interrupted,
    with its real status and body lost, though the proxy had them before it stopped (invariant 2).

    Correct: an outcome that comes while its read's row is on its way again is handed to the process right behind
    it (or, in `close()`, written by the thread over nothing / handed over before the stop), never dropped."""
    async def scenario(writer: OffloadedWriter) -> dict[str, Any]:
        assert writer._process is not None
        _, hard = resource.prlimit(writer._process.pid, resource.RLIMIT_FSIZE)
        resource.prlimit(writer._process.pid, resource.RLIMIT_FSIZE, (1, hard))  # the disk is full
        read = {**_row("/slow-read"), "req_body": os.urandom(1 << 16)}
        assert writer.takes_reads()
        writer.read_intent(read)  # forwarded at once, as the record stage does
        await _until(lambda: read["id"] in writer._unrecorded)
        resource.prlimit(writer._process.pid, resource.RLIMIT_FSIZE, (hard, hard))  # room again
        # The log takes a row (the next request, which waits while `failing`): the read goes over again, no outcome.
        assert await writer.awaited_intent(_row("/waited")) is None
        assert writer._again.get(read["id"]) is False
        writer.outcome_in_turn(read["id"], _answered(200))  # its response: kept with it
        return read  # `run` stops now (`_with_writer` closes the writer)

    read = _with_writer(tmp_path, scenario)
    kept = _kept(tmp_path, read["id"])
    assert kept is not None
    assert (kept["status"], kept["error"]) == (200, None), (
        f"the read's real outcome was lost as run stopped: status {kept['status']!r}, error {kept['error']!r}")


@linux_only
def test_a_shared_writer_taken_for_gone_overwrites_the_outcome_the_workers_thread_wrote(
        tmp_path: Path, monkeypatch: Any) -> None:
    """`run --workers 2`: a worker's rows are written by the first process's writer process over a link. That
    process commits a worker's read and is then stopped (SIGSTOP, or hung on its disk) before it answers. After
    ANSWER_SECONDS of silence the worker takes it for gone (`_gone`): but `Link.kill` only shuts the worker's end of
    the link; the shared process lives on, its `_pending` still holding the read's row. The worker's thread finds
    the row in the log (`_reads_to_thread`: queue_again, present) and writes the read's real outcome when its
    response comes. When the shared process runs again, its answer to the dead link fails and it ends the link
    (`_end_peer`), and on stopping `_interrupt`s every row it still holds pending: both write `interrupted` through
    `_update`, which for a pending row never looks at what the log holds, over the real outcome. Only the columns
    `interrupted` has are written: the row keeps status 200 AND error `interrupted`, its outcome hash covering only
    the latter.

    Consequence: the read's real outcome is overwritten, and `goex-proxy log verify` reports an unedited row as
    tampered with (invariants 2 and 3). (A waited intent fares the same: UNANSWERED, written by the worker's thread,
    is overwritten as `interrupted`.)

    Correct: a writer that ends rows as interrupted (`_end_peer`, `_interrupt`) writes only over rows that have no
    outcome in the log (as `end_unended` does), or a worker never lets its thread end rows the shared process may
    still hold."""
    monkeypatch.setattr(offload, "ANSWER_SECONDS", 1.0)

    async def scenario(first: OffloadedWriter, worker: OffloadedWriter) -> dict[str, Any]:
        process = first._process
        assert process is not None
        lock = os.open(tmp_path / f".{ANCHOR_FILE}.lock", os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(lock, fcntl.LOCK_EX)  # the process commits the row, then waits for the anchor's lock
        stopped = False
        try:
            read = _row("/read-through-a-worker")
            assert worker.takes_reads()  # as the record stage asks first
            worker.read_intent(read)
            await _until(lambda: _kept(tmp_path, read["id"]) is not None)  # committed, not answered
            os.kill(process.pid, signal.SIGSTOP)
            stopped = True
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
            os.close(lock)
        try:
            await _until(lambda: worker._process is None)  # taken for gone: the thread writes on
            worker.outcome_in_turn(read["id"], _answered(200))  # the read's response
            await _until(lambda: (_kept(tmp_path, read["id"]) or {}).get("status") == 200)
        finally:
            if stopped:
                os.kill(process.pid, signal.SIGCONT)
        await asyncio.sleep(0.5)  # it runs on: answers the dead link, ends it
        return read

    read = _shared(tmp_path, scenario)  # then the worker, and the first, stop
    kept = _kept(tmp_path, read["id"])
    assert kept is not None
    result = _verified(tmp_path)
    assert (kept["status"], kept["error"], result.broken_id) == (200, None, None), (
        f"the read's outcome was overwritten: status {kept['status']!r}, error {kept['error']!r}; "
        f"`log verify`: {result}")


def test_outcomes_handed_to_a_process_that_died_unnoticed_are_lost_when_run_stops(tmp_path: Path) -> None:
    """The writer process dies (the OOM killer, a crash) holding a read's row and its outcome, both handed over and
    never answered, and `run` stops before the loop read the end of its output (`_gone` never ran). `close()` finds
    the process already ended, and counts it as killed only when its own `wait` timed out: so `_lost()` is never
    asked, and the outcomes in `_unsure` are cleared unwritten. `_reads_to_thread` has the thread write the read's row
    (the fix of test_redteam23_reads' dead-process hole) but without its outcome, and the thread writer, closing,
    records it `interrupted`.

    Consequence: a read that went upstream and was answered is logged as interrupted, its status and body lost,
    though the proxy handed them over before it stopped (invariant 2). A waited intent's outcome is lost alike (its
    row left in flight, found orphaned at the next start).

    Correct: a process that ended on its own (a returncode that is not 0, or a link that ended without ENDED) is
    treated as killed: `_lost()`'s outcomes are written by the thread after the reads' rows, as `_gone` does."""
    async def scenario(writer: OffloadedWriter) -> dict[str, Any]:
        process = writer._process
        assert process is not None and writer.takes_reads()
        os.kill(process.pid, signal.SIGSTOP)  # it takes nothing more from its input
        read = _row("/answered-read")
        writer.read_intent(read)
        await asyncio.sleep(0)  # handed over: the request went upstream
        writer.outcome_in_turn(read["id"], _answered(201))  # its response, handed over too
        await asyncio.sleep(0)
        os.kill(process.pid, signal.SIGKILL)
        process.wait()  # dead; the loop has not run `_on_answers` since
        return read  # `run` stops now

    read = _with_writer(tmp_path, scenario)
    kept = _kept(tmp_path, read["id"])
    assert kept is not None
    assert (kept["status"], kept["error"]) == (201, None), (
        f"the read's outcome, handed over before run stopped, was lost: error {kept['error']!r}")
