"""The agent, host and undo class names a row holds by id (`audit_names`, migration 20): each stored once."""

from __future__ import annotations

import sqlite3
from collections import OrderedDict
from collections.abc import Iterable
from typing import Any

from ..hostkey import host_key

TABLE = "audit_names"
#: The fields a row keeps as the id of their name: its agent and host since migration 20, its undo class since 25
#: (they share the table: a name is a name, and one lookup serves all).
FIELDS = ("agent", "host", "undo_class")


def ref_of(name_id: int) -> bytes:
    """An id as a row keeps it: its bytes, big-endian, as few as hold it (one for the first 255 names). A BLOB, not
    an INTEGER: the agent and host columns have TEXT affinity, which would store 7 as the text '7' (a host of that
    name), while a BLOB stays one, so a row's type alone says whether it holds a name (rows written before) or an id.
    A one-byte BLOB costs what a small INTEGER does (a header byte and one of content)."""
    return name_id.to_bytes(max(1, (name_id.bit_length() + 7) // 8), "big")


#: The largest id SQLite keeps (an INTEGER PRIMARY KEY is a signed 64-bit integer).
MAX_ID = 2**63 - 1


def id_of_ref(ref: bytes) -> int:
    """The id a stored ref names, or 0, which names nothing (ids start at 1), for a ref the writer never stores: one
    with more bytes than its id needs, which would read as that id's name while a filter, which looks for the ref as
    written, passed its row by (verify holds: the name is what the row hashed), or one past SQLite's integers, which
    no query takes (OverflowError: verify, log and the console ended in an internal error)."""
    if len(ref) > 8:
        return 0
    found = int.from_bytes(ref, "big")
    return found if found <= MAX_ID and ref == ref_of(found) else 0


def unnamed(ref: bytes) -> str:
    """Why a ref reads as no name, in a few words."""
    found = id_of_ref(ref)
    return f"name {found} is missing" if found else f"{ref[:9].hex()} is not an id as the writer stores one"


def refs(rows: Iterable[dict[str, Any]]) -> set[int]:
    """The ids of the names these stored rows hold as ids."""
    return {id_of_ref(v) for row in rows for f in FIELDS if isinstance(v := row.get(f), bytes)} - {0}


def fetch(conn: sqlite3.Connection, ids: set[int]) -> dict[int, str]:
    """The names of these ids (one missing: none of that id, so its rows read as unreadable and fail `verify`); none
    in a log older than the table (read-only, not migrated), whose rows hold no ids. An id with two names (a table
    rebuilt without its primary key) names neither: its rows read as one or the other, and a filter on either gave
    them."""
    if not ids:
        return {}
    wanted = sorted(ids)
    found: dict[int, str] = {}
    twice: set[int] = set()
    try:
        for start in range(0, len(wanted), 500):  # below SQLite's limit on parameters
            part = wanted[start:start + 500]
            for i, n in conn.execute(f"SELECT id, name FROM {TABLE} WHERE id IN ({', '.join('?' * len(part))})", part):
                if type(i) is int and isinstance(n, str):
                    if found.setdefault(i, n) != n:
                        twice.add(i)
    except sqlite3.OperationalError:  # no such table
        return {}
    return {i: n for i, n in found.items() if i not in twice}


def stored_as(conn: sqlite3.Connection, name: str) -> list[str | bytes]:
    """What a row holding this name may hold in its column: the name (a row written before migration 20) and, once
    the name has an id, that id. A filter matches both (`column IN (...)`), and SQLite still reads the column's index,
    once per value.

    Every id whose name is exactly this one: the table is outside the chain, and whoever can write the database can
    rebuild it without its UNIQUE (a second id of the name, which rows read as the name and verify with) or with
    another collation (`name = ?` then finds other names too); a filter is to find every row that reads as the name,
    and no other."""
    try:
        found = conn.execute(f"SELECT id, name FROM {TABLE} WHERE name = ?", (name,)).fetchall()
    except sqlite3.OperationalError as exc:
        if "no such table" not in str(exc):  # any other failure is no reason to pass rows by: said as it is
            raise
        found = []  # a log older than the table (read-only, not migrated)
    return [name, *(ref_of(i) for i, n in found if type(i) is int and 0 < i <= MAX_ID and n == name)]


def host_of(name: str) -> str:
    """A host as policies, routes and credentials read it: in lower case, without a trailing dot. A row keeps the host
    as the request spelled it (`NOTES.example.`), which the policy allowed as `notes.example`."""
    return host_key(name)


def hosts_stored_as(conn: sqlite3.Connection, name: str) -> list[str | bytes]:
    """What a row whose host is `name` as policies read it (`host_of`) may hold: the id of every name in the table
    that reads so (found through its NOCASE index, since migration 22), and the name as given, in lower case and with
    a trailing dot (a row written before migration 20 holds its host as text; other spellings of those are not
    found). A filter on the exact name let an agent keep its requests out of `log --host` and the console's host
    filter by spelling the host in upper case or with a trailing dot, which the policy, routes and credentials all
    take as the same host."""
    host = host_of(name)
    try:
        found = conn.execute(f"SELECT id, name FROM {TABLE} WHERE name COLLATE NOCASE IN (?, ?)",
                             (host, f"{host}.")).fetchall()
    except sqlite3.OperationalError as exc:
        if "no such table" not in str(exc):
            raise
        found = []
    texts: list[str | bytes] = list(dict.fromkeys([name, host, f"{host}."]))
    return texts + [ref_of(i) for i, n in found
                    if type(i) is int and 0 < i <= MAX_ID and isinstance(n, str) and host_of(n) == host]


def term(conn: sqlite3.Connection, column: str, name: str, plus: str = "") -> tuple[str, list[str | bytes]]:
    """The SQL term that picks the rows whose `column` (agent, host or undo class) is `name`, and its parameters;
    `plus`: "+" keeps it from choosing an index. An agent is compared byte for byte, whatever collation the column
    was given: whoever can write the database can rewrite its schema (NOCASE would have a filter on one agent, which
    session undo and `execute` take an agent's rows by, give another's); a host as policies read it
    (`hosts_stored_as`). SQLite still reads the column's index, which is BINARY. The ids are written into the SQL as
    blob literals (hex digits, nothing else), not passed as parameters: an agent can give a host as many spellings as
    it sends requests, each a name, past SQLite's limit on parameters."""
    values = hosts_stored_as(conn, name) if column == "host" else stored_as(conn, name)
    texts = [v for v in values if isinstance(v, str)]
    items = ["?"] * len(texts) + [f"X'{v.hex()}'" for v in values if isinstance(v, bytes)]
    if len(items) == 1:
        return f"{plus}{column} COLLATE BINARY = {items[0]}", list(texts)
    return f"{plus}{column} COLLATE BINARY IN ({', '.join(items)})", list(texts)


def release(conn: sqlite3.Connection, held: Iterable[Any]) -> int:
    """Remove the names of these stored refs (what removed rows held in their agent, host and undo class) that no row
    holds any more, in any of those columns (a name is a name, for all); call in the write transaction that removed
    the rows (a prune's). The newest id stays, whatever holds it: SQLite gives a new name the id after the largest,
    so no id removed here is ever given to another name. How many were removed. A writer that remembered a removed id
    finds it gone (`Names.id_of`) and stores the name again."""
    wanted = sorted({found for ref in held if isinstance(ref, bytes) and (found := id_of_ref(ref))})
    if not wanted:
        return 0
    (newest,) = conn.execute(f"SELECT coalesce(max(id), 0) FROM {TABLE}").fetchone()
    gone = 0
    for name_id in wanted:
        ref = ref_of(name_id)
        if name_id >= newest or any(conn.execute(f"SELECT 1 FROM requests WHERE {field} = ? LIMIT 1", (ref,)).fetchone()
                                    for field in FIELDS):
            continue
        gone += conn.execute(f"DELETE FROM {TABLE} WHERE id = ?", (name_id,)).rowcount
    return gone


#: Names a writer remembers the ids of (an agent may name a new host with every request: never all of them).
RECENT = 4096


class Names:
    """The ids of names, as one writer stores them: taken from the database in the transaction that writes the row
    (INSERT OR IGNORE, then read back; the write lock is held, so writers in other processes agree on every id),
    the RECENT last ones kept in memory after. A prune removes names no row holds (`release`), in another process
    too: an id remembered is read again once in each transaction (`begin`) before a row is given it. `forget` when
    a transaction rolls back: an id it added may be given to another name."""

    def __init__(self, recent: int = RECENT) -> None:
        self._ids: OrderedDict[str, int] = OrderedDict()
        self._size = recent
        self._checked: set[str] = set()  # read again in this transaction

    def id_of(self, conn: sqlite3.Connection, name: str) -> int:
        found = self._ids.get(name)
        if found is not None and name not in self._checked:
            held = conn.execute(f"SELECT name FROM {TABLE} WHERE id = ?", (found,)).fetchone()
            if held is None or held[0] != name:  # pruned since (then perhaps another name's)
                found = None
        if found is None:
            conn.execute(f"INSERT OR IGNORE INTO {TABLE} (name) VALUES (?)", (name,))
            found = int(conn.execute(f"SELECT id FROM {TABLE} WHERE name = ?", (name,)).fetchone()[0])
        self._ids[name] = found
        self._ids.move_to_end(name)
        if len(self._ids) > self._size:
            self._checked.discard(self._ids.popitem(last=False)[0])
        self._checked.add(name)
        return found

    def begin(self) -> None:
        """A new transaction: each id remembered is read again before it is first used in it (a name used in this
        transaction is held by a row written in it, which no prune removes)."""
        self._checked.clear()

    def forget(self) -> None:
        self._ids.clear()
        self._checked.clear()
