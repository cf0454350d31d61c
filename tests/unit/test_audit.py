"""The audit store: sortable ids, write-ahead rows, and a hash chain that names the first broken row."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

from goex_proxy import audit
from goex_proxy.audit import AuditWriter
from goex_proxy.ids import RequestIds


def row(i: int, ids: RequestIds) -> dict[str, object]:
    return {"id": ids.new(1_700_000_000 + i), "ts": 1_700_000_000.0 + i, "agent": "bot", "method": "GET",
            "scheme": "https", "host": "slack.com", "port": 443, "path": f"/p{i}", "url": f"https://slack.com/p{i}",
            "req_headers": "[]", "req_body": b"body", "decision": "allow"}


def fill(path: Path, n: int) -> list[str]:
    ids, writer = RequestIds(), AuditWriter(path)
    rows = [row(i, ids) for i in range(n)]
    for r in rows:
        writer.record_intent(r).result(5)
    for r in rows[:-1]:
        writer.record_outcome(str(r["id"]), {"status": 200, "ended": 1.0, "duration_ms": 1.0}).result(5)
    writer.close()
    return [str(r["id"]) for r in rows]


def test_ids_are_short_unique_and_sortable() -> None:
    """Ids made in time order sort in time order, even within one millisecond."""
    ids = RequestIds()
    made = [ids.new(1_700_000_000.0) for _ in range(1000)] + [ids.new(1_700_000_001.0)]
    assert made == sorted(made) and len(set(made)) == len(made) and all(len(i) == 13 for i in made)


def test_verify_accepts_intact_log_with_pending_row(tmp_path: Path) -> None:
    """An untouched log verifies, including a last row still waiting for its outcome."""
    fill(tmp_path / "a.db", 5)
    result = audit.verify(audit.open_db(tmp_path / "a.db", readonly=True))
    assert (result.checked, result.broken_id) == (5, None)


def test_verify_names_edited_outcome(tmp_path: Path) -> None:
    """Changing a recorded status is detected at that row."""
    ids = fill(tmp_path / "a.db", 5)
    with sqlite3.connect(tmp_path / "a.db") as conn:
        conn.execute("UPDATE requests SET status = 204 WHERE id = ?", (ids[2],))
    result = audit.verify(audit.open_db(tmp_path / "a.db", readonly=True))
    assert result.broken_id == ids[2] and "outcome" in (result.problem or "")


def test_verify_names_row_after_a_deleted_one(tmp_path: Path) -> None:
    """Deleting a row breaks the link of the row after it."""
    ids = fill(tmp_path / "a.db", 5)
    with sqlite3.connect(tmp_path / "a.db") as conn:
        conn.execute("DELETE FROM requests WHERE id = ?", (ids[1],))
    result = audit.verify(audit.open_db(tmp_path / "a.db", readonly=True))
    assert result.broken_id == ids[2] and result.checked == 1


def test_chain_continues_across_writers(tmp_path: Path) -> None:
    """A second writer (a restarted proxy) links its first row to the last row of the first."""
    fill(tmp_path / "a.db", 3)
    fill(tmp_path / "a.db", 3)
    assert audit.verify(audit.open_db(tmp_path / "a.db", readonly=True)).checked == 6


def test_migrations_are_recorded(tmp_path: Path) -> None:
    """Opening twice applies the schema once and records its version."""
    audit.open_db(tmp_path / "a.db").close()
    db = audit.open_db(tmp_path / "a.db")
    assert db.execute("PRAGMA user_version").fetchone()[0] == len(audit.MIGRATIONS)
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_outcomes_share_a_transaction_and_never_hold_up_a_request(tmp_path: Path, monkeypatch) -> None:
    """Outcomes (nobody waits for them) gather into one write; a request row arriving meanwhile ends the wait."""
    monkeypatch.setattr(audit, "OUTCOME_GATHER_SECONDS", 0.5)
    ids, writer = RequestIds(), AuditWriter(tmp_path / "a.db")
    batches: list[int] = []
    write = writer._write
    monkeypatch.setattr(writer, "_write", lambda batch: (batches.append(len(batch)), write(batch)))
    first, second, late = row(1, ids), row(2, ids), row(3, ids)
    writer.record_intent(first).result(5)
    writer.record_intent(second).result(5)
    done = {"status": 200, "ended": 1.0, "duration_ms": 1.0}
    a = writer.record_outcome(str(first["id"]), done)
    time.sleep(0.05)                                    # the writer has taken the first outcome and is gathering
    b = writer.record_outcome(str(second["id"]), done)
    started = time.monotonic()
    writer.record_intent(late).result(5)                # a request waiting to be forwarded: written at once
    assert time.monotonic() - started < 0.4
    a.result(5), b.result(5)
    writer.close()
    assert batches == [1, 1, 3]
