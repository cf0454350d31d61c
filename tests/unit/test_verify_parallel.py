"""`log verify` in several processes at once: what it finds, row for row, is what one pass finds, wherever in the
ranges an edit, a removal, a gap or the anchor falls."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from typing import Any

import pytest

from goex_proxy.audit import parallel
from goex_proxy.audit import store as audit
from goex_proxy.audit.seal import Seal
from goex_proxy.ids import packed
from goex_proxy.policy.engine import Limit
from goex_proxy.policy.limits import Charge
from tests.unit.test_prune import DAY, NOW, Log


@pytest.fixture
def log(tmp_path):  # type: ignore[no-untyped-def]
    made = Log(tmp_path)
    yield made
    made.writer.close()


def _both(log: Log) -> tuple[audit.VerifyResult, audit.VerifyResult]:
    """The log verified in one pass here and in three processes (the ranges fall at every third of its seqs)."""
    seal = Seal(log.home)
    conn = audit.open_db(log.home / "a.db", readonly=True)
    try:
        key, anchor = audit.chain_key(conn, seal), seal.anchor()
        return audit.verify(conn, key, anchor), parallel.verify(conn, key, anchor, processes=3)
    finally:
        conn.close()


def _filled(log: Log) -> list[str]:
    """30 rows (seqs 1-30, so the three ranges are 1-10, 11-20 and 21-30): the oldest ten pruned but the fourth
    (undoable) and the sixth (charged), so that gaps fall in the first range; a row charged in each range; the
    newest row anchored. Left: seqs 4, 6 and 11-30."""
    ids = []
    for i in range(30):
        charge = Charge("bot", ("p/yearly",), NOW - (200 - i) * DAY, (("p/yearly", Limit(50, 365 * DAY, "year")),)) \
            if i % 10 == 5 else None
        ids.append(log.add(200 - i if i < 10 else 1, undo_class="exact" if i == 3 else "irreversible",
                           charge=charge))
    log.prune(90, {"p/yearly": 365 * DAY})
    return ids


def _sql(statement: str, *params: object) -> Callable[[Log], None]:
    def run(log: Log) -> None:
        with sqlite3.connect(log.home / "a.db") as conn:
            conn.execute(statement, params)
    return run


def _row_at(index: int, statement: str) -> Callable[[Log, list[str]], None]:
    """`statement` run on the index-th row left after the prune (its id as the one parameter)."""
    def run(log: Log, ids: list[str]) -> None:
        _sql(statement, packed(log.left()[index]))(log)
    return run


@pytest.mark.parametrize("damage", [
    None,
    _row_at(1, "UPDATE requests SET path = '/edited' WHERE id = ?"),                 # seq 6: first range, after a gap
    _row_at(6, "UPDATE requests SET path = '/edited' WHERE id = ?"),                 # seq 15: the middle one
    _row_at(11, "DELETE FROM requests WHERE id = ?"),                                # seq 20: the middle one's last
    _row_at(-1, "DELETE FROM requests WHERE id = ?"),                                # the anchored row
    _row_at(19, "UPDATE requests SET status = 201 WHERE id = ?"),                    # an outcome, last range
    lambda log, ids: _sql("DELETE FROM limit_hits WHERE request_id = ?", ids[25])(log),  # a hit, not a row
    lambda log, ids: _sql("UPDATE audit_gaps SET rows = rows + 1")(log),             # a forged gap
], ids=["intact", "edit-first", "edit-middle", "removed", "anchor-gone", "outcome", "limit-hit", "gap"])
def test_verify_in_processes_finds_what_one_pass_finds(log: Log, damage) -> None:  # type: ignore[no-untyped-def]
    ids = _filled(log)
    if damage is not None:
        damage(log, ids)
    serial, split = _both(log)
    assert split == serial
    assert (serial.broken_id is None) == (damage is None), serial
    if damage is None:
        assert serial.pruned > 0 and serial.anchored and serial.checked == len(log.left())


def test_a_large_log_is_checked_by_one_process_per_core(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(parallel.os, "sched_getaffinity", lambda _pid: set(range(4)))
    assert [parallel.processes_for(n) for n in (10, 99_999, 100_000, 150_000, 10_000_000)] == [1, 1, 2, 3, 4]


@pytest.mark.parametrize("kept", ["same", "forged", "beyond", "pruned"])
def test_a_second_anchor_is_checked_as_a_whole_pass_checks_it(log: Log, kept: str) -> None:
    """`log verify --anchor FILE` checked the whole log once per anchor; once the chain holds against the state
    directory's, the file's needs only its row looked at, and says what a whole pass against it says."""
    from goex_proxy.audit.seal import Anchor

    _filled(log)
    conn = audit.open_db(log.home / "a.db", readonly=True)
    try:
        saved = audit.newest(conn)
        assert saved is not None
        at = {"same": saved, "forged": Anchor(21, "01FORGEDID000", "ab" * 16),
              "beyond": Anchor(saved.seq + 5, "01LATERROW000", "cd" * 16),
              "pruned": Anchor(2, "01PRUNEDROW00", "ef" * 16)}[kept]
        seal = Seal(log.home)
        key = audit.chain_key(conn, seal)
        whole = audit.verify(conn, key, seal.anchor())
        assert whole.broken_id is None
        assert audit.against_anchor(conn, whole, at) == audit.verify(conn, key, at)
    finally:
        conn.close()


def _checked_while(log: Log, meanwhile: Callable[[], None]) -> audit.VerifyResult:
    """The log checked with `meanwhile` done after its rows were read and before the hits are compared (what a
    running proxy may do while `log verify` reads, for minutes when the check runs in processes)."""
    seal = Seal(log.home)
    conn = audit.open_db(log.home / "a.db", readonly=True)
    try:
        key, anchor = audit.chain_key(conn, seal), seal.anchor()
        read = [audit.verify_span(conn, key, anchor)]
        assert sum(read[0].expected.values()) == 3  # the charges of the three charged rows
        meanwhile()
        return audit.verify(conn, key, anchor, read)
    finally:
        conn.close()


def test_a_limit_hit_written_while_the_rows_are_checked_is_no_break(log: Log) -> None:
    """A charged request that lands after the rows were read has its limit hit already there when the hits are
    compared: it read as "limit_hits was edited"."""
    _filled(log)
    charge = Charge("bot", ("p/yearly",), NOW, (("p/yearly", Limit(50, 365 * DAY, "year")),))
    assert _checked_while(log, lambda: log.add(0, charge=charge) and None).broken_id is None


def test_rows_a_prune_takes_while_the_rows_are_checked_are_no_break(log: Log) -> None:
    """Charged rows read by the check and pruned with their hits (run's retention) before the hits are compared
    read as "its limit hit is gone"."""
    _filled(log)

    def prune() -> None:
        log.prune(0.5, {}, include_undoable=True)  # the charges lapsed: their rows and hits go
        with sqlite3.connect(log.home / "a.db") as conn:
            assert conn.execute("SELECT count(*) FROM limit_hits").fetchone()[0] == 0

    assert _checked_while(log, prune).broken_id is None


@pytest.mark.parametrize("seqs", [None, (1, 21)])
def test_a_prune_between_the_gap_records_and_the_rows_is_no_break(log: Log, monkeypatch: pytest.MonkeyPatch,
                                                                  seqs: tuple[int, int] | None) -> None:
    """`run`'s retention pruning after the check read the gap records and before it read the rows: the rows it
    then read had their first one's predecessor gone with no gap record to join them, and the check named that row
    broken. Both are read in one snapshot (one pass, and each process's range)."""
    for i in range(20):
        log.add(200 if i < 10 else 1)
    read_gaps = audit.gaps

    def gaps_then_prune(conn: sqlite3.Connection, *args: Any) -> Any:
        found = read_gaps(conn, *args)
        assert log.prune(90).rows == 10  # committed by another connection, as run's writer would
        return found

    monkeypatch.setattr(audit, "gaps", gaps_then_prune)
    seal = Seal(log.home)
    conn = audit.open_db(log.home / "a.db", readonly=True)
    try:
        span = audit.verify_span(conn, audit.chain_key(conn, seal), seal.anchor(), seqs)
    finally:
        conn.close()
    assert span.broken is None and span.checked == 20  # the log as it was when the check began
    monkeypatch.setattr(audit, "gaps", read_gaps)
    assert log.verify().broken_id is None and log.verify().pruned == 10
