"""A log the last release wrote (schema 16: blobs without bases) read by read-only commands before any writer has
migrated it (`goex-proxy log`, `show`, `log verify`, the console right after an upgrade)."""

from __future__ import annotations

from pathlib import Path

import pytest

from goex_proxy.audit import blobs, layout
from goex_proxy.audit import store as audit
from goex_proxy.console import data
from goex_proxy.ids import RequestIds
from tests.unit.test_audit_storage import intent, outcome, ro, verify, write


def test_a_log_of_schema_16_reads_and_verifies_read_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every read of its blobs asked for the `base` column, which schema 16 has not: sqlite3.OperationalError (no
    such column: base) from get, verify, iter_rows and the console's page, until a writer migrated the log."""
    ids = RequestIds()
    rows = [(intent(ids, i), outcome(i)) for i in range(3)]
    with monkeypatch.context() as old_version:
        old_version.setattr(audit, "MIGRATIONS", audit.MIGRATIONS[:16])
        old_version.setattr(layout, "OUTCOME_ROOM", b"")
        stored = layout.stored  # schema 16 kept agents and hosts as they are
        old_version.setattr(layout, "stored", lambda fields, put, kind=(), **_: stored(fields, put, kind))
        old_version.setattr(blobs.BlobStore, "put", lambda self, conn, value, family=None, owner=None: int(conn.execute(
            "INSERT INTO audit_blobs (data, refs) VALUES (?, 1)", (blobs.encode(value),)).lastrowid or 0))
        write(tmp_path, rows)
    conn = ro(tmp_path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == 16
    got = audit.get(conn, str(rows[0][0]["id"]))
    assert (got["resp_body"], got["req_headers"]) == (rows[0][1]["resp_body"], rows[0][0]["req_headers"])
    assert [r["resp_body"] for r in audit.iter_rows(conn)] == [done["resp_body"] for _, done in rows]
    assert [r["seq"] for r in data.page(conn, data.Filters())] == [3, 2, 1]
    result = verify(tmp_path)
    assert (result.checked, result.broken_id) == (3, None)
