"""A hostile agent's statements against the classifier and the SQL rules: each one ran something its policy does not
allow (or would, on a database with the objects it names) until the gateway read it for what it does."""

from __future__ import annotations

import pytest

from goex_proxy.policy.load import check_policy_text
from goex_proxy.policy.sql import TRANSACTION_RULE, decide
from goex_proxy.policy.sqlparse import parse

POLICY = """\
version: 1
name: shop
agents: [bot]
rules:
  - name: read
    allow: {database: shop, statements: [select], tables: [orders, customers]}
  - name: add orders
    allow: {database: shop, statements: [insert], tables: [orders], columns: [item, qty]}
  - name: change quantities
    allow: {database: shop, statements: [update], tables: [orders], columns: [qty, id]}
  - name: settings
    allow: {database: shop, statements: [set]}
  - name: housekeeping
    allow: {database: shop, statements: [other]}
  - name: no unbounded writes
    deny: {database: shop, statements: [update, delete], when: "!statement.where", reason: need a WHERE}
"""


def verdict(sql: str, text: str = POLICY):
    policy, problems = check_policy_text(text, "shop.yaml")
    assert policy is not None, problems
    decision, _ = decide((policy,), "shop", "bot", parse(sql), now=0.0)
    return decision


def test_the_policy_allows_what_it_means_to() -> None:
    """The attacks below are refused for what they do, not because nothing is allowed."""
    assert verdict("SELECT item FROM orders WHERE id = 1").effect == "allow"
    assert verdict("INSERT INTO orders (item, qty) VALUES ('x', 1)").effect == "allow"
    assert verdict("UPDATE orders SET qty = 2 WHERE id = 1").effect == "allow"
    assert verdict("INSERT INTO orders (item, qty) VALUES ('x', 1) ON CONFLICT DO NOTHING").effect == "allow"
    assert verdict("SET statement_timeout = 1000").effect == "allow"
    assert verdict("VACUUM orders").effect == "allow"
    assert verdict("COMMIT").rule == TRANSACTION_RULE


@pytest.mark.parametrize("sql", [
    # A function called by attribute notation, `(x).f` for f(x), is no FuncCall in the tree: nextval writes a
    # sequence, pg_sleep holds the connection, pg_terminate_backend ends other sessions of the same role.
    "SELECT ('orders_id_seq'::regclass).nextval",
    "SELECT (3600::float8).pg_sleep",
    "SELECT (pid).pg_terminate_backend FROM (SELECT 42 AS pid) AS p",
    # MERGE was read as an UPDATE whatever its WHEN clauses do: here it deletes, under a rule for updates.
    "MERGE INTO orders o USING (SELECT 1 AS id) s ON o.id = s.id WHEN MATCHED THEN DELETE",
    # Its ON is no WHERE: every row of orders matches ON true.
    "MERGE INTO orders o USING (SELECT 1 AS x) s ON true WHEN MATCHED THEN UPDATE SET qty = 0",
    # INSERT ... ON CONFLICT DO UPDATE updates rows that are there, under a rule for inserts only, and writes a
    # column (item) the update rule does not list.
    "INSERT INTO orders (item, qty) VALUES ('x', 1) ON CONFLICT (id) DO UPDATE SET qty = 0",
    "INSERT INTO orders (item, qty) VALUES ('x', 1) ON CONFLICT (id) DO UPDATE SET item = 'y' WHERE orders.id = 1",
    # SELECT ... FOR UPDATE locks rows (held as long as the transaction is), which PostgreSQL grants with UPDATE.
    "SELECT * FROM customers FOR UPDATE",
    # A DO block is code, as a function is: a rule for `other` (VACUUM, LISTEN) does not let it run.
    "DO $$ BEGIN DELETE FROM payroll; END $$",
    # The client encoding and string syntax the gateway reads statements in cannot be changed under it.
    "SET client_encoding = 'SJIS'",
    "SET NAMES 'GBK'",
    "SET standard_conforming_strings = off",
    "RESET standard_conforming_strings",
])
def test_refused(sql: str) -> None:
    decision = verdict(sql)
    assert decision.effect == "deny", (sql, decision)


def test_why_they_are_refused() -> None:
    assert "calls nextval" in verdict("SELECT ('orders_id_seq'::regclass).nextval").reason
    assert "no rule allows DELETE/UPDATE on orders" in verdict(
        "MERGE INTO orders o USING (SELECT 1 AS id) s ON o.id = s.id WHEN MATCHED THEN DELETE",
        POLICY.replace("when: \"!statement.where\"", "when: 'false'")).reason
    assert verdict("MERGE INTO orders o USING (SELECT 1 AS x) s ON true WHEN MATCHED THEN UPDATE SET qty = 0"
                   ).reason == "need a WHERE"
    assert "calls DO" in verdict("DO $$ BEGIN END $$").reason
    assert "client_encoding is fixed by goex-proxy" in verdict("SET NAMES 'SJIS'").reason


def test_merge_and_upsert_are_every_kind_they_perform() -> None:
    (merge,) = parse("MERGE INTO orders o USING src s ON o.id = s.id WHEN MATCHED THEN UPDATE SET qty = s.qty "
                     "WHEN NOT MATCHED THEN INSERT (item, qty) VALUES (s.item, s.qty)")
    assert merge.kinds == {"update", "insert"}
    assert {"qty", "item"} <= set(merge.columns) and not merge.where
    (upsert,) = parse("INSERT INTO orders (item) VALUES ('x') ON CONFLICT (id) DO UPDATE SET status = 'new'")
    assert upsert.kinds == {"insert", "update"} and "status" in upsert.columns


@pytest.mark.parametrize("sql", ["COMMIT PREPARED 'theirs'", "ROLLBACK PREPARED 'theirs'", "PREPARE TRANSACTION 'kept'"])
def test_two_phase_commit_is_not_transaction_control(sql: str) -> None:
    """Transaction control needs no rule because it changes nothing by itself; two-phase commit does: it commits or
    rolls back another session's prepared transaction, or leaves one holding its locks after the session ends."""
    (statement,) = parse(sql)
    assert statement.kinds == {"other"}
    decision = verdict(sql, POLICY.replace("statements: [other]", "statements: [ddl]"))
    assert decision.effect == "deny" and decision.rule != TRANSACTION_RULE


def test_a_tree_too_deep_to_build_is_refused_not_a_crash() -> None:
    """`SELECT 1+1+...+1` of 200,000 terms (400 kB) made pglast overflow the C stack building its nodes: a
    segmentation fault of the gateway's process, which is `run`'s proxy too. Run apart, so a crash fails the test."""
    import subprocess
    import sys

    probe = ("from goex_proxy.policy.sqlparse import SqlError, parse\n"
             "try:\n    parse('SELECT ' + '+'.join(['1'] * 200000))\nexcept SqlError as exc:\n    print(exc)\n")
    ran = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert ran.returncode == 0, ran.stderr[-2000:]
    assert "does not parse" in ran.stdout or "nests" in ran.stdout


def test_long_statements_are_measured_and_not_kept() -> None:
    from goex_proxy.policy import sqlparse

    nested = "SELECT " + "+".join(["1"] * 3000) + " -- " + "x" * sqlparse.DEPTH_CHECKED_CHARS
    with pytest.raises(sqlparse.SqlError, match="nests"):
        parse(nested)
    rows = ",".join(f"('item {i} \"{{[]]}}', {i})" for i in range(2000))  # brackets in strings are no depth
    before = sqlparse._cached.cache_info().currsize
    (insert,) = parse(f"INSERT INTO orders (item, qty) VALUES {rows}")
    assert insert.kinds == {"insert"}
    assert sqlparse._cached.cache_info().currsize == before  # a long text is not held in the cache


@pytest.mark.parametrize(("sql", "names"), [
    ("PREPARE s AS UPDATE orders SET qty = 0 WHERE id = 1", ("statement:s",)),
    ("DEALLOCATE s", ("statement:s",)),
    ("DEALLOCATE ALL", ("statement:*",)),
    ("DISCARD ALL", ("statement:*", "portal:*")),
    ("DECLARE c CURSOR FOR SELECT * FROM orders", ("portal:c",)),
    ("CLOSE ALL", ("portal:*",)),
    ("SELECT 1", ()),
])
def test_sql_that_makes_or_drops_protocol_names_says_which(sql: str, names: tuple[str, ...]) -> None:
    """The gateway forgets these names when the SQL runs: the server's statement or portal is no longer the one
    the gateway decided, so a Bind or Execute naming it is refused."""
    (statement,) = parse(sql)
    assert statement.names == names


def test_load_is_code_and_security_label_is_ddl() -> None:
    assert "calls LOAD" in verdict("LOAD 'auto_explain'").reason  # a rule for `other` does not load libraries
    (label,) = parse("SECURITY LABEL ON TABLE orders IS 'public'")
    assert label.kinds == {"ddl"}


SCRATCH = """\
version: 1
name: shop
agents: [bot]
rules:
  - name: scratch tables
    allow: {database: shop, statements: [ddl, delete], tables: [scratch]}
  - name: anything else
    allow: {database: other, statements: [ddl]}
  - name: never payroll
    deny: {database: "*", tables: [payroll], reason: payroll is private}
"""


@pytest.mark.parametrize("sql", [
    # A statement that names no table was inside every `tables:` list: a rule for DDL on scratch dropped a schema,
    # every object of the role, or granted every table.
    "DROP SCHEMA public CASCADE",
    "DROP OWNED BY shopapp",
    "GRANT SELECT ON ALL TABLES IN SCHEMA public TO PUBLIC",
    "COMMENT ON TABLE payroll IS 'mine now'",
    "CREATE FUNCTION f() RETURNS int LANGUAGE sql AS 'SELECT salary FROM payroll'",
    # CASCADE reaches whatever depends on the table named: views, and tables whose foreign keys point at it.
    "DROP TABLE scratch CASCADE",
    "TRUNCATE scratch CASCADE",
])
def test_statements_reaching_beyond_their_tables_need_a_rule_without_tables(sql: str) -> None:
    decision = verdict(sql, SCRATCH)
    assert decision.effect == "deny", decision
    assert decision.rule == "shop/never payroll" or "acts beyond the tables it names" in decision.reason
    # A rule without `tables` can still allow it, where no deny names tables.
    policy, _ = check_policy_text(SCRATCH.split("  - name: never payroll")[0], "shop.yaml")
    assert policy is not None
    if not sql.startswith("TRUNCATE"):
        assert decide((policy,), "other", "bot", parse(sql), now=0.0)[0].effect == "allow"


def test_ddl_on_the_tables_named_is_still_allowed() -> None:
    assert verdict("DROP TABLE scratch", SCRATCH).effect == "allow"
    assert verdict("TRUNCATE scratch", SCRATCH).effect == "allow"
    assert verdict("CREATE INDEX ON scratch (a)", SCRATCH).effect == "allow"
