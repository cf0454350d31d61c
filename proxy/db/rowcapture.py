"""A session's row capture: a write planned (capture) against the table's catalog entry (catalog) and sent rewritten,
the images taken out of what the server answers so that the agent sees exactly what it would have without them, and
kept for the row's outcome once its transaction is known to have committed."""

from __future__ import annotations

import json
import secrets
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from ..policy.sqlparse import Statement
from . import capture, record
from .capture import Capture, Table
from .catalog import Catalog
from .upstream import Upstream

_T = TypeVar("_T")
#: The undo class of a statement whose rows are captured.
EXACT = "exact"
#: The statements whose rows are captured; any other write is irreversible.
_ROW_KINDS = frozenset({"insert", "update", "delete"})
_WRITE_KINDS = frozenset({"insert", "update", "delete", "ddl", "other", "set"})
_JSONB_BINARY_VERSION = b"\x01"
INSUFFICIENT_PRIVILEGE = "42501"
PROGRAM_LIMIT_EXCEEDED = "54000"
#: Plans a session keeps (a plan of an UPDATE takes about a millisecond; a client repeats its statements).
_PLANS_KEPT = 256


@dataclass
class Planned:
    """How a message is sent: its SQL (rewritten when captured), the capture, and its undo class."""

    sql: str
    capture: Capture | None
    undo_class: str | None


@dataclass
class Images:
    """The images of one statement's rows as the server handed them back."""

    capture: Capture
    binary: bool = False                 # the image column comes in binary (jsonb's version byte first)
    rows: list[Any] = field(default_factory=list)


class Capturer:
    """One session's capture: its marker (a name the agent cannot guess), its catalog connection."""

    def __init__(self, opener: Callable[[], Awaitable[Upstream]], bound: int) -> None:
        self.marker = "goex_" + secrets.token_hex(6)
        self.marker_bytes = self.marker.encode()
        self.bound = bound
        self._plans: dict[tuple[str, Table], Capture | str] = {}  # the same SQL on the same table plans the same
        self.catalog = Catalog(opener)

    async def plan(self, sql: str, statements: tuple[Statement, ...]) -> Planned:
        kinds = frozenset().union(*(s.kinds for s in statements)) if statements else frozenset()
        if any(s.kind == "ddl" for s in statements):
            self.catalog.forget()  # a table's keys, triggers or foreign keys may be what changes
        called = record.calls_code(statements)  # known before it runs, as `review:` needs: never exact
        if called is not None or not kinds & _WRITE_KINDS:
            return Planned(sql, None, called)
        if len(statements) != 1 or not kinds <= _ROW_KINDS:
            why = "several statements in one message" if len(statements) != 1 else \
                f"{statements[0].kind.upper()}: only INSERT, UPDATE and DELETE rows are captured"
            return Planned(sql, None, f"irreversible: {why}")
        found = capture.target(sql)
        if isinstance(found, str):
            return Planned(sql, None, f"irreversible: {found}")
        try:
            table = await self.catalog.table(found)
        except Exception as exc:  # noqa: BLE001 - any failure to read the catalog leaves the statement uncaptured
            table = f"the table's catalog entry could not be read ({exc})"
        if isinstance(table, str):
            return Planned(sql, None, f"irreversible: {table}")
        key = (sql, table)
        planned = self._plans.get(key)
        if planned is None:
            if len(self._plans) >= _PLANS_KEPT:
                self._plans.clear()
            planned = self._plans[key] = capture.plan(sql, table, self.marker, self.bound)
        if isinstance(planned, str):
            return Planned(sql, None, f"irreversible: {planned}")
        return Planned(planned.sql, planned, EXACT)

    def close(self) -> None:
        self.catalog.close()

    def refusal(self, error_text: str, database: str) -> tuple[str, str] | None:
        """A server error that is one of a captured statement's own failures (capture.FAILURES), as the SQLSTATE and
        the reason the agent is told it was refused; None for any other error."""
        what = capture.failure(error_text, self.marker)
        if what == "bound":
            return PROGRAM_LIMIT_EXCEEDED, (f"it would change more than {self.bound} rows, the most goex-proxy captures "
                                            f"for undo in one statement (databases.{database}.capture_rows); nothing "
                                            "was changed")
        if what == "table":
            return INSUFFICIENT_PRIVILEGE, ("the table this session finds by that name is not the one goex-proxy read "
                                            "the catalog of (a search_path of the session's own?), so its rows would "
                                            "not be captured for undo; nothing was changed (name the table with its "
                                            "schema)")
        if what == "print":
            return INSUFFICIENT_PRIVILEGE, ("this session prints values so that undo would not put its rows back as "
                                            "they were (extra_float_digits below 1, IntervalStyle other than postgres "
                                            "or DateStyle other than ISO); nothing was changed (RESET them to write)")
        return None


def result_formats(payload: bytes) -> tuple[bytes, bool]:
    """A Bind for a captured statement: given per column result formats, one more (text) for the image column; and
    whether the image comes in binary (one format for every column, binary)."""
    at = payload.index(b"\0") + 1
    at = payload.index(b"\0", at) + 1
    (count,) = struct.unpack_from("!H", payload, at)
    at += 2 + 2 * count
    (n,) = struct.unpack_from("!H", payload, at)
    at += 2
    for _ in range(n):
        (size,) = struct.unpack_from("!i", payload, at)
        at += 4 + max(size, 0)
    (formats,) = struct.unpack_from("!H", payload, at)
    codes = struct.unpack_from(f"!{formats}H", payload, at + 2)
    if formats > 1:
        return payload[:at] + struct.pack(f"!{formats + 2}H", formats + 1, *codes, 0), False
    return payload, formats == 1 and codes[0] == 1


def is_captured(description: bytes, marker: str) -> bool:
    """Whether a RowDescription's last column is the image column."""
    (count,) = struct.unpack_from("!H", description, 0)
    if count == 0:
        return False
    return _last_field(description, count)[1] == marker


def _last_field(description: bytes, count: int) -> tuple[int, str]:
    at = 2
    for i in range(count):
        end = description.index(b"\0", at)
        if i == count - 1:
            return at, description[at:end].decode("utf-8", "replace")
        at = end + 1 + 18
    raise ValueError("no fields")


def strip_description(description: bytes) -> bytes | None:
    """A RowDescription without its last (the image) column; None when that was its only one."""
    (count,) = struct.unpack_from("!H", description, 0)
    if count == 1:
        return None
    at, _ = _last_field(description, count)
    return struct.pack("!H", count - 1) + description[2:at]


def strip_row(row: bytes) -> tuple[bytes, bytes | None]:
    """A DataRow without its last column, and that column's value."""
    (count,) = struct.unpack_from("!H", row, 0)
    at = 2
    for _ in range(count - 1):
        (size,) = struct.unpack_from("!i", row, at)
        at += 4 + max(size, 0)
    (size,) = struct.unpack_from("!i", row, at)
    value = None if size < 0 else row[at + 4:at + 4 + size]
    return struct.pack("!H", count - 1) + row[2:at], value


def take(images: Images, value: bytes | None) -> None:
    """One row's image from its column's value."""
    if value is None:
        return
    if images.binary:
        value = value.removeprefix(_JSONB_BINARY_VERSION)
    try:
        images.rows.append(json.loads(value))
    except ValueError:  # not an image the plan made (a portal that was not the statement): no image, not undone
        images.rows.append(None)


class Transactions(Generic[_T]):
    """Captured statements held until their transaction is known to have committed or not, from what the server
    says: the command tags that end a transaction block (COMMIT; ROLLBACK, also to a savepoint; PREPARE TRANSACTION),
    errors, and each ReadyForQuery's status (I idle, T in a block, E in a failed block)."""

    _ENDS = ("COMMIT", "ROLLBACK", "PREPARE TRANSACTION")

    def __init__(self) -> None:
        self.held: list[_T] = []
        self._failed = False     # an error since the last ReadyForQuery (it rolls an implicit transaction back)
        self._block = False      # the server was in a transaction block while statements were held
        #: How the held statements that came before a transaction's end ended (the first `len(_ends)` of them): a
        #: later end in the same round trip (`ROLLBACK; COMMIT`, or a pipeline's COMMIT, BEGIN, ...) is not theirs.
        self._ends: list[str] = []

    def hold(self, item: _T) -> None:
        self.held.append(item)

    def error(self) -> None:
        self._failed = True

    def tag(self, tag: str) -> None:
        if tag in self._ENDS:
            self._ends += [tag] * (len(self.held) - len(self._ends))

    def ready(self, status: bytes) -> list[tuple[_T, str | None]]:
        """At ReadyForQuery: the statements whose transaction's end is now known, each with why its rows did not
        stay (None: committed); the others stay held."""
        ends, failed = self._ends, self._failed
        self._ends, self._failed = [], False
        if not self.held:
            self._block = False
            return []
        out = [(item, self._why(end)) for item, end in zip(self.held, ends, strict=False)]
        if ends:
            self._block = False  # the statements held after the end (if any) began after it
        rest = self.held[len(ends):]
        self.held = []
        if rest and status != b"I":
            self.held, self._block = rest, True
            return out
        why = "its transaction did not commit" if failed or self._block else None
        out += [(item, why) for item in rest]
        self._block = status != b"I"
        return out

    @staticmethod
    def _why(end: str) -> str | None:
        if end == "COMMIT":
            return None
        if end != "ROLLBACK":
            return "its transaction was prepared for two-phase commit, whose end is not followed"
        return "its transaction was rolled back (wholly, or to a savepoint after it)"

    def drain(self, why: str) -> list[tuple[_T, str | None]]:
        """Every statement still held, as not kept (the connection ended before its transaction's end was seen)."""
        out: list[tuple[_T, str | None]] = [(item, why) for item in self.held]
        self.held.clear()
        return out


def outcome(images: Images, why_not: str | None, scrub: Any) -> dict[str, Any]:
    """The fields a captured statement's outcome adds: the images (when its transaction committed: `why_not` None)
    and its class."""
    if why_not is not None:
        return {"undo_class": f"irreversible: {why_not}"}
    if not images.rows:
        return {"undo_class": None}  # nothing changed: nothing to undo
    if any(row is None for row in images.rows):  # no plan hands one back (it fails the statement): never kept
        return {"undo_class": "irreversible: a row came back without its image"}
    capture_ = images.capture
    data = json.dumps({"kind": capture_.kind, "schema": capture_.table.schema, "table": capture_.table.relname,
                       "key": list(capture_.table.key), "rows": images.rows}, ensure_ascii=False,
                      separators=(",", ":"))
    if scrub.text(data) != data:
        return {"undo_class": "irreversible: its rows hold a secret goex-proxy knows, which is never written down"}
    return {"undo_class": EXACT, "row_images": data.encode()}
