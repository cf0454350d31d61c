"""The row-capture planner (db.capture) over many statement shapes: what it rewrites and how, and what it classes
irreversible with the reason; each rewrite read back by PostgreSQL's parser."""

from __future__ import annotations

import pytest
from pglast import parse_sql

from goex_proxy.db.capture import EXACT_PRINT, Capture, Table, Target, plan, target

ORDERS = Table("public", "orders", ("id",), oid=16400)
M = "goex_0123456789ab"
#: The image only when the agent's session finds the table the catalog was read of and prints values exactly; else
#: the statement fails (nothing changed), so that the exact it was planned as holds.
PRINTED = ("pg_catalog.current_setting('extra_float_digits') || '|' || pg_catalog.current_setting('IntervalStyle') "
           "|| '|' || pg_catalog.current_setting('DateStyle')")
SAME = (f"CASE WHEN 'orders'::pg_catalog.regclass::pg_catalog.oid <> 16400 THEN pg_catalog.to_jsonb(("
        f"'goex-proxy capture table {M}: ' || pg_catalog.current_setting('search_path'))::int) WHEN NOT ({EXACT_PRINT}) "
        f"THEN pg_catalog.to_jsonb(('goex-proxy capture print {M}: ' || {PRINTED})::int) ELSE")
#: What a row past the bound makes: a cast that fails with the marker in its message.
FAIL = f"pg_catalog.to_jsonb(('goex-proxy capture bound {M}: ' || pg_catalog.current_setting('goex.{M}', true))::int)"


def planned(sql: str, table: Table = ORDERS) -> Capture:
    found = plan(sql, table, M)
    assert isinstance(found, Capture), found
    parse_sql(found.sql)  # the rewrite is SQL the server's parser takes
    return found


@pytest.mark.parametrize(("sql", "expected"), [
    ("DELETE FROM orders WHERE id = 1", Target(None, "orders")),
    ('update Shop."Orders" set qty = 1', Target("shop", "Orders")),
    ("INSERT INTO public.orders (item) VALUES ('a')", Target("public", "orders")),
])
def test_the_target_is_the_table_as_written(sql: str, expected: Target) -> None:
    assert target(sql) == expected


def test_delete_and_insert_hand_back_their_rows_in_one_added_column() -> None:
    delete = planned("DELETE FROM orders WHERE qty > $1")
    assert delete.sql.startswith("DELETE FROM orders WHERE qty > $1 RETURNING CASE WHEN ")
    assert delete.sql.endswith(f' > 10000 THEN {FAIL} ELSE {SAME} pg_catalog.to_jsonb("orders".*) END END AS {M}')
    assert (delete.kind, delete.returning) == ("delete", False)
    insert = planned("INSERT INTO orders AS o (item, qty) VALUES ($1, 2) ON CONFLICT DO NOTHING RETURNING o.id")
    assert " RETURNING o.id, CASE WHEN " in insert.sql
    assert insert.sql.endswith(f'{SAME} pg_catalog.to_jsonb("o".*) END END AS {M}')
    assert (insert.kind, insert.returning) == ("insert", True)
    assert planned("DELETE FROM orders USING customers c WHERE orders.id = c.id").kind == "delete"


def test_update_locks_and_reads_the_rows_before_and_joins_them_by_key() -> None:
    update = planned("UPDATE orders SET qty = qty + $1 WHERE item = $2 OR qty < 0 RETURNING *")
    sql = update.sql
    assert sql.startswith(f"WITH {M}_o AS (SELECT orders.id AS {M}_k0, pg_catalog.to_jsonb(orders.*)")
    assert "FOR UPDATE OF orders" in sql
    assert f"WHERE (item = $2 OR qty < 0) AND orders.id = {M}_o.{M}_k0" in sql
    assert "RETURNING orders.*, CASE WHEN " in sql  # `*`: the table's only
    assert (f'{SAME} pg_catalog.jsonb_build_array("{M}_o"."{M}_j", '
             'pg_catalog.to_jsonb("orders".*)) END') in sql
    with_cte = planned("WITH a AS (SELECT 1 AS x) UPDATE orders o SET qty = 2 WHERE id IN (SELECT x FROM a)").sql
    assert with_cte.startswith(f"WITH a AS (SELECT 1 AS x), {M}_o AS (")
    quoted = planned('UPDATE "Shop"."Orders" AS "O" SET qty = 1', Table("Shop", "Orders", ("Id",))).sql
    assert 'FROM "Shop"."Orders" AS "O" FOR UPDATE OF "O"' in quoted and '"O"."Id" AS' in quoted
    joined = planned("UPDATE orders o SET qty = v.q FROM (VALUES (1, 10)) AS v(id, q) WHERE o.id = v.id "
                     "RETURNING o.id, v.q").sql
    assert "FROM orders AS o, ((VALUES (1, 10))) AS v (id, q) WHERE o.id = v.id FOR UPDATE OF o)" in joined
    assert f"FROM ((VALUES (1, 10))) AS v (id, q), {M}_o WHERE o.id = v.id AND o.id = {M}_o.{M}_k0" in joined
    two_keys = planned("UPDATE lines SET qty = 1", Table("public", "lines", ("order_id", "n"))).sql
    assert f"lines.order_id = {M}_o.{M}_k0 AND lines.n = {M}_o.{M}_k1" in two_keys


@pytest.mark.parametrize(("sql", "why"), [
    ("UPDATE orders SET id = id + 1", "sets a primary-key column (id)"),
    ("UPDATE orders SET qty = 1 FROM customers c WHERE c.id = orders.id RETURNING *", "FROM ... RETURNING *"),
    ("UPDATE orders SET qty = 1 WHERE CURRENT OF c", "WHERE CURRENT OF"),
    ("DELETE FROM orders WHERE CURRENT OF c", "WHERE CURRENT OF"),
    ("INSERT INTO orders VALUES (1) ON CONFLICT (id) DO UPDATE SET qty = 1", "ON CONFLICT DO UPDATE"),
    ("WITH d AS (DELETE FROM orders RETURNING *) INSERT INTO orders SELECT * FROM d", "data-modifying WITH"),
    ("DELETE FROM orders; DELETE FROM orders", "several statements"),
    ("SELECT 1", "SELECT: no rows to capture"),
    ("TRUNCATE orders", "TRUNCATE: no rows to capture"),
    ("DELETE FROM other.public.orders", "another database"),
])
def test_what_cannot_be_captured_exactly_says_why(sql: str, why: str) -> None:
    found = plan(sql, ORDERS, M)
    assert isinstance(found, str) and why in found


def test_the_tables_problem_or_missing_key_makes_it_irreversible() -> None:
    assert "no primary key" in str(plan("DELETE FROM loose", Table("public", "loose", ()), M))
    triggers = Table("public", "orders", ("id",), "table orders has triggers")
    assert plan("DELETE FROM orders", triggers, M) == "table orders has triggers"


def test_the_bound_is_counted_per_statement_start_in_a_transaction_local_setting() -> None:
    sql = plan("DELETE FROM orders", ORDERS, M, 25)
    assert isinstance(sql, Capture)
    assert f"pg_catalog.set_config('goex.{M}', pg_catalog.statement_timestamp()::text || '|'" in sql.sql
    assert f", true), '|', 2)::int > 25 THEN {FAIL}" in sql.sql
