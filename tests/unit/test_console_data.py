"""The console's log pages: keyset pages in time order (then seq) giving what a full scan gives, whatever the filters,
and the live stream's rows after a seq."""

from __future__ import annotations

import random
import sqlite3
from pathlib import Path

from goex_proxy.audit import store as audit
from goex_proxy.audit.seal import Seal
from goex_proxy.console import data


def _log(tmp_path: Path, stamps: list[float], rng: random.Random | None = None) -> sqlite3.Connection:
    """A log of rows that began at these times, written in this order; `rng` picks each one's agent, host,
    decision and undo class (else all the same)."""
    pick = rng.choice if rng is not None else (lambda options: options[0])
    conn = audit.open_db(tmp_path / "audit.db", seal=Seal(tmp_path))
    with conn:
        conn.executemany(
            "INSERT INTO requests (id, ts, agent, method, scheme, host, port, path, url, decision, undo_class, hash, "
            "prev_hash) VALUES (?, ?, ?, 'GET', 'https', ?, 443, '/', 'https://x/', ?, ?, 'h', '')",
            [(f"ID{i:011d}", ts, pick(["bot", "mailbot"]), pick(["x", "slack.com"]),
              pick(["allow", "allow", "allow", "deny", "report"]), pick([None, None, "exact", "no rule"]))
             for i, ts in enumerate(stamps)])
    return conn


def _scan(conn: sqlite3.Connection, filters: data.Filters, before: int | None, limit: int = data.PAGE) -> list[int]:
    """What a page is: every row, filtered in Python, newest first by (ts, seq), after the row `before`."""
    rows = conn.execute("SELECT seq, ts, agent, host, decision, undo_class FROM requests").fetchall()
    at = {seq: ts for seq, ts, *_ in rows}
    wanted = [(ts, seq) for seq, ts, agent, host, decision, undo_class in rows
              if all(v is None or v == got for v, got in ((filters.agent, agent), (filters.host, host),
                                                          (filters.decision, decision),
                                                          (filters.undo_class, undo_class)))
              and (filters.since is None or ts >= filters.since) and (filters.until is None or ts <= filters.until)
              and (before is None or (ts, seq) < (at[before], before))]
    return [seq for _, seq in sorted(wanted, reverse=True)][:limit]


def _pages(conn: sqlite3.Connection, filters: data.Filters) -> list[int]:
    """Every page of these filters in turn, each checked against a full scan; the rows they showed."""
    shown: list[int] = []
    before = None
    while True:
        got = [r["seq"] for r in data.page(conn, filters, before)]
        assert got == _scan(conn, filters, before), (filters, before)
        shown += got
        if len(got) < data.PAGE:
            return shown
        before = got[-1]


def test_until_pages_equal_a_full_scan_when_rows_are_written_out_of_their_start_order(tmp_path: Path) -> None:
    # A row's ts is its request's start; it is written after its pre-image read or a hold, so rows written later can
    # have started earlier (here by up to an hour), and a page filtered by `until` must still show them.
    rng = random.Random(7)
    stamps = [1_700_000_000 + i * 60 - rng.choice([0, 0, 0, 5, 600, 3600]) for i in range(3000)]
    conn = _log(tmp_path, stamps)
    for until in (stamps[10], stamps[1500] - 1800, stamps[2999], 1_699_000_000.0, 1_800_000_000.0):
        _pages(conn, data.Filters(until=until))


def test_pages_under_any_filters_show_each_matching_row_once_in_time_order(tmp_path: Path) -> None:
    """Rows that began at the same time, or were written out of order, are neither shown twice nor skipped from
    one page to the next, whichever index a filter reads."""
    rng = random.Random(11)
    stamps = [1_700_000_000 + (i // 3) * 60 - rng.choice([0, 0, 0, 60, 600]) for i in range(900)]  # ties of three
    conn = _log(tmp_path, stamps, rng)
    for filters in (data.Filters(), data.Filters(agent="mailbot"), data.Filters(host="slack.com"),
                    data.Filters(decision="deny"), data.Filters(decision="allow"), data.Filters(undo_class="exact"),
                    data.Filters(agent="bot", decision="report"), data.Filters(since=stamps[300], until=stamps[600]),
                    data.Filters(host="x", undo_class="no rule", since=stamps[100])):
        assert _pages(conn, filters) == _scan(conn, filters, None, limit=len(stamps))


def test_the_live_stream_reads_each_row_once_even_when_none_match(tmp_path: Path) -> None:
    """Rows after a seq, oldest first, up to the newest; the next read starts where this one ended, so a filter
    that matches nothing does not read the same rows again."""
    conn = _log(tmp_path, [1_700_000_000.0 + i for i in range(250)], random.Random(3))
    every = [seq for (seq,) in conn.execute("SELECT seq FROM requests WHERE agent = 'mailbot' ORDER BY seq")]
    got, after = [], 0
    while after < 250:
        rows, after = data.newer(conn, data.Filters(agent="mailbot"), after, limit=40)
        got += [r["seq"] for r in rows]
    assert got == every
    assert data.newer(conn, data.Filters(agent="nobody"), 0) == ([], 250)
    assert data.newer(conn, data.Filters(agent="nobody"), 250) == ([], 250)


def test_a_page_until_before_the_first_row_is_empty(tmp_path: Path) -> None:
    conn = _log(tmp_path, [1_700_000_000.0, 1_700_000_100.0])
    assert data.page(conn, data.Filters(until=1_600_000_000.0)) == []
    assert [r["seq"] for r in data.page(conn, data.Filters(until=1_700_000_050.0))] == [1]


def test_a_row_committed_while_the_page_is_read_goes_to_the_live_stream(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """The log page read its rows, then the newest seq (where its live stream starts) apart: a row another process
    committed in between was on neither. Both are read in one snapshot now, so the stream sends it."""
    conn = _log(tmp_path, [100.0, 101.0, 102.0])
    shown = data.page

    def page_then_a_commit(*args, **kwargs):  # type: ignore[no-untyped-def]
        rows = shown(*args, **kwargs)
        with sqlite3.connect(tmp_path / "audit.db") as other:
            other.execute("INSERT INTO requests (id, ts, agent, method, scheme, host, port, path, url, decision, hash, "
                          "prev_hash) VALUES ('IDLATE', 103.0, 'bot', 'GET', 'https', 'x', 443, '/', 'https://x/', "
                          "'allow', 'h', '')")
        return rows

    monkeypatch.setattr(data, "page", page_then_a_commit)
    rows, top = data.listing(conn, data.Filters())
    assert [r["seq"] for r in rows] == [3, 2, 1]
    assert [r["id"] for r in data.newer(conn, data.Filters(), top)[0]] == ["IDLATE"]


def test_a_page_after_a_row_pruned_since_goes_on_from_its_time(tmp_path: Path) -> None:
    """Rows written out of time order; the last row of a page is pruned before the next page is read. The next page
    went on by seq alone, in time order: it skipped the later-written rows that began earlier and showed again
    earlier-written ones. With the time the page before showed (`at`), it goes on exactly."""
    rng = random.Random(3)
    conn = _log(tmp_path, [1_700_000_000 + i * 60 - rng.choice([0, 0, 5, 600, 3600]) for i in range(300)])
    first = [(r["seq"], r["ts"]) for r in data.page(conn, data.Filters())]
    last, at = first[-1]
    want = _scan(conn, data.Filters(), last)
    with conn:
        conn.execute("DELETE FROM requests WHERE seq = ?", (last,))
    assert [r["seq"] for r in data.page(conn, data.Filters(), last)] != want  # by seq alone
    assert [r["seq"] for r in data.page(conn, data.Filters(), last, at=at)] == want
