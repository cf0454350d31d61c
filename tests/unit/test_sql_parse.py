"""SQL read by PostgreSQL's own parser: what each statement does, on what, and what makes it unsafe to see through."""

from __future__ import annotations

import pytest

from goex_proxy.policy.sqlparse import SqlError, parse


def one(sql: str):
    (statement,) = parse(sql)
    return statement


@pytest.mark.parametrize(("sql", "kind", "kinds"), [
    ("SELECT a FROM orders", "select", {"select"}),
    ("INSERT INTO orders (item) VALUES ('x')", "insert", {"insert"}),
    ("UPDATE orders SET qty = 1 WHERE id = 2", "update", {"update"}),
    ("DELETE FROM orders WHERE id = 2", "delete", {"delete"}),
    ("TRUNCATE orders", "delete", {"delete"}),                         # every row, no WHERE
    ("CREATE TABLE t (a int)", "ddl", {"ddl"}),
    ("DROP TABLE orders", "ddl", {"ddl"}),
    ("ALTER TABLE orders ADD COLUMN c int", "ddl", {"ddl"}),
    ("GRANT SELECT ON orders TO public", "ddl", {"ddl"}),
    ("CREATE VIEW v AS SELECT 1", "ddl", {"ddl"}),
    ("SELECT * INTO copy_of FROM orders", "ddl", {"ddl"}),             # makes a table
    ("COPY orders TO STDOUT", "copy", {"copy"}),
    ("COPY orders FROM STDIN", "copy", {"copy", "insert"}),              # writes rows
    ("BEGIN", "transaction", {"transaction"}),
    ("ROLLBACK TO SAVEPOINT s", "transaction", {"transaction"}),
    ("SET search_path = x", "set", {"set"}),
    ("SET ROLE admin", "set", {"set"}),
    ("SHOW search_path", "select", {"select"}),                       # reads a setting
    ("DO $$ BEGIN END $$", "other", {"other"}),
    ("VACUUM orders", "other", {"other"}),
    # A SELECT whose CTE deletes is a delete too: a rule allowing only selects must not allow it.
    ("WITH gone AS (DELETE FROM orders RETURNING *) SELECT * FROM gone", "select", {"select", "delete"}),
    # EXPLAIN ANALYZE runs what it explains.
    ("EXPLAIN ANALYZE DELETE FROM orders", "delete", {"delete"}),
    ("PREPARE p AS UPDATE orders SET qty = 0", "update", {"update"}),
])
def test_kinds(sql: str, kind: str, kinds: set[str]) -> None:
    statement = one(sql)
    assert (statement.kind, set(statement.kinds)) == (kind, kinds)


def test_where_is_required_of_every_update_and_delete_in_the_tree() -> None:
    assert one("DELETE FROM orders WHERE id = 1").where
    assert not one("DELETE FROM orders").where
    assert not one("UPDATE orders SET qty = 0").where
    assert not one("WITH d AS (DELETE FROM orders RETURNING id) SELECT * FROM d").where
    assert not one("TRUNCATE orders").where
    assert one("SELECT 1").where


def test_tables_columns_and_functions() -> None:
    statement = one("SELECT o.item, count(*), lower(c.name) FROM public.orders o JOIN customers c ON c.id = o.cid "
                    "WHERE o.qty > $1")
    assert statement.tables == ("customers", "public.orders")
    assert set(statement.columns) >= {"item", "name", "id", "cid", "qty"}
    assert statement.functions == ("count", "lower")
    # CTE names are not tables; a write's target columns are columns it touches.
    assert one("WITH x AS (SELECT 1) SELECT * FROM x").tables == ()
    assert one("UPDATE orders SET qty = 1, item = 'a' WHERE id = 2").columns == ("qty", "item", "id")
    assert one("INSERT INTO orders (item, qty) VALUES ('a', 1)").columns == ("item", "qty")


def test_functions_the_policy_cannot_see_through() -> None:
    assert one("SELECT count(*), pg_catalog.lower('A'), now() FROM orders").unseen_functions() == []
    assert one("SELECT pg_sleep(10)").unseen_functions() == ["pg_sleep"]
    assert one("SELECT mine.lower('a')").unseen_functions() == ["mine.lower"]  # only pg_catalog's is the built-in
    assert one("SELECT dblink('x', 'y')").unseen_functions(frozenset({"dblink"})) == []
    assert one("CALL archive_orders()").unseen_functions() == ["archive_orders"]


def test_several_statements_are_split_with_their_own_text() -> None:
    statements = parse("INSERT INTO orders (item) VALUES ('a;b'); DELETE FROM orders")
    assert [s.text for s in statements] == ["INSERT INTO orders (item) VALUES ('a;b')", "DELETE FROM orders"]
    assert [s.kind for s in statements] == ["insert", "delete"]
    assert parse("") == () and parse("  ;  ") == ()


@pytest.mark.parametrize("sql", ["SELEC 1", "SELECT 'unterminated", "DELETE orders WHERE", "SELECT (1"])
def test_what_does_not_parse_is_an_error_naming_it(sql: str) -> None:
    with pytest.raises(SqlError, match="the statement does not parse: syntax error|unterminated"):
        parse(sql)
