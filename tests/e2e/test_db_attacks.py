"""A hostile agent against the PostgreSQL gateway, with the real server behind it: each test is an attack that ran
what the policy does not allow (or hid what ran from the audit log) before the gateway was fixed."""

from __future__ import annotations

import json
import os
import struct

import psycopg
import pytest
from psycopg import errors

from goex_proxy.db.wire import message, parse_payload
from tests.e2e.test_db_gateway import POLICY, db_rows, direct, gateway, postgres, start_gateway  # noqa: F401
from tests.pg import APP_USER, server_bin

pytestmark = [pytest.mark.e2e,
              pytest.mark.skipif(server_bin() is None, reason="PostgreSQL is not installed (tests/install-tools)")]

#: `SELECT E'Á\' ; DELETE FROM payroll; --'` in UTF-8: one string literal to a UTF-8 reader (the backslash escapes the
#: quote). In Shift-JIS, C3 is one character and 81 5C another, so the backslash is gone, the quote ends the string,
#: and DELETE FROM payroll is a statement of its own.
SMUGGLED = b"SELECT E'\xc3\x81\\' ; DELETE FROM payroll; --'"


def test_a_client_encoding_cannot_hide_a_statement_in_a_string(gateway, postgres) -> None:  # noqa: F811
    _, url = gateway
    pg = postgres
    direct(pg, "INSERT INTO payroll (salary) VALUES (100), (200) RETURNING id")
    before = direct(pg, "SELECT count(*) FROM payroll")[0][0]
    with psycopg.connect(url, autocommit=True, client_encoding="SJIS") as conn:
        with psycopg.ClientCursor(conn) as cur:  # the simple protocol, as is
            cur.execute(SMUGGLED)
            assert direct(pg, "SELECT count(*) FROM payroll")[0][0] == before
            assert cur.fetchone() == ("Á' ; DELETE FROM payroll; --",)  # the one string the gateway read
        assert conn.info.parameter_status("client_encoding") == "UTF8"  # what the server reads, whatever was asked
        with pytest.raises(errors.InsufficientPrivilege, match="client_encoding is fixed by goex-proxy"):
            conn.execute("SET client_encoding = 'SJIS'")
    assert direct(pg, "SELECT count(*) FROM payroll")[0][0] == before


def test_a_function_called_as_a_field_is_a_function(gateway, postgres) -> None:  # noqa: F811
    """`(x).f` is f(x) when x has no field f: nextval advanced the orders' sequence from a read-only rule."""
    _, url = gateway
    pg = postgres
    before = direct(pg, "SELECT last_value FROM orders_id_seq")
    with psycopg.connect(url, autocommit=True) as conn:
        with pytest.raises(errors.InsufficientPrivilege, match="calls nextval"):
            conn.execute("SELECT ('orders_id_seq'::regclass).nextval FROM orders LIMIT 1")
    assert direct(pg, "SELECT last_value FROM orders_id_seq") == before


def test_upserts_and_merges_are_the_writes_they_make(make_proxy, postgres) -> None:  # noqa: F811
    """An insert-only rule let ON CONFLICT DO UPDATE change rows that were there; a rule for updates let MERGE
    delete them."""
    more_policy = ("  - name: add only\n    allow: {database: shop, statements: [insert], tables: [customers]}\n"
                   "  - name: change customers\n    allow: {database: shop, statements: [update], tables: "
                   "[customers]}\n")
    proxy, url = start_gateway(make_proxy, postgres)
    proxy.write_policy("shop", POLICY + more_policy)
    direct(postgres, "WITH gone AS (DELETE FROM customers RETURNING id) SELECT setval('customers_id_seq', 1, false)")
    direct(postgres, "INSERT INTO customers (name) VALUES ('ann'), ('bob') RETURNING id")
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("INSERT INTO customers (name) VALUES (%s)", ("cy",))  # the rule works
        with pytest.raises(errors.InsufficientPrivilege):
            conn.execute("INSERT INTO customers (id, name) VALUES (1, 'x') ON CONFLICT (id) DO UPDATE SET name = 'x'")
        with pytest.raises(errors.InsufficientPrivilege):
            conn.execute("MERGE INTO customers c USING (SELECT 2 AS id) s ON c.id = s.id WHEN MATCHED THEN DELETE")
    assert direct(postgres, "SELECT id, name FROM customers ORDER BY id") == [(1, "ann"), (2, "bob"), (3, "cy")]
    refused = [r for r in db_rows(proxy) if r["decision"] == "deny"]
    assert [r["method"] for r in refused] == ["INSERT", "UPDATE"]


def test_a_statement_too_deep_to_read_does_not_take_the_gateway_down(gateway) -> None:  # noqa: F811
    """200,000 terms of `1+1+...` made pglast overflow the C stack: `run` died, its proxy with it."""
    proxy, url = gateway
    with psycopg.connect(url, autocommit=True) as conn:
        with pytest.raises(errors.InsufficientPrivilege, match="does not parse|nests"):
            conn.execute("SELECT " + "+".join(["1"] * 200000))
        assert conn.execute("SELECT count(*) FROM orders").fetchone() == (3,)
    with psycopg.connect(url, autocommit=True) as conn:
        assert conn.execute("SELECT count(*) FROM orders").fetchone() == (3,)
    assert proxy.proc.poll() is None


def raw_exchange(url: str, data: bytes, readies: int) -> bytes:
    """`data` written on a connection psycopg logged in (SCRAM and all), as one write; the server's answer up to the
    `readies`-th ReadyForQuery."""
    import socket

    conn = psycopg.connect(url, autocommit=True, sslmode="disable")  # written raw: no TLS
    try:
        sock = socket.socket(fileno=os.dup(conn.pgconn.socket))
        sock.settimeout(30)
        with sock:
            sock.sendall(data)
            got = b""
            while got.count(b"Z\x00\x00\x00\x05") < readies:
                chunk = sock.recv(65536)
                assert chunk, got
                got += chunk
            return got
    finally:
        conn.close()


def extended(sql: str) -> bytes:
    """Parse, Bind and Execute of `sql` (unnamed statement and portal, no parameters), then Sync."""
    return (message(b"P", parse_payload("", sql)) + message(b"B", b"\0\0" + struct.pack("!HHH", 0, 0, 0))
            + message(b"E", b"\0" + struct.pack("!I", 0)) + message(b"S"))


def test_a_pipelined_write_is_recorded_as_run(gateway, postgres) -> None:  # noqa: F811
    """Two Syncs' batches sent at once: the first ReadyForQuery closed every statement still waiting, so the second
    batch's UPDATE, which ran, was recorded as 'not run: an earlier message of its batch failed'."""
    proxy, url = gateway
    raw_exchange(url, extended("SELECT item FROM orders WHERE id = 1")
                 + extended("UPDATE orders SET qty = 42 WHERE id = 2"), readies=2)
    assert direct(postgres, "SELECT qty FROM orders WHERE id = 2") == [(42,)]
    (update,) = [r for r in db_rows(proxy) if r["method"] == "UPDATE"]
    assert (update["status"], update["error"]) == (0, None)
    assert json.loads(update["resp_body"]) == {"tags": ["UPDATE 1"], "rows": 1}


def test_a_query_inside_an_unsynced_batch_ends_the_connection(gateway, postgres) -> None:  # noqa: F811
    """After an error in an extended batch the server ignores everything up to Sync, a simple Query too, unanswered:
    the gateway would match the next answers to the wrong statements. Such a Query is a protocol error."""
    proxy, url = gateway
    bad_bind = message(b"B", b"\0no such statement\0" + struct.pack("!HHH", 0, 0, 0))
    import socket

    got = b""
    conn = psycopg.connect(url, autocommit=True, sslmode="disable")  # written raw: no TLS
    with socket.socket(fileno=os.dup(conn.pgconn.socket)) as sock:
        sock.settimeout(30)
        sock.sendall(bad_bind + message(b"Q", b"UPDATE orders SET qty = 9 WHERE id = 3\0") + message(b"S"))
        while chunk := sock.recv(65536):
            got += chunk
    conn.close()
    assert b"08P01" in got and b"inside an extended-protocol batch" in got
    assert direct(postgres, "SELECT qty FROM orders WHERE id = 3") == [(7,)]
    assert not [r for r in db_rows(proxy) if r["method"] == "UPDATE"]


def test_a_statement_name_reprepared_in_sql_is_not_taken_for_the_old_one(gateway, postgres) -> None:  # noqa: F811
    """A Parse the server fails (an unknown column) left the gateway believing statement `s` was that SELECT; SQL
    `PREPARE s AS UPDATE ...` then made `s` an UPDATE, whose Bind and Execute the log recorded as the SELECT."""
    proxy, url = gateway
    bind_execute = (message(b"B", b"\0s\0" + struct.pack("!HHH", 0, 0, 0)) + message(b"E", b"\0" + struct.pack("!I", 0))
                    + message(b"S"))
    got = raw_exchange(url, message(b"P", parse_payload("s", "SELECT item FROM orders WHERE nosuchcolumn = 1"))
                       + message(b"S") + message(b"Q", b"PREPARE s AS UPDATE orders SET qty = 0 WHERE id = 1\0")
                       + bind_execute, readies=3)
    assert b"not prepared through goex-proxy" in got
    assert direct(postgres, "SELECT qty FROM orders WHERE id = 1") == [(3,)]
    for row in db_rows(proxy):
        if row["resp_body"] and row["method"] == "SELECT":
            assert "UPDATE" not in row["resp_body"]


def test_a_prepared_statement_is_decided_again_when_the_policy_changes(gateway) -> None:  # noqa: F811
    """psycopg parses a statement it runs often once, then only binds and executes it: the decision made at the
    Parse ran on after the policy stopped allowing it."""
    proxy, url = gateway
    with psycopg.connect(url, autocommit=True) as conn:
        for _ in range(2):
            assert conn.execute("SELECT count(*) FROM orders WHERE qty > %s", (0,), prepare=True).fetchone() == (3,)
        proxy.write_policy("shop", POLICY.replace("tables: [orders, customers]", "tables: [customers]")
                           .replace("tables: [orders], functions", "tables: [customers], functions"))
        with pytest.raises(errors.InsufficientPrivilege, match="no rule allows SELECT on orders"):
            conn.execute("SELECT count(*) FROM orders WHERE qty > %s", (0,), prepare=True)
    refused = [r for r in db_rows(proxy) if r["decision"] == "deny"]
    assert [json.loads(r["req_body"])["params"] for r in refused] == [[0]]


def test_ddl_allowed_on_one_table_does_not_reach_the_others(gateway, postgres) -> None:  # noqa: F811
    """COMMENT ON TABLE names its table as no RangeVar, so it named no table at all, and every `tables:` list held
    it: a rule for DDL on a scratch table let the agent write on payroll (or drop a schema, or grant every table)."""
    proxy, url = gateway
    proxy.write_policy("shop", POLICY + "  - name: scratch\n    allow: {database: shop, statements: [ddl], "
                                        "tables: [scratch]}\n")
    with psycopg.connect(url, autocommit=True) as conn:
        with pytest.raises(errors.InsufficientPrivilege, match="acts beyond the tables it names"):
            conn.execute("COMMENT ON TABLE payroll IS 'mine now'")
        with pytest.raises(errors.InsufficientPrivilege, match="acts beyond the tables it names"):
            conn.execute("GRANT SELECT ON ALL TABLES IN SCHEMA public TO PUBLIC")
    assert direct(postgres, "SELECT obj_description('payroll'::regclass, 'pg_class')") == [(None,)]
    assert direct(postgres, "SELECT has_table_privilege('public', 'payroll', 'SELECT')") == [(False,)]


LOADS = POLICY + "  - name: load orders\n    allow: {database: shop, statements: [copy, insert], tables: [orders]}\n"


def test_a_query_sent_into_an_open_copy_is_not_recorded_as_run(gateway, postgres) -> None:  # noqa: F811
    """COPY FROM STDIN and an UPDATE sent at once: the server takes the Query as the copy's end (an error) and never
    runs it, but the log had the UPDATE as completed. Anything but copy data in an open COPY ends the connection."""
    import socket

    proxy, url = gateway
    proxy.write_policy("shop", LOADS)
    conn = psycopg.connect(url, autocommit=True, sslmode="disable")  # written raw: no TLS
    got = b""
    with socket.socket(fileno=os.dup(conn.pgconn.socket)) as sock:
        sock.settimeout(30)
        sock.sendall(message(b"Q", b"COPY orders (item, qty) FROM STDIN\0")
                     + message(b"Q", b"UPDATE orders SET qty = 5 WHERE id = 1\0"))
        while chunk := sock.recv(65536):
            got += chunk
    conn.close()
    assert b"08P01" in got and b"COPY FROM STDIN is open" in got
    assert direct(postgres, "SELECT qty FROM orders WHERE id = 1") == [(3,)]
    assert not [r for r in db_rows(proxy) if r["method"] == "UPDATE" and r["status"] == 0]


def test_copy_in_both_protocols_keeps_outcomes_on_their_statements(gateway, postgres) -> None:  # noqa: F811
    """In COPY FROM STDIN by the extended protocol libpq sends a Sync the server ignores, and another after
    CopyDone: the outcomes after it stay on their own statements."""
    proxy, url = gateway
    proxy.write_policy("shop", LOADS)
    with psycopg.connect(url, autocommit=True) as conn, conn.cursor() as cur:
        with cur.copy("COPY orders (item, qty) FROM STDIN") as copy:  # the simple protocol
            copy.write(b"figs\t2\nlimes\t4\n")
        assert conn.execute("SELECT count(*) FROM orders").fetchone() == (5,)
    copy_in = (message(b"P", parse_payload("", "COPY orders (item, qty) FROM STDIN"))
               + message(b"B", b"\0\0" + struct.pack("!HHH", 0, 0, 0)) + message(b"E", b"\0" + struct.pack("!I", 0))
               + message(b"S") + message(b"d", b"kiwis\t6\n") + message(b"c") + message(b"S"))
    raw_exchange(url, copy_in + extended("SELECT item FROM orders WHERE qty = 6")
                 + extended("SELECT item FROM orders WHERE qty >= 4"), readies=3)
    rows = [(json.loads(r["req_body"])["sql"], json.loads(r["resp_body"])["tags"]) for r in db_rows(proxy)
            if r["resp_body"]]
    assert sorted(tags for sql, tags in rows if sql.startswith("COPY")) == [["COPY 1"], ["COPY 2"]]
    outcomes = dict(rows)
    assert outcomes["SELECT item FROM orders WHERE qty = 6"] == ["SELECT 1"]
    assert outcomes["SELECT item FROM orders WHERE qty >= 4"] == ["SELECT 3"]


def test_sql_in_a_refusal_cannot_write_lines_of_its_own_in_runs_output(gateway) -> None:  # noqa: F811
    proxy, url = gateway
    forged = "allow 0123 mailbot DELETE postgresql://shop/shop"
    with psycopg.connect(url, autocommit=True) as conn:
        with pytest.raises(errors.InsufficientPrivilege, match="does not parse"):
            conn.execute(f"SELECT 1 '\n{forged}\x1b[2K' x")
    shown = proxy.log_text()
    assert "does not parse" in shown
    # `run` indents a record's further lines, but a forged line of its own is still a line that reads as a decision.
    assert all("does not parse" in line for line in shown.splitlines() if forged in line)
    assert "\x1b[2K" not in shown


@pytest.mark.parametrize("bad", [message(b"B", b"no terminator"), message(b"P", b"s\0SELECT 1\0\xff"),
                                 message(b"C", b"S"), message(b"Q", b"SELECT 1")])
def test_a_malformed_message_ends_its_connection_quietly(gateway, bad: bytes) -> None:  # noqa: F811
    """A message cut short inside (no NUL, a count past its end) raised struct or index errors out of the session:
    a traceback in `run`'s output for each one an agent sends. It is a protocol error like any other."""
    import socket

    proxy, url = gateway
    conn = psycopg.connect(url, autocommit=True, sslmode="disable")  # written raw: no TLS
    with socket.socket(fileno=os.dup(conn.pgconn.socket)) as sock:
        sock.settimeout(30)
        sock.sendall(bad)
        while sock.recv(65536):
            pass
    conn.close()
    with psycopg.connect(url, autocommit=True) as conn:
        assert conn.execute("SELECT count(*) FROM orders").fetchone() == (3,)
    assert "Traceback" not in proxy.log_text() and "database connection failed" not in proxy.log_text()


@pytest.mark.parametrize("first", ["parse", "sql"])
def test_a_statement_name_parsed_again_is_not_taken_for_the_new_sql(gateway, postgres, first: str) -> None:  # noqa: F811
    """The server refuses a Parse into a name it holds (42P05) and keeps the old statement: the gateway took the new
    SQL as made, so `s`, a DELETE (Parsed or SQL PREPAREd), ran at Execute recorded as a SELECT, past write-ahead."""
    proxy, url = gateway
    delete = "DELETE FROM orders WHERE id = 1"
    made = (message(b"P", parse_payload("s", delete)) + message(b"S") if first == "parse"
            else message(b"Q", f"PREPARE s AS {delete}\0".encode()))
    bind_execute = (message(b"B", b"\0s\0" + struct.pack("!HHH", 0, 0, 0)) + message(b"E", b"\0" + struct.pack("!I", 0))
                    + message(b"S"))
    got = raw_exchange(url, made + message(b"P", parse_payload("s", "SELECT 1")) + message(b"S") + bind_execute,
                       readies=3)
    assert b"not prepared through goex-proxy" in got
    assert direct(postgres, "SELECT count(*) FROM orders WHERE id = 1") == [(1,)]
    assert not [r for r in db_rows(proxy) if "DELETE 1" in (r["resp_body"] or "")]


def test_an_operator_of_another_schema_is_a_function_the_policy_sees(gateway, postgres) -> None:  # noqa: F811
    """`OPERATOR(public.#=#)` (or `#=#`, found in public) calls the function behind the operator, which may write
    anything: the statement was a plain read (no function listed), allowed and not even waited for."""
    proxy, url = gateway
    with psycopg.connect(postgres.dsn(APP_USER, "shop"), autocommit=True) as conn:
        conn.execute("CREATE FUNCTION public.wipe(int, int) RETURNS int LANGUAGE sql AS "
                     "'DELETE FROM payroll; SELECT 1'")
        conn.execute("CREATE OPERATOR public.#=# (FUNCTION = public.wipe, LEFTARG = int, RIGHTARG = int)")
        conn.execute("INSERT INTO payroll (salary) VALUES (100)")
    paid = direct(postgres, "SELECT count(*) FROM payroll")
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            with pytest.raises(errors.InsufficientPrivilege, match="public\\.#=#"):
                conn.execute("SELECT qty OPERATOR(public.#=#) 1 FROM orders")
            with pytest.raises(errors.InsufficientPrivilege, match="#=#"):
                conn.execute("SELECT qty #=# 1 FROM orders")  # unqualified: found in public by the search_path
        assert direct(postgres, "SELECT count(*) FROM payroll") == paid != [(0,)]
    finally:
        with psycopg.connect(postgres.dsn(APP_USER, "shop"), autocommit=True) as conn:
            conn.execute("DROP OPERATOR public.#=# (int, int)")
            conn.execute("DROP FUNCTION public.wipe(int, int)")


def test_a_bind_into_a_cursors_name_is_refused(make_proxy, postgres) -> None:  # noqa: F811
    """PostgreSQL refuses a Bind into a portal name a cursor DECLAREd in SQL holds (42P03) and keeps the cursor: the
    gateway took the portal for the Bind's UPDATE, so a later Execute of it, which ran the cursor's SELECT, was
    recorded as the UPDATE (its SQL, its parameters, the SELECT's command tag)."""
    cursors = POLICY + "  - name: cursors\n    allow: {database: shop, statements: [other, select], tables: [orders]}\n"
    proxy, url = start_gateway(make_proxy, postgres, policy=cursors)
    bind_c = message(b"B", b"c\0\0" + struct.pack("!HHH", 0, 0, 0))
    execute_c = message(b"E", b"c\0" + struct.pack("!I", 0)) + message(b"S")
    got = raw_exchange(url, message(b"Q", b"DECLARE c CURSOR WITH HOLD FOR SELECT item FROM orders WHERE id = 3\0")
                       + message(b"P", parse_payload("", "UPDATE orders SET qty = 0 WHERE id = 1")) + bind_c
                       + execute_c + execute_c, readies=3)
    assert b"portal name 'c' may be a cursor DECLAREd on this connection" in got
    assert b"plums" not in got  # the cursor's Execute: refused, not recorded as another statement
    assert direct(postgres, "SELECT qty FROM orders WHERE id = 1") == [(3,)]
    rows = db_rows(proxy)
    assert not [r for r in rows if r["method"] == "UPDATE" and r["decision"] == "allow"]
    assert [r["decision"] for r in rows if r["req_body"] and '"(Bind into portal' in r["req_body"]] == ["deny"]
