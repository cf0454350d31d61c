"""Reads that see the audit log as of one moment, whatever a writer or a prune commits meanwhile."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def one_snapshot(conn: sqlite3.Connection) -> Iterator[None]:
    """One read transaction around the reads inside (none of its own inside the caller's). Read apart, what a prune
    or a writer committed between two of them makes them disagree: a gap record not yet seen for rows already gone
    (`verify` called the next row broken), blocks of time taken before rows were added or removed (a listing left
    short of the rows it wanted)."""
    if conn.in_transaction:
        yield
        return
    conn.execute("BEGIN")
    try:
        yield
    finally:
        conn.execute("COMMIT")  # only read: ends the snapshot
