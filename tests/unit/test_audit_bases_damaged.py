"""A damaged or hand-edited log read safely where blobs name bases (schema 17): a base id, a blob or a count of the
wrong type, a base far larger than the writer ever stores, a long chain of bases. Every reader gives one clear line
or a failing verify, never a traceback, never a reader's memory or time blown up by a few crafted rows."""

from __future__ import annotations

import os
import sqlite3
import tracemalloc
from pathlib import Path
from typing import Any

import pytest

from goex_proxy.audit import blobs
from goex_proxy.audit import prune as pruning
from goex_proxy.audit import store as audit
from goex_proxy.audit.seal import Seal
from goex_proxy.errors import AuditError
from goex_proxy.ids import RequestIds, packed
from tests.unit.test_audit_storage import NOW, intent, outcome, ro, rows_alike, verify, write


def edit(home: Path, sql: str, params: tuple[Any, ...] = ()) -> None:
    with sqlite3.connect(home / "a.db") as conn:
        conn.execute(sql, params)


def newest_based(home: Path) -> int:
    with sqlite3.connect(home / "a.db") as conn:
        return int(conn.execute("SELECT max(id) FROM audit_blobs WHERE base IS NOT NULL").fetchone()[0])


@pytest.mark.parametrize("base", ["abc", b"\x01", 1.5, -1, 1 << 60])
def test_a_base_id_of_any_type_or_value_reads_as_missing(tmp_path: Path, base: Any) -> None:
    """One blob's base set to text or bytes while others stay ids: `get` sorted the ids to fetch and failed with
    TypeError ('<' not supported between 'str' and 'int'); now the row cannot be read, in one line, and verify
    names it."""
    ids = RequestIds()
    rows = rows_alike(ids, 3)
    write(tmp_path, rows)
    edit(tmp_path, "UPDATE audit_blobs SET base = ? WHERE id = ?", (base, newest_based(tmp_path)))
    last = str(rows[-1][0]["id"])
    with pytest.raises(AuditError, match=f"of row {last} cannot be read .*is missing"):
        audit.get(ro(tmp_path), last)
    assert verify(tmp_path).broken_id == last
    assert any("<unreadable" in str(r.values()) for r in audit.iter_rows(ro(tmp_path), lenient=True))


@pytest.mark.parametrize(("sql", "params"), [
    ("UPDATE audit_blobs SET data = ?", (5,)),
    ("UPDATE requests SET resp_body_blob = ?", ("abc",)),
    ("UPDATE audit_blobs SET refs = ?", ("x",)),
])
def test_a_blob_ref_or_count_of_the_wrong_type_fails_in_one_line(tmp_path: Path, sql: str, params: tuple[Any, ...]
                                                                 ) -> None:
    """A blob's data an integer, a row's blob id text, a count text: every reader failed with a traceback (TypeError
    'int' object is not subscriptable, ValueError invalid literal for int()), `log verify` and `log prune` too. Now
    verify names a row, get and prune say in one line what is wrong."""
    ids = RequestIds()
    rows = [(intent(ids, i, ts=NOW - 40 * 86400 + i), outcome(i)) for i in range(3)] + [(intent(ids, 9), outcome(9))]
    write(tmp_path, rows)
    edit(tmp_path, sql, params)
    result = verify(tmp_path)
    assert result.broken_id is not None and result.problem, result
    try:
        audit.get(ro(tmp_path), str(rows[0][0]["id"]))
    except AuditError as exc:
        assert "\n" not in str(exc)
    list(audit.iter_rows(ro(tmp_path), lenient=True))
    seal = Seal(tmp_path)
    conn = audit.open_db(tmp_path / "a.db", seal=seal)
    try:
        with pytest.raises(AuditError, match="nothing was pruned"):
            pruning.prune(conn, seal.key(), NOW - 30 * 86400, {}, seal.anchor(), include_undoable=True)
    finally:
        conn.close()


def big() -> bytes:
    """6 MB that deflate about 37 to 1 (within what a blob may inflate to)."""
    value = bytearray(os.urandom(20000) * 320)
    value[::300] = os.urandom(len(value[::300]))
    return bytes(value)


def test_a_base_larger_than_the_writer_stores_is_refused_not_kept(tmp_path: Path) -> None:
    """Forty rows' bodies each put on top of a different 6 MB base (170 KB stored): a read kept every base it read
    whole for the chunk of rows, 264 MB for a 7 MB log (a chunk of 500 rows, 64 MiB bases: tens of GB). A base is a
    value the writer stored alone, at most 4 KiB: a larger one is refused before it is inflated."""
    ids = RequestIds()
    rows = [(intent(ids, i), outcome(i)) for i in range(40)]
    write(tmp_path, rows)
    with sqlite3.connect(tmp_path / "a.db") as conn:
        for row, _ in rows:
            ref = conn.execute("SELECT resp_body_blob FROM requests WHERE id = ?", (packed(row["id"]),)).fetchone()[0]
            base = conn.execute("INSERT INTO audit_blobs (data, refs) VALUES (?, 1)", (blobs.encode(big()),)).lastrowid
            conn.execute("UPDATE audit_blobs SET base = ?, data = ? WHERE id = ?",
                         (base, bytes([blobs.BASED_V1_BYTES, 3, 0]), ref))
    tracemalloc.start()
    try:
        read = list(audit.iter_rows(ro(tmp_path), lenient=True))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 48 << 20, peak
    assert all("<unreadable resp_body: its base" in str(r["resp_body"]) for r in read)
    with pytest.raises(AuditError, match="its base .* cannot be read .*4,096"):
        audit.get(ro(tmp_path), str(rows[0][0]["id"]))


def test_a_chain_of_bases_is_read_one_level_deep(tmp_path: Path) -> None:
    """A row's blob on top of a chain of 20,000 bases: every read followed the chain to its end, one query a link
    (6 s to verify one row; a million links, minutes), though a base with a base of its own is refused. Now a read
    fetches the blobs and their bases, and no more."""
    ids = RequestIds()
    row = intent(ids, 1)
    write(tmp_path, [(row, outcome(1))])
    with sqlite3.connect(tmp_path / "a.db") as conn:
        top = int(conn.execute("SELECT max(id) FROM audit_blobs").fetchone()[0])
        conn.executemany("INSERT INTO audit_blobs (id, data, refs, base) VALUES (?, ?, 1, ?)",
                         [(top + 1 + k, blobs.encode(b"x"), top + 2 + k) for k in range(20000)])
        conn.execute("UPDATE audit_blobs SET base = ? WHERE id = ?",
                     (top + 1, conn.execute("SELECT resp_body_blob FROM requests").fetchone()[0]))
    conn = ro(tmp_path)
    queries: list[str] = []
    conn.set_trace_callback(queries.append)
    with pytest.raises(AuditError, match="has a base of its own"):
        audit.get(conn, str(row["id"]))
    assert sum("FROM audit_blobs" in q for q in queries) <= 3, len(queries)
    assert verify(tmp_path).broken_id == row["id"]


def test_releasing_a_blob_on_a_long_chain_of_bases_ends(tmp_path: Path) -> None:
    """A row's blob on top of a hand-made chain of 5,000 bases, each named only by the one above: releasing it
    (an outcome written again, a prune) recursed once a link and failed with RecursionError, which failed the writer's
    whole batch. It now lets go of the whole chain, as each blob's count reaches 0."""
    ids = RequestIds()
    write(tmp_path, [(intent(ids, 1), outcome(1))])
    with sqlite3.connect(tmp_path / "a.db") as conn:
        top = int(conn.execute("SELECT max(id) FROM audit_blobs").fetchone()[0])
        conn.executemany("INSERT INTO audit_blobs (id, data, refs, base) VALUES (?, ?, 1, ?)",
                         [(top + 1 + k, blobs.encode(b"x"), top + 2 + k if k < 4999 else None) for k in range(5000)])
        conn.execute("UPDATE audit_blobs SET refs = 1 WHERE id = ?", (top + 1,))
        assert blobs.release(conn, [top + 1]) == 5000
        assert conn.execute("SELECT count(*) FROM audit_blobs WHERE id > ?", (top,)).fetchone()[0] == 0
