"""The console's log pages: keyset pages by seq, and the `until` filter's shortcut giving what a full scan gives."""

from __future__ import annotations

import random
import sqlite3
from pathlib import Path

from goex_proxy.audit import store as audit
from goex_proxy.audit.seal import Seal
from goex_proxy.console import data


def _log(tmp_path: Path, stamps: list[float]) -> sqlite3.Connection:
    conn = audit.open_db(tmp_path / "audit.db", seal=Seal(tmp_path))
    with conn:
        conn.executemany(
            "INSERT INTO requests (id, ts, agent, method, scheme, host, port, path, url, decision, hash, prev_hash) "
            "VALUES (?, ?, 'bot', 'GET', 'https', 'x', 443, '/', 'https://x/', 'allow', 'h', '')",
            [(f"ID{i:011d}", ts) for i, ts in enumerate(stamps)])
    return conn


def _scan(conn: sqlite3.Connection, until: float, before: int | None) -> list[int]:
    rows = conn.execute("SELECT seq, ts FROM requests ORDER BY seq DESC").fetchall()
    return [seq for seq, ts in rows if ts <= until and (before is None or seq < before)][:data.PAGE]


def test_until_pages_equal_a_full_scan_when_rows_are_written_out_of_their_start_order(tmp_path: Path) -> None:
    # A row's ts is its request's start; it is written after its pre-image read or a hold, so rows written later can
    # have started earlier (here by up to an hour), and a page filtered by `until` must still show them.
    rng = random.Random(7)
    stamps = [1_700_000_000 + i * 60 - rng.choice([0, 0, 0, 5, 600, 3600]) for i in range(3000)]
    conn = _log(tmp_path, stamps)
    for until in (stamps[10], stamps[1500] - 1800, stamps[2999], 1_699_000_000.0, 1_800_000_000.0):
        before = None
        while True:
            got = [r["seq"] for r in data.page(conn, data.Filters(until=until), before)]
            assert got == _scan(conn, until, before)
            if len(got) < data.PAGE:
                break
            before = got[-1]


def test_a_page_until_before_the_first_row_is_empty(tmp_path: Path) -> None:
    conn = _log(tmp_path, [1_700_000_000.0, 1_700_000_100.0])
    assert data.page(conn, data.Filters(until=1_600_000_000.0)) == []
    assert [r["seq"] for r in data.page(conn, data.Filters(until=1_700_000_050.0))] == [1]
