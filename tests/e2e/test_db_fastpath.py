"""The gateway's fast path end to end (a real PostgreSQL, a real `goex-proxy run`): reads recorded without waiting
for their commit are still every one recorded, in order, with their outcomes; a write still waits for its row (and
so for the reads' before it), and is refused when the log cannot take it; a kept decision never outlives an edit of
the policy; an agent's connections to a database are capped."""

from __future__ import annotations

import json
import sqlite3
import time

import psycopg
import pytest
from psycopg import errors

from tests.e2e.test_db_gateway import POLICY, direct, gateway, postgres, start_gateway  # noqa: F401
from tests.pg import server_bin

pytestmark = [pytest.mark.e2e,
              pytest.mark.skipif(server_bin() is None, reason="PostgreSQL is not installed (tests/install-tools)")]


def settled_rows(proxy, count: int) -> list[dict[str, object]]:
    """The gateway's rows, in the chain's order, once `count` of them have their outcome (reads' rows and outcomes
    are written a few milliseconds after the statement)."""
    deadline = time.monotonic() + 10
    while True:
        rows = [r for r in proxy.rows() if r["scheme"] == "postgresql"]
        if sum(r["outcome_hash"] is not None for r in rows) >= count or time.monotonic() > deadline:
            return rows
        time.sleep(0.05)


def test_reads_are_all_recorded_in_order_with_their_outcomes(gateway) -> None:  # noqa: F811
    proxy, url = gateway
    sent: list[tuple[str, int]] = []
    with psycopg.connect(url, autocommit=True) as conn:
        for i in range(24):  # psycopg prepares a statement run five times: Parse once, then Bind/Execute only
            if i % 8 == 7:
                conn.execute("UPDATE orders SET qty = qty + 1 WHERE id = %s", (i,))
                sent.append(("UPDATE", i))
            else:
                assert conn.execute("SELECT %s::int AS n, item FROM orders WHERE id = 1", (i,)).fetchone() == \
                    (i, "apples")
                sent.append(("SELECT", i))
        with conn.pipeline():  # reads and a write sent together, before one Sync
            conn.execute("SELECT %s::int AS n FROM orders WHERE id = 2", (100,))
            conn.execute("UPDATE orders SET qty = qty + 1 WHERE id = %s", (101,))
            conn.execute("SELECT %s::int AS n FROM orders WHERE id = 2", (102,))
        sent += [("SELECT", 100), ("UPDATE", 101), ("SELECT", 102)]
        with psycopg.ClientCursor(conn) as cur:  # the simple query protocol: the SQL with its values in it
            cur.execute("SELECT %s::int AS n FROM orders WHERE id = 3", (200,))
        sent.append(("SELECT", 200))
    rows = settled_rows(proxy, len(sent))
    bodies = [json.loads(r["req_body"]) for r in rows]
    assert [(r["method"], b["params"][0] if "params" in b else int(b["sql"].split("::")[0].split()[-1].strip("'")))
            for r, b in zip(rows, bodies, strict=True)] == sent
    for row in rows:
        assert row["status"] == 0 and row["error"] is None, row
        tags = json.loads(row["resp_body"])["tags"]
        assert tags == (["SELECT 1"] if row["method"] == "SELECT" else ["UPDATE 0"]), row
    verified = proxy.cli("log", "verify")
    assert verified.returncode == 0, verified.stdout + verified.stderr


def test_a_write_after_reads_is_refused_when_the_log_cannot_take_it(gateway) -> None:  # noqa: F811
    """The audit database locked by another process: a read still runs (its row was queued, not waited for, and is
    lost: what README says a read may lose), a write is refused before it is sent, and the connection ends."""
    proxy, url = gateway
    pg_before = direct(gateway_pg(proxy), "SELECT qty FROM orders ORDER BY id")
    with psycopg.connect(url, autocommit=True) as conn:
        assert conn.execute("SELECT qty FROM orders WHERE id = %s", (1,)).fetchone() == (3,)
        settled_rows(proxy, 1)  # its row written before the lock is taken
        locker = sqlite3.connect(proxy.home / "audit.db", timeout=10, isolation_level=None)
        locker.execute("BEGIN EXCLUSIVE")
        try:
            assert conn.execute("SELECT qty FROM orders WHERE id = %s", (2,)).fetchone() == (1,)
            with pytest.raises(psycopg.Error, match="could not record"):
                conn.execute("UPDATE orders SET qty = %s WHERE id = %s", (99, 2))
        finally:
            locker.execute("ROLLBACK")
            locker.close()
    assert direct(gateway_pg(proxy), "SELECT qty FROM orders ORDER BY id") == pg_before  # the write never ran
    assert "audit write failed" in proxy.log_text()
    with psycopg.connect(url, autocommit=True) as conn:  # the log takes rows again: so does the gateway
        conn.execute("UPDATE orders SET qty = %s WHERE id = %s", (5, 2))
    assert direct(gateway_pg(proxy), "SELECT qty FROM orders WHERE id = 2") == [(5,)]
    rows = settled_rows(proxy, 2)
    assert [r["method"] for r in rows if r["method"] == "UPDATE"] == ["UPDATE"]  # the refused one left no row
    verified = proxy.cli("log", "verify")
    assert verified.returncode == 0, verified.stdout + verified.stderr


def gateway_pg(proxy):
    from tests.e2e.test_db_gateway import gateway_pg as pg_of

    return pg_of((proxy, ""))


def test_a_kept_decision_never_outlives_an_edited_policy(gateway) -> None:  # noqa: F811
    """The same text, allowed many times (its decision kept), prepared and not, is refused by the next statement
    after the edit."""
    proxy, url = gateway
    text = "SELECT count(*) FROM orders WHERE qty > %s"
    with psycopg.connect(url, autocommit=True) as conn, psycopg.connect(url, autocommit=True) as plain:
        for _ in range(8):
            assert conn.execute(text, (0,), prepare=True).fetchone() == (3,)
            assert conn.execute(text, (0,), prepare=False).fetchone() == (3,)
            with psycopg.ClientCursor(plain) as cur:
                cur.execute(text, (0,))
                assert cur.fetchone() == (3,)
        proxy.write_policy("shop", POLICY.replace("tables: [orders, customers]", "tables: [customers]")
                           .replace("tables: [orders], functions", "tables: [customers], functions"))
        for prepare in (True, False):
            with pytest.raises(errors.InsufficientPrivilege, match="no rule allows SELECT on orders"):
                conn.execute(text, (0,), prepare=prepare)
        with psycopg.ClientCursor(plain) as cur, pytest.raises(errors.InsufficientPrivilege):
            cur.execute(text, (0,))


def test_an_agent_has_at_most_max_connections_to_a_database(make_proxy, postgres) -> None:  # noqa: F811
    _, url = start_gateway(make_proxy, postgres, "    max_connections: 2\n")
    first, second = psycopg.connect(url, autocommit=True), psycopg.connect(url, autocommit=True)
    try:
        with pytest.raises(psycopg.OperationalError, match="has 2 connections open to database 'shop' already"):
            psycopg.connect(url, autocommit=True)
        assert second.execute("SELECT count(*) FROM orders").fetchone() == (3,)  # the others go on
        first.close()
        deadline = time.monotonic() + 5
        while True:  # the gateway sees the close a moment later
            try:
                third = psycopg.connect(url, autocommit=True)
                break
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        assert third.execute("SELECT count(*) FROM orders").fetchone() == (3,)
        third.close()
    finally:
        first.close()
        second.close()
