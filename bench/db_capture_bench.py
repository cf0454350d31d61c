"""What row capture for SQL undo costs: (1) the planner (db.capture.plan, pure Python) per statement; (2) the server's
cost of the rewritten statement against the statement as written, straight to PostgreSQL (psycopg, extended protocol,
keep-alive); (3) a write through `goex-proxy run`'s gateway on a table whose rows are captured against the same write
on a table without a primary key (irreversible, sent as written), side by side: the whole cost, images in the audit
log included.

A fresh PostgreSQL (Debian's, as the tests start it: tests/pg.py) with two 1,000-row tables. Per round each side runs
N statements on one connection after a warm-up, interleaved; the tables show medians over the rounds and ratios.
Kinds: `update 1` (one row by key), `update 10` (ten rows by range), `delete+insert 1` (a row deleted and put back).

    python bench/db_capture_bench.py [--rounds 5] [--statements 500]
    python bench/run.py --only dbcapture
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from common import Processes, fmt, median, table
from db_common import shop_gateway

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.pg import server_bin  # noqa: E402

POLICY = """\
version: 1
name: bench
rules:
  - name: writes
    allow: {database: shop, statements: [insert, update, delete], tables: [orders, loose]}
"""
#: Each kind: the statements of one step (run in turn), with the row number as their one parameter.
KINDS: dict[str, tuple[str, ...]] = {
    "update 1": ("UPDATE {t} SET qty = qty + 1 WHERE id = %s",),
    "update 10": ("UPDATE {t} SET qty = qty + 1 WHERE id >= %s AND id < %s + 10",),
    "delete+insert 1": ("DELETE FROM {t} WHERE id = %s", "INSERT INTO {t} (id, qty) VALUES (%s, 1)"),
}


def _params(sql: str, n: int) -> tuple[int, ...]:
    return (n,) * sql.count("%s")


def rate(url: str, statements: tuple[str, ...], count: int) -> float:
    """Steps per second on one keep-alive connection, after 50 to warm up."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        for i in range(50):
            for sql in statements:
                conn.execute(sql, _params(sql, 1 + i % 990))
        started = time.perf_counter()
        for i in range(count):
            for sql in statements:
                conn.execute(sql, _params(sql, 1 + i % 990))
        return count / (time.perf_counter() - started)


def planner_us(calls: int = 5000) -> float:
    """Microseconds per capture.plan of a typical UPDATE (the catalog answer given)."""
    from goex_proxy.db.capture import Table, plan

    table_ = Table("public", "orders", ("id",))
    sql = "UPDATE orders SET qty = qty + $1 WHERE id = $2 AND qty < $3"
    started = time.perf_counter()
    for _ in range(calls):
        plan(sql, table_, "goex_0123456789ab")
    return (time.perf_counter() - started) / calls * 1e6


def captured_sql(sql: str, oid: int) -> str:
    """The statement as the gateway rewrites it (psycopg's %s as $n), for the table of this oid (another's fails)."""
    from goex_proxy.db.capture import Capture, Table, plan

    numbered, n = sql, 0
    while "%s" in numbered:
        n += 1
        numbered = numbered.replace("%s", f"${n}", 1)
    found = plan(numbered, Table("public", "orders", ("id",), oid=oid), "goex_0123456789ab")
    assert isinstance(found, Capture), found
    out = found.sql.replace("%", "%%")
    for i in range(n, 0, -1):
        out = out.replace(f"${i}", "%s")
    return out


def run(procs: Processes, rounds: int = 5, statements: int = 500, say: Any = print) -> tuple[str, dict[str, Any]]:
    if server_bin() is None:
        raise SystemExit("bench: PostgreSQL is not installed (tests/install-tools)")
    results: dict[str, Any] = {"planner_us": planner_us()}
    tables = ["CREATE TABLE orders (id int PRIMARY KEY, qty int NOT NULL)",
              "CREATE TABLE loose (id int NOT NULL, qty int NOT NULL)",  # no key: not captured
              "CREATE INDEX ON loose (id)"]
    tables += [f"INSERT INTO {t} SELECT g, g FROM generate_series(1, 1000) g" for t in ("orders", "loose")]
    with shop_gateway(procs, POLICY, tables) as shop:
        direct, gateway = shop.direct, shop.gateway
        import psycopg

        with psycopg.connect(direct) as conn:
            row = conn.execute("SELECT 'orders'::regclass::oid").fetchone()
            assert row is not None
            oid = int(row[0])
        server_rows, gateway_rows = [], []
        for kind, steps in KINDS.items():
            say(f"[dbcapture] {kind}...", flush=True)
            plain = tuple(s.format(t="orders") for s in steps)
            rewritten = tuple(captured_sql(s, oid) for s in plain)
            loose = tuple(s.format(t="loose") for s in steps)
            m: dict[str, list[float]] = {"plain": [], "captured": [], "gw_plain": [], "gw_captured": []}
            for _ in range(rounds):
                m["plain"].append(rate(direct, plain, statements))
                m["captured"].append(rate(direct, rewritten, statements))
                m["gw_plain"].append(rate(gateway, loose, statements))
                m["gw_captured"].append(rate(gateway, plain, statements))
            med = {k: median(v) for k, v in m.items()}
            results[kind] = med
            server_rows.append((kind, fmt(med["plain"], 0), fmt(med["captured"], 0),
                                fmt(med["captured"] / med["plain"], 3)))
            gateway_rows.append((kind, fmt(med["gw_plain"], 0), fmt(med["gw_captured"], 0),
                                 fmt(med["gw_captured"] / med["gw_plain"], 3)))
    text = "\n\n".join([
        f"row capture: the planner {results['planner_us']:.0f} us per UPDATE (db.capture.plan)",
        table(("steps", "as written /s", "rewritten /s", "rewritten / as written"), server_rows,
              title=f"row capture in the server (straight to PostgreSQL): medians of {rounds} rounds, {statements} "
                    "steps each"),
        table(("steps", "not captured /s", "captured /s", "captured / not"), gateway_rows,
              title=f"row capture through the gateway (a table without a key vs one with): medians of {rounds} "
                    f"rounds, {statements} steps each"),
    ])
    return text, results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--statements", type=int, default=500)
    args = parser.parse_args()
    procs = Processes()
    try:
        print(run(procs, args.rounds, args.statements)[0])
    finally:
        procs.stop_all()


if __name__ == "__main__":
    main()
