"""`log verify` over a large log in several processes at once, each checking one range of seqs (the check is about
60 us of Python a row, so one core takes minutes over ten million rows)."""

from __future__ import annotations

import multiprocessing
import os
import signal
import sqlite3
from pathlib import Path

from . import store
from .seal import Anchor

#: A log of fewer rows is checked in this process: starting another costs about a tenth of a second.
PARALLEL_FROM = 100_000
#: The most processes one verify starts.
MOST_PROCESSES = 8


def processes_for(rows: int) -> int:
    """How many processes check a log of this many rows: one per core this process may run on, for a large log."""
    if rows < PARALLEL_FROM:
        return 1
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(MOST_PROCESSES, cores, rows // (PARALLEL_FROM // 2)))


def verify(conn: sqlite3.Connection, key: bytes | None, anchor: Anchor | None, processes: int) -> store.VerifyResult:
    """`store.verify`, the rows split into `processes` ranges of seqs (`processes_for` the log's rows), each checked
    in a process of its own; what they found is put together as one pass would have."""
    low, high = conn.execute("SELECT min(seq), max(seq) FROM requests").fetchone()
    path = _path_of(conn)
    if processes <= 1 or low is None or path is None:
        return store.verify(conn, key, anchor)
    step = -(-(high + 1 - low) // processes)
    ranges = [(start, min(start + step, high + 1)) for start in range(low, high + 1, step)]
    with _context().Pool(len(ranges), initializer=_quiet) as pool:
        spans = pool.starmap(_check_range, [(path, key, anchor, seqs) for seqs in ranges])
    return store.verify(conn, key, anchor, spans)


def _path_of(conn: sqlite3.Connection) -> str | None:
    """The file of the connection's main database (None for one in memory, which no other process can open)."""
    for _, name, file in conn.execute("PRAGMA database_list"):
        if name == "main" and file:
            return str(file)
    return None


def _context() -> multiprocessing.context.BaseContext:
    """Forked where the system forks: a copy of this process, hardened as it is (not dumpable, so that no other
    process of the person's reads the chain key out of it), that imports nothing again and never runs the caller's
    main module (as a spawned one does, unless it is guarded)."""
    if "fork" in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("fork")
    return multiprocessing.get_context("spawn")


def _quiet() -> None:
    """A checking process is deaf to Ctrl-C, which the command answers for all (ending the pool and them with it);
    where it was spawned, it is hardened as the command is before it is handed the key."""
    from ..hardening import harden_process

    harden_process()
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _check_range(path: str, key: bytes | None, anchor: Anchor | None, seqs: tuple[int, int]) -> store.Span:
    conn = store.open_db(Path(path), readonly=True)
    try:
        return store.verify_span(conn, key, anchor, seqs)
    finally:
        conn.close()
