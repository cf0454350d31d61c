"""Rows found by time through each block of 1,024 seqs' earliest and latest start: no index holds a row's start."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from typing import Any

TABLE = "audit_times"
#: A block is the rows whose seq shifted right by this many bits is the same: 1,024 consecutive seqs.
SHIFT = 10
#: The most runs of consecutive blocks a query is bounded by: past this many (rows written far out of time order, or
#: blocks a prune left apart), the runs closest together are joined, blocks between them read too.
MOST_RUNS = 64
#: Blocks whose matching rows `window` counts at once, at most: one, then twice as many each time, so that a filter
#: few rows match (an agent seldom seen) costs a query per doubling, not one per block of the log.
MOST_BATCH = 64
#: The seqs SQLite can hold.
SEQS = (-(2**63), 2**63 - 1)


def create(conn: sqlite3.Connection) -> None:
    """The table, kept by triggers on every row written and every start time changed (whoever writes: the proxy's
    writer, an older release's rows migrated, a test), filled from the rows already there. A block's `low` is NULL
    once a row in it has no start (an edited one): such a row sorts before every start, so its block must be read
    first oldest first, and for every row newest first (`high` is the latest start there is, NULL if none is)."""
    conn.execute(f"CREATE TABLE IF NOT EXISTS {TABLE} (block INTEGER PRIMARY KEY, low, high)")
    conn.execute(f"CREATE INDEX IF NOT EXISTS idx_{TABLE}_high ON {TABLE} (high)")
    conn.execute(f"CREATE INDEX IF NOT EXISTS idx_{TABLE}_low ON {TABLE} (low)")
    widen = (f"INSERT INTO {TABLE} (block, low, high) VALUES (new.seq >> {SHIFT}, new.ts, new.ts) "
             "ON CONFLICT (block) DO UPDATE SET low = CASE WHEN low IS NULL OR excluded.low IS NULL THEN NULL "
             "ELSE min(low, excluded.low) END, high = coalesce(max(high, excluded.high), high, excluded.high);")
    conn.execute(f"CREATE TRIGGER IF NOT EXISTS {TABLE}_on_insert AFTER INSERT ON requests BEGIN {widen} END")
    conn.execute(f"CREATE TRIGGER IF NOT EXISTS {TABLE}_on_update AFTER UPDATE OF ts ON requests BEGIN {widen} END")
    conn.execute(f"INSERT OR REPLACE INTO {TABLE} (block, low, high) SELECT seq >> {SHIFT}, "
                 f"CASE WHEN count(ts) = count(*) THEN min(ts) END, max(ts) FROM requests GROUP BY seq >> {SHIFT}")


def present(conn: sqlite3.Connection) -> bool:
    """Whether the log keeps its blocks' times (migration 24 on; a log read before it migrates has the ts index)."""
    return conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (TABLE,)).fetchone() is not None


def _order(value: Any) -> tuple[int, Any]:
    """A value as SQLite orders values of mixed types: NULL, then numbers, text, blobs (an edited row's start may be
    any of them; the proxy writes a number)."""
    if value is None:
        return (0, 0)
    if isinstance(value, (int, float)):
        return (1, value)
    return (2, value) if isinstance(value, str) else (3, value)


def _runs(blocks: Iterable[int]) -> list[tuple[int, int]]:
    """The seq ranges of these blocks, consecutive blocks joined."""
    runs: list[list[int]] = []
    for block in sorted(set(blocks)):
        if runs and runs[-1][1] == block - 1:
            runs[-1][1] = block
        else:
            runs.append([block, block])
    return [(low << SHIFT, ((high + 1) << SHIFT) - 1) for low, high in runs]


def _term(runs: list[tuple[int, int]]) -> tuple[str, list[Any]]:
    if not runs:
        return "0", []
    return "(" + " OR ".join("seq BETWEEN ? AND ?" for _ in runs) + ")", [v for run in runs for v in run]


def window(conn: sqlite3.Connection, where: list[str], params: list[Any], limit: int | None, *,
           newest_first: bool = True, since: Any = None, until: Any = None, unstarted: bool = False
           ) -> tuple[list[str], list[Any]]:
    """SQL terms, and their parameters, that keep a query of the rows matching `where` ordered by time (newest or
    oldest first, then by seq) to the blocks that can hold its first `limit` of them (every one, with no limit),
    given that none began before `since` or after `until`. The blocks are taken by their latest start (earliest,
    oldest first) until they hold `limit` matching rows (counted through the filters' indexes, which hold each row's
    seq, a batch of blocks at a time); the limit-th of those begins at T, and every row the query
    gives begins at T or later (or earlier), so in a block whose latest start is T or later: those are taken too.
    `unstarted`: `where` matches only rows of no start (NULL), which are in the blocks whose `low` is NULL."""
    bounds = ["+block BETWEEN ? AND ?"]  # no seq is past 64 bits: a block there (edited in) holds no row (+: by high)
    values: list[Any] = [SEQS[0] >> SHIFT, SEQS[1] >> SHIFT]
    if unstarted:
        bounds.append("low IS NULL")
    if since is not None:
        bounds.append("high >= ?")
        values.append(since)
    if until is not None:
        bounds.append("(low <= ? OR low IS NULL)")
        values.append(until)
    if limit is not None and limit <= 0:
        return ["0"], []
    edge = "high" if newest_first else "low"
    blocks = conn.execute(f"SELECT block, {edge} FROM {TABLE} WHERE {' AND '.join(bounds)}"
                          + f" ORDER BY {edge} {'DESC' if newest_first else 'ASC'}", values)
    matching = " AND ".join(where) or "1"
    order = "DESC" if newest_first else "ASC"
    taken: list[int] = []
    counted, threshold = 0, None
    pending, batch = [], 1
    for block, at in blocks:
        if threshold is not None and (_order(at) < threshold if newest_first else _order(at) > threshold):
            break
        taken.append(block)
        if limit is None or threshold is not None:
            continue
        pending.append(block)
        if len(pending) < batch:
            continue
        counted += _count(conn, _runs(pending), matching, params)
        pending, batch = [], min(2 * batch, MOST_BATCH)
        if counted >= limit:
            # Joined as the listing's are (a range per run could pass SQLite's depth of expressions): the limit-th
            # row of more blocks is no further down the order, so it still bounds the blocks the first `limit` are in.
            term, ranges = _within(_joined(_runs(taken), MOST_RUNS), matching, params)
            found = conn.execute(f"SELECT ts FROM requests WHERE {term} AND {matching} ORDER BY ts {order}, "
                                 f"seq {order} LIMIT 1 OFFSET ?", [*ranges, *params, limit - 1]).fetchone()
            threshold = _order(found[0]) if found is not None else None
    blocks.close()
    runs = _joined(_runs(taken), MOST_RUNS)
    term, ranges = _term(runs) if limit is None else _within(runs, matching, params)
    return [term], ranges


def _within(runs: list[tuple[int, int]], matching: str, params: list[Any]) -> tuple[str, list[Any]]:
    """The term that keeps a query of the rows matching `matching` to these seq ranges, and its parameters. Past one
    range: the seqs of its rows found range by range (a table of the ranges joined to the rows), which SQLite reads
    within each range of a filter's index; an OR of the ranges it reads so only through a full index, and a partial
    one (decisions, undo classes) it read whole instead, every entry of the filter's value in the log (an agent can
    write a million denied requests). The rows the term lists are those the query sorts anyway: a `limit`'s."""
    if len(runs) <= 1:
        return _term(runs)
    table = ", ".join("(?, ?)" for _ in runs)
    return (f"seq IN (SELECT q.seq FROM (VALUES {table}) AS r JOIN requests AS q ON q.seq BETWEEN r.column1 AND "
            f"r.column2 WHERE {matching})", [*(v for run in runs for v in run), *params])


def _count(conn: sqlite3.Connection, runs: list[tuple[int, int]], matching: str, params: list[Any]) -> int:
    """How many rows of these seq ranges match, a query for each range (one statement, compiled once): SQLite reads a
    partial index (decisions, undo classes) within a range only when the range is the query's own. Counted in one
    query of all the ranges, a batch read every entry of the filter's value in the log, the whole of a million
    denied requests an agent wrote for each batch of blocks a prune left apart."""
    sql = f"SELECT count(*) FROM requests WHERE seq BETWEEN ? AND ? AND {matching}"
    return sum(int(conn.execute(sql, [*run, *params]).fetchone()[0]) for run in runs)


def _joined(runs: list[tuple[int, int]], most: int) -> list[tuple[int, int]]:
    """These seq ranges, in order, the closest joined until at most `most` are left: what they cover and more, read
    through the filters' indexes where a filter has one, never more than the whole table."""
    if len(runs) <= most:
        return runs
    gaps = sorted(range(len(runs) - 1), key=lambda i: runs[i + 1][0] - runs[i][1])
    kept = sorted(gaps[len(runs) - most:])  # the widest gaps stay, each between two runs
    joined, start = [], 0
    for at in kept:
        joined.append((runs[start][0], runs[at][1]))
        start = at + 1
    return [*joined, (runs[start][0], runs[-1][1])]


def forget_empty(conn: sqlite3.Connection, first: int, last: int) -> None:
    """Drop the blocks of seqs `first` to `last` that no row is left in (a prune removed them)."""
    if present(conn):
        conn.execute(f"DELETE FROM {TABLE} WHERE block BETWEEN ? AND ? AND NOT EXISTS (SELECT 1 FROM requests WHERE "
                     f"seq BETWEEN block << {SHIFT} AND ((block + 1) << {SHIFT}) - 1)", (first >> SHIFT, last >> SHIFT))


def out_of_place(conn: sqlite3.Connection) -> tuple[Any, int] | None:
    """The first row whose start is not within its block's times (the id and seq as stored), or None: the blocks
    are outside the chain, and one edited to leave a row out would hide it from `log` and the console. Compared as
    `window` compares them, by SQLite's order of types alone (`+r.ts`: the column's REAL affinity would read a bound
    edited to the text '0' as the number), and a bound edited to NULL holds no start."""
    found = conn.execute(f"SELECT r.id, r.seq FROM requests r LEFT JOIN {TABLE} t ON t.block = r.seq >> {SHIFT} "
                         "WHERE t.block IS NULL OR (CASE WHEN r.ts IS NULL THEN t.low IS NULL ELSE (t.low IS NULL OR "
                         "+r.ts >= t.low) AND +r.ts <= t.high END) IS NOT 1 ORDER BY r.seq LIMIT 1").fetchone()
    return None if found is None else (found[0], int(found[1]))
