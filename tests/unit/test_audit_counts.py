"""Blob counts as the writers keep them: each must add up to the rows that name it whatever came between (another
writer, a prune, an outcome written again, a row written with a response before its outcome); a count too low would
have a prune remove a blob kept rows still name, one too high keep it for ever."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from goex_proxy.audit import blobs, layout
from goex_proxy.audit.prune import prune_batch, upper_bound
from goex_proxy.audit.seal import Seal
from goex_proxy.audit.writer import AuditWriter
from goex_proxy.ids import RequestIds
from tests.unit.test_audit_storage import intent, outcome, ro, verify

HEADERS = ('[["Accept","*/*"]]', '[["Accept","application/json"],["X-Trace","1"]]')
BODIES = (b'{"ok": true}', b'{"ok": false, "why": "busy"}', b"")
RULES = ("slack/post", "slack/read")

#: One step: ("rows", writer, how many, which values) writes rows and the outcomes of the rows before; ("again",
#: writer, which) writes a row's outcome once more, after new rows in the same transaction; ("early", writer, which)
#: a row written with a response and no status, then its outcome; ("prune", writer, share) removes the oldest part of
#: the log, with rows before and after it in its batch.
steps = st.lists(st.one_of(
    st.tuples(st.just("rows"), st.integers(0, 1), st.integers(1, 4), st.integers(0, 11)),
    st.tuples(st.just("again"), st.integers(0, 1), st.integers(0, 50)),
    st.tuples(st.just("early"), st.integers(0, 1), st.integers(0, 11)),
    st.tuples(st.just("prune"), st.integers(0, 1), st.floats(0.1, 0.9)),
), min_size=1, max_size=14)


def _row(ids: RequestIds, i: int, pick: int, at: float) -> dict[str, Any]:
    body = b'{"n": %d}' % pick  # one of twelve: some go with the rows a prune removes
    return intent(ids, i, ts=at, req_headers=HEADERS[pick % 2], req_body=body, req_body_size=len(body),
                  req_body_sha256=None, rule=RULES[pick // 6], pre_headers=None, pre_body=None, pre_status=None,
                  pre_body_size=None)


def _done(i: int, pick: int, at: float) -> dict[str, Any]:
    return outcome(i, BODIES[(pick + 1) % 3]) | {"ended": at + 0.5, "undo_class": "irreversible"}  # prunable


def _run(home: Path, plan: list[tuple[Any, ...]]) -> None:
    ids = RequestIds()
    writers = [AuditWriter(home / "a.db", Seal(home), threaded=False) for _ in range(2)]
    futures: list[Any] = []
    ended: list[tuple[int, str, int]] = []  # (writer, id, pick) of rows with an outcome
    clock = 1_764_000_000.0
    try:
        for step in plan:
            kind, at = step[0], step[1]
            writer = writers[at]
            clock += 1.0
            if kind == "rows":
                rows = [_row(ids, len(futures) + n, (step[3] + n) % 12, clock + n / 100) for n in range(step[2])]
                futures += [writer.record_intent(row) for row in rows]
                writer.write_queued()
                for n, row in enumerate(rows):
                    futures.append(writer.record_outcome(str(row["id"]), _done(n, (step[3] + n) % 12, clock)))
                    ended.append((at, str(row["id"]), (step[3] + n) % 12))
                writer.write_queued()
            elif kind == "again" and ended:
                _, request_id, pick = ended[step[2] % len(ended)]
                # Two rows alike in the same transaction: the second's blobs are counted in memory before it.
                rows = [_row(ids, len(futures) + n, pick, clock + n / 100) for n in range(2)]
                futures += [writer.record_intent(row) for row in rows]
                futures.append(writer.record_outcome(request_id, _done(7, pick + 5, clock)))
                writer.write_queued()
                futures += [writer.record_outcome(str(row["id"]), _done(1, pick, clock)) for row in rows]
                writer.write_queued()
            elif kind == "early":  # its outcome lets go of the response it was written with: gone, if only it named it
                row = _row(ids, len(futures), step[2], clock) | {"resp_headers": HEADERS[1],
                                                                 "resp_body": b"early %d" % (step[2] % 3)}
                futures.append(writer.record_intent(row))
                writer.write_queued()
                futures.append(writer.record_outcome(str(row["id"]), _done(3, step[2], clock)))
                writer.write_queued()
            elif kind == "prune":
                key = Seal(home).key()
                assert key is not None
                before = clock - (clock - 1_764_000_000.0) * (1 - step[2])
                # Rows queued before the prune, in its transaction, naming values older rows named: counted in memory
                # until written, the prune would take those blobs for unnamed.
                ahead = [_row(ids, len(futures) + n, n, clock + n / 100) for n in range(12)]
                futures += [writer.record_intent(row) for row in ahead]
                futures.append(writer.apply(lambda conn, _, before=before, key=key: prune_batch(
                    conn, key, before, {}, upper=upper_bound(conn, before, None))))
                after = [_row(ids, len(futures) + n, n, clock + n / 100) for n in range(12)]
                futures += [writer.record_intent(row) for row in after]  # in the prune's transaction
                writer.write_queued()
                ended = []  # some may be gone
                for n, row in enumerate(ahead):
                    futures.append(writer.record_outcome(str(row["id"]), _done(n, n, clock)))
                for n, row in enumerate(after):
                    futures.append(writer.record_outcome(str(row["id"]), _done(n, n, clock)))
                    ended.append((at, str(row["id"]), n))
                writer.write_queued()
        for future in futures:
            assert future.exception(0) is None
    finally:
        for writer in writers:
            writer.close()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(plan=steps)
def test_counts_add_up_to_the_rows_naming_each_blob(tmp_path_factory: Any, plan: list[tuple[Any, ...]]) -> None:
    home = tmp_path_factory.mktemp("counts")
    _run(home, plan)
    conn = ro(home)
    assert layout.miscounted(conn) is None
    assert verify(home).broken_id is None


def test_a_blob_pruned_by_another_process_is_stored_again_not_counted(tmp_path: Path) -> None:
    """The writer remembers a blob it stored; another process's prune removes it (its rows all went); the writer's
    next row with the same value must store it anew, not name the blob that is gone."""
    plan: list[tuple[Any, ...]] = [("rows", 0, 2, 0), ("rows", 0, 2, 0)]
    _run(tmp_path, plan)
    ids = RequestIds()
    writer = AuditWriter(tmp_path / "a.db", Seal(tmp_path), threaded=False)
    other = AuditWriter(tmp_path / "a.db", Seal(tmp_path), threaded=False)
    try:
        first = _row(ids, 100, 0, 1_764_000_100.0)
        writer.record_intent(first)
        writer.write_queued()
        writer.record_outcome(str(first["id"]), _done(0, 0, 1_764_000_100.0))
        writer.write_queued()
        keep = _row(ids, 101, 4, 1_764_000_200.0)  # other values: the newest row, which a prune keeps
        writer.record_intent(keep)
        writer.write_queued()
        key = Seal(tmp_path).key()
        assert key is not None
        pruned = other.apply(lambda conn, _: prune_batch(conn, key, 1_764_000_150.0, {},
                                                         upper=upper_bound(conn, 1_764_000_150.0, None)))
        other.write_queued()
        assert pruned.exception(0) is None
        with sqlite3.connect(tmp_path / "a.db") as conn:
            assert conn.execute(f"SELECT count(*) FROM {blobs.TABLE} WHERE data IS NOT NULL").fetchone()[0] > 0
        again = _row(ids, 102, 0, 1_764_000_300.0)  # the values of `first`, whose blobs the prune removed
        written = writer.record_intent(again)
        writer.write_queued()
        assert written.exception(0) is None
        writer.record_outcome(str(again["id"]), _done(0, 0, 1_764_000_300.0))
        writer.record_outcome(str(keep["id"]), _done(1, 4, 1_764_000_200.0))
        writer.write_queued()
    finally:
        writer.close()
        other.close()
    assert layout.miscounted(ro(tmp_path)) is None
    assert verify(tmp_path).broken_id is None

