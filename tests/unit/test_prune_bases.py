"""Pruning a log whose blobs name bases: what the pruned rows held is gone with them, though newer rows were
deflated on top of it, and the kept rows read back, verify and keep their counts."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from goex_proxy.audit import blobs, layout
from goex_proxy.audit import prune as pruning
from goex_proxy.audit import store as audit
from goex_proxy.audit.seal import Seal
from goex_proxy.audit.writer import AuditWriter
from goex_proxy.ids import RequestIds
from tests.unit.test_audit_storage import NOW, named_counts, ro, rows_alike, verify, write

SECRET = b'"access_token": "xoxp-old-%d"'


def every_value(conn: sqlite3.Connection) -> list[bytes]:
    """The value of every blob stored, as bytes (a blob on top of a base read with it)."""
    found = dict(conn.execute("SELECT id, data FROM audit_blobs WHERE base IS NULL").fetchall())
    values = [blobs.raw_of(blobs.decode(data)) for data in found.values()]
    values += [blobs.raw_of(blobs.decode(data, blobs.raw_of(blobs.decode(found[base]))))
               for data, base in conn.execute("SELECT data, base FROM audit_blobs WHERE base IS NOT NULL")]
    return values


def test_a_pruned_rows_value_does_not_stay_as_the_base_of_newer_rows(tmp_path: Path) -> None:
    """Three old answers hold a token; three newer ones of the same API were stored on top of the first. The prune
    removed the old rows but kept the first answer whole as the newer ones' base (and the writer builds on a base as
    long as it helps: for a steady API, forever), so `log prune` left the token in the database. Now a base no kept
    row names is replaced by the first blob on it, which the others are stored on top of."""
    ids = RequestIds()
    rows = rows_alike(ids, 6)
    old = [(row | {"ts": NOW - 40 * 86400 + i}, done | {"resp_body": done["resp_body"].replace(
        b'"ok": true', b'"ok": true, ' + SECRET % i)}) for i, (row, done) in enumerate(rows[:3])]
    write(tmp_path, old + rows[3:])
    conn = ro(tmp_path)
    assert conn.execute("SELECT count(*) FROM audit_blobs WHERE base IS NOT NULL").fetchone()[0] >= 6  # built on
    seal = Seal(tmp_path)
    conn = audit.open_db(tmp_path / "a.db", seal=seal)
    assert pruning.prune(conn, seal.key(), NOW - 30 * 86400, {}, seal.anchor(), include_undoable=True).rows == 3
    conn.close()
    conn = ro(tmp_path)
    assert not any(b"xoxp-old" in value for value in every_value(conn))
    assert [audit.get(conn, str(row["id"]))["resp_body"] for row, _ in rows[3:]] == [d["resp_body"] for _, d in rows[3:]]
    assert conn.execute("SELECT count(*) FROM audit_blobs WHERE base IS NOT NULL").fetchone()[0] > 0  # still based
    assert dict(conn.execute("SELECT id, refs FROM audit_blobs").fetchall()) == named_counts(conn)
    assert layout.miscounted(conn) is None and verify(tmp_path).broken_id is None


def test_a_writer_that_remembers_a_replaced_base_stores_alone(tmp_path: Path) -> None:
    """The writer (another process) remembers the base a prune replaced: its next value of that kind reads back, the
    counts hold, and no pruned value stays."""
    ids = RequestIds()
    rows = rows_alike(ids, 8)
    old = [(row | {"ts": NOW - 40 * 86400 + i}, done | {"resp_body": done["resp_body"].replace(
        b'"ok": true', b'"ok": true, ' + SECRET % i)}) for i, (row, done) in enumerate(rows[:2])]
    writer = AuditWriter(tmp_path / "a.db", Seal(tmp_path))
    try:
        for row, done in old + rows[2:5]:
            writer.record_intent(row).result(5)
            writer.record_outcome(str(row["id"]), done).result(5)
        seal = Seal(tmp_path)
        conn = audit.open_db(tmp_path / "a.db", seal=seal)
        assert pruning.prune(conn, seal.key(), NOW - 30 * 86400, {}, seal.anchor(), include_undoable=True).rows == 2
        conn.close()
        for row, done in rows[5:]:
            writer.record_intent(row).result(5)
            writer.record_outcome(str(row["id"]), done).result(5)
    finally:
        writer.close()
    conn = ro(tmp_path)
    assert [audit.get(conn, str(row["id"]))["resp_body"] for row, _ in rows[2:]] == [d["resp_body"] for _, d in rows[2:]]
    assert not any(b"xoxp-old" in value for value in every_value(conn))
    assert dict(conn.execute("SELECT id, refs FROM audit_blobs").fetchall()) == named_counts(conn)
    assert verify(tmp_path).broken_id is None


def test_the_retention_task_lets_go_of_pruned_bases_too(tmp_path: Path) -> None:
    """`run`'s retention prunes through its own writer, which remembers the base: the token goes there too, and the
    next answer of that API is stored and read back."""
    import asyncio
    import dataclasses

    from goex_proxy.addons.retention import Retention
    from tests.conftest import stage_state

    with stage_state(tmp_path, "version: 1\nname: p\nrules: []\n") as state:
        assert state.writer is not None and state.config is not None
        ids = RequestIds()
        rows = rows_alike(ids, 6)
        old = [(row | {"ts": NOW - 40 * 86400 + i}, done | {"undo_class": None, "resp_body": done["resp_body"].replace(
            b'"ok": true', b'"ok": true, ' + SECRET % i)}) for i, (row, done) in enumerate(rows[:2])]
        for row, done in old + rows[2:5]:
            state.writer.record_intent(row).result(5)
            state.writer.record_outcome(str(row["id"]), done).result(5)
        state.config = dataclasses.replace(state.config, retention=30 * 86400)
        done = asyncio.run(Retention(state).prune_once())
        assert done is not None and done.rows == 2
        row, outcome = rows[5]
        state.writer.record_intent(row).result(5)
        state.writer.record_outcome(str(row["id"]), outcome).result(5)
        conn = audit.open_db(tmp_path / "audit.db", readonly=True)
        assert not any(b"xoxp-old" in value for value in every_value(conn))
        assert [audit.get(conn, str(r["id"]))["resp_body"] for r, _ in rows[2:]] == [d["resp_body"] for _, d in rows[2:]]
        assert dict(conn.execute("SELECT id, refs FROM audit_blobs").fetchall()) == named_counts(conn)
        seal = Seal(tmp_path)
        assert audit.verify(conn, audit.chain_key(conn, seal), seal.anchor()).broken_id is None


def test_a_base_whose_count_was_set_low_is_not_taken_by_the_sweep(tmp_path: Path) -> None:
    """A base a row names, its count edited below the blobs on top of it: letting go of bases no row names must not
    take it for one (the row would lose its value); a count that does not hold is left for `log verify` (a prune
    checks every count before it starts; this is for an edit made since)."""
    ids = RequestIds()
    rows = rows_alike(ids, 3)
    write(tmp_path, rows)
    with sqlite3.connect(tmp_path / "a.db") as conn:
        base = conn.execute("SELECT resp_body_blob FROM requests ORDER BY seq LIMIT 1").fetchone()[0]
        on_top = conn.execute("SELECT count(*) FROM audit_blobs WHERE base = ?", (base,)).fetchone()[0]
        assert on_top == 2
        conn.execute("UPDATE audit_blobs SET refs = ? WHERE id = ?", (on_top - 1, base))
        assert blobs.replace_unnamed_bases(conn) == 0
        assert conn.execute("SELECT count(*) FROM audit_blobs WHERE base = ?", (base,)).fetchone()[0] == 2
    assert audit.get(ro(tmp_path), str(rows[0][0]["id"]))["resp_body"] == rows[0][1]["resp_body"]


def test_bases_are_replaced_in_short_transactions_by_the_newest_blob_on_them(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """The blobs on a pruned base are stored again a few at a time (each a transaction the proxy's writer waits
    for), on top of the newest of them: the next prune, which takes the next oldest rows, then stores nothing again
    (on the oldest, it would have moved every blob of that API once more, at every prune)."""
    ids = RequestIds()
    rows = rows_alike(ids, 9)
    aged = [(row | {"ts": NOW - (40 - i) * 86400}, done | {"undo_class": None}) for i, (row, done) in enumerate(rows)]
    write(tmp_path, aged[:1] + [(row, done | {"resp_body": done["resp_body"].replace(b'"ok": true', b'"ok": true, '
                                                                                      + SECRET % 0)})
                                for row, done in aged[1:2]] + aged[2:])
    monkeypatch.setattr(blobs, "REWRITES", 2)
    seal = Seal(tmp_path)
    conn = audit.open_db(tmp_path / "a.db", seal=seal)
    assert pruning.prune(conn, seal.key(), NOW - 38.5 * 86400, {}, seal.anchor()).rows == 2
    conn.close()
    conn = ro(tmp_path)
    assert not any(b"xoxp-old" in value for value in every_value(conn))
    assert dict(conn.execute("SELECT id, refs FROM audit_blobs").fetchall()) == named_counts(conn)
    assert verify(tmp_path).broken_id is None
    moved: list[int] = []
    replace = blobs.replace_unnamed_bases
    monkeypatch.setattr(blobs, "replace_unnamed_bases", lambda c, most=2: moved.append(replace(c, most)) or moved[-1])
    conn = audit.open_db(tmp_path / "a.db", seal=seal)
    assert pruning.prune(conn, seal.key(), NOW - 36.5 * 86400, {}, seal.anchor()).rows == 2
    conn.close()
    assert moved == [0]
    conn = ro(tmp_path)
    assert [audit.get(conn, str(r["id"]))["resp_body"] for r, _ in aged[4:]] == [d["resp_body"] for _, d in aged[4:]]
    assert dict(conn.execute("SELECT id, refs FROM audit_blobs").fetchall()) == named_counts(conn)
    assert verify(tmp_path).broken_id is None


def test_an_outcome_written_again_keeps_nothing_of_the_first(tmp_path: Path) -> None:
    """The second outcome's body was deflated on top of the first's (the last of its kind), so letting go of the
    first left it stored whole as the second's base: the value the row no longer holds stayed. An outcome written
    again is stored on no base the writer remembers now (a base other rows were built on goes at the next prune)."""
    ids = RequestIds()
    row, done = rows_alike(ids, 1)[0]
    first = done["resp_body"].replace(b'"ok": true', b'"ok": true, ' + SECRET % 1)
    writer = AuditWriter(tmp_path / "a.db", Seal(tmp_path))
    try:
        writer.record_intent(row).result(5)
        writer.record_outcome(str(row["id"]), done | {"resp_body": first}).result(5)
        writer.apply(lambda conn, w: w.update_outcome(str(row["id"]), done)).result(5)
    finally:
        writer.close()
    conn = ro(tmp_path)
    assert audit.get(conn, str(row["id"]))["resp_body"] == done["resp_body"]
    assert not any(b"xoxp-old" in value for value in every_value(conn))
    assert dict(conn.execute("SELECT id, refs FROM audit_blobs").fetchall()) == named_counts(conn)
    assert verify(tmp_path).broken_id is None
