"""The agent and host names a row holds by id (`audit_names`, migration 20): each name stored once, not per row."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from typing import Any

TABLE = "audit_names"
#: The fields a row written since migration 20 keeps as the id of their name (hosts and agents share the table: a
#: name is a name, and one lookup serves both).
FIELDS = ("agent", "host")


def ref_of(name_id: int) -> bytes:
    """An id as a row keeps it: its bytes, big-endian, as few as hold it (one for the first 255 names). A BLOB, not
    an INTEGER: the agent and host columns have TEXT affinity, which would store 7 as the text '7' (a host of that
    name), while a BLOB stays one, so a row's type alone says whether it holds a name (rows written before) or an id.
    A one-byte BLOB costs what a small INTEGER does (a header byte and one of content)."""
    return name_id.to_bytes(max(1, (name_id.bit_length() + 7) // 8), "big")


def id_of_ref(ref: bytes) -> int:
    """The id a stored ref names (an edited one may name none: ids start at 1, and b"" is 0)."""
    return int.from_bytes(ref, "big")


def refs(rows: Iterable[dict[str, Any]]) -> set[int]:
    """The ids of the names these stored rows hold as ids."""
    return {id_of_ref(v) for row in rows for f in FIELDS if isinstance(v := row.get(f), bytes)}


def fetch(conn: sqlite3.Connection, ids: set[int]) -> dict[int, str]:
    """The names of these ids (one missing: none of that id, so its rows read as unreadable and fail `verify`); none
    in a log older than the table (read-only, not migrated), whose rows hold no ids."""
    if not ids:
        return {}
    wanted = sorted(ids)
    found: dict[int, str] = {}
    try:
        for start in range(0, len(wanted), 500):  # below SQLite's limit on parameters
            part = wanted[start:start + 500]
            found.update((int(i), n) for i, n in conn.execute(
                f"SELECT id, name FROM {TABLE} WHERE id IN ({', '.join('?' * len(part))})", part) if isinstance(n, str))
    except sqlite3.OperationalError:  # no such table
        return {}
    return found


def stored_as(conn: sqlite3.Connection, name: str) -> list[str | bytes]:
    """What a row holding this name may hold in its column: the name (a row written before migration 20) and, once
    the name has an id, that id. A filter matches both (`column IN (...)`), and SQLite still reads the (agent, ts) or
    (host, ts) index, once per value, stopping each walk at the LIMIT."""
    try:
        found = conn.execute(f"SELECT id FROM {TABLE} WHERE name = ?", (name,)).fetchone()
    except sqlite3.OperationalError:  # a log older than the table (read-only, not migrated)
        found = None
    return [name] if found is None else [name, ref_of(int(found[0]))]


def term(conn: sqlite3.Connection, column: str, name: str, plus: str = "") -> tuple[str, list[str | bytes]]:
    """The SQL term that picks the rows whose `column` (agent or host) is `name`, and its parameters; `plus`: "+"
    keeps it from choosing an index."""
    values = stored_as(conn, name)
    if len(values) == 1:
        return f"{plus}{column} = ?", values
    return f"{plus}{column} IN ({', '.join('?' * len(values))})", values


class Names:
    """The ids of names, as one writer stores them: taken from the database in the transaction that writes the row
    (INSERT OR IGNORE, then read back; the write lock is held, so writers in other processes agree on every id),
    kept in memory after. `forget` when a transaction rolls back: an id it added may be given to another name."""

    def __init__(self) -> None:
        self._ids: dict[str, int] = {}

    def id_of(self, conn: sqlite3.Connection, name: str) -> int:
        found = self._ids.get(name)
        if found is None:
            conn.execute(f"INSERT OR IGNORE INTO {TABLE} (name) VALUES (?)", (name,))
            found = int(conn.execute(f"SELECT id FROM {TABLE} WHERE name = ?", (name,)).fetchone()[0])
            self._ids[name] = found
        return found

    def forget(self) -> None:
        self._ids.clear()
