"""What the console reads from the audit database: rows by keyset pages, one row with its chain status, approvals."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from ..audit import layout, names, times
from ..audit import store as audit
from ..audit.gaps import gap_holds, gaps
from ..audit.seal import Seal
from ..audit.snapshot import one_snapshot
from ..config import Config
from ..errors import AuditError

T = TypeVar("T")
#: The columns of a log page (never the bodies; scheme and port for the URL, which a row may leave to its parts, and
#: ended for the duration, which a row may leave to its start and end).
LIST_COLUMNS = ("seq, id, ts, agent, method, scheme, host, port, path, url, decision, status, error, "
                "duration_ms, ended, undo_class, undo_of, rule_blob, reason_blob")  # the rule and reason, where in blobs
PAGE = 50


def _list_columns(conn: sqlite3.Connection) -> str:
    """LIST_COLUMNS, with the rule and reason columns where the table has them (rows written before schema 12 hold
    them there; a new log has none)."""
    present = audit.present_columns(conn)
    return LIST_COLUMNS + "".join(f", {c}" for c in ("rule", "reason") if c in present)


@dataclass(frozen=True)
class Filters:
    """The log page's filters; each None is no filter."""

    agent: str | None = None
    host: str | None = None
    decision: str | None = None
    undo_class: str | None = None
    since: float | None = None
    until: float | None = None

    def where(self, conn: sqlite3.Connection, indexed: bool = True) -> tuple[list[str], list[Any]]:
        """The SQL terms of these filters and their parameters; not `indexed`: none may pick an index (the rows are
        found by seq, the table's own key). An agent, host or undo class matches its name and its id (`names.term`)."""
        clauses: list[str] = []
        params: list[Any] = []
        plus = "" if indexed else "+"  # SQLite's way to keep a term from choosing an index
        for column in ("agent", "host"):
            value = getattr(self, column)
            if value is not None:
                term, values = names.term(conn, column, layout.stored_text(value), plus)
                clauses.append(term)
                params += values
        terms, values = audit.decision_terms(self.decision, plus)
        clauses += terms
        params += values
        if self.undo_class is not None:  # its name, or the id of it (since migration 25)
            term, values = names.term(conn, "undo_class", self.undo_class, plus)
            clauses.append(term)
            params += values
        if self.since is not None:
            clauses.append(f"{plus}ts >= ?")
            params.append(self.since)
        if self.until is not None:
            clauses.append(f"{plus}ts <= ?")
            params.append(self.until)
        return clauses, params


def _rows(conn: sqlite3.Connection, sql: str, params: list[Any]) -> list[dict[str, Any]]:
    """The rows of a list, a value that cannot be read shown as such (`layout.unreadable`): one damaged row must not
    take the whole log page, or its stream, down with it."""
    return list(layout.read(conn, sql, params, lenient=True))


def page(conn: sqlite3.Connection, filters: Filters, before: int | None = None, limit: int = PAGE,
         at: float | None = None) -> list[dict[str, Any]]:
    """One page of rows, newest first (by the time each began, then seq, as `log` lists them), after the row of seq
    `before` in that order (keyset: never an OFFSET, never the whole table; only the blocks of time that can hold
    them). `at`: that row's time as the page before showed it, for a row pruned since. Rows of no start (edited to NULL) come
    last, as SQLite sorts them: after the last row that has one, then by seq."""
    with one_snapshot(conn):  # the row it goes on after, the blocks of time and their rows: as of one moment
        return _page(conn, filters, before, limit, at)


def _page(conn: sqlite3.Connection, filters: Filters, before: int | None, limit: int, at: float | None
          ) -> list[dict[str, Any]]:
    clauses, params = filters.where(conn)
    until, started, unstarted = filters.until, False, False
    if before is not None:
        found = conn.execute("SELECT ts FROM requests WHERE seq = ?", (before,)).fetchone()
        ts = found[0] if found is not None else at
        if found is not None and ts is None:  # a row of no start: the rows after it have none either
            clauses.append("ts IS NULL AND seq < ?")
            params.append(before)
            unstarted = True
        elif ts is None:  # pruned since the page before was read, and its time not given: the rows chained before
            clauses.append("seq < ?")
            params.append(before)
        else:  # by seq alone, rows written out of time order would be skipped or shown again
            clauses.append("ts <= ? AND (ts < ? OR seq < ?)")
            params += [ts, ts, before]
            until, started = ts, True
    rows = _by_time(conn, filters, clauses, params, limit, until, unstarted)
    if started and len(rows) < limit and filters.since is None and filters.until is None:
        clauses, params = filters.where(conn)  # the rows of no start, which no bound on ts picks
        rows += _by_time(conn, filters, [*clauses, "ts IS NULL"], params, limit - len(rows), None, unstarted=True)
    return rows


def _by_time(conn: sqlite3.Connection, filters: Filters, clauses: list[str], params: list[Any], limit: int,
             until: Any, unstarted: bool = False) -> list[dict[str, Any]]:
    """The first `limit` rows these clauses match, newest first, only in the blocks of time that can hold them
    (`times.window`, given that none began after `until`; a log not yet migrated to them reads its index of every
    row's time)."""
    if times.present(conn):
        terms, values = times.window(conn, clauses, params, limit, since=filters.since, until=until,
                                     unstarted=unstarted)
        clauses, params = clauses + terms, params + values
    sql = f"SELECT {_list_columns(conn)} FROM requests" + (" WHERE " + " AND ".join(clauses) if clauses else "")
    return _rows(conn, sql + f" ORDER BY ts DESC, seq DESC LIMIT {int(limit)}", params)


#: How many new rows one poll of the live stream reads at most (a full batch is followed at once by the next).
NEWER_ROWS = 100


def newer(conn: sqlite3.Connection, filters: Filters, after: int, limit: int = NEWER_ROWS
          ) -> tuple[list[dict[str, Any]], int]:
    """Rows after seq `after`, oldest first (what the live stream sends next), and the seq the next call starts
    after. The rows written since are read by seq, not down a filter's index (which is in time order), and only up
    to the newest row when the call began, which the next call starts after: a filter that matches nothing reads
    each row once."""
    top = head(conn)
    clauses, params = filters.where(conn, indexed=False)
    clauses.append("seq > ? AND seq <= ?")
    params += [after, top]
    sql = f"SELECT {_list_columns(conn)} FROM requests WHERE " + " AND ".join(clauses)
    rows = _rows(conn, sql + f" ORDER BY seq ASC LIMIT {int(limit)}", params)
    return rows, int(rows[-1]["seq"]) if len(rows) >= limit else max(top, after)


def listing(conn: sqlite3.Connection, filters: Filters, before: int | None = None, at: float | None = None
            ) -> tuple[list[dict[str, Any]], int]:
    """The log page's rows and the newest seq, the live stream's start, read in one snapshot: read apart, a row
    another process committed between the two was on neither the page nor the stream."""
    with one_snapshot(conn):
        return page(conn, filters, before, at=at), head(conn)


def head(conn: sqlite3.Connection) -> int:
    """The newest seq (0 for an empty log)."""
    return int(conn.execute("SELECT coalesce(max(seq), 0) FROM requests").fetchone()[0])


def chain_status(conn: sqlite3.Connection, seal: Seal, row: dict[str, Any]) -> tuple[bool, str]:
    """Whether this row's hashes hold under the seal's key: its link to the row before, its request fields and its
    outcome; in a sentence. (`goex-proxy log verify` checks the whole chain.)"""
    try:
        key = audit.chain_key(conn, seal)
    except AuditError as exc:
        return False, str(exc)
    found = conn.execute("SELECT hash FROM requests WHERE seq < ? ORDER BY seq DESC LIMIT 1", (row["seq"],)).fetchone()
    before = layout.hex_of(found[0]) if found else ""
    pruned = gaps(conn, row["seq"] - 1, row["seq"]).get(row["seq"])
    if row["prev_hash"] != before and not gap_holds(key, pruned, before, row["prev_hash"]):
        return False, "broken: its link to the row before does not hold (a row before it was removed or reordered)"
    if (problem := audit.edited(key, row)) is not None:
        return False, f"broken: {problem}"
    keyed = "HMAC-SHA256 under the seal's key" if key is not None else "plain SHA-256 (an older log)"
    ended = "" if row["outcome_hash"] is not None else "; its outcome is not recorded yet"
    if row["prev_hash"] != before:
        ended += f"; {pruned.rows if pruned else 0} older rows before it were pruned (a signed gap record joins them)"
    return True, f"intact: its link, request and outcome hashes hold ({keyed}){ended}"


def approval_of(row: dict[str, Any]) -> dict[str, Any] | None:
    try:
        found = json.loads(row.get("approval") or "null")
    except ValueError:
        return None
    return found if isinstance(found, dict) else None


class Db:
    """The console's one connection to the audit database, used by one request at a time, off the event loop."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.seal = Seal(config.state_dir)
        self._conn: sqlite3.Connection | None = None
        self._lock = threading.Lock()

    def run(self, work: Callable[[sqlite3.Connection], T]) -> T:
        with self._lock:
            if self._conn is None:
                self._conn = audit.connect(self.config)
            return work(self._conn)

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None


def when(ts: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts)) if ts else "-"
