"""Pruning the audit log by age: rows that began before a cutoff go, except what undo, limits and waiting requests
still need; each run of removed rows leaves a gap record, signed under the chain key, across which `log verify`
checks the chain (the kept row after it still names the hash of the last removed one)."""

from __future__ import annotations

import json
import sqlite3
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from ..errors import AuditError
from . import blobs, layout, names, times
from .gaps import Gap, gap_holds, gaps
from .layout import hex_of
from .seal import Anchor
from .store import edited, first_seq_after, miscount, miscounted

#: Undo classes of rows undo can still take back (unguarded ones with --force): kept until undone, unless asked.
UNDOABLE = ("exact", "needs-preimage", "lossy", "unguarded")
#: Approval states of requests still waiting: their rows stay.
WAITING = ("held", "delayed")
#: Rows examined per transaction: the proxy's writer waits for at most one batch.
BATCH = 2000
#: Why a row older than the cutoff stays, as `log prune` reports it.
KEPT_UNDOABLE, KEPT_LIMIT, KEPT_WAITING, KEPT_OPEN = ("still undoable", "counts against a limit",
                                                      "waiting for a person", "its outcome not recorded yet")
#: A row with no outcome is kept this long (its request may still end); an older one was in flight when its proxy
#: died, and goes like any other.
IN_FLIGHT_S = 7 * 86400.0
#: The undo journal's state of a step that was carried out (as `undo.run` writes it).
DONE = "done"


@dataclass
class Pruned:
    """What a prune did: rows removed, the change in the number of gap records (gaps joined into one count less), and
    the older rows kept, by why."""

    rows: int = 0
    gaps: int = 0
    kept: Counter[str] = field(default_factory=Counter)


def _kept_because(conn: sqlite3.Connection, row: dict[str, Any], windows: dict[str, float | None], now: float,
                  before: float, include_undoable: bool) -> str | None:
    approval = json.loads(row["approval"]) if row.get("approval") else None
    if row["outcome_hash"] is None:
        found = conn.execute("SELECT state FROM approvals WHERE request_id = ?", (row["id"],)).fetchone()
        if found is not None and found[0] in WAITING:
            return KEPT_WAITING
        if row["ts"] > now - IN_FLIGHT_S:  # it may still end; past that, its proxy surely died while it was in flight
            return KEPT_OPEN
    for charge in (json.loads(row["charged"]) if row.get("charged") else None,
                   approval.get("charged") if isinstance(approval, dict) else None):
        if charge and any(k in windows and (windows[k] is None or charge["at"] > now - float(windows[k] or 0))
                          for k in charge["keys"]):
            return KEPT_LIMIT
    if (not include_undoable and row["undo_of"] is None and row["undo_class"] in UNDOABLE
            and row["status"] is not None and 200 <= row["status"] < 300 and not _undone_before(conn, row, before)):
        return KEPT_UNDOABLE
    return None


def _undone_before(conn: sqlite3.Connection, row: dict[str, Any], before: float) -> bool:
    """Whether undo took the row back before the cutoff: every step its journal holds is done, the last before the
    cutoff (an undo that failed, or is under way, keeps the row it may still take back)."""
    states = conn.execute("SELECT state, ts FROM undo_journal WHERE request_id = ?", (row["id"],)).fetchall()
    return bool(states) and all(state == DONE for state, _ in states) and max(ts for _, ts in states) < before


def check_counts(conn: sqlite3.Connection) -> None:
    """Refuse to prune a log whose blob counts were edited (a prune removes a blob when its count reaches 0, and one
    set too low would go while kept rows still name it); the one full pass over the rows a prune makes."""
    if (counted := miscounted(conn)) is not None:
        raise AuditError(f"the audit log does not hold at row {counted[3]} (seq {counted[4]}): {miscount(counted)}; "
                         "nothing was pruned: run `goex-proxy log verify`")


def upper_bound(conn: sqlite3.Connection, before: float, anchor: Anchor | None) -> int:
    """No seq at or past this is examined: the newest row and the anchor's stay, and so does every row past the
    first that began a day after the cutoff (the walk ends there instead of at the newest row)."""
    top = int(conn.execute("SELECT coalesce(max(seq), 0) FROM requests").fetchone()[0])
    if anchor is not None:
        top = min(top, anchor.seq)
    later = first_seq_after(conn, before)
    return min(top, later) if later is not None else top


def prune_batch(conn: sqlite3.Connection, key: bytes, before: float, windows: dict[str, float | None], *,
                after: int = 0, upper: int, include_undoable: bool = False, now: float | None = None,
                done: Pruned | None = None) -> int | None:
    """Examine up to BATCH rows after seq `after` (below `upper`), remove those that began before `before` and nothing
    needs, and record their gaps; call inside a write transaction. The seq to go on after, or None when done.

    Every row examined is checked first as `log verify` checks it (its link or a signed gap to the row before, its
    request hash, its outcome hash), and so is the link into the row after them: AuditError on the first that does
    not hold, before anything is removed, so that a prune never signs a gap over rows someone else removed or
    edited (whoever can write the database could otherwise make a row prunable, or take one out, and have the prune
    cover it)."""
    now = time.time() if now is None else now
    done = done if done is not None else Pruned()
    (last,) = conn.execute("SELECT max(seq) FROM (SELECT seq FROM requests WHERE seq > ? AND seq < ? ORDER BY seq "
                           "LIMIT ?)", (after, upper, BATCH)).fetchone()
    if last is None:
        return None
    following = conn.execute("SELECT seq, prev_hash FROM requests WHERE seq > ? ORDER BY seq LIMIT 1",
                             (last,)).fetchone()
    if following is None:  # never: the newest row is never examined
        raise AuditError("prune: no row after the rows examined")
    known = gaps(conn, after, int(following[0]))
    found = conn.execute("SELECT hash FROM requests WHERE seq <= ? ORDER BY seq DESC LIMIT 1", (after,)).fetchone()
    prev = hex_of(found[0]) if found else ""
    rows: list[dict[str, Any]] = []
    for row in layout.read(conn, "SELECT * FROM requests WHERE seq > ? AND seq <= ? ORDER BY seq", (after, last),
                           lenient=True, consecutive=True):  # one unreadable fails its check
        _check(key, known, row, prev)
        prev = row["hash"]
        rows.append({k: v for k, v in row.items() if k not in layout.BLOB_FIELDS})  # kept: not its headers, bodies
    link = rows[-1]["hash"] if following[1] == layout.DERIVED else hex_of(following[1])  # left out: the row before
    _check_link(key, known, {"seq": following[0], "prev_hash": link, "id": "after them"}, prev)
    before_hash = hex_of(found[0]) if found else ""
    run: list[dict[str, Any]] = []
    for row in rows:
        why = "newer" if row["ts"] >= before else _kept_because(conn, row, windows, now, before, include_undoable)
        if why is None:
            run.append(row)
            continue
        if why != "newer":
            done.kept[why] += 1
        if run:
            _remove(conn, key, known, run, before_hash, row["seq"], done)
            run = []
        before_hash = row["hash"]
    if run:
        _remove(conn, key, known, run, before_hash, int(following[0]), done)
    return int(rows[-1]["seq"])


def _check_link(key: bytes, known: dict[int, Gap], row: dict[str, Any], prev: str) -> None:
    if row["prev_hash"] != prev and not gap_holds(key, known.get(row["seq"]), prev, row["prev_hash"]):
        raise AuditError(f"the audit chain does not hold at row {row['id']} (seq {row['seq']}): its link to the row "
                         "before is broken; nothing was pruned there: run `goex-proxy log verify`")


def _check(key: bytes, known: dict[int, Gap], row: dict[str, Any], prev: str) -> None:
    """A row examined must hold as `log verify` has it: its link (or a signed gap) to the row before, its request
    hash, and its outcome hash (or no outcome fields without one)."""
    _check_link(key, known, row, prev)
    if edited(key, row) is not None:
        raise AuditError(f"the audit chain does not hold at row {row['id']} (seq {row['seq']}): it was edited; "
                         "nothing was pruned there: run `goex-proxy log verify`")


def _remove(conn: sqlite3.Connection, key: bytes, known: dict[int, Gap], run: list[dict[str, Any]], before_hash: str,
            next_seq: int, done: Pruned) -> None:
    """Delete a run of rows (and their limit hits, approvals and undo journal) and write the one gap record that joins
    the kept rows around it; the gap records before any row of the run, and the one before the row after it, become
    part of it (their rows counted, their records replaced)."""
    ids = [r["id"] for r in run]
    first, last, rows, last_hash = run[0]["seq"], run[-1]["seq"], len(run), run[-1]["hash"]
    absorbed = 0
    for row in run:  # checked: each such gap joins the row before it to this one
        inner = known.pop(row["seq"], None)
        if inner is not None:
            rows += inner.rows
            absorbed += 1
            if row is run[0]:
                first, before_hash = inner.first_seq, inner.before_hash
    right = known.pop(next_seq, None)
    if right is not None:  # checked: it joins the run's last row to the row after the run
        last, rows, last_hash = right.last_seq, rows + right.rows, right.last_hash
        absorbed += 1
    marks = ", ".join("?" * len(ids))
    conn.execute(f"DELETE FROM audit_gaps WHERE next_seq IN ({', '.join('?' * (len(run) + 1))})",
                 [r["seq"] for r in run] + [next_seq])
    gap = Gap(next_seq, first, last, rows, before_hash, last_hash, time.time()).signed(key)
    conn.execute("INSERT INTO audit_gaps (next_seq, first_seq, last_seq, rows, before_hash, last_hash, at, mac) "
                 "VALUES (?, ?, ?, ?, ?, ?, ?, ?)", (*gap.fields(), gap.mac))
    known[gap.next_seq] = gap
    for table in ("limit_hits", "approval_links", "approvals", "undo_journal"):
        conn.execute(f"DELETE FROM {table} WHERE request_id IN ({marks})", ids)
    held = conn.execute(f"SELECT {', '.join((*layout.BLOB_COLUMNS, *names.FIELDS))} FROM requests WHERE seq BETWEEN "
                        "? AND ?", (run[0]["seq"], run[-1]["seq"])).fetchall()
    named = [ref for found in held for ref in found[:len(layout.BLOB_COLUMNS)] if ref is not None]
    conn.execute("DELETE FROM requests WHERE seq BETWEEN ? AND ?", (run[0]["seq"], run[-1]["seq"]))
    times.forget_empty(conn, run[0]["seq"], run[-1]["seq"])
    # The kept row after the run may leave its prev_hash to the row before it, which is gone: write it in.
    conn.execute("UPDATE requests SET prev_hash = ? WHERE seq = ? AND prev_hash = ?",
                 (bytes.fromhex(run[-1]["hash"]), next_seq, layout.DERIVED))
    blobs.release(conn, named)  # each blob no kept row names goes with them
    names.release(conn, [ref for found in held for ref in found[len(layout.BLOB_COLUMNS):]])  # and each such name
    done.rows += len(run)
    done.gaps += 1 - absorbed


def prune(conn: sqlite3.Connection, key: bytes | None, before: float, windows: dict[str, float | None],
          anchor: Anchor | None, *, include_undoable: bool = False, now: float | None = None) -> Pruned:
    """Prune the whole log, one write transaction per batch (a proxy writing the log waits for one at a time)."""
    if key is None:
        raise AuditError("this audit log is not keyed (written before goex-proxy signed its chain), so a prune could "
                         "not be told from a removal; it is not pruned")
    check_counts(conn)
    done = Pruned()
    after: int | None = 0
    upper = upper_bound(conn, before, anchor)
    while after is not None:
        with conn:
            conn.execute("BEGIN IMMEDIATE")
            after = prune_batch(conn, key, before, windows, after=after, upper=upper,
                                include_undoable=include_undoable, now=now, done=done)
    while done.rows:  # what the removed rows held goes, though kept values were built on it
        with conn:
            conn.execute("BEGIN IMMEDIATE")
            if blobs.replace_unnamed_bases(conn) < blobs.REWRITES:
                break
    return done

