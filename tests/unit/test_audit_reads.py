"""Reads' rows handed to the writer process without waiting for their commit (`OffloadedWriter.read_intent`): written
with their outcomes, gathered while more keep coming, never lost with the process, and a log that fails to take one
makes the record stage wait again."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from goex_proxy.audit import offload
from goex_proxy.audit import store as audit
from goex_proxy.audit.offload import OffloadedWriter, _frame, _gathered
from tests.unit.test_audit_offload import (
    _answered,
    _answers,
    _log,
    _row,
    _send,
    _shared_writer,
    _with_writer,
    _writer_process,
)


def test_a_read_and_its_outcome_are_written_together_and_answered(tmp_path: Path) -> None:
    """A read is answered as an intent is (committed: None), and its outcome, come with it, is in its row."""
    process = _writer_process(tmp_path)
    row = _row("/read")
    _send(process, [["read", 1, row], ["outcome", row["id"], _answered(203)]])
    assert _answers(process, bytearray()) == [[[1, None]]]
    _send(process, [["stop"]])
    assert process.wait(10) == 0
    kept = audit.get(_log(tmp_path), row["id"])
    assert (kept["status"], kept["error"], kept["resp_body"]) == (203, None, b"done")


def test_reads_through_the_offloaded_writer_are_written_with_their_outcomes(tmp_path: Path) -> None:
    """The record stage's reads go to the process, nobody waits for them, and their outcomes follow them there."""
    async def scenario(writer: OffloadedWriter) -> list[dict[str, Any]]:
        rows = [_row(f"/r{i}") for i in range(30)]
        for i, row in enumerate(rows):
            writer.read_intent(row)
            if i % 3:  # some outcomes in the same turn as their row, some a turn later
                await asyncio.sleep(0)
            writer.outcome_in_turn(row["id"], _answered(200 + i))
        assert not writer._waiters  # nothing waits
        deadline = time.monotonic() + 10
        while writer._reads and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        assert not writer._reads and writer.failing is None  # every read answered, written
        return rows

    rows = _with_writer(tmp_path, scenario)
    conn = _log(tmp_path)
    assert [audit.get(conn, row["id"])["status"] for row in rows] == [200 + i for i in range(30)]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="resource.prlimit of another process")
def test_a_read_the_log_cannot_take_keeps_reads_waiting_until_it_is_written(tmp_path: Path) -> None:
    """The process says a read was not written (a full disk): `failing` says why, and the record stage waits for
    every row (and is refused while the log cannot take it). A small row written meanwhile does not end that: the
    read is kept, with its outcome, and handed over again until the log takes it too."""
    import resource

    async def scenario(writer: OffloadedWriter) -> tuple[str | None, str | None, dict[str, Any]]:
        assert writer._process is not None and writer.failing is None
        _, hard = resource.prlimit(writer._process.pid, resource.RLIMIT_FSIZE)
        resource.prlimit(writer._process.pid, resource.RLIMIT_FSIZE, (1, hard))  # no file of it grows
        lost = {**_row("/lost"), "req_body": os.urandom(1 << 16)}
        writer.read_intent(lost)
        deadline = time.monotonic() + 10
        while writer.failing is None and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        said = writer.failing
        assert lost["id"] not in writer._theirs and not writer.takes_reads()
        writer.outcome_in_turn(lost["id"], _answered(206))  # kept with it
        resource.prlimit(writer._process.pid, resource.RLIMIT_FSIZE, (hard, hard))
        assert await writer.awaited_intent(_row("/room-again")) is None
        deadline = time.monotonic() + 10
        while writer.failing is not None and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        # written with its outcome: no outcome is to come for it (an id kept there stayed for the process's life)
        assert lost["id"] not in writer._theirs and not writer._unrecorded and not writer._again
        return said, writer.failing, lost

    said, after, lost = _with_writer(tmp_path, scenario)
    assert said is not None and "audit write failed" in said
    assert after is None
    kept = audit.get(_log(tmp_path), lost["id"])
    assert (kept["status"], kept["req_body"]) == (206, lost["req_body"])


def test_reads_a_killed_process_never_answered_are_written_by_the_thread(tmp_path: Path) -> None:
    """The process ends before it says whether it wrote a read: the read's request went on, so its row is written by
    the thread, and its outcome after it (a read is never refused as an unanswered intent is)."""
    async def scenario(writer: OffloadedWriter) -> list[dict[str, Any]]:
        assert writer._process is not None
        os.kill(writer._process.pid, signal.SIGSTOP)  # it reads nothing more, answers nothing
        rows = [_row(f"/unanswered{i}") for i in range(3)]
        for row in rows:
            writer.read_intent(row)
        await asyncio.sleep(0)  # handed over
        writer.outcome_in_turn(rows[0]["id"], _answered(201))  # one outcome before it ends, the rest after
        await asyncio.sleep(0)
        os.kill(writer._process.pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while writer._process is not None and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        assert writer._process is None and not writer._reads
        for row in rows[1:]:
            writer.outcome_in_turn(row["id"], _answered(202))
        return rows

    rows = _with_writer(tmp_path, scenario)
    conn = _log(tmp_path)
    kept = [audit.get(conn, row["id"]) for row in rows]
    assert [(r["status"], r["error"]) for r in kept] == [(201, None), (202, None), (202, None)]


# The gathering itself, driven in this process as the shared writer reads a worker's link (`_shared_writer`).

def test_a_row_waited_for_ends_the_gathering_at_once(tmp_path: Path, monkeypatch: Any) -> None:
    """A request waiting for its row's commit is never held back by reads waiting for company."""
    monkeypatch.setattr(offload, "GATHER_SECONDS", 30.0)
    monkeypatch.setattr(offload, "GATHER_GAP_SECONDS", 30.0)
    with _shared_writer(tmp_path, 1) as (writer, peers, links, wake_r, _):
        mine = links[0][0]
        mine.sendall(_frame([["read", 1, _row("/r")]]))
        asked, _, _ = offload._read_ops(peers, [], writer, wake_r, os.getppid(), 5)
        mine.sendall(_frame([["intent", 2, _row("/w"), None]]))
        began = time.monotonic()
        asked, stop = _gathered(asked, peers, [], writer, wake_r, os.getppid(), None)
        assert time.monotonic() - began < 5 and not stop
        assert [(token, waited) for _, token, _, waited in asked] == [(1, False), (2, True)]


def test_reads_gather_while_more_keep_coming_and_an_idle_link_ends_it(tmp_path: Path, monkeypatch: Any) -> None:
    """Reads coming one after another, each within the gap of the one before, share one transaction (up to
    GATHER_SECONDS); when nothing more comes within the gap, the gathering ends then, not at GATHER_SECONDS."""
    monkeypatch.setattr(offload, "GATHER_SECONDS", 30.0)
    monkeypatch.setattr(offload, "GATHER_GAP_SECONDS", 1.0)
    with _shared_writer(tmp_path, 1) as (writer, peers, links, wake_r, _):
        mine = links[0][0]

        def send_slowly() -> None:
            for token in range(2, 7):
                time.sleep(0.1)
                mine.sendall(_frame([["read", token, _row(f"/r{token}")]]))

        mine.sendall(_frame([["read", 1, _row("/r1")]]))
        asked, _, _ = offload._read_ops(peers, [], writer, wake_r, os.getppid(), 5)
        sender = threading.Thread(target=send_slowly)
        sender.start()
        began = time.monotonic()
        asked, _ = _gathered(asked, peers, [], writer, wake_r, os.getppid(), None)
        took = time.monotonic() - began
        sender.join()
        assert [token for _, token, _, _ in asked] == [1, 2, 3, 4, 5, 6]
        assert 1.0 <= took < 20  # the last came, then a gap of nothing
