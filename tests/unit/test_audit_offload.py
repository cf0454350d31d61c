"""The record stage's rows written by a process of its own (`OffloadedWriter`), against a real writer process."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from goex_proxy.audit import store as audit
from goex_proxy.audit.layout import stored_text
from goex_proxy.audit.offload import OffloadedWriter, _child_env, _frame, _frames
from goex_proxy.audit.seal import Seal
from goex_proxy.audit.writer import AuditWriter, write_lock
from goex_proxy.errors import AuditError
from goex_proxy.ids import RequestIds

MADE = RequestIds()


def _row(path: str = "/") -> dict[str, Any]:
    return {"id": MADE.new(), "ts": time.time(), "agent": "bot", "method": "GET", "scheme": "https",
            "host": "example.com", "port": 443, "path": path, "url": f"https://example.com{path}", "decision": "allow",
            "req_body": b"\x00\xff"}


def _answered(status: int = 200) -> dict[str, Any]:
    return {"status": status, "ended": time.time(), "duration_ms": 1.0, "resp_body": b"done"}


#: The writer processes the tests started, killed after each test if one is still there (a test that stopped one with
#: SIGSTOP and failed before its writer was closed left it stopped for good).
_STARTED: list[Any] = []


@pytest.fixture(autouse=True)
def _no_writer_process_left() -> Iterator[None]:
    yield
    for process in _STARTED:
        if process.poll() is None:  # still this test's child: its pid cannot be another process's yet
            process.kill()
            process.wait()
    _STARTED.clear()


async def _offloaded(tmp: Path) -> OffloadedWriter:
    """A writer whose process has said it is ready (rows asked for before then are the thread's, and answered)."""
    writer = OffloadedWriter(AuditWriter(tmp / "audit.db", Seal(tmp)))
    _STARTED.append(writer._process)
    deadline = time.monotonic() + 20
    while not writer._ready:
        assert time.monotonic() < deadline, "the writer process never said it was ready"
        first = _row()
        assert await writer.awaited_intent(first) is None
        writer.outcome_in_turn(first["id"], _answered())
        await asyncio.sleep(0.02)
    return writer


def _with_writer(tmp_path: Path, scenario: Any) -> Any:
    """What `scenario(writer)` gives, run with a writer whose process is ready, closed after as `run` stops."""
    async def main() -> Any:
        writer = await _offloaded(tmp_path)
        try:
            return await scenario(writer)
        finally:
            writer.close()

    return asyncio.run(main())


def _log(tmp: Path) -> Any:
    conn = audit.open_db(tmp / "audit.db", readonly=True)
    result = audit.verify(conn, audit.chain_key(conn, Seal(tmp)), Seal(tmp).anchor())
    assert result.broken_id is None, result
    return conn


def test_a_row_the_process_writes_is_anchored_before_its_waiter_is_told(tmp_path: Path) -> None:
    """Write-ahead holds across the process: once `awaited_intent` answers, the row is committed and anchored, its
    texts and bytes as they were (a path that was not UTF-8 too), and its outcome is written by the same process."""
    async def scenario(writer: OffloadedWriter) -> list[dict[str, Any]]:
        rows = [_row(f"/{i}\udcff") for i in range(20)]
        for row in rows:
            assert await writer.awaited_intent(row) is None
            assert row["id"] in writer._theirs
            anchor = Seal(tmp_path).anchor()
            assert anchor is not None and anchor.id == row["id"]
        for row in rows:
            writer.outcome_in_turn(row["id"], _answered())
        await asyncio.sleep(0)
        return rows

    rows = _with_writer(tmp_path, scenario)
    conn = _log(tmp_path)
    for row in rows:
        kept = audit.get(conn, row["id"])
        assert (kept["path"], kept["req_body"], kept["status"], kept["resp_body"]) == (stored_text(row["path"]), b"\x00\xff", 200,
                                                                                      b"done")


def test_an_outcome_goes_to_the_writer_that_wrote_its_row(tmp_path: Path) -> None:
    """A held request's row is the gate's (the thread writer), its outcome the record stage's: written by the thread
    writer, which would otherwise record it interrupted when it stops; the process ends its own rows."""
    async def scenario(writer: OffloadedWriter) -> tuple[dict[str, Any], dict[str, Any]]:
        held, plain = _row("/held"), _row("/plain")
        assert writer.record_intent(held).result(5) is None  # as the gate writes a held request's row
        assert await writer.awaited_intent(plain) is None
        writer.outcome_in_turn(held["id"], _answered(201))
        writer.outcome_in_turn(plain["id"], _answered(202))
        await asyncio.sleep(0)
        return held, plain

    held, plain = _with_writer(tmp_path, scenario)
    conn = _log(tmp_path)
    assert audit.get(conn, held["id"])["status"] == 201 and audit.get(conn, held["id"])["error"] is None
    assert audit.get(conn, plain["id"])["status"] == 202 and audit.get(conn, plain["id"])["error"] is None


def test_a_writer_process_that_dies_refuses_what_it_held_and_the_thread_takes_over(tmp_path: Path) -> None:
    """Killed, the process answers nobody: its waiters are refused (fail closed, never left waiting), rows after are
    written by the thread, and so is the outcome of a row the process had committed."""
    async def scenario(writer: OffloadedWriter) -> tuple[dict[str, Any], dict[str, Any]]:
        committed, later = _row("/before"), _row("/after")
        assert await writer.awaited_intent(committed) is None
        assert writer._process is not None
        os.kill(writer._process.pid, signal.SIGKILL)
        lost = writer.awaited_intent(_row("/lost"))
        with pytest.raises(AuditError, match="writer process ended"):
            await asyncio.wait_for(lost, 10)
        assert writer._process is None
        assert await asyncio.wait_for(writer.awaited_intent(later), 10) is None
        writer.outcome_in_turn(committed["id"], _answered(204))
        writer.outcome_in_turn(later["id"], _answered(205))
        await asyncio.sleep(0)
        return committed, later

    committed, later = _with_writer(tmp_path, scenario)
    conn = _log(tmp_path)
    assert audit.get(conn, committed["id"])["status"] == 204 and audit.get(conn, later["id"])["status"] == 205


def test_a_value_the_pipe_cannot_carry_is_written_by_the_thread_as_before(tmp_path: Path) -> None:
    """An integer past 64 bits cannot be sent to the process: that turn's rows are written by the thread writer, which
    refuses the one whose value SQLite cannot store either and writes the other; neither waits for ever."""
    async def scenario(writer: OffloadedWriter) -> tuple[Any, Any, dict[str, Any]]:
        odd, plain = {**_row("/odd"), "req_body_size": 2 ** 70}, _row("/plain")
        answers = await asyncio.wait_for(asyncio.gather(writer.awaited_intent(odd), writer.awaited_intent(plain),
                                                        return_exceptions=True), 10)
        return answers[0], answers[1], plain

    odd, plain_answer, plain = _with_writer(tmp_path, scenario)
    assert isinstance(odd, AuditError) and plain_answer is None
    assert audit.get(_log(tmp_path), plain["id"])["path"] == "/plain"


def test_stopping_writes_what_was_handed_over_and_ends_the_process(tmp_path: Path) -> None:
    """`close` lets the process write what it was handed, record its rows still in flight as interrupted, and end;
    nothing of it is left running."""
    async def main() -> tuple[dict[str, Any], Any]:
        writer = await _offloaded(tmp_path)
        in_flight = _row("/in-flight")
        process = writer._process
        assert await writer.awaited_intent(in_flight) is None
        writer.close()
        return in_flight, process

    in_flight, process = asyncio.run(main())
    assert process is not None and process.poll() is not None
    assert audit.get(_log(tmp_path), in_flight["id"])["error"] == audit.INTERRUPTED


def test_rows_that_get_no_outcome_are_not_remembered(tmp_path: Path) -> None:
    """The ids of rows awaiting their outcome from the process are remembered until it comes; a row written with its
    outcome (a denial), or refused, gets none, and was remembered for ever: a million denials, ~100 MB."""
    async def scenario(writer: OffloadedWriter) -> OffloadedWriter:
        for _ in range(50):
            denied = {**_row("/denied"), "decision": "deny", "status": 403, "ended": time.time(), "duration_ms": 0.0}
            assert await writer.awaited_intent(denied) is None
        failing = {**_row("/odd"), "req_body_size": 2 ** 70}
        with pytest.raises(AuditError):
            await writer.awaited_intent(failing)
        await asyncio.sleep(0)
        return writer

    assert _with_writer(tmp_path, scenario)._theirs == set()


def test_a_row_larger_than_the_pipe_is_handed_over_whole(tmp_path: Path) -> None:
    """A body of megabytes does not fit the pipe at once: the rest goes as the process takes it, the event loop never
    blocked, and the rows after it arrive whole and in order."""
    body = os.urandom(3 << 20)

    async def scenario(writer: OffloadedWriter) -> list[dict[str, Any]]:
        rows = [{**_row("/large"), "req_body": body}, _row("/after")]
        answers = await asyncio.wait_for(asyncio.gather(*(writer.awaited_intent(r) for r in rows)), 30)
        assert answers == [None, None]
        return rows

    rows = _with_writer(tmp_path, scenario)
    conn = _log(tmp_path)
    assert audit.get(conn, rows[0]["id"])["req_body"] == body and audit.get(conn, rows[1]["id"])["path"] == "/after"


def test_stopping_does_not_wait_for_ever_on_a_stopped_writer_process(tmp_path: Path, monkeypatch: Any) -> None:
    """A writer process stopped (SIGSTOP) or hung while the proxy keeps handing it rows fills its pipe: `close` wrote
    the rest blocking, and so never stopped; it gives up after STOP_SECONDS, kills it, and refuses its waiters."""
    from goex_proxy.audit import offload

    monkeypatch.setattr(offload, "STOP_SECONDS", 1.0)

    async def main() -> tuple[float, list[Any]]:
        writer = await _offloaded(tmp_path)
        assert writer._process is not None
        os.kill(writer._process.pid, signal.SIGSTOP)
        waiters = [writer.awaited_intent({**_row(f"/{i}"), "req_body": os.urandom(64 * 1024)})
                   for i in range(24)]  # more than the pipe's 1 MiB
        await asyncio.sleep(0.1)
        assert writer._out  # the pipe is full
        started = time.monotonic()
        writer.close()
        took = time.monotonic() - started
        await asyncio.sleep(0)
        return took, await asyncio.gather(*waiters, return_exceptions=True)

    took, answers = asyncio.run(asyncio.wait_for(main(), 60))
    assert took < 5
    assert all(isinstance(answer, AuditError) for answer in answers)


def test_one_value_the_pipe_cannot_carry_does_not_take_other_rows_outcomes_from_the_process(tmp_path: Path) -> None:
    """A value that cannot be sent sent its whole turn to the thread: the outcomes of other rows the process wrote
    too, which the process, still holding those rows in flight, then recorded as interrupted over them when it
    stopped. Only what cannot be sent goes to the thread."""
    async def scenario(writer: OffloadedWriter) -> dict[str, Any]:
        row = _row("/plain")
        assert await writer.awaited_intent(row) is None
        writer.outcome_in_turn(row["id"], _answered(203))  # in the same turn as the odd row below
        odd = writer.awaited_intent({**_row("/odd"), "req_body_size": 2 ** 70})
        with pytest.raises(AuditError):
            await asyncio.wait_for(odd, 10)
        await asyncio.sleep(0.5)
        return row

    row = _with_writer(tmp_path, scenario)
    kept = audit.get(_log(tmp_path), row["id"])
    assert (kept["status"], kept["error"]) == (203, None)


def test_the_writer_process_inherits_no_secret_from_the_environment(tmp_path: Path, monkeypatch: Any) -> None:
    """The writer process needs no credential: the vault's key and credentials named by environment variable stay in
    the proxy's own environment."""
    from goex_proxy.credentials import vault

    monkeypatch.setenv(vault.KEY_ENV, "vault-key-secret")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-secret")

    async def scenario(writer: OffloadedWriter) -> bytes:
        assert writer._process is not None
        return Path(f"/proc/{writer._process.pid}/environ").read_bytes()

    environ = _with_writer(tmp_path, scenario)
    assert b"secret" not in environ and b"PATH=" in environ


def test_a_writer_process_that_never_answers_is_taken_for_gone(tmp_path: Path, monkeypatch: Any) -> None:
    """A stopped (SIGSTOP) or hung writer process answered nobody, and every request waited for ever: after
    ANSWER_SECONDS of silence its waiters are refused (fail closed) and the thread writes the rows after."""
    from goex_proxy.audit import offload

    monkeypatch.setattr(offload, "ANSWER_SECONDS", 1.0)

    async def stopped(writer: OffloadedWriter) -> None:
        assert writer._process is not None
        os.kill(writer._process.pid, signal.SIGSTOP)
        with pytest.raises(AuditError, match="writer process ended"):
            await asyncio.wait_for(writer.awaited_intent(_row("/lost")), 10)
        assert writer._process is None

    _then_the_thread_writes(tmp_path, stopped)


def test_an_outcome_from_another_thread_is_not_overwritten_as_interrupted(tmp_path: Path) -> None:
    """The record stage may end a row from a thread (a large exchange's outcome is built off the loop): the outcome
    of a row the process wrote, asked for there, went to the thread writer, and the process, its row still in flight
    for it, recorded it interrupted over the real outcome when it stopped."""
    async def scenario(writer: OffloadedWriter) -> dict[str, Any]:
        row = _row("/from-a-thread")
        assert await writer.awaited_intent(row) is None
        await asyncio.to_thread(writer.record_outcome, row["id"], _answered(206))
        await asyncio.sleep(0.5)
        return row

    row = _with_writer(tmp_path, scenario)
    kept = audit.get(_log(tmp_path), row["id"])
    assert (kept["status"], kept["error"]) == (206, None)


def test_a_message_the_process_cannot_read_ends_it_rather_than_wedging_it(tmp_path: Path) -> None:
    """A value MessagePack sends but cannot read back (a map keyed by a tuple) raised in the process at every read
    after it, the message never taken out: every row after it waited for ever. The process ends instead; its waiters
    are refused and the thread writes the rows after."""
    async def unreadable(writer: OffloadedWriter) -> None:
        with pytest.raises(AuditError):
            await asyncio.wait_for(writer.awaited_intent({**_row("/odd"), "report": {(1, 2): 3}}), 10)

    _then_the_thread_writes(tmp_path, unreadable)


def _then_the_thread_writes(tmp_path: Path, provoke: Any) -> None:
    """Await `provoke(writer)`, which refuses a row and ends the process's part; a row after it is still written."""
    async def scenario(writer: OffloadedWriter) -> dict[str, Any]:
        later = _row("/after")
        await provoke(writer)
        assert await asyncio.wait_for(writer.awaited_intent(later), 10) is None
        return later

    later = _with_writer(tmp_path, scenario)
    assert audit.get(_log(tmp_path), later["id"])["path"] == "/after"


def test_a_sigterm_to_the_whole_group_leaves_the_writer_process_to_the_proxy(tmp_path: Path) -> None:
    """A service manager stops a service by sending SIGTERM to each of its processes: the writer process died at
    once, its rows in flight left for the next start and the outcomes it was handed lost, while the proxy was still
    stopping. It stops when the proxy stops it (or ends: its input closes)."""
    async def scenario(writer: OffloadedWriter) -> tuple[dict[str, Any], dict[str, Any]]:
        first, second = _row("/first"), _row("/second")
        assert await writer.awaited_intent(first) is None
        assert writer._process is not None
        os.kill(writer._process.pid, signal.SIGTERM)
        await asyncio.sleep(0.5)
        assert writer._process is not None and writer._process.poll() is None
        assert await asyncio.wait_for(writer.awaited_intent(second), 10) is None
        assert second["id"] in writer._theirs
        writer.outcome_in_turn(first["id"], _answered(207))
        await asyncio.sleep(0)
        return first, second

    first, second = _with_writer(tmp_path, scenario)
    conn = _log(tmp_path)
    assert audit.get(conn, first["id"])["status"] == 207
    assert audit.get(conn, second["id"])["error"] == audit.INTERRUPTED


def test_the_writer_process_is_hardened_as_the_proxy_is(tmp_path: Path) -> None:
    """The proxy is not dumpable (other processes of its user cannot trace it, read its memory or open its descriptors
    through /proc) and writes no core file; the writer process, which holds the chain key and whose input writes the
    log, was dumpable again (exec resets it), its pipe open to any process of the user through /proc/PID/fd/0."""
    async def scenario(writer: OffloadedWriter) -> str:
        assert writer._process is not None
        return Path(f"/proc/{writer._process.pid}/limits").read_text()

    core = next(line for line in _with_writer(tmp_path, scenario).splitlines() if line.startswith("Max core file size"))
    assert core.split()[4:6] == ["0", "0"], core


def test_the_writer_process_writes_in_one_thread(tmp_path: Path) -> None:
    """The process reads what the proxy hands over and writes it in the same thread: a loop handing its ops to a
    writer thread cost it a wake-up per batch and the two threads' GIL (about a quarter of its CPU per request)."""
    async def scenario(writer: OffloadedWriter) -> list[str]:
        row = _row()
        assert await writer.awaited_intent(row) is None
        writer.outcome_in_turn(row["id"], _answered())
        assert writer._process is not None
        status = Path(f"/proc/{writer._process.pid}/status").read_text().splitlines()
        return [line for line in status if line.startswith("Threads:")]

    assert _with_writer(tmp_path, scenario) == ["Threads:\t1"]


def test_a_writer_without_its_thread_writes_what_is_queued_when_told(tmp_path: Path) -> None:
    """`threaded=False`: nothing is written until `write_queued`, which writes the intents and outcomes queued, in
    order; closing it records the rows still in flight as interrupted, as the thread does when it stops."""
    writer = AuditWriter(tmp_path / "audit.db", Seal(tmp_path), threaded=False)
    answered, left = _row("/answered"), _row("/left")
    written = writer.record_intent(answered)
    writer.record_outcome(answered["id"], _answered(204))
    also = writer.record_intent(left)
    assert not written.done() and not also.done()
    writer.write_queued()
    assert written.result(0) is None and also.result(0) is None
    writer.close()
    conn = _log(tmp_path)
    assert audit.get(conn, answered["id"])["status"] == 204
    assert audit.get(conn, left["id"])["error"] == audit.INTERRUPTED


def _writer_process(tmp: Path) -> subprocess.Popen[bytes]:
    """A writer process started as `OffloadedWriter` starts one, driven here through its pipes; it has said it is
    ready."""
    argv = [sys.executable, "-m", "goex_proxy.audit.offload", str(tmp / "audit.db"), str(tmp), str(os.getpid())]
    process = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, start_new_session=True,
                               env=_child_env())
    _STARTED.append(process)
    assert _answers(process, bytearray()) == ["ready"]
    return process


def _answers(process: subprocess.Popen[bytes], buffer: bytearray) -> list[Any]:
    """The next messages of the writer process (what `_on_answers` reads), within 10 s."""
    assert process.stdout is not None
    while not (messages := list(_frames(buffer))):
        assert select.select([process.stdout], [], [], 10)[0], "the writer process did not answer"
        chunk = os.read(process.stdout.fileno(), 1 << 20)
        assert chunk, "the writer process ended"
        buffer += chunk
    return messages


def _send(process: subprocess.Popen[bytes], ops: list[Any]) -> None:
    assert process.stdin is not None
    process.stdin.write(_frame(ops))
    process.stdin.flush()


def test_the_proxy_ending_while_a_row_is_written_leaves_the_outcomes_it_handed_over_written(tmp_path: Path) -> None:
    """The proxy killed (SIGKILL) while its writer process writes a row: the answer finds the pipe closed, and the
    process ended at once on the broken pipe, its outcomes still unread in its input (handed over just before):
    their rows were recorded interrupted over requests that had ended. It writes what it was handed, then stops."""
    process = _writer_process(tmp_path)
    done, later = _row("/done"), _row("/later")
    _send(process, [["intent", 1, done, None]])
    assert _answers(process, bytearray()) == [[[1, None]]]
    lock = os.open(write_lock(tmp_path / "audit.db"), os.O_RDWR)
    fcntl.flock(lock, fcntl.LOCK_EX)  # the process takes `later` and waits for its turn to write it
    try:
        _send(process, [["intent", 2, later, None]])
        time.sleep(0.3)
        _send(process, [["outcome", done["id"], _answered(208)]])
        assert process.stdin is not None and process.stdout is not None
        process.stdout.close()  # as the proxy's end, killed: nothing reads the answers, and its input ends
        process.stdin.close()
    finally:
        os.close(lock)
    assert process.wait(10) == 0
    conn = _log(tmp_path)
    assert (audit.get(conn, done["id"])["status"], audit.get(conn, done["id"])["error"]) == (208, None)
    assert audit.get(conn, later["id"])["error"] == audit.INTERRUPTED


def test_what_arrived_before_a_message_the_process_cannot_read_is_written(tmp_path: Path) -> None:
    """Messages read together were all unpacked before any was taken: one the process cannot read lost those before
    it, an outcome among them recorded interrupted over a request that had ended. Each is taken as it is read."""
    process = _writer_process(tmp_path)
    done = _row("/done")
    _send(process, [["intent", 1, done, None]])
    assert _answers(process, bytearray()) == [[[1, None]]]
    assert process.stdin is not None
    process.stdin.write(_frame([["outcome", done["id"], _answered(209)]])
                        + _frame([["intent", 2, {**_row("/odd"), "report": {(1, 2): 3}}, None]]))
    process.stdin.flush()
    assert process.wait(10) == 0  # it stops at the message it cannot read, as before
    kept = audit.get(_log(tmp_path), done["id"])
    assert (kept["status"], kept["error"]) == (209, None)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="resource.prlimit of another process")
def test_an_outcome_lost_with_a_failed_write_leaves_its_row_to_be_recorded_interrupted(tmp_path: Path) -> None:
    """An outcome whose transaction failed (a full disk) took its row out of those in flight all the same: the row
    was never ended, not even as interrupted when the writer stopped, and looked as if its request still went on."""
    import resource

    process = _writer_process(tmp_path)
    row = _row("/ended")
    _send(process, [["intent", 1, row, None]])
    assert _answers(process, bytearray()) == [[[1, None]]]
    _, hard = resource.prlimit(process.pid, resource.RLIMIT_FSIZE)
    resource.prlimit(process.pid, resource.RLIMIT_FSIZE, (1, hard))  # no file of it grows: as a full disk
    _send(process, [["outcome", row["id"], {**_answered(), "resp_body": os.urandom(1 << 16)}]])
    _send(process, [["intent", 2, _row("/after"), None]])
    [[(token, answer)]] = _answers(process, bytearray())  # written after the outcome was tried
    assert token == 2 and answer[0] == "error", answer
    resource.prlimit(process.pid, resource.RLIMIT_FSIZE, (hard, hard))
    _send(process, [["stop"]])
    assert process.wait(10) == 0
    kept = audit.get(_log(tmp_path), row["id"])
    assert (kept["status"], kept["error"]) == (None, audit.INTERRUPTED)


async def _linked(first: OffloadedWriter) -> OffloadedWriter:
    """A worker's writer linked to the first's writer process (as `run` hands a worker its link)."""
    link = first.link_worker()
    assert link is not None
    worker = OffloadedWriter(AuditWriter(first.local.path, Seal(first.local.path.parent)), link=link)
    assert worker._ready  # at once: what is sent waits in the link until the process reads it
    return worker


def _shared(tmp_path: Path, scenario: Any) -> Any:
    """What `scenario(first, worker)` gives: the first process's writer, whose process is shared, and a worker's
    linked to it (closed in that order after, as `run` stops: the worker first)."""
    async def main() -> Any:
        first = OffloadedWriter(AuditWriter(tmp_path / "audit.db", Seal(tmp_path)), share=True)
        _STARTED.append(first._process)
        while not first._ready:
            row = _row("/first-warm-up")
            assert await first.awaited_intent(row) is None
            first.outcome_in_turn(row["id"], _answered())
            await asyncio.sleep(0.02)
        worker = await _linked(first)
        try:
            return await scenario(first, worker)
        finally:
            worker.close()
            first.close()

    return asyncio.run(main())


def test_one_writer_process_writes_every_workers_rows(tmp_path: Path) -> None:
    """`run` with workers: the first's writer process writes a worker's rows too, over the link it was handed (no
    process of the worker's own), each row answered to the proxy that handed it over, anchored before, and ended by
    its outcome; a worker's link handed over later (a worker started again) works alike."""
    async def scenario(first: OffloadedWriter, worker: OffloadedWriter) -> list[dict[str, Any]]:
        assert not isinstance(worker._process, subprocess.Popen)
        again = await _linked(first)
        rows = []
        for i in range(12):
            writer = (first, worker, again)[i % 3]
            row = _row(f"/{i}")
            assert await writer.awaited_intent(row) is None
            anchor = Seal(tmp_path).anchor()
            assert anchor is not None and anchor.seq >= 1
            writer.outcome_in_turn(row["id"], _answered(200 + i))
            rows.append(row)
        await asyncio.sleep(0)
        again.close()
        return rows

    rows = _shared(tmp_path, scenario)
    conn = _log(tmp_path)
    assert [audit.get(conn, r["id"])["status"] for r in rows] == [200 + i for i in range(12)]
    assert [r["id"] for r in audit.iter_rows(conn) if r["status"] is None and r["error"] is None] == []


def test_a_worker_whose_link_ends_has_its_rows_in_flight_recorded_interrupted(tmp_path: Path) -> None:
    """A worker that dies (its link ends without a stop) leaves rows whose outcome never comes: the shared writer
    records them interrupted, as a worker's own writer process did when its worker died, and writes on for the
    others."""
    async def scenario(first: OffloadedWriter, worker: OffloadedWriter) -> tuple[dict[str, Any], dict[str, Any]]:
        lost = _row("/lost")
        assert await worker.awaited_intent(lost) is None
        assert worker._process is not None
        worker._process.kill()  # its end of the link closed at once, as a killed worker's is
        await asyncio.sleep(0.5)
        after = _row("/after")
        assert await first.awaited_intent(after) is None
        first.outcome_in_turn(after["id"], _answered(201))
        await asyncio.sleep(0)
        return lost, after

    lost, after = _shared(tmp_path, scenario)
    conn = _log(tmp_path)
    assert audit.get(conn, lost["id"])["error"] == audit.INTERRUPTED
    assert audit.get(conn, after["id"])["status"] == 201


def test_the_shared_writer_outlives_the_first_until_its_workers_stop(tmp_path: Path) -> None:
    """`run` stops its workers as it stops itself: the first's writer may close first, and the shared process goes on
    writing for the workers still linked (their last outcomes, their rows in flight ended), then says so on each link
    before it stops: a worker takes a link that ended without that for a writer that died, and ends its rows itself."""
    import threading

    async def scenario(first: OffloadedWriter, worker: OffloadedWriter) -> tuple[dict[str, Any], dict[str, Any]]:
        done, open_ = _row("/done"), _row("/open")
        assert await worker.awaited_intent(done) is None
        assert await worker.awaited_intent(open_) is None
        closing = threading.Thread(target=first.close)
        closing.start()
        await asyncio.sleep(0.3)
        worker.outcome_in_turn(done["id"], _answered(204))
        worker.close()
        closing.join(20)
        assert not closing.is_alive()
        return done, open_

    async def main() -> tuple[dict[str, Any], dict[str, Any]]:
        first = OffloadedWriter(AuditWriter(tmp_path / "audit.db", Seal(tmp_path)), share=True)
        _STARTED.append(first._process)
        while not first._ready:
            await first.awaited_intent(_row("/warm-up"))
            await asyncio.sleep(0.02)
        return await scenario(first, await _linked(first))

    done, open_ = asyncio.run(main())
    conn = _log(tmp_path)
    assert audit.get(conn, done["id"])["status"] == 204
    assert audit.get(conn, open_["id"])["error"] == audit.INTERRUPTED


def test_a_link_is_handed_over_only_as_one_unix_socket() -> None:
    """What the writer process takes over its control link: one Unix socket with the one byte that marks it; anything
    else is refused and every descriptor that came with it closed."""
    import socket

    from goex_proxy.audit.link import hand_over, received

    ours, theirs = socket.socketpair()
    with ours, theirs:
        a, b = socket.socketpair()
        assert hand_over(ours, a)
        got = received(theirs)
        assert got is not None and got.family == socket.AF_UNIX
        got.close()
        a.close()
        b.close()
        with open(os.devnull, "rb") as f:
            socket.send_fds(ours, [b"w"], [f.fileno()])  # not a socket
            assert received(theirs) is None
            r, w = os.pipe()
            socket.send_fds(ours, [b"x"], [r])  # not the mark
            assert received(theirs) is None
            os.close(r)
            os.close(w)
        ours.close()
        assert received(theirs) is None  # the first process closed its end


#: The first process of a `run`, alone: its writer process shared, one link to it sent back (SCM_RIGHTS) over the
#: socket whose descriptor is argv[2]; then it waits to be killed.
_FIRST = """
import asyncio, socket, sys, time
from pathlib import Path
from goex_proxy.audit.offload import OffloadedWriter
from goex_proxy.audit.seal import Seal
from goex_proxy.audit.writer import AuditWriter
tmp, back = Path(sys.argv[1]), socket.socket(fileno=int(sys.argv[2]))
first = OffloadedWriter(AuditWriter(tmp / "audit.db", Seal(tmp)), share=True)
link = first.link_worker()
socket.send_fds(back, [b"l"], [link.fileno()])
time.sleep(600)
"""


def test_a_killed_first_process_leaves_its_workers_time_to_hand_over_their_last_outcomes(tmp_path: Path) -> None:
    """The first process of a `run` killed (SIGKILL, the OOM killer): its writer process is sent SIGTERM
    (PR_SET_PDEATHSIG) as its workers are, and the workers stop, handing over the outcomes of the requests they
    answered meanwhile. The shared writer stopped at once, recording every row in flight interrupted, and the outcome
    a worker handed over after that was written by no one (its thread does not write over an outcome): an agent had its
    answer, its row said its request was interrupted. (Each worker's writer process of its own lived until its
    worker closed it.)"""
    import socket

    ours, theirs = socket.socketpair()
    helper = subprocess.Popen([sys.executable, "-c", _FIRST, str(tmp_path), str(theirs.fileno())],
                              pass_fds=(theirs.fileno(),))
    theirs.close()
    try:
        _, fds, _, _ = socket.recv_fds(ours, 4, 1)
        assert len(fds) == 1
        link = socket.socket(fileno=fds[0])

        async def main() -> dict[str, Any]:
            worker = OffloadedWriter(AuditWriter(tmp_path / "audit.db", Seal(tmp_path)), link=link)
            assert worker._ready  # a link is ready at once: what is sent waits in it
            row = _row("/answered-as-run-dies")
            assert await worker.awaited_intent(row) is None  # committed: its request goes upstream
            helper.kill()
            helper.wait()
            time.sleep(0.5)  # the worker, sent SIGTERM too, busy stopping: its request answered meanwhile
            worker.outcome_in_turn(row["id"], _answered(201))
            worker._hand_over()  # in the turn it was answered, before the loop reads whatever the link says
            await asyncio.sleep(0.05)
            worker.close()
            return row

        row = asyncio.run(main())
    finally:
        ours.close()
        if helper.poll() is None:
            helper.kill()
            helper.wait()
    kept = audit.get(_log(tmp_path), row["id"])
    assert (kept["status"], kept["error"]) == (201, None)


def test_a_worker_whose_link_is_past_descriptor_1023_stops_cleanly(tmp_path: Path) -> None:
    """A worker is handed its link with the descriptor number it had in the first process (pass_fds), and a first
    process serving over a thousand connections (the proxy raises its open-file limit for them) hands a worker it
    starts again one past 1023, which `select` refuses (ValueError): the worker's `close` raised, its last rows
    neither handed over nor ended."""
    import resource
    import socket

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 2100:
        pytest.skip("needs an open-file limit past 2,100")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 2100) if hard == resource.RLIM_INFINITY else hard, hard))
    try:
        async def main() -> dict[str, Any]:
            first = OffloadedWriter(AuditWriter(tmp_path / "audit.db", Seal(tmp_path)), share=True)
            _STARTED.append(first._process)
            while not first._ready:
                await first.awaited_intent(_row("/warm-up"))
                await asyncio.sleep(0.02)
            link = first.link_worker()
            assert link is not None
            high = os.dup2(link.fileno(), 2048)
            link.close()
            worker = OffloadedWriter(AuditWriter(tmp_path / "audit.db", Seal(tmp_path)), link=socket.socket(fileno=high))
            row = _row("/last")
            assert await worker.awaited_intent(row) is None
            worker.outcome_in_turn(row["id"], _answered(202))
            try:
                worker.close()
            finally:
                first.close()
            return row

        row = asyncio.run(main())
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert audit.get(_log(tmp_path), row["id"])["status"] == 202


def test_the_shared_writer_forgets_a_workers_rows_that_get_no_outcome(tmp_path: Path) -> None:
    """The shared writer remembers each worker's rows awaiting an outcome, to end them if its link ends; a row a cap
    refused (or whose write failed) gets none, and was remembered for as long as the worker ran: a million refusals,
    ~100 MB of the writer process's (as `OffloadedWriter._theirs` once was)."""
    import socket

    from goex_proxy.audit.offload import _answer_all, _Peer, _read_peer

    writer = AuditWriter(tmp_path / "audit.db", Seal(tmp_path), threaded=False)
    ours, theirs = socket.socketpair()
    try:
        theirs.setblocking(False)
        peer = _Peer(theirs.fileno(), theirs.fileno(), theirs)
        capped = ["bot", ["r/post"], time.time(), [["r/post", 0, None, "ever"]]]
        refused = [["intent", i, _row(f"/refused{i}"), capped] for i in range(20)]
        ours.sendall(_frame(refused))
        asked: list[Any] = []
        assert _read_peer(peer, writer, asked)
        writer.write_queued()
        _answer_all(asked)
        answers = list(_frames(bytearray(ours.recv(1 << 20))))
        assert len(answers[0]) == 20 and all(result is not None for _, result in answers[0]), answers
        assert peer.rows == set()
    finally:
        ours.close()
        theirs.close()
        writer.close()


@contextlib.contextmanager
def _shared_writer(tmp_path: Path, count: int) -> Iterator[tuple[AuditWriter, dict[int, Any], list[Any], int, int]]:
    """A writer as the shared writer process has it, without the process: the first's input (a pipe it sends nothing
    on), `count` workers' links (socket pairs, the writer's ends as peers), and the wake pipe; all closed after."""
    import socket

    from goex_proxy.audit import offload

    writer = AuditWriter(tmp_path / "audit.db", Seal(tmp_path), threaded=False)
    links = [socket.socketpair() for _ in range(count)]
    wake_r, wake_w = os.pipe()
    first_r, first_w = os.pipe()
    try:
        peers = {0: offload._Peer(first_r, first_w)}
        for _, theirs in links:
            theirs.setblocking(False)
            peers[theirs.fileno()] = offload._Peer(theirs.fileno(), theirs.fileno(), theirs)
        yield writer, peers, links, wake_r, wake_w
    finally:
        for fd in (wake_r, wake_w, first_r, first_w):
            os.close(fd)
        for pair in links:
            for sock in pair:
                sock.close()
        writer.close()


def test_a_worker_flooding_its_link_does_not_hold_up_another_workers_rows(tmp_path: Path, monkeypatch: Any) -> None:
    """A worker whose agent sends large bodies without pause has more on its link than one transaction should hold:
    the shared writer reads a turn's worth of each link and writes it with the other workers' rows, the rest in the
    next turns (read whole, it kept every other worker's requests waiting behind one transaction of it all)."""
    from goex_proxy.audit import offload

    monkeypatch.setattr(offload, "PEER_TURN_BYTES", 16 << 10)  # what fits a socket's buffer here, a few times over
    with _shared_writer(tmp_path, 2) as (writer, peers, links, wake_r, _):
        flood = [_frame([["intent", i, _row(f"/flood/{i}") | {"req_body": os.urandom(2000)}, None]])
                 for i in range(40)]
        links[0][0].sendall(b"".join(flood))  # ~90 KB: within the socket's buffer, so it is all there at once
        links[1][0].sendall(_frame([["intent", 0, _row("/other"), None]]))
        turns = []
        while len(turns) < 20 and sum(len(t) for t in turns) < 41:
            asked, _, stop = offload._read_ops(peers, [], writer, wake_r, os.getppid(), 1.0)
            assert not stop
            writer.write_queued()
            turns.append([(peer.read_fd, token) for peer, token, *_ in asked])
        other = links[1][1].fileno()
        assert (other, 0) in turns[0]  # with the first turn of the flood, not after all of it
        assert len(turns[0]) <= 1 + (16 << 10) // 2000 + 1, len(turns[0])
        assert sorted(token for turn in turns for fd, token in turn if fd != other) == list(range(40))  # none lost
    conn = _log(tmp_path)
    assert sum(1 for _ in audit.iter_rows(conn)) == 41


def _turns(peers: dict[int, Any], writer: AuditWriter, wake_r: int, parent: int, until: Any,
           stopping: bool = False) -> list[list[tuple[int, int]]]:
    """The shared writer's turns (as `_serve` takes them) until `until(turns)`: each the (link, token) of its rows."""
    from goex_proxy.audit import offload

    turns: list[list[tuple[int, int]]] = []
    while not until(turns):
        assert len(turns) < 50, turns
        asked, _, _ = offload._read_ops(peers, [], writer, wake_r, parent, 1.0, stopping)
        writer.write_queued()
        offload._answer_all(asked)
        turns.append([(peer.read_fd, token) for peer, token, *_ in asked])
    return turns


@pytest.mark.parametrize("ending", ["stop", "end of the link", "none"])
def test_what_is_past_one_turn_of_a_link_comes_whole_and_in_order(tmp_path: Path, monkeypatch: Any,
                                                                    ending: str) -> None:
    """A frame larger than a turn, outcomes after their rows, a stop or the link's end past a turn's bytes: taken in
    later turns, each outcome after its row, nothing lost or left unread, and the other link's row in the first."""
    import socket

    from goex_proxy.audit import offload

    monkeypatch.setattr(offload, "PEER_TURN_BYTES", 16 << 10)
    big = _row("/big") | {"req_body": os.urandom(60_000)}  # one frame, almost four turns
    rows = [big] + [_row(f"/after/{i}") | {"req_body": os.urandom(2000)} for i in range(10)]
    with _shared_writer(tmp_path, 2) as (writer, peers, links, wake_r, _):
        sent = [_frame([["intent", i, row, None], ["outcome", row["id"], _answered(200 + i)]])
                for i, row in enumerate(rows)]
        sent += [_frame([["stop"]])] if ending == "stop" else []
        links[0][0].sendall(b"".join(sent))  # ~85 KB: in the socket's buffer at once
        if ending == "end of the link":
            links[0][0].shutdown(socket.SHUT_WR)
        links[1][0].sendall(_frame([["intent", 0, _row("/other"), None]]))
        flood = links[0][1].fileno()
        turns = _turns(peers, writer, wake_r, os.getppid(),
                       lambda t: sum(len(x) for x in t) >= 12 and (ending == "none" or peers[flood].ended))
        assert (links[1][1].fileno(), 0) in turns[0]
        assert [token for turn in turns for fd, token in turn if fd == flood] == list(range(11))
        assert peers[flood].incoming == b""
        assert peers[flood].rows == set()  # every row's outcome came
    conn = _log(tmp_path)
    written = {r["id"]: r["status"] for r in audit.iter_rows(conn)}
    assert [written[row["id"]] for row in rows] == [200 + i for i in range(11)]


def test_the_first_processs_pipe_past_one_turn_comes_whole(tmp_path: Path, monkeypatch: Any) -> None:
    """The first process's input (a pipe, not a link) is read a turn at a time as the links are, nothing lost."""
    from goex_proxy.audit import offload

    monkeypatch.setattr(offload, "PEER_TURN_BYTES", 8 << 10)
    writer = AuditWriter(tmp_path / "audit.db", Seal(tmp_path), threaded=False)
    wake_r, wake_w = os.pipe()
    first_r, first_w = os.pipe()
    answers_r, answers_w = os.pipe()
    os.set_blocking(first_r, False)
    rows = [_row(f"/p/{i}") | {"req_body": os.urandom(2000)} for i in range(20)]
    try:
        peers = {0: offload._Peer(first_r, answers_w)}
        os.write(first_w, b"".join(_frame([["intent", i, row, None]]) for i, row in enumerate(rows)))  # ~42 KB
        os.close(first_w)
        first_w = -1
        turns = _turns(peers, writer, wake_r, os.getppid(), lambda t: peers[0].ended)
        assert len(turns) >= 4
        assert [token for turn in turns for _, token in turn] == list(range(20))
        told = list(_frames(bytearray(os.read(answers_r, 1 << 16))))
        assert [token for answer in told for token, _ in answer] == list(range(20))  # each answered, in turn
    finally:
        for fd in (wake_r, wake_w, first_r, first_w, answers_r, answers_w):
            if fd >= 0:
                os.close(fd)
        writer.close()
    assert sum(1 for _ in audit.iter_rows(_log(tmp_path))) == 20


def test_the_proxys_end_takes_everything_past_a_turn_at_once(tmp_path: Path, monkeypatch: Any) -> None:
    """Told that the proxy ended (its SIGTERM through the wake pipe, its parent gone), the writer reads every link
    whole in that same call: it stops after writing them, with nothing left in a socket."""
    from goex_proxy.audit import offload

    monkeypatch.setattr(offload, "PEER_TURN_BYTES", 16 << 10)
    with _shared_writer(tmp_path, 1) as (writer, peers, [(ours, _)], wake_r, wake_w):
        os.set_blocking(wake_r, False)
        ours.sendall(b"".join(_frame([["intent", i, _row(f"/f/{i}") | {"req_body": os.urandom(2000)}, None]])
                              for i in range(40)))
        os.write(wake_w, b"\x0f")
        asked, _, stop = offload._read_ops(peers, [], writer, wake_r, os.getppid() + 1, 1.0)  # not our parent: ended
        assert stop
        assert [token for _, token, *_ in asked] == list(range(40))
        writer.write_queued()
    assert sum(1 for _ in audit.iter_rows(_log(tmp_path))) == 40
