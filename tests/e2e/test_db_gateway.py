"""The PostgreSQL gateway end to end: a real PostgreSQL (SCRAM), a real `goex-proxy run`, psycopg and psql as the
agent, with its own identity; statements decided by SQL rules, refused with PostgreSQL errors, recorded in the log."""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import errors

from tests.conftest import TOKENS, free_port, wait_port
from tests.pg import APP_USER, SUPERUSER, Postgres, running_postgres, server_bin

pytestmark = [pytest.mark.e2e,
              pytest.mark.skipif(server_bin() is None, reason="PostgreSQL is not installed (tests/install-tools)")]

POLICY = """\
version: 1
name: shop
agents: [mailbot, slackbot]
rules:
  - name: read orders
    allow: {database: shop, statements: [select], tables: [orders, customers]}
  - name: change orders
    allow: {database: shop, statements: [insert, update, delete], tables: [orders]}
  - name: slow reads
    allow: {database: shop, statements: [select], tables: [orders], functions: [pg_sleep]}
  - name: export orders
    allow: {database: shop, statements: [copy], tables: [orders]}
  - name: no unbounded writes
    deny:
      database: shop
      statements: [update, delete]
      when: "!statement.where"
      reason: UPDATE and DELETE need a WHERE here
"""
ORDERS = [("apples", 3), ("pears", 1), ("plums", 7)]


@pytest.fixture(scope="session")
def postgres(upstream_ca) -> Iterator[Postgres]:
    """One server for the session, offering TLS with a certificate of the tests' CA for 127.0.0.1: the `shop`
    database, owned by the application user the gateway logs in as."""
    cert = upstream_ca[0].issue_cert("127.0.0.1", "localhost")
    chain = b"".join(blob.bytes() for blob in cert.cert_chain_pems)
    with running_postgres(free_port(), (chain, cert.private_key_pem.bytes())) as pg:
        with psycopg.connect(pg.dsn(), autocommit=True) as conn:
            conn.execute(f"CREATE ROLE {APP_USER[0]} LOGIN PASSWORD '{APP_USER[1]}'")
            conn.execute(f"CREATE DATABASE shop OWNER {APP_USER[0]}")
        with psycopg.connect(pg.dsn(APP_USER, "shop"), autocommit=True) as conn:
            conn.execute("CREATE TABLE orders (id serial PRIMARY KEY, item text NOT NULL, qty int NOT NULL)")
            conn.execute("CREATE TABLE customers (id serial PRIMARY KEY, name text)")
            conn.execute("CREATE TABLE payroll (id serial PRIMARY KEY, salary int)")
        yield pg


def direct(pg: Postgres, sql: str) -> list[tuple[object, ...]]:
    """What the database holds, read past the gateway."""
    with psycopg.connect(pg.dsn(APP_USER, "shop"), autocommit=True) as conn:
        return conn.execute(sql).fetchall()


def start_gateway(make_proxy, postgres: Postgres, more: str = "", workers: int = 1,
                  policy: str = POLICY) -> tuple[object, str]:
    """A `goex-proxy run` with the `shop` database (its password in the vault; `more`: further keys of its entry),
    the orders table reset; the proxy and mailbot's URL."""
    with psycopg.connect(postgres.dsn(APP_USER, "shop"), autocommit=True) as conn:
        conn.execute("TRUNCATE orders RESTART IDENTITY")
        with conn.cursor() as cur:
            cur.executemany("INSERT INTO orders (item, qty) VALUES (%s, %s)", ORDERS)
    port = free_port()
    extra = (f"databases:\n  listen: 127.0.0.1:{port}\n  shop:\n    host: 127.0.0.1\n    port: {postgres.port}\n"
             f"    dbname: shop\n    user: {APP_USER[0]}\n    password: shop-db\n    agents: [mailbot]\n{more}")
    proxy = make_proxy({"shop": policy}, start=False, extra_config=extra)
    stored = proxy.run_cli("secrets", "set", "--config", str(proxy.config), "shop-db", input=APP_USER[1].encode())
    assert stored.returncode == 0, stored.stderr
    proxy.start(workers)
    wait_port(port, proc=proxy.proc)
    return proxy, f"postgresql://mailbot:{TOKENS['mailbot']}@127.0.0.1:{port}/shop"


@pytest.fixture
def gateway(make_proxy, postgres: Postgres) -> tuple[object, str]:
    """The gateway with `sslmode` left at prefer: TLS to the server, which offers it, unverified."""
    return start_gateway(make_proxy, postgres)


def db_rows(proxy) -> list[dict[str, object]]:
    """The gateway's rows in the audit log, oldest first, whole (`show --json`: bodies and all)."""
    listed = proxy.cli("log", "--json", "--host", "shop", "--limit", "1000")
    assert listed.returncode == 0, listed.stderr
    out = []
    for line in listed.stdout.splitlines():
        shown = proxy.cli("show", "--json", json.loads(line)["id"])
        assert shown.returncode == 0, shown.stderr
        out.append(json.loads(shown.stdout))
    return out


def test_selects_work_simple_extended_and_prepared(gateway) -> None:
    _, url = gateway
    with psycopg.connect(url, autocommit=True) as conn:
        assert conn.execute("SELECT item FROM orders WHERE qty > %s ORDER BY id", (2,)).fetchall() == \
            [("apples",), ("plums",)]
        for _ in range(3):  # psycopg prepares a statement run this often (named, then Bind/Execute only)
            assert conn.execute("SELECT count(*) FROM orders WHERE qty < %s", (5,), prepare=True).fetchone() == (2,)
        with psycopg.ClientCursor(conn) as cur:  # the simple query protocol
            cur.execute("SELECT sum(qty) FROM orders")
            assert cur.fetchone() == (11,)
    with psycopg.connect(url) as conn:  # not autocommit: psycopg sends BEGIN first, and COMMIT at the end
        conn.execute("UPDATE orders SET qty = qty + 1 WHERE item = %s", ("pears",))
    assert direct(gateway_pg(gateway), "SELECT qty FROM orders WHERE item = 'pears'") == [(2,)]


def gateway_pg(gateway) -> Postgres:
    proxy, _ = gateway
    text = proxy.config.read_text()
    port = int(text.split("databases:")[1].split("port: ")[1].split()[0])
    return Postgres("127.0.0.1", port, Path("."))


def test_delete_without_where_is_refused_with_the_rules_reason(gateway) -> None:
    _, url = gateway
    with psycopg.connect(url) as conn:
        conn.execute("SELECT 1 FROM orders")
        with pytest.raises(errors.InsufficientPrivilege, match="UPDATE and DELETE need a WHERE here"):
            conn.execute("DELETE FROM orders")
        # The server failed the transaction as for any error: nothing else runs in it until ROLLBACK.
        with pytest.raises(errors.InFailedSqlTransaction):
            conn.execute("SELECT 1 FROM orders")
        conn.rollback()
        assert conn.execute("SELECT count(*) FROM orders").fetchone() == (3,)
    assert direct(gateway_pg(gateway), "SELECT count(*) FROM orders") == [(3,)]


def test_refusals_unparsable_tables_functions_and_mixed_messages(gateway) -> None:
    _, url = gateway
    with psycopg.connect(url, autocommit=True) as conn:
        with pytest.raises(errors.InsufficientPrivilege, match="does not parse"):
            conn.execute("SELEC item FROM orders")
        with pytest.raises(errors.InsufficientPrivilege, match="no rule allows SELECT on payroll"):
            conn.execute("SELECT salary FROM payroll")
        with pytest.raises(errors.InsufficientPrivilege, match="pg_sleep, which the policy cannot see through"):
            conn.execute("SELECT pg_sleep(0) FROM customers")  # allowed on orders only
        with pytest.raises(errors.InsufficientPrivilege, match="no rule allows DDL"):
            conn.execute("DROP TABLE orders")
        with psycopg.ClientCursor(conn) as cur, pytest.raises(errors.InsufficientPrivilege, match="need a WHERE"):
            cur.execute("INSERT INTO orders (item, qty) VALUES ('kiwis', 1); DELETE FROM orders")
        # The connection goes on after refusals, in both protocols.
        assert conn.execute("SELECT count(*) FROM orders WHERE qty > %s", (0,)).fetchone() == (3,)
    assert direct(gateway_pg(gateway), "SELECT count(*) FROM orders") == [(3,)]  # the insert never ran


def test_the_agent_gets_its_own_identity_only(gateway) -> None:
    proxy, url = gateway
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(url.replace(TOKENS["mailbot"], "wrong-token-123456")).close()
    with pytest.raises(psycopg.OperationalError, match="may not use database 'shop'"):
        psycopg.connect(url.replace(f"mailbot:{TOKENS['mailbot']}", f"slackbot:{TOKENS['slackbot']}")).close()
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(url.replace(TOKENS["mailbot"], APP_USER[1])).close()  # the real password is not the agent's
    shown = proxy.cli("env", "--agent", "mailbot", "--format", "json")
    assert shown.returncode == 0, shown.stderr
    assert f'"DATABASE_URL": "{url}"' in shown.stdout
    assert APP_USER[1] not in shown.stdout


@pytest.mark.skipif(shutil.which("psql") is None, reason="psql is not installed")
def test_psql_through_exec_and_the_audit_log(gateway) -> None:
    proxy, _ = gateway
    script = ('env; psql "$DATABASE_URL" -X -At -c "SELECT item FROM orders WHERE id = 3"; '
              'psql "$DATABASE_URL" -X -At -c "DELETE FROM orders"; exit 0')
    ran = proxy.run_cli("exec", "--config", str(proxy.config), "--agent", "mailbot", "--no-jail", "--", "sh", "-c",
                        script)
    assert "plums" in ran.stdout, ran.stderr
    assert "UPDATE and DELETE need a WHERE here" in ran.stderr
    assert APP_USER[1] not in ran.stdout + ran.stderr
    rows = db_rows(proxy)
    assert {r["scheme"] for r in rows} == {"postgresql"}
    selected = next(r for r in rows if "WHERE id = 3" in r["req_body"])
    assert (selected["decision"], selected["method"], selected["host"], selected["status"]) == ("allow", "SELECT",
                                                                                              "shop", 0)
    assert json.loads(selected["req_body"]) == {"sql": "SELECT item FROM orders WHERE id = 3"}
    assert json.loads(selected["resp_body"]) == {"tags": ["SELECT 1"], "rows": 1}
    refused = next(r for r in rows if "DELETE FROM orders" in r["req_body"])
    assert (refused["decision"], refused["rule"]) == ("deny", "shop/no unbounded writes")
    assert refused["error"].startswith("42501")
    assert proxy.cli("log", "verify").stdout.startswith("ok:")
    listing = proxy.cli("log")
    assert "postgresql://shop/shop" in listing.stdout
    audit = (proxy.home / "audit.db").read_bytes()
    assert APP_USER[1].encode() not in audit
    shown = proxy.log_text()  # `run`'s output: a line per statement
    assert f"allow {selected['id']} mailbot SELECT postgresql://shop/shop" in shown
    assert f"deny {refused['id']} mailbot DELETE postgresql://shop/shop: UPDATE and DELETE need a WHERE here" in shown
    assert APP_USER[1] not in shown


def test_writes_are_recorded_with_their_outcome_and_undo_class(gateway) -> None:
    proxy, url = gateway
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("UPDATE orders SET qty = %s WHERE qty < %s", (0, 5))
        with pytest.raises(errors.UniqueViolation):
            conn.execute("INSERT INTO orders (id, item, qty) VALUES (%s, %s, %s)", (1, "dup", 1))
    rows = db_rows(proxy)
    update = next(r for r in rows if r["method"] == "UPDATE")
    assert json.loads(update["req_body"])["params"] == [0, 5]  # psycopg binds ints in binary
    assert json.loads(update["resp_body"]) == {"tags": ["UPDATE 2"], "rows": 2}
    assert update["undo_class"] == "exact"  # its rows captured: tests/e2e/test_db_rowundo.py undoes them
    failed = next(r for r in rows if r["method"] == "INSERT")
    assert failed["error"].startswith("23505") and failed["status"] is None and failed["undo_class"] is None
    undone = proxy.cli("undo", update["id"])  # without a terminal to confirm on: refused in one line, nothing sent
    assert undone.returncode == 2 and undone.stderr.startswith("goex-proxy: undo asks before it acts")
    assert direct(gateway_pg(gateway), "SELECT qty FROM orders ORDER BY id") == [(0,), (0,), (7,)]


def jailed_psql(proxy, sql: str) -> subprocess.CompletedProcess[str]:
    script = f'env; psql "$DATABASE_URL" -X -At -c "{sql}"'
    return proxy.run_cli("exec", "--jail", "--config", str(proxy.config), "--agent", "mailbot", "--", "sh", "-c",
                         script, timeout=90)


@pytest.mark.skipif(shutil.which("psql") is None, reason="psql is not installed")
def test_psql_in_the_jail_reaches_the_database_only_through_the_gateway(gateway) -> None:
    proxy, url = gateway
    pg = gateway_pg(gateway)
    ran = jailed_psql(proxy, "SELECT item FROM orders WHERE id = 1")
    assert ran.returncode == 0 and "apples" in ran.stdout, ran.stderr
    assert f"DATABASE_URL={url}" in ran.stdout
    assert APP_USER[1] not in ran.stdout + ran.stderr
    refused = jailed_psql(proxy, "DELETE FROM orders")
    assert refused.returncode != 0 and "UPDATE and DELETE need a WHERE here" in refused.stderr
    # The server itself is out of reach from the jail, even with the real password.
    around = proxy.run_cli("exec", "--jail", "--config", str(proxy.config), "--agent", "mailbot", "--", "psql",
                           pg.dsn(APP_USER, "shop"), "-X", "-At", "-c", "SELECT 1", timeout=90)
    assert around.returncode != 0 and "1\n" not in around.stdout


@pytest.mark.skipif(shutil.which("psql") is None, reason="psql is not installed")
def test_without_run_the_jail_starts_a_gateway_of_its_own(gateway) -> None:
    proxy, _ = gateway
    proxy.stop()
    ran = jailed_psql(proxy, "SELECT count(*) FROM orders")
    assert ran.returncode == 0 and ran.stdout.strip().endswith("3"), ran.stderr
    assert "postgresql://mailbot:" in ran.stdout and APP_USER[1] not in ran.stdout
    assert any("count(*)" in r["req_body"] for r in db_rows(proxy))


def sleeping(conn: psycopg.Connection, pg: Postgres) -> tuple[threading.Thread, list[BaseException]]:
    """A minute's `pg_sleep` sent on `conn` from a thread, once the server runs it: the thread and what it raised."""
    outcome: list[BaseException] = []

    def slow() -> None:
        try:
            conn.execute("SELECT pg_sleep(60) FROM orders LIMIT 1")
        except BaseException as exc:  # noqa: BLE001 - handed to the test's thread
            outcome.append(exc)

    worker = threading.Thread(target=slow)
    worker.start()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not direct_as(pg, SUPERUSER, "SELECT 1 FROM pg_stat_activity WHERE "
                                                                         "state = 'active' AND query LIKE 'SELECT pg_sleep(60)%'"):
        time.sleep(0.05)
    return worker, outcome


def test_a_cancel_request_reaches_the_server_with_its_own_key(gateway) -> None:
    _, url = gateway
    pg = gateway_pg(gateway)
    with psycopg.connect(url, autocommit=True) as conn:
        worker, outcome = sleeping(conn, pg)
        conn.cancel()
        worker.join(30)
        assert not worker.is_alive()
        assert len(outcome) == 1 and isinstance(outcome[0], errors.QueryCanceled), outcome
        assert conn.execute("SELECT count(*) FROM orders").fetchone() == (3,)  # the session goes on


def direct_as(pg: Postgres, user: tuple[str, str], sql: str) -> list[tuple[object, ...]]:
    with psycopg.connect(pg.dsn(user, "shop"), autocommit=True) as conn:
        return conn.execute(sql).fetchall()


def test_copy_out_when_a_rule_allows_it(gateway) -> None:
    _, url = gateway
    with psycopg.connect(url, autocommit=True) as conn, conn.cursor() as cur:
        with cur.copy("COPY orders (item, qty) TO STDOUT") as copy:
            exported = b"".join(bytes(chunk) for chunk in copy)
        assert exported == b"apples\t3\npears\t1\nplums\t7\n"
        with pytest.raises(errors.InsufficientPrivilege, match="no rule allows COPY on payroll"):
            with cur.copy("COPY payroll TO STDOUT") as copy:
                b"".join(bytes(chunk) for chunk in copy)
        with pytest.raises(errors.InsufficientPrivilege, match="no rule allows COPY/INSERT on orders"):
            with cur.copy("COPY orders (item, qty) FROM STDIN") as copy:  # writes rows: `copy` alone does not do
                copy.write(b"figs\t2\n")
    assert direct(gateway_pg(gateway), "SELECT count(*) FROM orders") == [(3,)]


def test_what_is_not_the_protocol_gets_one_clear_error_and_the_gateway_goes_on(gateway) -> None:
    import socket
    import struct

    _, url = gateway
    port = int(url.rsplit(":", 1)[1].split("/")[0])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(struct.pack("!II", 8, 1234 << 16))  # protocol 1234.0
        reply = sock.recv(4096)
    assert reply[:1] == b"E" and b"unsupported protocol 1234.0" in reply
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(struct.pack("!I", 1 << 30))  # a startup packet of a gigabyte: closed, not read
        assert sock.recv(4096) == b""
    with psycopg.connect(url, autocommit=True) as conn:
        assert conn.execute("SELECT count(*) FROM orders").fetchone() == (3,)


def over_tls(pg: Postgres, application: str) -> list[bool]:
    """Whether each connection of the application user named `application` (passed on by the gateway) is over TLS."""
    return [bool(row[0]) for row in direct_as(pg, SUPERUSER, "SELECT s.ssl FROM pg_stat_ssl s JOIN pg_stat_activity a "
                                                             f"USING (pid) WHERE a.usename = '{APP_USER[0]}' AND "
                                                             f"a.application_name = '{application}'")]


def test_tls_to_the_server_as_sslmode_says(make_proxy, postgres: Postgres, upstream_ca) -> None:
    _, url = start_gateway(make_proxy, postgres, f"    sslmode: verify-full\n    ca: {upstream_ca[1]}\n")
    with psycopg.connect(url, autocommit=True, application_name="verified") as conn:
        assert conn.execute("SELECT count(*) FROM orders").fetchone() == (3,)
        assert over_tls(postgres, "verified") == [True]
    # The system's roots do not know the tests' CA: verify-full refuses the server, and says why.
    _, url = start_gateway(make_proxy, postgres, "    sslmode: verify-full\n")
    with pytest.raises(psycopg.OperationalError, match="cannot reach the server of database 'shop'.*certificate"):
        psycopg.connect(url).close()
    _, url = start_gateway(make_proxy, postgres, "    sslmode: disable\n")
    with psycopg.connect(url, autocommit=True, application_name="plain") as conn:
        assert conn.execute("SELECT count(*) FROM orders").fetchone() == (3,)
        assert over_tls(postgres, "plain") == [False]


def test_an_edited_policy_applies_to_the_next_statement_and_a_broken_one_is_not_taken(gateway) -> None:
    proxy, url = gateway
    with psycopg.connect(url, autocommit=True) as conn:
        assert conn.execute("SELECT count(*) FROM orders").fetchone() == (3,)
        proxy.write_policy("shop", POLICY.replace("tables: [orders, customers]", "tables: [customers]")
                           .replace("tables: [orders], functions", "tables: [customers], functions"))
        with pytest.raises(errors.InsufficientPrivilege, match="no rule allows SELECT on orders"):
            conn.execute("SELECT count(*) FROM orders WHERE qty > 0")
        proxy.write_policy("shop", POLICY.replace("statements: [select]", "statements: [selcet]"))  # a mistake
        with pytest.raises(errors.InsufficientPrivilege, match="no rule allows SELECT on orders"):
            conn.execute("SELECT count(*) FROM orders WHERE qty > 1")   # the last good policy stays in force
    assert "policy reload rejected" in proxy.log_text()


def test_a_refusal_inside_a_pipeline_arrives_in_its_place(gateway) -> None:
    """psycopg's pipeline mode sends many statements before one Sync: the refusal comes back in order, after the
    results of what ran before it; what follows it is skipped and the batch's implicit transaction rolled back, as
    the server does after any error."""
    _, url = gateway
    with psycopg.connect(url, autocommit=True) as conn:
        with pytest.raises(errors.InsufficientPrivilege, match="need a WHERE"):
            with conn.pipeline():
                first = conn.execute("SELECT item FROM orders WHERE id = %s", (1,))
                conn.execute("UPDATE orders SET qty = %s WHERE id = %s", (50, 2))
                conn.execute("DELETE FROM orders")
                conn.execute("UPDATE orders SET qty = %s WHERE id = %s", (99, 3))
        assert first.fetchall() == [("apples",)]
        assert conn.execute("SELECT id, qty FROM orders ORDER BY id").fetchall() == [(1, 3), (2, 1), (3, 7)]
