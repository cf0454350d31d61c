"""The held transactions table (`db_holds`): one row per transaction the gateway holds open for an agent, and a
person's request to commit or roll it back, which the CLI writes and the gateway process holding the connection polls
for, carries out and settles. Every change of state is one conditional UPDATE, so a person and a timeout deciding at
once leave exactly one decision."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Any

from .. import ids
from ..errors import GoexError, NotFound

OPEN = "open"
COMMITTED = "committed"
ROLLED_BACK = "rolled back"
UNKNOWN = "unknown"        # a COMMIT was sent and the server's connection ended before it answered
#: What a person may ask for, and the state it leads to.
ACTIONS = {"commit": COMMITTED, "rollback": ROLLED_BACK}


class HoldError(GoexError):
    """A held transaction that cannot be decided now: not open, already being decided, or its gateway is gone."""


def insert(conn: sqlite3.Connection, hold_id: str, database: str, agent: str, now: float) -> None:
    conn.execute("INSERT INTO db_holds (id, database, agent, created, statements, state) VALUES (?, ?, ?, ?, 0, ?)",
                 (hold_id, database, agent, now, OPEN))


def count(conn: sqlite3.Connection, hold_id: str, statements: int, started: float | None) -> None:
    conn.execute("UPDATE db_holds SET statements = ?, started = ? WHERE id = ?", (statements, started, hold_id))


def settle(conn: sqlite3.Connection, hold_id: str, state: str, decided_by: str, result: str,
           statements: int | None = None) -> bool:
    """Close an open hold; False if it was no longer open."""
    cursor = conn.execute("UPDATE db_holds SET state = ?, decided_by = ?, result = ?, ended = ?, "
                          "statements = COALESCE(?, statements) WHERE id = ? AND state = ?",
                          (state, decided_by, result, time.time(), statements, hold_id, OPEN))
    return cursor.rowcount == 1


def _entries(cursor: sqlite3.Cursor) -> list[dict[str, Any]]:
    names = [d[0] for d in cursor.description]
    return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


def get(conn: sqlite3.Connection, hold_id: str) -> dict[str, Any]:
    found = _entries(conn.execute("SELECT * FROM db_holds WHERE id = ?", (hold_id,)))
    if not found:
        raise NotFound(f"no held transaction {hold_id!r} (see `goex-proxy db list`)")
    return found[0]


def alive(audit_db: Path, hold_id: str) -> bool:
    """Whether the gateway process that holds this transaction's connection still runs (it holds its id's tag)."""
    if not ids.is_request_id(hold_id):
        return False
    with ids.unheld(audit_db, ids.tag_of(hold_id)) as free:
        return not free


def request(conn: sqlite3.Connection, audit_db: Path, hold_id: str, action: str, by: str) -> dict[str, Any]:
    """Ask the gateway holding `hold_id` to commit or roll it back (committed here); HoldError says why not."""
    with conn:
        conn.execute("BEGIN IMMEDIATE")
        entry = get(conn, hold_id)
        if entry["state"] != OPEN:
            raise HoldError(f"held transaction {hold_id} is already {entry['state']}"
                            + (f" ({entry['result']})" if entry.get("result") else ""))
        if entry["request"]:
            raise HoldError(f"held transaction {hold_id} is already being decided: {entry['requested_by']} asked "
                            f"for {entry['request']}")
        if not alive(audit_db, hold_id):
            raise HoldError(f"held transaction {hold_id} was held by a goex-proxy that is no longer running, so the "
                            "server rolled it back (the gateway records it when it starts again)")
        conn.execute("UPDATE db_holds SET request = ?, requested_by = ?, requested_at = ? WHERE id = ?",
                     (action, by, time.time(), hold_id))
    return entry


def requested(conn: sqlite3.Connection, hold_ids: list[str]) -> list[tuple[str, str, str]]:
    """The open holds among `hold_ids` a person asked to decide: (id, action, who)."""
    if not hold_ids:
        return []
    marks = ", ".join("?" * len(hold_ids))
    return [tuple(r) for r in conn.execute(
        f"SELECT id, request, requested_by FROM db_holds WHERE state = ? AND request IS NOT NULL AND id IN ({marks})",
        (OPEN, *hold_ids))]


def listing(conn: sqlite3.Connection, audit_db: Path, everything: bool = False) -> list[dict[str, Any]]:
    """The open holds (every one with `everything`), newest first, each with `live`: whether its gateway still runs."""
    where = "" if everything else "WHERE state = 'open'"
    out = _entries(conn.execute(f"SELECT * FROM db_holds {where} ORDER BY created DESC"))
    for entry in out:
        entry["live"] = entry["state"] == OPEN and alive(audit_db, entry["id"])
    return out


def orphans(conn: sqlite3.Connection, audit_db: Path) -> list[dict[str, Any]]:
    """Open holds whose gateway process ended (its connection closed, so the server rolled them back)."""
    return [e for e in _entries(conn.execute("SELECT * FROM db_holds WHERE state = ?", (OPEN,)))
            if not alive(audit_db, e["id"])]
