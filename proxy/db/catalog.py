"""What the server's catalogs say of a table whose rows are to be captured (its primary key, and what would change
rows beyond those a statement hands back), read over a connection of the gateway's own; and the small simple-query
client that reads it (and that `undo` runs its statements with)."""

from __future__ import annotations

import asyncio
import json
import struct
from collections.abc import Awaitable, Callable

from .capture import Table, Target
from .upstream import Upstream
from .wire import error_fields, message, read_message


class ServerError(Exception):
    """The server answered a statement with an error: `sqlstate` and its message."""

    def __init__(self, sqlstate: str, text: str) -> None:
        super().__init__(f"{sqlstate} {text}")
        self.sqlstate = sqlstate


async def query(upstream: Upstream, sql: str) -> list[list[str | None]]:
    """The rows (text columns) of one simple Query; ServerError if it failed (the server is then ready again)."""
    return (await run(upstream, sql))[0]


async def run(upstream: Upstream, sql: str) -> tuple[list[list[str | None]], str]:
    """The rows and the (last) command tag of one simple Query; ServerError if it failed."""
    upstream.writer.write(message(b"Q", sql.encode() + b"\0"))
    await upstream.writer.drain()
    rows: list[list[str | None]] = []
    tag, error = "", None
    while True:
        msg = await read_message(upstream.reader)
        if msg is None:
            raise ConnectionError("the server closed the connection")
        if msg.kind == b"D":
            rows.append(data_row(msg.payload))
        elif msg.kind == b"C":
            tag = msg.payload.rstrip(b"\0").decode("utf-8", "replace")
        elif msg.kind == b"E":
            fields = error_fields(msg.payload)
            error = ServerError(fields.get("C", ""), fields.get("M", ""))
        elif msg.kind == b"Z":
            if error is not None:
                raise error
            return rows, tag


def data_row(payload: bytes) -> list[str | None]:
    """A DataRow's columns as text (None for NULL)."""
    (count,) = struct.unpack("!H", payload[:2])
    at = 2
    out: list[str | None] = []
    for _ in range(count):
        (size,) = struct.unpack("!i", payload[at:at + 4])
        at += 4
        if size < 0:
            out.append(None)
        else:
            out.append(payload[at:at + size].decode("utf-8", "replace"))
            at += size
    return out


def literal(text: str) -> str:
    """A string as an SQL literal (the connection's standard_conforming_strings is on: backslashes are plain)."""
    return "'" + text.replace("'", "''") + "'"


#: One row per table: its name, primary key, and each thing that changes rows beyond those a statement hands back.
_TABLE = """
SELECT c.oid, n.nspname, c.relname, c.relkind,
  (SELECT pg_catalog.json_agg(a.attname ORDER BY k.ord) FROM pg_catalog.pg_index i
     CROSS JOIN LATERAL pg_catalog.unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord)
     JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid AND a.attnum = k.attnum
    WHERE i.indrelid = c.oid AND i.indisprimary),
  EXISTS (SELECT 1 FROM pg_catalog.pg_trigger t WHERE t.tgrelid = c.oid AND NOT t.tgisinternal),
  EXISTS (SELECT 1 FROM pg_catalog.pg_constraint f WHERE f.confrelid = c.oid AND f.contype = 'f'
            AND (f.confdeltype IN ('c', 'n', 'd') OR f.confupdtype IN ('c', 'n', 'd'))),
  EXISTS (SELECT 1 FROM pg_catalog.pg_attribute a WHERE a.attrelid = c.oid AND a.attnum > 0
            AND NOT a.attisdropped AND a.attgenerated <> ''),
  c.relkind = 'r' AND EXISTS (SELECT 1 FROM pg_catalog.pg_inherits h WHERE h.inhparent = c.oid),
  EXISTS (SELECT 1 FROM pg_catalog.pg_rewrite r WHERE r.ev_class = c.oid AND r.rulename <> '_RETURN'),
  (WITH RECURSIVE ty(oid) AS (
      SELECT a.atttypid FROM pg_catalog.pg_attribute a WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
    UNION
      SELECT n.oid FROM ty JOIN pg_catalog.pg_type t ON t.oid = ty.oid
        CROSS JOIN LATERAL (SELECT t.typbasetype UNION ALL SELECT t.typelem UNION ALL
                            SELECT b.atttypid FROM pg_catalog.pg_attribute b
                             WHERE b.attrelid = t.typrelid AND b.attnum > 0 AND NOT b.attisdropped) AS n(oid)
       WHERE n.oid <> 0)
    SELECT pg_catalog.min(ty.oid::pg_catalog.regtype::text) FROM ty WHERE ty.oid IN ({printed}))
FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE c.oid = pg_catalog.to_regclass({name})
"""

_PROBLEMS = ("has triggers: they may change rows the statement does not hand back",
             "is referenced by foreign keys that cascade (or set null or default): rows of other tables change too",
             "has generated columns, which cannot be restored as they were",
             "has inheritance children, whose rows have columns the parent's image lacks",
             "has rewrite rules: the statement may not do what it says",)
#: Column types whose image is not the value, by type OID (also in a domain, an array or a composite column): json
#: (not jsonb) keeps its text as written, where the jsonb image has keys sorted, duplicates dropped, numbers as
#: numeric; money prints by the session's lc_monetary (a SET changes it, and the server's may differ by the time of
#: an undo), and so is read back by whichever is in force then; a reg* type prints as a name the search_path finds,
#: which may be another object when the image is read back.
_PRINTED_TYPES = {114: "json", 790: "money", 24: "regproc", 2202: "regprocedure", 2203: "regoper",
                  2204: "regoperator", 2205: "regclass", 2206: "regtype", 3734: "regconfig", 3769: "regdictionary",
                  4089: "regnamespace", 4096: "regrole", 4191: "regcollation"}
_PRINTED_WHY = {"json": "has a json column: its text is not kept as written in the image",
                "money": "has a money column: it prints by the session's lc_monetary, so an amount could be put back "
                         "as another"}


async def table(upstream: Upstream, found: Target) -> Table | str:
    """The table as the catalogs say, or why it cannot be captured (not found: it is another session's, or new in
    the agent's open transaction)."""
    rows = await query(upstream, _TABLE.format(name=literal(found.quoted),
                                               printed=", ".join(map(str, sorted(_PRINTED_TYPES)))))
    if not rows:
        return f"table {found.quoted} is not in the server's catalogs as the gateway sees them"
    oid, schema, relname, relkind, key, *flags, printed = rows[0]
    assert schema is not None and relname is not None
    problem = None
    if relkind not in ("r", "p"):
        problem = f"{found.quoted} is not a plain table (relkind {relkind})"
    for flag, why in zip(flags, _PROBLEMS, strict=True):
        if flag == "t" and problem is None:
            problem = f"table {found.quoted} {why}"
    if printed is not None and problem is None:
        problem = f"table {found.quoted} " + _PRINTED_WHY.get(
            printed, f"has a column of type {printed}: it prints as a name the search_path finds, which may be another "
                     "object when put back")
    return Table(schema, relname, tuple(json.loads(key)) if key else (), problem, int(oid or 0))


class Catalog:
    """Tables read once per session (the answer kept until a statement that may change the schema runs), over one
    connection the session opens when it first needs one."""

    def __init__(self, opener: Callable[[], Awaitable[Upstream]]) -> None:
        self._open = opener
        self._upstream: Upstream | None = None
        self._tables: dict[Target, Table | str] = {}
        self._lock = asyncio.Lock()

    async def table(self, found: Target) -> Table | str:
        if found in self._tables:
            return self._tables[found]
        async with self._lock:
            if self._upstream is None:
                self._upstream = await self._open()
            assert self._upstream is not None
            self._tables[found] = answer = await table(self._upstream, found)
        return answer

    def forget(self) -> None:
        self._tables.clear()

    def close(self) -> None:
        if self._upstream is not None:
            self._upstream.writer.close()
