"""Red team 17: the writer's shortcuts of 8dd4035 (data_version, the anchor bytes remembered, one JSON encoder, an
outcome's first write without the SELECT of its blobs)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from goex_proxy.audit import blobs, layout
from goex_proxy.audit import store as audit
from goex_proxy.audit.prune import prune_batch, upper_bound
from goex_proxy.audit.seal import Seal
from goex_proxy.audit.writer import AuditWriter
from goex_proxy.ids import RequestIds
from tests.unit.test_audit_storage import intent, outcome, ro, verify


def test_a_prune_in_the_same_batch_as_a_row_naming_a_host_it_removed(tmp_path: Path) -> None:
    """A prune (`apply`) and a row queued behind it land in one transaction. The writer remembers the names it
    checked in its earlier transactions (nobody else wrote since, so it does not read them again); the prune removes
    a host only pruned rows held, and the row after it with that host must store the name anew, not name the id the
    prune just removed (the row would read back with a missing host and fail `log verify`)."""
    ids = RequestIds()
    writer = AuditWriter(tmp_path / "a.db", Seal(tmp_path), threaded=False)
    try:
        rows = [intent(ids, i, host=f"h{i}.example", undo_class=None) for i in range(3)]
        for i, row in enumerate(rows):
            writer.record_intent(row)
            writer.write_queued()
            writer.record_outcome(str(row["id"]), outcome(i) | {"undo_class": "irreversible"})
            writer.write_queued()
        key = Seal(tmp_path).key()
        assert key is not None
        before = float(rows[1]["ts"]) + 0.5  # rows 0 and 1 go (h0, h1 with them); row 2, the newest, stays
        pruned = writer.apply(lambda conn, w: prune_batch(conn, key, before, {}, upper=upper_bound(conn, before, None)))
        again = intent(ids, 9, host="h0.example")
        written = writer.record_intent(again)
        writer.write_queued()  # one batch: the prune, then the row
        assert pruned.exception() is None and written.result(0) is None
        writer.record_outcome(str(again["id"]), outcome(9))
        writer.write_queued()
    finally:
        writer.close()
    assert [r["host"] for r in audit.iter_rows(ro(tmp_path))] == ["h2.example", "h0.example"]
    assert verify(tmp_path).broken_id is None


def test_a_first_outcome_lets_go_of_the_response_blobs_its_row_was_written_with(tmp_path: Path) -> None:
    """A row queued with a response but neither status nor error has no outcome hash: its outcome, when it comes, is
    its first, and writes its own response blobs over the ones the row named. Those must be let go of (as an outcome
    written again lets go of the first one's), not left counted with no row naming them: a prune would never remove
    them, and the response would outlive its row's retention."""
    ids = RequestIds()
    writer = AuditWriter(tmp_path / "a.db", Seal(tmp_path))
    try:
        row = intent(ids, 0) | {"resp_headers": '[["X-Early","1"]]', "resp_body": b"early answer, not the outcome"}
        writer.record_intent(row).result(5)
        writer.record_outcome(str(row["id"]), outcome(0)).result(5)
    finally:
        writer.close()
    with sqlite3.connect(tmp_path / "a.db") as raw:
        columns = [c for c in layout.BLOB_COLUMNS]
        named = {ref for c in columns for (ref,) in raw.execute(f"SELECT {c} FROM requests WHERE {c} IS NOT NULL")}
        named |= {b for (b,) in raw.execute(f"SELECT base FROM {blobs.TABLE} WHERE base IS NOT NULL")}
        counted = {i for (i,) in raw.execute(f"SELECT id FROM {blobs.TABLE} WHERE refs > 0")}
    assert counted - named == set()
    assert verify(tmp_path).broken_id is None
