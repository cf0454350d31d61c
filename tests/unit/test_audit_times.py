"""Rows found by time through each block of seqs' earliest and latest start (migration 24, `audit.times`): every
listing gives what a full scan sorted by time gives, however far out of order rows were written, and an edited block
fails `log verify`."""

from __future__ import annotations

import random
import sqlite3
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from goex_proxy.audit import store as audit
from goex_proxy.audit import times
from goex_proxy.audit.seal import Seal
from goex_proxy.console import data
from goex_proxy.ids import RequestIds
from tests.unit.test_audit_storage import intent, outcome, ro, verify, write
from tests.unit.test_console_data import _log, _pages, _scan

BASE = 1_700_000_000.0


@pytest.fixture(autouse=True)
def _small_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Blocks of 8 seqs, so that a few hundred rows make many (the triggers take the size when the log is made)."""
    monkeypatch.setattr(times, "SHIFT", 3)


def _stamps(draw_lags: list[int]) -> list[float]:
    """Starts a minute apart, each written late by its lag (a hold, a slow pre-image read): out of their order."""
    return [BASE + i * 60 - lag for i, lag in enumerate(draw_lags)]


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lags=st.lists(st.sampled_from([0, 0, 0, 5, 600, 3600, 86_400]), min_size=1, max_size=300),
       since=st.none() | st.integers(-100, 320), until=st.none() | st.integers(-100, 320),
       limit=st.sampled_from([1, 3, 50]), seed=st.integers(0, 3))
def test_every_listing_by_time_is_what_a_full_scan_gives(tmp_path_factory: pytest.TempPathFactory, lags: list[int],
                                                          since: int | None, until: int | None, limit: int,
                                                          seed: int) -> None:
    """`log` (store.query, newest and oldest first, with --since and a limit), the console's pages (with since,
    until, keyset pages) and a prune's end (first_seq_after) over blocks of 8 seqs, with no filter and with each
    filter (read through its index within the blocks since migration 25)."""
    conn = _log(tmp_path_factory.mktemp("log"), _stamps(lags), random.Random(seed) if seed else None)
    try:
        at = {seq: ts for seq, ts in conn.execute("SELECT seq, ts FROM requests")}
        rows = {seq: (agent, host, decision) for seq, agent, host, decision in conn.execute(
            "SELECT seq, agent, host, decision FROM requests")}
        ids = dict(conn.execute("SELECT seq, id FROM requests"))
        start = None if since is None else BASE + since * 60
        for chosen in ({}, {"agent": "mailbot"}, {"host": "slack.com"}, {"decision": "deny"}):
            for order, newest in (("DESC", True), ("ASC", False)):
                got = [r["id"] for r in audit.query(conn, since=start, limit=limit, order=order, **chosen)]
                wanted = sorted(((ts, seq) for seq, ts in at.items() if (start is None or ts >= start) and all(
                    rows[seq][("agent", "host", "decision").index(k)] == v for k, v in chosen.items())),
                    reverse=newest)
                assert got == [ids[seq] for _, seq in wanted[:limit]], (order, chosen)
        end = None if until is None else BASE + until * 60
        for chosen in ({}, {"decision": "allow"}, {"decision": "report"}, {"agent": "bot"}, {"host": "x"},
                       {"undo_class": "exact"}):
            filters = data.Filters(**chosen, since=start, until=end)  # type: ignore[arg-type]
            assert _pages(conn, filters) == _scan(conn, filters, None, limit=len(at)), chosen
        cutoff = BASE + (since or 0) * 60 - audit.WRITE_SLACK_S
        later = sorted((ts, seq) for seq, ts in at.items() if ts > cutoff + audit.WRITE_SLACK_S)
        assert audit.first_seq_after(conn, cutoff) == (later[0][1] if later else None)
    finally:
        conn.close()


def test_an_unfiltered_page_reads_the_newest_blocks_not_the_table(tmp_path: Path) -> None:
    """On a log in time order, the first page and `log` read a block or two of rows, by seq."""
    conn = _log(tmp_path, [BASE + i for i in range(2000)])
    try:
        read: list[str] = []
        conn.set_trace_callback(read.append)
        assert [r["seq"] for r in data.page(conn, data.Filters())] == list(range(2000, 1950, -1))
        page_sql = next(q for q in read if q.startswith("SELECT seq, id"))
        plan = str(conn.execute(f"EXPLAIN QUERY PLAN {page_sql}").fetchall())
        assert "USING INTEGER PRIMARY KEY" in plan and page_sql.count("BETWEEN") <= 2, (page_sql, plan)
        blocks_sql = next(q for q in read if q.startswith("SELECT block, high FROM audit_times"))
        plan = str(conn.execute(f"EXPLAIN QUERY PLAN {blocks_sql}").fetchall())  # newest first, to the threshold
        assert "INDEX idx_audit_times_high" in plan and "TEMP B-TREE" not in plan, (blocks_sql, plan)
        assert not conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'idx_requests_ts'").fetchone()
    finally:
        conn.close()


def test_a_filter_few_rows_match_counts_its_rows_in_batches_of_blocks(tmp_path: Path) -> None:
    """An agent seen only in the first rows of a long log: its listing finds them all, counting its rows a batch of
    blocks at a time (one, two, four... up to MOST_BATCH), not with a query per block, and reads its index."""
    stamps = [BASE + i for i in range(2400)]  # 300 blocks of 8
    conn = _log(tmp_path, stamps)
    try:
        with conn:
            conn.execute("UPDATE requests SET agent = 'seldom' WHERE seq IN (2, 5, 40)")
        read: list[str] = []
        conn.set_trace_callback(read.append)
        assert [r["id"] for r in audit.query(conn, agent="seldom", limit=50)] == \
            [f"ID{i:011d}" for i in (39, 4, 1)]
        counts = [q for q in read if q.startswith("SELECT count(*) FROM requests")]
        assert 0 < len(counts) <= 12, len(counts)  # 1 + 2 + ... + 64, then batches of 64: 10 for 300 blocks
        plan = str(conn.execute(f"EXPLAIN QUERY PLAN {counts[-1]}").fetchall())
        assert "INDEX idx_requests_agent (agent=? AND rowid>? AND rowid<?)" in plan, plan
        read.clear()
        assert [r["seq"] for r in data.page(conn, data.Filters(agent="seldom"))] == [40, 5, 2]
        assert len([q for q in read if q.startswith("SELECT count(*) FROM requests")]) <= 12
    finally:
        conn.close()


@pytest.mark.parametrize("most_runs", [1, 2, 5])
def test_blocks_left_far_apart_are_read_in_at_most_most_runs_ranges(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                    most_runs: int) -> None:
    """Blocks a prune left apart (every other run of blocks emptied), and rows written far out of order: past
    MOST_RUNS ranges, the closest are joined, so a listing reads a few seq ranges (never the whole table unbounded)
    and still gives what a full scan gives."""
    monkeypatch.setattr(times, "MOST_RUNS", most_runs)
    rng = random.Random(7)
    conn = _log(tmp_path, [BASE + i * 60 - rng.choice([0, 0, 0, 3600, 86_400]) for i in range(400)], rng)
    try:
        with conn:
            conn.execute("DELETE FROM requests WHERE (seq >> 3) % 3 != 0")  # 2 blocks of 3 emptied, as a prune would
            times.forget_empty(conn, 0, 400)
        read: list[str] = []
        conn.set_trace_callback(read.append)
        for chosen in ({}, {"agent": "mailbot"}, {"decision": "deny"}):
            got = [r["id"] for r in audit.query(conn, limit=None, **chosen)]
            wanted = conn.execute("SELECT id FROM requests WHERE " + (" AND ".join(f"{k} = ?" for k in chosen) or "1")
                                  + " ORDER BY ts DESC, seq DESC", list(chosen.values())).fetchall()
            assert got == [i for (i,) in wanted], chosen
            listing = [q for q in read if q.startswith("SELECT id, ts")][-1]
            assert 1 <= listing.count("seq BETWEEN") <= most_runs, listing
            filters = data.Filters(**chosen)  # type: ignore[arg-type]
            assert _pages(conn, filters) == _scan(conn, filters, None, limit=400), chosen
    finally:
        conn.close()


def test_an_edited_block_fails_verify(tmp_path: Path) -> None:
    """The blocks are outside the chain: one narrowed to leave a row out would hide it from `log`; verify names
    the row."""
    ids = RequestIds()
    rows = [intent(ids, i) for i in range(20)]
    write(tmp_path, [(r, outcome(i)) for i, r in enumerate(rows)])
    assert verify(tmp_path).broken_id is None
    with sqlite3.connect(tmp_path / "a.db") as conn:
        (block,) = conn.execute("SELECT block FROM audit_times ORDER BY block LIMIT 1 OFFSET 1").fetchone()
        conn.execute("UPDATE audit_times SET high = low WHERE block = ?", (block,))
    result = verify(tmp_path)
    assert result.broken_seq is not None and result.broken_seq >> 3 == block
    assert "audit_times was edited" in (result.problem or "")


def test_a_log_written_before_migration_24_lists_the_same(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Its rows get their blocks when it is opened to write (the time index goes, and each filter's index loses the
    start: migration 25), and read back as before, filtered or not."""
    ids = RequestIds()
    old = [intent(ids, i, agent="mailbot" if i % 3 else "bot") for i in range(12)]
    new = [intent(ids, i, agent="mailbot" if i % 3 else "bot") for i in range(12, 20)]
    with monkeypatch.context() as old_version:
        old_version.setattr(audit, "MIGRATIONS", audit.MIGRATIONS[:23])
        write(tmp_path, [(r, outcome(i)) for i, r in enumerate(old)])
        conn = ro(tmp_path)
        listed = [r["id"] for r in audit.query(conn, limit=5)]
        assert [r["id"] for r in audit.query(conn, agent="bot", limit=None)] == \
            [r["id"] for r in reversed(old) if r["agent"] == "bot"]
        conn.close()
    assert listed == [r["id"] for r in reversed(old)][:5]
    write(tmp_path, [(r, outcome(i)) for i, r in enumerate(new)])
    conn = ro(tmp_path)
    try:
        assert [r["id"] for r in audit.query(conn, limit=None)] == [r["id"] for r in reversed(old + new)]
        assert [r["id"] for r in audit.query(conn, limit=3)] == [r["id"] for r in reversed(new)][:3]
        assert conn.execute("SELECT count(*) FROM audit_times").fetchone()[0] == 3  # seqs 1-20 in blocks of 8
        assert not conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'idx_requests_ts'").fetchone()
        for agent in ("bot", "mailbot"):
            assert [r["id"] for r in audit.query(conn, agent=agent, limit=None)] == \
                [r["id"] for r in reversed(old + new) if r["agent"] == agent]
            assert [r["id"] for r in data.page(conn, data.Filters(agent=agent), limit=4)] == \
                [r["id"] for r in reversed(old + new) if r["agent"] == agent][:4]
        indexes = {n for (n,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
        assert {"idx_requests_agent", "idx_requests_host"} <= indexes and "idx_requests_agent_ts" not in indexes
    finally:
        conn.close()
    assert verify(tmp_path).broken_id is None
    assert Seal(tmp_path).anchor() is not None


def test_rows_that_began_at_one_time_are_listed_by_seq_across_blocks(tmp_path: Path) -> None:
    """Ties in time go by seq, newest first: every block whose latest start equals the threshold is read, not only
    the first that reached the limit (blocks of equal times come in any order)."""
    conn = _log(tmp_path, [BASE] * 40)
    try:
        seq_of = {i: s for s, i in conn.execute("SELECT seq, id FROM requests")}
        assert [seq_of[r["id"]] for r in audit.query(conn, limit=3)] == [40, 39, 38]
        assert [seq_of[r["id"]] for r in audit.query(conn, limit=3, order="ASC")] == [1, 2, 3]
        assert _pages(conn, data.Filters()) == list(range(40, 0, -1))
    finally:
        conn.close()


def test_a_prune_drops_the_blocks_it_emptied(tmp_path: Path) -> None:
    """Blocks whose rows all went take no part in later listings; those with a row left stay."""
    from tests.unit.test_prune import Log

    log = Log(tmp_path)
    try:
        for i in range(30):
            log.add(200 if i < 20 else 1)
        assert log.prune(90).rows == 20
    finally:
        log.writer.close()
    conn = audit.open_db(tmp_path / "a.db", readonly=True)
    try:
        assert [b for (b,) in conn.execute("SELECT block FROM audit_times ORDER BY block")] == [2, 3]  # seqs 21-30
        assert [r["id"] for r in audit.query(conn, limit=None)] == log.added[20:][::-1]
    finally:
        conn.close()
    assert log.verify().broken_id is None


def _by_time(conn: sqlite3.Connection, newest_first: bool = True) -> list[int]:
    """Every seq, in the order SQLite sorts the rows by (ts, seq) whatever each start holds (`times._order`)."""
    rows = conn.execute("SELECT seq, ts FROM requests").fetchall()
    return [seq for _, seq in sorted(((times._order(ts), seq) for seq, ts in rows), reverse=newest_first)]


def _paged(conn: sqlite3.Connection, filters: data.Filters, size: int) -> list[int]:
    """The console's pages of `size` rows in turn, each after the last row of the one before; the rows they showed."""
    shown: list[int] = []
    before = None
    while len(shown) <= 10_000:
        got = [r["seq"] for r in data.page(conn, filters, before, limit=size)]
        shown += got
        if len(got) < size:
            break
        before = got[-1]
    return shown


@pytest.mark.parametrize("migrated", [True, False], ids=["edited-after-migration-24", "edited-before-it"])
def test_rows_whose_start_was_edited_away_are_listed_where_a_full_scan_puts_them(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, migrated: bool) -> None:
    """A start edited to NULL (a whole block of them, and one among others) sorts before every other start: last
    newest first, first oldest first. No block may leave such a row out of `log`, the console's pages (the page
    after it goes on from it, not from the rows before it by seq) or a listing of every row."""
    with monkeypatch.context() as old_version:
        if not migrated:
            old_version.setattr(audit, "MIGRATIONS", audit.MIGRATIONS[:23])
        conn = _log(tmp_path, [BASE + i for i in range(40)])
        with conn:
            conn.execute("UPDATE requests SET ts = NULL WHERE seq BETWEEN 8 AND 15 OR seq = 30")
        conn.close()
    conn = audit.open_db(tmp_path / "audit.db", seal=Seal(tmp_path))  # migrates the log edited before it
    try:
        ids = dict(conn.execute("SELECT id, seq FROM requests"))
        for order, newest in (("DESC", True), ("ASC", False)):
            for limit in (None, 1, 3, 39):
                got = [ids[r["id"]] for r in audit.query(conn, limit=limit, order=order)]
                assert got == _by_time(conn, newest)[:limit], (order, limit)
        for size in (3, 7, 50):
            assert _paged(conn, data.Filters(), size) == _by_time(conn), size
    finally:
        conn.close()


@pytest.mark.parametrize("edit", ["high = NULL", "low = NULL, high = NULL", "low = '0'", "low = '0', high = NULL"])
def test_a_block_edited_to_a_bound_of_another_type_fails_verify(tmp_path: Path, edit: str) -> None:
    """A bound of NULL, or text that reads as a number, sorts where no start is (NULL before every one, text after
    them): the block's rows would be left out of the first page, or of one filtered by `until`, so verify names one
    of them however the column's affinity would read the bound."""
    ids = RequestIds()
    rows = [intent(ids, i) for i in range(20)]
    write(tmp_path, [(r, outcome(i)) for i, r in enumerate(rows)])
    with sqlite3.connect(tmp_path / "a.db") as conn:
        conn.execute(f"UPDATE audit_times SET {edit} WHERE block = 2")  # the newest: seqs 16 to 20
    conn = ro(tmp_path)
    try:
        newest = [r["id"] for r in data.page(conn, data.Filters(), limit=3)]
        assert newest != [r["id"] for r in rows[:-4:-1]] or len(data.page(conn, data.Filters(until=4e9))) < 20
    finally:
        conn.close()
    result = verify(tmp_path)
    assert result.broken_seq is not None and result.broken_seq >> 3 == 2, (edit, result)
    assert "audit_times was edited" in (result.problem or "")


def test_a_listing_reads_its_blocks_and_its_rows_in_one_snapshot(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                                                 ) -> None:
    """`log` picks its blocks, then reads their rows: a prune (or a writer) that commits in between must not leave
    it with the blocks of rows that are gone, listing nothing of a log that has rows (or some rows and not others
    written before them)."""
    writer = _log(tmp_path, [BASE + i for i in range(30)])
    reader = audit.open_db(tmp_path / "audit.db", readonly=True)
    window = times.window

    def pruned_meanwhile(*args: object, **kwargs: object) -> tuple[list[str], list[object]]:
        picked = window(*args, **kwargs)  # type: ignore[arg-type]
        with writer:  # as a prune removes the oldest rows and the blocks it emptied
            writer.execute("DELETE FROM requests WHERE seq <= 7")
            times.forget_empty(writer, 1, 7)
        return picked  # type: ignore[return-value]

    monkeypatch.setattr(times, "window", pruned_meanwhile)
    try:
        ids = dict(writer.execute("SELECT id, seq FROM requests"))
        assert [ids.get(r["id"]) for r in audit.query(reader, limit=2, order="ASC")] == [1, 2]  # as it was
        assert [ids.get(r["id"]) for r in audit.query(reader, limit=2, order="ASC")] == [8, 9]  # as it is now
        assert audit.first_seq_after(reader, BASE - 1 - audit.WRITE_SLACK_S) == 8
    finally:
        reader.close()
        writer.close()


@pytest.mark.parametrize("block", [2**61, -2**61])
def test_a_block_no_seq_can_be_in_is_passed_over(tmp_path: Path, block: int) -> None:
    """A block edited in whose seqs are past SQLite's integers (no row can be in it) neither stops `log` and the
    console with an OverflowError nor changes what they list."""
    conn = _log(tmp_path, [BASE + i for i in range(20)])
    try:
        with conn:
            conn.execute("INSERT INTO audit_times (block, low, high) VALUES (?, 0, 9e99)", (block,))
        assert [r["seq"] for r in data.page(conn, data.Filters(), limit=3)] == [20, 19, 18]
        assert len(audit.query(conn, limit=3, order="ASC")) == 3
    finally:
        conn.close()


def test_the_last_page_looks_for_rows_of_no_start_only_in_blocks_that_hold_one(tmp_path: Path) -> None:
    """The page that ends the rows with a start goes on with those of none (edited to NULL): it finds them through
    the blocks that note one, not by counting the rows of every block."""
    conn = _log(tmp_path, [BASE + i for i in range(400)])  # 50 blocks
    try:
        read: list[str] = []
        conn.set_trace_callback(read.append)
        assert [r["seq"] for r in data.page(conn, data.Filters(), before=4)] == [3, 2, 1]
        assert sum(q.startswith("SELECT count(*)") for q in read) <= 2, read
        with conn:
            conn.execute("UPDATE requests SET ts = NULL WHERE seq = 200")
        assert [r["seq"] for r in data.page(conn, data.Filters(), before=4)] == [3, 2, 1, 200]
        with conn:
            conn.execute("UPDATE requests SET ts = NULL WHERE seq IN (100, 300)")
        read.clear()
        assert [r["seq"] for r in data.page(conn, data.Filters(), before=300)] == [200, 100]  # after a row of none
        assert sum(q.startswith("SELECT count(*)") for q in read) <= 3, read  # the 3 blocks that note one
    finally:
        conn.close()


def test_a_filter_past_a_thousand_runs_of_blocks_is_listed_in_at_most_most_runs_ranges(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A prune that kept a row in every other block (an agent can make one undoable request in each) leaves blocks
    apart: a filter whose rows are old is counted through more than a thousand runs of them before it has its
    limit. The limit-th row's time was then looked for in one query of every run, which SQLite refused ("Expression
    tree is too large"): `log --decision deny` and the console's filters ended in an internal error. Every query
    `window` makes is bounded by MOST_RUNS ranges."""
    monkeypatch.setattr(times, "SHIFT", 0)  # a block per seq: 2,400 rows make 1,200 runs once every other one goes
    conn = _log(tmp_path, [BASE + i for i in range(2400)])
    try:
        with conn:
            conn.execute("UPDATE requests SET decision = 'deny' WHERE seq BETWEEN 101 AND 400")
            conn.execute("DELETE FROM requests WHERE seq % 2 = 0")
            times.forget_empty(conn, 0, 2400)
        read: list[str] = []
        conn.set_trace_callback(read.append)
        ids = {i: s for s, i in conn.execute("SELECT seq, id FROM requests")}
        assert [ids[r["id"]] for r in audit.query(conn, decision="deny", limit=50)] == list(range(399, 299, -2))
        assert [r["seq"] for r in data.page(conn, data.Filters(decision="deny"))] == list(range(399, 299, -2))
        assert max(q.count("seq BETWEEN") for q in read) <= times.MOST_RUNS
    finally:
        conn.close()


def test_blocks_apart_are_counted_through_a_partial_index_range_by_range(tmp_path: Path) -> None:
    """The indexes of decisions and undo classes hold only the rows a filter needs (partial). Over blocks a prune
    left apart, a batch of blocks is several ranges of seqs, and SQLite reads such an index within a range only when
    the range is the query's own: counted in one query of all the ranges, each batch read every entry of the
    filter's value in the whole log (an agent can write a million denied requests, cheaply), and so did the
    listing and the search for its limit-th row. Every query reads the index within its ranges, and the rows
    listed are still those a full scan gives."""
    conn = _log(tmp_path, [BASE + i * 60 for i in range(400)], random.Random(5))
    try:
        with conn:
            conn.execute("DELETE FROM requests WHERE (seq >> 3) % 2 = 1")  # every other block of 8, as a prune might
            times.forget_empty(conn, 0, 400)
        read: list[str] = []
        conn.set_trace_callback(read.append)
        for chosen in ({"decision": "deny"}, {"undo_class": "exact"}):
            filters = data.Filters(**chosen)  # type: ignore[arg-type]
            assert [r["seq"] for r in data.page(conn, filters, limit=20)] == _scan(conn, filters, None, limit=20)
            assert _paged(conn, filters, 7) == _scan(conn, filters, None, limit=400)
        assert [r["id"] for r in audit.query(conn, decision="deny", limit=20)] == [i for (i,) in conn.execute(
            "SELECT id FROM requests WHERE decision = 'deny' ORDER BY ts DESC, seq DESC LIMIT 20")]
        conn.set_trace_callback(None)
        filtered = [q for q in read if q.startswith("SELECT") and ("decision = 'deny'" in q or "undo_class COLLATE" in q)]
        assert any(q.startswith("SELECT count(*)") for q in filtered) and any("ORDER BY ts" in q for q in filtered)
        for sql in filtered:
            plan = str(conn.execute(f"EXPLAIN QUERY PLAN {sql}").fetchall())
            assert "(decision=?)" not in plan and "(undo_class=?)" not in plan, (sql, plan)
    finally:
        conn.close()
