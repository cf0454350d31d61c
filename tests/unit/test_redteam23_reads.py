"""Found by a red team of d98043f (reads forwarded as their rows are handed to the writer process): ways reads went
unrecorded, or their outcomes were lost, beyond what README "## The audit log" admits. Each test failed on that
commit; its docstring says what happened then, and what holds now ("Correct")."""

from __future__ import annotations

import asyncio
import fcntl
import os
import resource
import signal
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from goex_proxy.audit import store as audit
from goex_proxy.audit.offload import OffloadedWriter
from goex_proxy.audit.seal import ANCHOR_FILE, Seal
from goex_proxy.errors import AuditError, NotFound
from goex_proxy.policy.engine import Limit
from goex_proxy.policy.limits import Charge
from tests.unit.test_audit_offload import _answered, _row, _with_writer

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="resource.prlimit of another process")


async def _until(check: Any, within: float = 20.0) -> None:
    deadline = time.monotonic() + within
    while not check():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)


def _as_the_record_stage_would(writer: OffloadedWriter, row: dict[str, Any]) -> asyncio.Future[Any] | None:
    """What `Record.request` does with an allowed, unlimited, small GET: handed over unwaited while `failing` is None
    (the request goes on at once), else waited for (and refused if the log cannot take it)."""
    if writer.failing is None:
        writer.read_intent(row)
        return None
    return writer.awaited_intent(row)


def _stored(tmp_path: Path, request_id: str) -> bool:
    conn = audit.open_db(tmp_path / "audit.db", readonly=True)
    try:
        audit.get(conn, request_id)
        return True
    except NotFound:
        return False
    finally:
        conn.close()


@linux_only
def test_a_nearly_full_disk_lets_an_agent_send_large_reads_unrecorded_one_after_another(tmp_path: Path) -> None:
    """Was a hole. The log has room for a small row but not a large one (a disk the agent filled from its workspace, which
    shares the log's disk, to just short of full). The agent sends a GET whose row is large (a 64 KiB body, the default
    `max_body_bytes`): forwarded unwaited, its row fails, `failing` is set. Then any small row that fits (the agent's
    own tiny GET, now waited for, or another agent's) clears `failing`, and the next large GET goes out unwaited and
    unrecorded again: one large unrecorded read per round trip, for as long as the agent likes.

    Correct: once a read's row could not be written, reads are not forwarded before their commit again until a row of
    that kind (that size) has been written, or the failed read's row is retried and written; at most the reads sent
    before the proxy heard of the first failure go unrecorded (README)."""
    async def scenario(writer: OffloadedWriter) -> list[str]:
        assert writer._process is not None
        wal = tmp_path / "audit.db-wal"
        assert await writer.awaited_intent(_row("/settled")) is None  # everything handed over before is written
        _, hard = resource.prlimit(writer._process.pid, resource.RLIMIT_FSIZE)
        # room for two small rows (~37 KiB of WAL each), never for a large one (~111 KiB)
        resource.prlimit(writer._process.pid, resource.RLIMIT_FSIZE, (wal.stat().st_size + 100 * 1024, hard))
        unrecorded: list[str] = []
        for round_ in range(2):
            large = {**_row(f"/exfil{round_}"), "req_body": os.urandom(64 * 1024)}
            waited = _as_the_record_stage_would(writer, large)
            if waited is None:  # forwarded before its commit
                await _until(lambda: not writer._reads)  # answered
                if not _stored(tmp_path, large["id"]):
                    unrecorded.append(large["id"])
            else:
                with pytest.raises(AuditError):
                    await waited
            # a small row that fits: the log "took a row again"
            small = _as_the_record_stage_would(writer, _row(f"/tiny{round_}"))
            if small is not None:
                assert await small is None
            else:
                await _until(lambda: not writer._reads)
        resource.prlimit(writer._process.pid, resource.RLIMIT_FSIZE, (hard, hard))
        return unrecorded

    unrecorded = _with_writer(tmp_path, scenario)
    assert len(unrecorded) <= 1, (f"{len(unrecorded)} large reads went upstream unrecorded, each after the proxy knew "
                                  "the log could not take such a row")


@linux_only
def test_a_cap_refusal_clears_failing_while_the_log_takes_no_row(tmp_path: Path) -> None:
    """Was a hole. `_on_answers` sets `_failing = None` for any answer that is not an error, and a cap's refusal (a string:
    the row was NOT written) is one. With the log refusing every row (a full disk: `failing` set), a request over a
    limit counted across workers (the agent used up its limit through another worker) is refused by the writer
    process's cap check, a transaction that writes nothing and so succeeds: `failing` goes back to None, and the reads
    handed over until the next error answer (the stage's denial row, which fails too) go upstream unrecorded, after
    the proxy already knew the log failed. (The thread writer keeps `failing`: it clears it only when it inserts a
    row.)

    Correct: `failing` is cleared only by an answer saying a row was written (None), not by a cap's refusal."""
    async def scenario(writer: OffloadedWriter) -> tuple[str | None, str | None, bool]:
        assert writer._process is not None
        cap = Charge("bot", ("p/limited",), time.time(), (("p/limited", Limit(1, 3600.0, "hour")),))
        assert await writer.awaited_intent(_row("/first-hit"), cap) is None  # the one hit allowed
        _, hard = resource.prlimit(writer._process.pid, resource.RLIMIT_FSIZE)
        resource.prlimit(writer._process.pid, resource.RLIMIT_FSIZE, (1, hard))  # the disk is full
        writer.read_intent({**_row("/lost-while-unknown"), "req_body": os.urandom(1 << 16)})
        await _until(lambda: writer.failing is not None)
        before = writer.failing
        over = Charge("bot", ("p/limited",), time.time(), cap.caps)
        refused = await writer.awaited_intent(_row("/over-the-cap"), over)
        assert refused is not None and "limit reached" in refused  # refused by the cap: nothing written
        after = writer.failing
        sneaked = _row("/sent-after-the-proxy-knew")
        went_unwaited = _as_the_record_stage_would(writer, sneaked) is None
        if went_unwaited:
            await _until(lambda: not writer._reads)
        resource.prlimit(writer._process.pid, resource.RLIMIT_FSIZE, (hard, hard))
        return before, after, went_unwaited and not _stored(tmp_path, sneaked["id"])

    before, after, unrecorded = _with_writer(tmp_path, scenario)
    assert before is not None
    assert after is not None, "a cap's refusal (no row written) cleared `failing` while the log took no row"
    assert not unrecorded


def test_reads_handed_to_a_process_that_died_are_lost_when_the_proxy_stops_before_it_noticed(tmp_path: Path) -> None:
    """Was a hole. The writer process dies (OOM killer, a crash) with reads it never answered, and the proxy stops before its
    loop read the end of the process's output (`_gone` never ran). `close()` finds the pipe broken and the process
    already ended, but counts it as killed only when `wait` timed out: the unanswered reads are dropped
    (`self._reads.clear()`), never written by the thread. Their requests went upstream; the log has no row of them.

    Correct (README: "a writer process that dies has the proxy's own thread write them"): a process that ended without
    answering (returncode != 0, or no answer for a token) has its unanswered reads written by the thread, as `_gone`
    does."""
    async def scenario(writer: OffloadedWriter) -> list[dict[str, Any]]:
        process = writer._process
        assert process is not None
        os.kill(process.pid, signal.SIGSTOP)  # it takes nothing more from its input
        rows = [_row(f"/unanswered{i}") for i in range(3)]
        for row in rows:
            writer.read_intent(row)
        await asyncio.sleep(0)  # handed over: in the pipe; the requests went upstream
        writer.outcome_in_turn(rows[0]["id"], _answered(201))
        await asyncio.sleep(0)
        os.kill(process.pid, signal.SIGKILL)
        process.wait()  # dead; the loop has not run `_on_answers` since
        return rows  # `_with_writer` closes the writer now, as `run` stopping would

    rows = _with_writer(tmp_path, scenario)
    missing = [row["path"] for row in rows if not _stored(tmp_path, row["id"])]
    assert not missing, f"reads forwarded with no row in the log: {missing}"


@linux_only
def test_a_read_answered_unanchored_has_its_real_outcome_overwritten_as_interrupted(tmp_path: Path) -> None:
    """Was a hole. A read's row is committed but its anchor cannot be kept (the anchor's lock held past LOCK_WAIT_S by a
    stopped process): the writer process answers it as an error although the row IS in the log. The proxy takes it for
    unwritten (`_theirs.discard`), so the outcome (a slow upstream: it comes after the answer) goes to the thread
    writer, which finds the row and writes it. But the writer process still has the row in `_pending` (unlike a waited
    intent, it queues no outcome for an unanchored read), and when it stops `_interrupt` writes `interrupted` over the
    real outcome. It writes only the columns `interrupted` has, over the thread's status and body, so the row ends with
    status 200 AND error `interrupted`, and its outcome hash covers only the latter: `goex-proxy log verify` reports
    the row as edited (a broken chain), with no attacker touching the database.

    Correct: the row's one outcome is the real one (the process lets go of an unwaited row it answered as failed, or
    the proxy sends the outcome to the process that holds the row)."""
    async def scenario(writer: OffloadedWriter) -> dict[str, Any]:
        lock = os.open(tmp_path / f".{ANCHOR_FILE}.lock", os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(lock, fcntl.LOCK_EX)  # as a goex-proxy process stopped with Ctrl-Z while holding it
        try:
            row = _row("/slow-upstream")
            writer.read_intent(row)
            await _until(lambda: writer.failing is not None, within=30)  # after LOCK_WAIT_S (10 s)
            assert _stored(tmp_path, row["id"])  # committed all the same
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
            os.close(lock)
        writer.outcome_in_turn(row["id"], _answered(200))  # the upstream answers now
        await asyncio.sleep(0)
        conn = audit.open_db(tmp_path / "audit.db", readonly=True)
        try:
            await _until(lambda: audit.get(conn, row["id"])["status"] == 200)
        finally:
            conn.close()
        return row

    row = _with_writer(tmp_path, scenario)  # then the proxy stops
    conn = audit.open_db(tmp_path / "audit.db", readonly=True)
    kept = audit.get(conn, row["id"])
    result = audit.verify(conn, audit.chain_key(conn, Seal(tmp_path)), Seal(tmp_path).anchor())
    assert (kept["status"], kept["error"]) == (200, None), f"the read's outcome was overwritten: {kept['error']!r}"
    assert result.broken_id is None, f"`log verify` fails on the read's row: {result}"
