"""The audit store: sortable ids, write-ahead rows, and a keyed hash chain that names the first broken row."""

from __future__ import annotations

import errno
import os
import sqlite3
import threading
import time
from pathlib import Path

import pytest

from goex_proxy.audit import layout
from goex_proxy.audit import seal as seal_module
from goex_proxy.audit import store as audit
from goex_proxy.audit import writer as audit_writer
from goex_proxy.audit.seal import Anchor, Seal
from goex_proxy.audit.writer import AuditWriter
from goex_proxy.errors import AuditError
from goex_proxy.ids import RequestIds, packed


def row(i: int, ids: RequestIds) -> dict[str, object]:
    return {"id": ids.new(1_700_000_000 + i), "ts": 1_700_000_000.0 + i, "agent": "bot", "method": "GET",
            "scheme": "https", "host": "slack.com", "port": 443, "path": f"/p{i}", "url": f"https://slack.com/p{i}",
            "req_headers": "[]", "req_body": b"body", "decision": "allow"}


def fill(path: Path, n: int) -> list[str]:
    ids, writer = RequestIds(), AuditWriter(path, Seal(path.parent))
    rows = [row(i, ids) for i in range(n)]
    for r in rows:
        writer.record_intent(r).result(5)
    for r in rows[:-1]:
        writer.record_outcome(str(r["id"]), {"status": 200, "ended": 1.0, "duration_ms": 1.0}).result(5)
    writer.close()
    return [str(r["id"]) for r in rows]


def check(home: Path, anchor: Anchor | None = None) -> audit.VerifyResult:
    """Verify the log in `home` as `log verify` does: under the seal's key, against its anchor (or the one given)."""
    seal = Seal(home)
    conn = audit.open_db(home / "a.db", readonly=True)
    return audit.verify(conn, audit.chain_key(conn, seal), anchor or seal.anchor())


def test_ids_are_short_unique_and_sortable() -> None:
    """Ids made in time order sort in time order, even within one millisecond."""
    ids = RequestIds()
    made = [ids.new(1_700_000_000.0) for _ in range(1000)] + [ids.new(1_700_000_001.0)]
    assert made == sorted(made) and len(set(made)) == len(made) and all(len(i) == 13 for i in made)


def test_verify_accepts_intact_log_with_pending_row(tmp_path: Path) -> None:
    """An untouched log verifies, including a last row still waiting for its outcome."""
    fill(tmp_path / "a.db", 5)
    result = check(tmp_path)
    assert (result.checked, result.broken_id) == (5, None)


def test_verify_names_edited_outcome(tmp_path: Path) -> None:
    """Changing a recorded status is detected at that row."""
    ids = fill(tmp_path / "a.db", 5)
    with sqlite3.connect(tmp_path / "a.db") as conn:
        conn.execute("UPDATE requests SET status = 204 WHERE id = ?", (packed(ids[2]),))
    result = check(tmp_path)
    assert result.broken_id == ids[2] and "outcome" in (result.problem or "")


def test_verify_names_row_after_a_deleted_one(tmp_path: Path) -> None:
    """Deleting a row breaks the link of the row after it."""
    ids = fill(tmp_path / "a.db", 5)
    with sqlite3.connect(tmp_path / "a.db") as conn:
        conn.execute("DELETE FROM requests WHERE id = ?", (packed(ids[1]),))
    result = check(tmp_path)
    assert result.broken_id == ids[2] and result.checked == 1


def test_chain_continues_across_writers(tmp_path: Path) -> None:
    """A second writer (a restarted proxy) links its first row to the last row of the first."""
    fill(tmp_path / "a.db", 3)
    fill(tmp_path / "a.db", 3)
    assert check(tmp_path).checked == 6


def test_migrations_are_recorded(tmp_path: Path) -> None:
    """Opening twice applies the schema once and records its version."""
    audit.open_db(tmp_path / "a.db", seal=Seal(tmp_path)).close()
    db = audit.open_db(tmp_path / "a.db", seal=Seal(tmp_path))
    assert db.execute("PRAGMA user_version").fetchone()[0] == len(audit.MIGRATIONS)
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_a_log_a_newer_version_wrote_is_not_written_by_this_one(tmp_path: Path) -> None:
    """A log whose schema is past this version's migrations was read and written without a word: its rows may hold
    what this version misreads (a new layout) and would write over wrongly. Writing it is refused in one line; reading
    it is still possible."""
    ids = fill(tmp_path / "a.db", 2)
    with sqlite3.connect(tmp_path / "a.db") as conn:
        conn.execute(f"PRAGMA user_version = {len(audit.MIGRATIONS) + 1}")
    with pytest.raises(AuditError, match=r"written by a newer goex-proxy \(schema \d+; this one knows up to \d+\)"):
        audit.open_db(tmp_path / "a.db", seal=Seal(tmp_path))
    with pytest.raises(AuditError, match="newer goex-proxy"):
        AuditWriter(tmp_path / "a.db", Seal(tmp_path))
    assert audit.get(audit.open_db(tmp_path / "a.db", readonly=True), ids[0])["id"] == ids[0]


def test_outcomes_share_a_transaction_and_never_hold_up_a_request(tmp_path: Path, monkeypatch) -> None:
    """Outcomes (nobody waits for them) gather into one write; a request row arriving meanwhile ends the wait."""
    monkeypatch.setattr(audit_writer, "OUTCOME_GATHER_SECONDS", 0.5)
    ids, writer = RequestIds(), AuditWriter(tmp_path / "a.db", Seal(tmp_path))
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
    assert batches == [1, 1, 3, 1]  # the last: `late` had no outcome when the writer stopped, so it is interrupted
    with sqlite3.connect(tmp_path / "a.db") as conn:
        errors = {layout.id_read(i): e for i, e in conn.execute("SELECT id, error FROM requests")}
    assert errors == {first["id"]: None, second["id"]: None, late["id"]: audit.INTERRUPTED}


def rechain_without_key(path: Path) -> None:
    """What an agent that reached the database file can do: recompute every hash with plain SHA-256."""
    conn = sqlite3.connect(path)
    with conn:
        prev = ""
        for r in list(audit.iter_rows(conn)):
            r["prev_hash"], r["hash"] = prev, audit.row_hash(None, prev, r)
            r["outcome_hash"] = audit.outcome_hash(None, r["hash"], r) if r["outcome_hash"] else None
            conn.execute("UPDATE requests SET prev_hash = ?, hash = ?, outcome_hash = ? WHERE seq = ?",
                         (r["prev_hash"], r["hash"], r["outcome_hash"], r["seq"]))
            prev = r["hash"]
    conn.close()


def test_a_rechained_log_does_not_verify(tmp_path: Path) -> None:
    """Deleting a row and re-chaining the rest (as one could with plain SHA-256) is caught: the chain is keyed."""
    ids = fill(tmp_path / "a.db", 5)
    with sqlite3.connect(tmp_path / "a.db") as conn:
        conn.execute("DELETE FROM requests WHERE id = ?", (packed(ids[2]),))
    rechain_without_key(tmp_path / "a.db")
    result = check(tmp_path)
    assert result.broken_id == ids[0] and "edited" in (result.problem or "")


def test_rows_removed_from_the_end_are_caught_by_the_anchor(tmp_path: Path) -> None:
    """The chain alone cannot tell a log cut short; the anchor kept in the state directory can."""
    ids = fill(tmp_path / "a.db", 5)
    assert Seal(tmp_path).anchor() == Anchor(5, ids[-1], Seal(tmp_path).anchor().hash)  # type: ignore[union-attr]
    with sqlite3.connect(tmp_path / "a.db") as conn:
        conn.execute("DELETE FROM requests WHERE id IN (?, ?)", (packed(ids[3]), packed(ids[4])))
    result = check(tmp_path)
    assert (result.broken_id, result.checked) == (ids[4], 3) and "removed from the end" in (result.problem or "")


def test_the_anchor_lags_but_never_leads_and_other_writers_do_not_move_it_back(tmp_path: Path) -> None:
    """An anchor older than the newest row still verifies (rows after it are chained); a writer whose head is older
    than the kept anchor leaves it alone."""
    fill(tmp_path / "a.db", 3)
    old = Seal(tmp_path).anchor()
    fill(tmp_path / "a.db", 2)
    newest = Seal(tmp_path).anchor()
    assert old is not None and newest is not None and newest.seq == 5
    assert check(tmp_path, old).broken_id is None and check(tmp_path, old).checked == 5
    writer = AuditWriter(tmp_path / "a.db", Seal(tmp_path))
    writer._anchor(old)
    writer.close()
    assert Seal(tmp_path).anchor() == newest


def test_a_log_written_before_keying_is_rechained_once_it_verifies(tmp_path: Path) -> None:
    """Opening a log an older version wrote (plain SHA-256, schema 6) signs it under a new key; a broken one is
    refused rather than blessed."""
    for home, tamper in ((tmp_path, False), (tmp_path / "broken", True)):
        ids = fill(home / "a.db", 4)
        rechain_without_key(home / "a.db")
        with sqlite3.connect(home / "a.db") as conn:
            conn.execute(f"PRAGMA user_version = {audit.KEYED_VERSION - 1}")
            if tamper:
                conn.execute("UPDATE requests SET path = '/innocent' WHERE id = ?", (packed(ids[1]),))
            conn.execute("INSERT INTO limit_hits (key, agent, ts, request_id) VALUES ('p/post', 'bot', 5.0, ?)",
                         (ids[2],))  # an older version's hit: carried into its row's charge when re-signed
        (home / "audit.key").unlink(missing_ok=True)
        (home / "audit.anchor").unlink(missing_ok=True)
        if tamper:
            with pytest.raises(AuditError, match=f"already broken before its chain was keyed, at row {ids[1]}"):
                audit.open_db(home / "a.db", seal=Seal(home))
            continue
        legacy = audit.open_db(home / "a.db", readonly=True)
        assert audit.chain_key(legacy, Seal(home)) is None and check(home).checked == 4
        audit.open_db(home / "a.db", seal=Seal(home)).close()
        assert Seal(home).key() is not None and Seal(home).anchor().id == ids[-1]  # type: ignore[union-attr]
        rechain_without_key(home / "a.db")  # a plain chain no longer passes
        assert check(home).broken_id == ids[0]


def test_a_lost_chain_key_stops_writing(tmp_path: Path) -> None:
    """Without its key, new rows could not extend the chain: the log is not opened for writing."""
    fill(tmp_path / "a.db", 2)
    (tmp_path / "audit.key").unlink()
    with pytest.raises(AuditError, match="audit chain key .* is missing"):
        AuditWriter(tmp_path / "a.db", Seal(tmp_path))


def test_a_cap_is_checked_against_every_writers_hits(tmp_path: Path) -> None:
    """Two writers on one log (two proxies): a charge past a cap is refused, its row not written, whichever writer
    stored the earlier hits; hits are stored at the charge's time; a window that has passed counts no more."""
    from goex_proxy.policy.engine import Limit
    from goex_proxy.policy.limits import Charge

    cap = (("p/post", Limit(2, 60.0, "1m")),)
    ids, first, second = RequestIds(), AuditWriter(tmp_path / "a.db", Seal(tmp_path)), AuditWriter(tmp_path / "a.db",
                                                                                                   Seal(tmp_path))
    results = [w.record_intent(row(i, ids), Charge("bot", ("p/post",), 1000.0 + i, cap)).result(5)
               for i, w in enumerate((first, second, first, second))]
    assert results[:2] == [None, None] and all("limit reached: rule 'post' allows at most 2 per 1m" in r
                                               for r in results[2:] if r)
    assert results[2] and results[3]
    later = second.record_intent(row(9, ids), Charge("bot", ("p/post",), 1061.0, cap)).result(5)
    other_agent = first.record_intent(row(10, ids), Charge("eve", ("p/post",), 1003.0, cap)).result(5)
    first.close(), second.close()
    assert later is None and other_agent is None
    conn = audit.open_db(tmp_path / "a.db", readonly=True)
    assert [r[0] for r in conn.execute("SELECT ts FROM limit_hits ORDER BY rowid")] == [1000.0, 1001.0, 1061.0, 1003.0]
    assert conn.execute("SELECT count(*) FROM requests").fetchone()[0] == 4


def test_setting_the_schema_version_back_does_not_make_a_plain_chain_pass(tmp_path: Path) -> None:
    """Once a chain key exists, the log is checked under it even if its schema version claims an unkeyed log."""
    ids = fill(tmp_path / "a.db", 3)
    rechain_without_key(tmp_path / "a.db")
    with sqlite3.connect(tmp_path / "a.db") as conn:
        conn.execute(f"PRAGMA user_version = {audit.KEYED_VERSION - 1}")
    assert check(tmp_path).broken_id == ids[0]
    with pytest.raises(AuditError, match="says an older version wrote it, but .* anchors a keyed log"):
        audit.open_db(tmp_path / "a.db", seal=Seal(tmp_path))  # nor is it re-signed, blessing the rewrite


def test_rows_cut_from_the_end_are_not_papered_over_by_new_rows(tmp_path: Path) -> None:
    """New rows would reuse the seq of removed ones and chain onto what is left: the writer refuses to extend a log
    that no longer holds its anchor's row, and an emptied or replaced log does not get its anchor removed."""
    ids = fill(tmp_path / "a.db", 5)
    with sqlite3.connect(tmp_path / "a.db") as conn:
        conn.execute("DELETE FROM requests WHERE id IN (?, ?)", (packed(ids[3]), packed(ids[4])))
    writer = AuditWriter(tmp_path / "a.db", Seal(tmp_path))
    with pytest.raises(AuditError, match="no longer holds the row its anchor names"):
        writer.record_intent(row(9, RequestIds())).result(5)
    writer.close()
    assert check(tmp_path).broken_id == ids[4]
    (tmp_path / "a.db").unlink()
    for suffix in ("-wal", "-shm"):
        (tmp_path / f"a.db{suffix}").unlink(missing_ok=True)
    with pytest.raises(AuditError, match="anchors a keyed log"):
        audit.open_db(tmp_path / "a.db", seal=Seal(tmp_path))
    assert Seal(tmp_path).anchor() is not None


def test_rows_cut_from_the_end_while_the_writer_runs_are_seen_by_its_next_batch(tmp_path: Path) -> None:
    """A writer builds on the log as its last transaction left it while no other connection wrote since (SQLite's
    data_version), without reading the newest row or the anchor's again: rows cut by another connection meanwhile
    must still be seen, and the next batch refused, not chained onto what is left."""
    ids, writer = RequestIds(), AuditWriter(tmp_path / "a.db", Seal(tmp_path))
    try:
        rows = [row(i, ids) for i in range(4)]
        for r in rows:
            writer.record_intent(r).result(5)
        with sqlite3.connect(tmp_path / "a.db") as conn:
            conn.execute("DELETE FROM requests WHERE id = ?", (packed(str(rows[3]["id"])),))
        with pytest.raises(AuditError, match="no longer holds the row its anchor names"):
            writer.record_intent(row(9, ids)).result(5)
    finally:
        writer.close()
    assert check(tmp_path).broken_id == rows[3]["id"]


def test_writers_taking_turns_each_chain_onto_the_others_rows(tmp_path: Path) -> None:
    """Two writers of one log (two workers) alternate batches: each must read the newest row the other wrote, never
    chain onto the one it wrote last."""
    ids = RequestIds()
    first, second = AuditWriter(tmp_path / "a.db", Seal(tmp_path)), AuditWriter(tmp_path / "a.db", Seal(tmp_path))
    try:
        for i in range(12):
            r, writer = row(i, ids), first if i % 4 < 2 else second  # two in a row each: once cached, then not
            writer.record_intent(r).result(5)
            writer.record_outcome(str(r["id"]), {"status": 200, "ended": 1.0}).result(5)
    finally:
        first.close()
        second.close()
    result = check(tmp_path)
    assert (result.broken_id, result.checked) == (None, 12)


def test_the_writer_checkpoints_the_wal_at_its_own_size_not_at_sqlites_default(tmp_path: Path) -> None:
    """A checkpoint syncs within the commit that passes the WAL's size, and the requests of that batch wait for it:
    the writer's connections checkpoint at WAL_CHECKPOINT_PAGES, not at SQLite's 1,000 pages, and do checkpoint."""
    import concurrent.futures

    frame = 4096 + 24  # a WAL frame: its page and its header
    ids, writer = RequestIds(), AuditWriter(tmp_path / "a.db", Seal(tmp_path), threaded=False)
    log_, wal = tmp_path / "a.db", tmp_path / "a.db-wal"
    unchecked, frames = log_.stat().st_size, 0
    try:
        for i in range(0, 20000, 20):  # about 10 frames a batch: 20 rows, each a page (a body of its own)
            for r in (row(n, ids) | {"req_body": os.urandom(3000)} for n in range(i, i + 20)):
                writer._queue.put((audit_writer._Intent(r, None), concurrent.futures.Future()))
            writer.write_queued()
            if log_.stat().st_size > unchecked:  # pages copied into the database: the first checkpoint
                break
            frames = wal.stat().st_size // frame
    finally:
        writer.close()
    assert audit.WAL_CHECKPOINT_PAGES > 1000
    assert log_.stat().st_size > unchecked, "never checkpointed"
    assert audit.WAL_CHECKPOINT_PAGES - 200 < frames <= audit.WAL_CHECKPOINT_PAGES


def test_outcome_fields_without_an_outcome_hash_and_the_undo_class_are_covered(tmp_path: Path) -> None:
    """Erasing a row's outcome hash leaves it looking pending only if every outcome field is gone too; the undo
    class shown with the row is covered by the outcome hash."""
    ids = fill(tmp_path / "a.db", 3)
    with sqlite3.connect(tmp_path / "a.db") as conn:
        conn.execute("UPDATE requests SET status = NULL, outcome_hash = NULL WHERE id = ?", (packed(ids[0]),))  # a body left
    assert check(tmp_path).broken_id == ids[0]
    ids = fill(tmp_path / "b" / "a.db", 3)
    with sqlite3.connect(tmp_path / "b" / "a.db") as conn:
        conn.execute("UPDATE requests SET undo_class = 'exact' WHERE id = ?", (packed(ids[0]),))
    assert check(tmp_path / "b").broken_id == ids[0]


def test_limit_hits_removed_or_added_are_caught(tmp_path: Path) -> None:
    """Each row carries, under its hash, the limit hits it was charged: deleting hits (which would reset a limit) or
    adding some is named by verify."""
    rows = _charged_rows(tmp_path, ("p/post", "p/all"))
    with sqlite3.connect(tmp_path / "a.db") as conn:
        conn.execute("DELETE FROM limit_hits WHERE request_id = ? AND key = 'p/all'", (rows[1]["id"],))
    result = check(tmp_path)
    assert result.broken_id == rows[1]["id"] and "is gone" in (result.problem or "")
    with sqlite3.connect(tmp_path / "a.db") as conn:
        conn.execute("INSERT INTO limit_hits (key, agent, ts, request_id) VALUES ('p/all', 'bot', 1001.0, ?)",
                     (rows[1]["id"],))
        conn.execute("INSERT INTO limit_hits (key, agent, ts, request_id) VALUES ('p/x', 'bot', 1.0, ?)", (rows[0]["id"],))
    result = check(tmp_path)
    assert result.broken_id == rows[0]["id"] and "matches no charge" in (result.problem or "")


def _charged_rows(tmp_path: Path, keys: tuple[str, ...]) -> list[dict[str, object]]:
    """Three rows of agent bot, each charged against `keys`, written and verified."""
    from goex_proxy.policy.limits import Charge

    ids, writer = RequestIds(), AuditWriter(tmp_path / "a.db", Seal(tmp_path))
    rows = [row(i, ids) for i in range(3)]
    for i, r in enumerate(rows):
        writer.record_intent(r, Charge("bot", keys, 1000.0 + i)).result(5)
    writer.close()
    assert check(tmp_path).broken_id is None
    return rows


def test_a_limit_hit_moved_to_another_agent_is_caught(tmp_path: Path) -> None:
    """A cap counts an agent's hits (`limit_hits.agent`): one moved to another agent resets the first agent's count,
    and verify, which matched each hit to its row's charge by rule and time alone, passed it."""
    rows = _charged_rows(tmp_path, ("p/post",))
    with sqlite3.connect(tmp_path / "a.db") as conn:
        conn.execute("UPDATE limit_hits SET agent = 'other' WHERE request_id = ?", (rows[1]["id"],))
    result = check(tmp_path)
    assert result.broken_id == rows[1]["id"] and "for agent 'other' matches no charge" in (result.problem or "")

IN_FLIGHT = """
import os, signal, sys, time
from pathlib import Path
from goex_proxy.audit.seal import Seal
from goex_proxy.audit.writer import AuditWriter
from goex_proxy.ids import RequestIds
db = Path(sys.argv[1])
writer = AuditWriter(db, Seal(db.parent))
rid = RequestIds().new()
writer.record_intent({"id": rid, "ts": time.time(), "agent": "bot", "method": "POST", "scheme": "https",
                      "host": "slack.com", "port": 443, "path": "/p", "url": "https://slack.com/p",
                      "req_headers": "[]", "req_body": b"x", "decision": "allow"}).result(10)
print(rid, flush=True)
if sys.argv[2] == "killed":
    os.kill(os.getpid(), signal.SIGKILL)
sys.stdin.readline()
writer.record_outcome(rid, {"status": 200, "ended": time.time(), "duration_ms": 1.0}).result(10)
writer.close()
"""


def test_a_starting_writer_ends_the_rows_a_killed_process_left_in_flight(tmp_path: Path) -> None:
    """A worker killed with a request in flight leaves its row without an outcome, and nothing would ever write one
    (it stayed 'in flight' until pruned): the next writer to start records it as interrupted, and leaves alone the
    rows of a process that still lives (it holds its tag)."""
    import subprocess
    import sys

    db = tmp_path / "a.db"
    alive = subprocess.Popen([sys.executable, "-c", IN_FLIGHT, str(db), "alive"], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    assert alive.stdout is not None and alive.stdin is not None
    alive_id = alive.stdout.readline().strip()
    killed = subprocess.run([sys.executable, "-c", IN_FLIGHT, str(db), "killed"], capture_output=True, text=True,
                            timeout=60)
    killed_id = killed.stdout.strip()
    assert killed.returncode == -9 and killed_id and alive_id
    writer = AuditWriter(db, Seal(tmp_path))
    conn = audit.open_db(db, readonly=True)
    assert audit.get(conn, killed_id)["error"] == audit.ORPHANED
    assert audit.get(conn, alive_id)["outcome_hash"] is None  # its process lives: still in flight
    alive.stdin.write("done\n")
    alive.stdin.flush()
    assert alive.wait(30) == 0
    writer.close()
    assert audit.get(conn, alive_id)["status"] == 200 and check(tmp_path).broken_id is None
    plan = conn.execute("EXPLAIN QUERY PLAN SELECT id, decision FROM requests WHERE outcome_hash IS NULL").fetchall()
    assert "idx_requests_in_flight" in str(plan), plan


def test_the_anchor_is_read_again_whenever_its_file_changes(tmp_path: Path) -> None:
    """A Seal reads the anchor through the descriptor it holds while the file under the name is that one: another
    writer's anchor written in place, a file put in its place (a JSON line, as versions before wrote), and its
    removal are each seen at the next read."""
    mine, theirs = Seal(tmp_path), Seal(tmp_path)
    first, second = Anchor(1, "A", "a" * 64), Anchor(2, "B", "b" * 64)
    mine.set_anchor(first)
    assert mine.anchor() == first and theirs.anchor() == first
    theirs.set_anchor(second)
    assert mine.anchor() == second
    mine.anchor_path.with_name("older").write_text(Anchor(3, "C", "c" * 64).dumps())
    mine.anchor_path.with_name("older").replace(mine.anchor_path)
    assert mine.anchor() == Anchor(3, "C", "c" * 64)
    mine.anchor_path.unlink()
    assert mine.anchor() is None


def test_a_seal_that_remembers_what_it_wrote_still_reads_what_others_wrote(tmp_path: Path) -> None:
    """A Seal remembers the bytes it wrote and the anchor they hold (not parsed again at its next read): two writers
    taking turns, one writing an anchor older than the file's newest (kept in the other slot, not taken for the
    newest), each read and each next slot must be the file's, as a Seal that remembers nothing reads it."""
    mine, theirs = Seal(tmp_path), Seal(tmp_path)
    mine.set_anchor(Anchor(1, "A", "a" * 64))
    for seq, writer in [(2, mine), (3, mine), (4, theirs), (5, mine), (2, theirs), (6, theirs), (7, mine), (1, mine)]:
        writer.set_anchor(Anchor(seq, f"ID{seq}", f"{seq:064x}"))
        fresh = Seal(tmp_path).anchor()
        assert mine.anchor() == fresh and theirs.anchor() == fresh
        assert fresh is not None and fresh.seq == max(fresh.seq, seq)
    held = [seal_module._in_slot(part) for part in (mine.anchor_path.read_bytes()[:seal_module.SLOT],
                                                    mine.anchor_path.read_bytes()[seal_module.SLOT:])]
    assert sorted(a.seq for a in held if a is not None) == [1, 7]  # 1 went over 6, the older: 7 stays the newest
    assert Seal(tmp_path).anchor() == Anchor(7, "ID7", f"{7:064x}")


def test_an_anchor_is_written_in_place_into_the_slot_of_the_older_one(tmp_path: Path) -> None:
    """After the first, an anchor is written over the older of the two the file holds, in the same file (no file made
    and renamed for each batch of rows); the file keeps its inode and both the newest anchor and the one before."""
    seal = Seal(tmp_path)
    seal.set_anchor(Anchor(1, "A", "a" * 64))
    inode = seal.anchor_path.stat().st_ino
    for seq in range(2, 6):
        seal.set_anchor(Anchor(seq, f"ID{seq}", f"{seq:064x}"))
        held = {seal_module._in_slot(part) for part in (seal.anchor_path.read_bytes()[:seal_module.SLOT],
                                                       seal.anchor_path.read_bytes()[seal_module.SLOT:])}
        assert {a.seq for a in held if a is not None} == {seq - 1, seq}
        assert seal.anchor_path.stat().st_ino == inode and Seal(tmp_path).anchor() == Anchor(seq, f"ID{seq}",
                                                                                              f"{seq:064x}")
    assert [p.name for p in tmp_path.iterdir()] == ["audit.anchor"]


@pytest.mark.parametrize("cut", [8, 40, 80, 100])  # within the line (109 bytes): past it both are spaces
def test_a_torn_slot_is_passed_over_for_the_anchor_before_it(tmp_path: Path, cut: int) -> None:
    """A slot half written (a power loss amid its write, or read while it is written) fails its check: the anchor
    read is the one before, in the other slot, never the torn one nor an error; a writer then overwrites the torn
    slot."""
    seal = Seal(tmp_path)
    seal.set_anchor(Anchor(1, "A", "a" * 64))
    seal.set_anchor(Anchor(2, "B", "b" * 64))
    data = bytearray(seal.anchor_path.read_bytes())
    at = next(i for i in (0, seal_module.SLOT) if b'"B"' in data[i:i + seal_module.SLOT])
    new = seal_module._slot_of(Anchor(3, "C", "c" * 64))
    data[at:at + cut] = new[:cut]  # the start of anchor 3, the rest still anchor 2
    seal.anchor_path.write_bytes(bytes(data))
    assert Seal(tmp_path).anchor() == Anchor(1, "A", "a" * 64)
    seal.set_anchor(Anchor(3, "C", "c" * 64))
    assert Seal(tmp_path).anchor() == Anchor(3, "C", "c" * 64)
    seal.set_anchor(Anchor(4, "D", "d" * 64))  # over the older, 3's slot is kept
    assert {a.seq for a in (seal_module._in_slot(bytes(seal.anchor_path.read_bytes()[i:i + seal_module.SLOT]))
                            for i in (0, seal_module.SLOT)) if a is not None} == {3, 4}


def test_an_anchor_both_of_whose_slots_are_torn_is_refused_in_one_line(tmp_path: Path) -> None:
    """Two slots neither of which holds a whole anchor (a damaged state directory) is no anchor: said with the path,
    as any other malformed one is, and never taken for none (which would let rows be cut from the end unseen)."""
    seal = Seal(tmp_path)
    seal.set_anchor(Anchor(1, "A", "a" * 64))
    seal.set_anchor(Anchor(2, "B", "b" * 64))
    data = seal.anchor_path.read_bytes().replace(b'"A"', b'"X"').replace(b'"B"', b'"Y"')
    seal.anchor_path.write_bytes(data)
    found = _anchor_or_error(Seal(tmp_path))
    assert isinstance(found, audit.AuditError) and "audit.anchor" in str(found) and "slots" in str(found), found


def test_an_anchor_written_before_as_a_json_line_is_read_and_replaced_by_slots(tmp_path: Path) -> None:
    """A state directory of a version before holds the anchor as one JSON line: it is read as is, and the next anchor
    replaces it with a file of slots (renamed over it), readable by its owner alone."""
    (tmp_path / "audit.anchor").write_text(Anchor(7, "OLD", "e" * 64).dumps())
    seal = Seal(tmp_path)
    assert seal.anchor() == Anchor(7, "OLD", "e" * 64)
    with seal.locked():
        seal.set_anchor(Anchor(8, "NEW", "f" * 32))
    assert Seal(tmp_path).anchor() == Anchor(8, "NEW", "f" * 32) and seal.anchor() == Anchor(8, "NEW", "f" * 32)
    assert seal_module._slotted(seal.anchor_path.read_bytes())
    assert (tmp_path / "audit.anchor").stat().st_mode & 0o777 == 0o600


def test_an_anchor_is_never_written_through_a_link_put_in_its_place(tmp_path: Path) -> None:
    """A symlink put under the anchor's name (whoever can write the state directory) is not written through: the file
    it names stays as it was, and the anchor is written as a new file in the link's place."""
    seal = Seal(tmp_path)
    seal.set_anchor(Anchor(1, "A", "a" * 64))
    victim = tmp_path / "victim"
    victim.write_bytes(seal.anchor_path.read_bytes())
    seal.anchor_path.unlink()
    seal.anchor_path.symlink_to(victim)
    before = victim.read_bytes()
    seal.set_anchor(Anchor(2, "B", "b" * 64))
    assert victim.read_bytes() == before and not seal.anchor_path.is_symlink()
    assert Seal(tmp_path).anchor() == Anchor(2, "B", "b" * 64)


@pytest.mark.parametrize("held", [True, False])
def test_an_anchor_is_never_written_through_a_hard_link(tmp_path: Path, held: bool) -> None:
    """A hard link to the anchor's file (`ln`, `cp -al` of the state directory, or another file linked under the
    anchor's name) is the same file: written in place, the anchor went into the file under the other name too. The
    anchor is written as a new file instead, and the other name keeps what it held; so for a Seal that already held
    the file open to write it."""
    seal = Seal(tmp_path)
    seal.set_anchor(Anchor(1, "A", "a" * 64))
    if held:
        seal.set_anchor(Anchor(2, "B", "b" * 64))
    other = tmp_path / "elsewhere"
    os.link(seal.anchor_path, other)
    before = other.read_bytes()
    seal.set_anchor(Anchor(3, "C", "c" * 64))
    assert other.read_bytes() == before and seal.anchor_path.stat().st_nlink == 1
    assert Seal(tmp_path).anchor() == Anchor(3, "C", "c" * 64)
    seal.set_anchor(Anchor(4, "D", "d" * 64))  # in place again, in its own file
    assert Seal(tmp_path).anchor() == Anchor(4, "D", "d" * 64) and other.read_bytes() == before


def test_an_anchor_replaces_the_last_at_once_and_leaves_nothing_behind(tmp_path: Path) -> None:
    """A reader finds an anchor at every moment while new ones are renamed over the last, whole and never older than
    one it found before, and only the anchor is left, readable by its owner alone."""
    writer = Seal(tmp_path)
    writer.set_anchor(Anchor(1, "A", "a" * 64))
    found: list[int] = []
    problems: list[Exception] = []
    done = threading.Event()

    def read() -> None:
        while not done.is_set():
            try:
                got = Seal(tmp_path).anchor()  # a Seal of its own each time: read from the file, never remembered
            except Exception as exc:  # noqa: BLE001  (any failure is what the test looks for)
                problems.append(exc)
                return
            if got is None:
                problems.append(AssertionError("no anchor at one moment"))
                return
            found.append(got.seq)

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for seq in range(2, 1500):
            writer.set_anchor(Anchor(seq, f"ID{seq}", f"{seq:064x}"))
    finally:
        done.set()
        reader.join()
    assert not problems and found and found == sorted(found)
    assert Seal(tmp_path).anchor() == Anchor(1499, "ID1499", f"{1499:064x}")
    assert [p.name for p in tmp_path.iterdir()] == ["audit.anchor"]
    assert (tmp_path / "audit.anchor").stat().st_mode & 0o777 == 0o600


def test_a_remembered_anchor_is_not_taken_for_a_newer_one_in_its_inode(tmp_path: Path) -> None:
    """A Seal that remembered the anchor by its file's inode, times and size took, on a kernel whose file times move a
    tick (1 to 10 ms) at a time, another writer's newer anchor in the same inode for the one it had read, and a writer
    comparing under the lock then replaced the newer one with its own older head. The file is read every time now."""
    mine, theirs = Seal(tmp_path), Seal(tmp_path)
    for seq in range(100_000, 100_600, 3):  # a tick holds several of them
        mine.set_anchor(Anchor(seq, "ID", "a" * 64))
        assert mine.anchor() == Anchor(seq, "ID", "a" * 64)
        theirs.set_anchor(Anchor(seq + 1, "ID", "a" * 64))
        theirs.set_anchor(Anchor(seq + 2, "ID", "a" * 64))
        assert mine.anchor() == Anchor(seq + 2, "ID", "a" * 64)


def test_an_anchor_that_could_not_take_its_name_leaves_no_file_behind(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """A failed replacement of the anchor (an I/O error, a full disk; here over one a version before wrote) is told
    to the writer, which logs it; the last anchor stays, and the new one is not left under its temporary name (one a
    failed write, piling up while the disk is full)."""
    (tmp_path / "audit.anchor").write_text(Anchor(1, "A", "a" * 64).dumps())  # as a version before wrote it
    mine = Seal(tmp_path)

    def failing(src: object, dst: object) -> None:
        raise OSError(errno.EIO, "Input/output error", str(dst))

    monkeypatch.setattr(seal_module.os, "replace", failing)
    with pytest.raises(OSError):
        mine.set_anchor(Anchor(2, "B", "b" * 64))
    assert [p.name for p in tmp_path.iterdir()] == ["audit.anchor"] and Seal(tmp_path).anchor() == Anchor(1, "A",
                                                                                                        "a" * 64)


def test_an_anchor_is_never_written_through_a_link_planted_under_its_temporary_name(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The temporary file is made new: a symlink (or a file) already under its name is not written through, the
    file it names is left as it was, and the replacement fails, which the writer treats as a failed anchor."""
    (tmp_path / "audit.anchor").write_text(Anchor(1, "A", "a" * 64).dumps())  # as a version before wrote it
    mine = Seal(tmp_path)
    victim = tmp_path / "victim"
    victim.write_text("keep me")
    monkeypatch.setattr(seal_module.secrets, "token_hex", lambda n: "planted")
    (tmp_path / ".audit.anchor.planted.tmp").symlink_to(victim)
    with pytest.raises(OSError):
        mine.set_anchor(Anchor(2, "B", "b" * 64))
    assert victim.read_text() == "keep me" and Seal(tmp_path).anchor() == Anchor(1, "A", "a" * 64)


KILLED_BETWEEN = """
import os, signal, sys
from pathlib import Path
from goex_proxy.audit import seal
from goex_proxy.audit.seal import Anchor, Seal
def killed(src, dst):
    os.kill(os.getpid(), signal.SIGKILL)  # the new anchor written under its temporary name, not renamed yet
os.replace = killed
mine = Seal(Path(sys.argv[1]))
mine.set_anchor(Anchor(2, "B", "b" * 64))
"""


def test_a_writer_killed_before_its_rename_leaves_the_last_anchor_and_the_next_sweeps(tmp_path: Path) -> None:
    """Killed after writing the new anchor and before renaming it, a writer leaves the last anchor under its name
    (none of the new one's rows was answered yet) and the new one under a temporary name, which the next writer to
    take the lock removes: such files do not pile up one a crash."""
    import subprocess
    import sys

    (tmp_path / "audit.anchor").write_text(Anchor(1, "A", "a" * 64).dumps())  # as a version before wrote it
    killed = subprocess.run([sys.executable, "-c", KILLED_BETWEEN, str(tmp_path)], capture_output=True, timeout=60)
    assert killed.returncode == -9, killed.stderr
    assert Seal(tmp_path).anchor() == Anchor(1, "A", "a" * 64)
    assert sorted(p.suffix for p in tmp_path.iterdir()) == [".anchor", ".tmp"]  # the anchor, and the new one
    with Seal(tmp_path).locked():  # as a writer takes it to anchor its rows
        assert not [p for p in tmp_path.iterdir() if p.suffix == ".tmp"]
    assert Seal(tmp_path).anchor() == Anchor(1, "A", "a" * 64)


def test_an_anchor_that_is_no_file_is_refused_in_one_line(tmp_path: Path) -> None:
    """A FIFO in the anchor's place (whoever can write the state directory) is refused with the path named, at once:
    reading it waited for a writer for ever, and with it the audit writer and every request."""
    import os

    os.mkfifo(tmp_path / "audit.anchor", 0o600)
    outcome: list[BaseException | Anchor | None] = []
    reader = threading.Thread(target=lambda: outcome.append(_anchor_or_error(Seal(tmp_path))), daemon=True)
    reader.start()
    reader.join(5)
    if reader.is_alive():  # let it go before failing
        os.close(os.open(tmp_path / "audit.anchor", os.O_WRONLY | os.O_NONBLOCK))
    assert len(outcome) == 1 and isinstance(outcome[0], audit.AuditError), outcome
    assert "audit.anchor" in str(outcome[0]) and "regular file" in str(outcome[0])


def _anchor_or_error(seal: Seal) -> BaseException | Anchor | None:
    try:
        return seal.anchor()
    except Exception as exc:  # noqa: BLE001  (the error is what the test looks at)
        return exc


def test_a_request_row_is_anchored_before_its_writer_answers(tmp_path: Path) -> None:
    """A request goes upstream once its row is committed and anchored: removing the row of a request that was sent is
    then always caught, even had the proxy died right after sending it."""
    ids, writer = RequestIds(), AuditWriter(tmp_path / "a.db", Seal(tmp_path))
    try:
        for i in range(20):
            r = row(i, ids)
            writer.record_intent(r).result(5)
            anchor = Seal(tmp_path).anchor()
            assert anchor is not None and anchor.id == r["id"]
    finally:
        writer.close()


def test_a_request_whose_row_could_not_be_anchored_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The anchor not written (a full disk, an I/O error in the state directory) refuses the requests of the batch, as
    a failed commit does: their rows could be removed from the end of the log unseen. It was logged, and the request
    went upstream all the same. The next batch that anchors its rows answers again, and records what became of the
    refused one, which had stayed in flight until the next start."""
    ids, writer = RequestIds(), AuditWriter(tmp_path / "a.db", Seal(tmp_path))

    def full(*_: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    try:
        writer.record_intent(row(0, ids)).result(5)
        monkeypatch.setattr(seal_module.os, "replace", full)  # the anchor made anew
        monkeypatch.setattr(seal_module.os, "pwrite", full)  # or written in place
        refused = row(1, ids)
        with pytest.raises(audit.AuditError, match="anchor"):
            writer.record_intent(refused).result(5)
        assert writer.failing and "anchor" in writer.failing
        monkeypatch.undo()
        last = row(2, ids)
        writer.record_intent(last).result(5)
        assert writer.failing is None and Seal(tmp_path).anchor().id == last["id"]  # type: ignore[union-attr]
        writer.apply(lambda conn, w: None).result(5)  # after the refused row's outcome, queued before it
    finally:
        writer.close()
    kept = audit.get(audit.open_db(tmp_path / "a.db", readonly=True), str(refused["id"]))
    assert kept["error"] == audit.UNANCHORED and kept["outcome_hash"] is not None
    assert check(tmp_path).broken_id is None


def test_writers_of_one_log_take_turns_through_its_lock_file(tmp_path: Path) -> None:
    """Two writers (two workers of `run`) take turns through a lock file, asked again within a millisecond, where
    SQLite's busy handler had the loser sleep 1 ms or more; while another holds the turn, nothing is written."""
    import fcntl
    import os

    path = tmp_path / "a.db"
    ids, first, second = RequestIds(), AuditWriter(path, Seal(tmp_path)), AuditWriter(path, Seal(tmp_path))
    try:
        lock = os.open(tmp_path / ".a.db.write-lock", os.O_RDWR)
        fcntl.flock(lock, fcntl.LOCK_EX)  # a third writer's turn
        waiting = first.record_intent(row(0, ids))
        time.sleep(0.3)
        assert not waiting.done()
        fcntl.flock(lock, fcntl.LOCK_UN)
        os.close(lock)
        waiting.result(5)
        futures = [(first if i % 2 else second).record_intent(row(i, ids)) for i in range(1, 200)]
        for future in futures:
            future.result(10)
    finally:
        first.close()
        second.close()
    assert (check(tmp_path).checked, check(tmp_path).broken_id) == (200, None)


def test_a_write_lock_the_filesystem_refuses_leaves_the_turns_to_sqlite(tmp_path: Path, monkeypatch) -> None:
    """flock can fail (ENOLCK on a network filesystem): the writer goes on under SQLite's own lock, as without the
    lock file, where its thread ended and every request waited for its row forever."""
    import errno
    import os

    from goex_proxy.audit import writer as store

    flock = store.fcntl.flock

    def refused(fd: int, op: int) -> None:  # for the write lock only (the anchor's is taken the same way)
        if os.readlink(f"/proc/self/fd/{fd}").endswith(".write-lock"):
            raise OSError(errno.ENOLCK, "No locks available")
        flock(fd, op)

    monkeypatch.setattr(store.fcntl, "flock", refused)
    ids, writer = RequestIds(), AuditWriter(tmp_path / "a.db", Seal(tmp_path))
    try:
        writer.record_intent(row(0, ids)).result(5)
        writer.record_intent(row(1, ids)).result(5)
    finally:
        writer.close()
    assert check(tmp_path).checked == 2


def test_a_turn_held_past_the_wait_fails_the_batch_closed_not_forever(tmp_path: Path, monkeypatch) -> None:
    """A writer stopped while it holds the turn (Ctrl-Z on `undo`): the others' requests are refused after the wait,
    as SQLite's lock refused them, and the log goes on once the turn is free."""
    import fcntl
    import os

    monkeypatch.setattr(audit_writer, "BUSY_TIMEOUT_S", 0.3)  # the wait for a turn
    ids, writer = RequestIds(), AuditWriter(tmp_path / "a.db", Seal(tmp_path))
    try:
        lock = os.open(tmp_path / ".a.db.write-lock", os.O_RDWR)
        fcntl.flock(lock, fcntl.LOCK_EX)
        with pytest.raises(AuditError, match="held its write lock for over 0.3 s"):
            writer.record_intent(row(0, ids)).result(5)
        assert writer.failing is not None
        fcntl.flock(lock, fcntl.LOCK_UN)
        os.close(lock)
        writer.record_intent(row(1, ids)).result(5)
    finally:
        writer.close()
    assert (check(tmp_path).checked, check(tmp_path).broken_id) == (1, None)


def test_a_value_that_cannot_be_stored_fails_only_its_own_write(tmp_path: Path) -> None:
    """Outcomes queued together are written in one transaction. One holding a value SQLite cannot store (an upstream's
    status of 20 digits, text that is not UTF-8) failed the transaction, and with it every other agent's outcome in
    it; now the batch is written again op by op, and only that one fails."""
    ids, writer = RequestIds(), AuditWriter(tmp_path / "a.db", Seal(tmp_path))
    rows = [row(i, ids) for i in range(3)]
    for r in rows:
        writer.record_intent(r).result(5)
    statuses = [200, 10**20, 201]
    futures = [writer.record_outcome(str(r["id"]), {"status": s, "ended": 1.0, "duration_ms": 1.0})
               for r, s in zip(rows, statuses, strict=True)]
    with pytest.raises(AuditError, match="too large"):
        futures[1].result(5)
    assert [f.result(5) for f in (futures[0], futures[2])] == [None, None]
    writer.close()
    conn = audit.open_db(tmp_path / "a.db", readonly=True)
    assert [r["status"] for r in audit.iter_rows(conn)] == [200, None, 201]
    assert check(tmp_path).broken_id is None


def test_a_queued_read_whose_row_could_not_be_anchored_keeps_the_outcome_it_had(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A row queued without waiting (the gateway's read) goes on before its commit: when its anchor cannot be written,
    the read was sent all the same, and its outcome is the one its session records. The writer must not also record
    it 'refused: not sent' (UNANCHORED): queued after the session's own outcome (the read answered while the anchor
    was being written), that overwrote what happened with a refusal that did not."""
    ids, writer = RequestIds(), AuditWriter(tmp_path / "a.db", Seal(tmp_path))
    read = row(0, ids)

    def full(*_: object) -> None:  # the read answers while its anchor is being written, which fails
        writer.record_outcome(str(read["id"]), {"status": 0, "error": None, "ended": 2.0, "duration_ms": 1.0})
        raise OSError(errno.ENOSPC, "No space left on device")

    try:
        monkeypatch.setattr(seal_module.os, "replace", full)  # the anchor made anew
        monkeypatch.setattr(seal_module.os, "pwrite", full)  # or written in place
        with pytest.raises(audit.AuditError, match="anchor"):
            writer.queue_intent(read).result(5)
        monkeypatch.undo()
        writer.apply(lambda conn, w: None).result(5)
        writer.apply(lambda conn, w: None).result(5)
    finally:
        writer.close()
    kept = audit.get(audit.open_db(tmp_path / "a.db", readonly=True), str(read["id"]))
    assert check(tmp_path).broken_id is None
    assert kept["status"] == 0 and kept["error"] is None


def test_an_anchor_that_is_not_utf8_is_refused_in_one_line(tmp_path: Path) -> None:
    """An anchor whose bytes are not UTF-8 (a damaged or edited state directory) is refused as no anchor, with its path
    named: reading it raised UnicodeDecodeError, a ValueError that the writer takes for one op's unstorable value (the
    batch written again op by op, each failing on the anchor) and that its anchoring, which catches OSError and
    AuditError, did not take for a failed anchor at all."""
    (tmp_path / "audit.anchor").write_bytes(b'{"seq": 1, "id": "\xff"}')
    found = _anchor_or_error(Seal(tmp_path))
    assert isinstance(found, audit.AuditError) and "audit.anchor" in str(found), repr(found)


def test_a_row_whose_id_is_taken_fails_alone_not_the_rows_written_with_it(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """A held request whose row was committed but could not be anchored is refused (the gate fails closed, 502), and
    the record stage then records the refused request as it records any answered one: a second row under the same
    id, which the log's unique index refuses. That IntegrityError failed the whole transaction it was gathered in,
    so every other agent's rows and outcomes in it were refused or lost too; it fails alone, like a value that
    cannot be stored, and the held row still gets its outcome (the gate ends a refused wait; with no gate here, the
    writer's stop does)."""
    import fcntl
    import os

    ids, writer = RequestIds(), AuditWriter(tmp_path / "a.db", Seal(tmp_path))
    held, other = row(0, ids), {**row(1, ids), "agent": "other", "status": 200, "ended": 2.0, "duration_ms": 1.0}

    def full(*_: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    try:
        monkeypatch.setattr(seal_module.os, "replace", full)  # the anchor made anew
        monkeypatch.setattr(seal_module.os, "pwrite", full)  # or written in place
        with pytest.raises(audit.AuditError, match="anchor"):
            writer.record_wait(held, {"ts": 1.0, "agent": "bot", "kind": "hold", "state": "held", "deadline": 9.0,
                                      "on_timeout": "deny", "undo_class": "read", "why": "w", "card": "{}",
                                      "owner": "x"}).result(5)
        monkeypatch.undo()
        writer.apply(lambda conn, w: None).result(5)
        lock = os.open(tmp_path / ".a.db.write-lock", os.O_RDWR)
        fcntl.flock(lock, fcntl.LOCK_EX)  # the next two are gathered into one transaction
        again = writer.record_intent({**held, "status": 502, "ended": 2.0, "duration_ms": 0.0})
        others = writer.record_intent(other)
        time.sleep(0.05)
        fcntl.flock(lock, fcntl.LOCK_UN)
        os.close(lock)
        assert others.result(5) is None
        with pytest.raises(audit.AuditError, match="UNIQUE"):
            again.result(5)
    finally:
        writer.close()
    conn = audit.open_db(tmp_path / "a.db", readonly=True)
    assert [(r["id"], r["error"]) for r in audit.iter_rows(conn)] == [(held["id"], audit.INTERRUPTED),
                                                                       (other["id"], None)]
    assert check(tmp_path).broken_id is None


def test_a_refused_row_under_a_taken_id_leaves_the_row_in_flight_under_it_pending(tmp_path: Path) -> None:
    """A row refused because its id is taken lets go of nothing but its own: the row in flight under that id is still
    awaited, and gets `interrupted` when the writer stops (it was forgotten, and left looking as if still going on)."""
    ids, writer = RequestIds(), AuditWriter(tmp_path / "a.db", Seal(tmp_path))
    flying = row(0, ids)
    try:
        writer.record_intent(flying).result(5)
        with pytest.raises(audit.AuditError, match="UNIQUE"):
            writer.record_intent({**flying, "status": 502, "ended": 2.0}).result(5)
    finally:
        writer.close()
    kept = audit.get(audit.open_db(tmp_path / "a.db", readonly=True), str(flying["id"]))
    assert kept["error"] == audit.INTERRUPTED
    assert check(tmp_path).broken_id is None


def test_an_outcome_that_cannot_be_stored_is_recorded_as_such(tmp_path: Path) -> None:
    """An outcome holding a value SQLite cannot store fails alone; its row is not left looking as if the request
    were still going on (and forgotten, so not even `interrupted` when the writer stops): it ends with an error that
    says its outcome could not be stored."""
    ids, writer = RequestIds(), AuditWriter(tmp_path / "a.db", Seal(tmp_path))
    flying = row(0, ids)
    try:
        writer.record_intent(flying).result(5)
        with pytest.raises(audit.AuditError, match="too large"):
            writer.record_outcome(str(flying["id"]), {"status": 10**20, "ended": 2.0}).result(5)
        writer.apply(lambda conn, w: None).result(5)
    finally:
        writer.close()
    kept = audit.get(audit.open_db(tmp_path / "a.db", readonly=True), str(flying["id"]))
    assert kept["status"] is None and "outcome could not be stored" in kept["error"] and "too large" in kept["error"]
    assert check(tmp_path).broken_id is None


@pytest.mark.parametrize("change", ["cut", "extended"])
def test_a_file_of_slots_cut_or_extended_is_not_taken_for_a_json_anchor(tmp_path: Path, change: str) -> None:
    """A file of slots of the wrong size was refused as no JSON anchor "as `goex-proxy log anchor` prints", which
    invites putting the newest row's anchor in its place: that would hide rows cut from the end. It is named a file of
    slots, with a copy kept elsewhere as the way back."""
    seal = Seal(tmp_path)
    seal.set_anchor(Anchor(1, "A", "a" * 64))
    seal.set_anchor(Anchor(2, "B", "b" * 64))
    data = seal.anchor_path.read_bytes()
    seal.anchor_path.write_bytes(data[:300] if change == "cut" else data + b"x\n")
    found = _anchor_or_error(Seal(tmp_path))
    assert isinstance(found, audit.AuditError), found
    assert "file of two slots" in str(found) and "log anchor" not in str(found) and "audit.anchor" in str(found)


CLOSE_AS_THE_LAST = """
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("BEGIN EXCLUSIVE")
conn.execute("ROLLBACK")
conn.close()  # the last connection to the log as far as its locks say: it checkpoints and removes the WAL
"""


def test_rows_written_after_the_first_anchor_are_not_lost_to_another_process(tmp_path: Path) -> None:
    """Before the first anchor file the writer syncs the log. It opened and closed the database file to do so, which
    dropped SQLite's locks on it (POSIX locks are the process's, and any close lets go of them): another process's
    connection then closed as the last, checkpointed and removed the WAL, and the rows the writer went on writing
    into the removed WAL were lost (a gateway's UPDATE was sent and had no row)."""
    import subprocess
    import sys

    ids, writer = RequestIds(), AuditWriter(tmp_path / "a.db", Seal(tmp_path))
    try:
        first = row(0, ids)
        writer.record_intent(first).result(5)  # the first anchor file: the log synced before it
        subprocess.run([sys.executable, "-c", CLOSE_AS_THE_LAST, str(tmp_path / "a.db")], check=True, timeout=60)
        second = row(1, ids)
        writer.record_intent(second).result(5)
        conn = audit.open_db(tmp_path / "a.db", readonly=True)  # while the writer runs (its last close mends it)
        assert [r["id"] for r in audit.iter_rows(conn)] == [first["id"], second["id"]]
        assert (tmp_path / "a.db-wal").exists()
    finally:
        writer.close()
    assert check(tmp_path).broken_id is None


def test_an_anchor_lock_held_for_good_fails_the_batch_instead_of_stalling_every_writer(tmp_path: Path,
                                                                                      monkeypatch) -> None:
    """A writer stopped (SIGSTOP) while it held the anchor's lock held it for good, and every other writer waited for
    it without a bound, with every request waiting on them. The wait ends after LOCK_WAIT_S: the batch fails closed,
    its request refused, naming the lock; once the lock is let go of, rows are written and anchored again."""
    import fcntl

    monkeypatch.setattr(seal_module, "LOCK_WAIT_S", 0.3)
    ids, writer = RequestIds(), AuditWriter(tmp_path / "a.db", Seal(tmp_path))
    try:
        writer.record_intent(row(0, ids)).result(5)
        lock = os.open(tmp_path / ".audit.anchor.lock", os.O_RDWR)
        fcntl.flock(lock, fcntl.LOCK_EX)  # as a stopped writer holds it
        started = time.monotonic()
        with pytest.raises(AuditError, match="anchor's lock .* for over 0.3 s"):
            writer.record_intent(row(1, ids)).result(10)
        assert time.monotonic() - started < 5
        fcntl.flock(lock, fcntl.LOCK_UN)
        os.close(lock)
        last = row(2, ids)
        writer.record_intent(last).result(5)
        anchor = Seal(tmp_path).anchor()
        assert anchor is not None and anchor.id == last["id"]
    finally:
        writer.close()
