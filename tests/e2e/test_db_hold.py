"""`transaction: hold` end to end: a real PostgreSQL, a real `goex-proxy run`, psycopg and psql as the agent. The
agent's work stays in one transaction the gateway holds, invisible to everyone else, until a person commits it or
rolls it back with `goex-proxy db`, or its timeout rolls it back."""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
import time

import psycopg
import pytest
from psycopg import errors

from tests.conftest import TOKENS
from tests.e2e.test_db_gateway import db_rows, direct, postgres, start_gateway  # noqa: F401 - the fixture
from tests.pg import APP_USER, Postgres, server_bin

pytestmark = [pytest.mark.e2e,
              pytest.mark.skipif(server_bin() is None, reason="PostgreSQL is not installed (tests/install-tools)")]

HOLD = "    transaction: hold\n"
ORIGINAL = [("apples", 3), ("pears", 1), ("plums", 7)]


def items(pg: Postgres) -> list[tuple[object, ...]]:
    return direct(pg, "SELECT item, qty FROM orders ORDER BY id")


def db(proxy, *args: str) -> subprocess.CompletedProcess[str]:
    return proxy.run_cli("db", args[0], "--config", str(proxy.config), *args[1:])


def alter(pg: Postgres, sql: str) -> None:
    with psycopg.connect(pg.dsn(APP_USER, "shop"), autocommit=True) as conn:
        conn.execute(sql)


def holds(proxy, everything: bool = False) -> list[dict[str, object]]:
    listed = db(proxy, "list", "--json", *(["--all"] if everything else []))
    assert listed.returncode == 0, listed.stderr
    return [json.loads(line) for line in listed.stdout.splitlines()]


def the_hold(proxy) -> str:
    (found,) = holds(proxy)
    assert (found["agent"], found["database"], found["state"], found["live"]) == ("mailbot", "shop", "open", True)
    return str(found["id"])


def pg_dump(pg: Postgres) -> str:
    dumped = subprocess.run(["pg_dump", "--no-owner", pg.dsn(APP_USER, "shop")], capture_output=True, text=True,
                            check=True)
    # pg_dump 15.14 and later fence the script with a random \restrict key; a sequence's nextval is never rolled back
    # (PostgreSQL's own rule, held or not), so its setval lines are left out too.
    return "\n".join(line for line in dumped.stdout.splitlines()
                     if not line.startswith(("\\restrict", "\\unrestrict", "SELECT pg_catalog.setval(")))


def test_held_writes_are_invisible_until_a_person_commits(make_proxy, postgres: Postgres) -> None:  # noqa: F811
    proxy, url = start_gateway(make_proxy, postgres, HOLD)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("INSERT INTO orders (item, qty) VALUES (%s, %s)", ("kiwis", 4))
        conn.execute("UPDATE orders SET qty = 10 WHERE item = 'apples'")
        conn.execute("DELETE FROM orders WHERE item = 'pears'")
        assert conn.execute("SELECT item, qty FROM orders ORDER BY id").fetchall() == \
            [("apples", 10), ("plums", 7), ("kiwis", 4)]
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE  # as without the hold
        assert items(postgres) == ORIGINAL  # another session sees none of it
    assert items(postgres) == ORIGINAL  # nor once the agent's connection ended
    hold_id = the_hold(proxy)
    table = db(proxy, "list")
    assert hold_id in table.stdout and "mailbot" in table.stdout and "db commit ID" in table.stdout
    unknown = db(proxy, "commit", "0000000000000")
    assert unknown.returncode == 1 and "no held transaction" in unknown.stderr and "Traceback" not in unknown.stderr
    committed = db(proxy, "commit", hold_id)
    assert committed.returncode == 0, committed.stderr
    assert f"held transaction {hold_id} committed" in committed.stdout
    assert items(postgres) == [("apples", 10), ("plums", 7), ("kiwis", 4)]
    assert holds(proxy) == []
    (done,) = holds(proxy, everything=True)
    assert (done["state"], done["statements"]) == ("committed", 4)
    assert "command line" in str(done["decided_by"])
    rows = db_rows(proxy)
    update = next(r for r in rows if r["method"] == "UPDATE")
    assert update["undo_class"] == f"held: undone by `goex-proxy db rollback {hold_id}` until committed"
    commit = next(r for r in rows if r["method"] == "COMMIT")
    assert "command line" in commit["reason"] and hold_id in commit["reason"]
    assert (commit["status"], json.loads(commit["resp_body"])["tags"]) == (0, ["COMMIT"])
    again = db(proxy, "rollback", hold_id)
    assert again.returncode == 1 and "already committed" in again.stderr
    assert proxy.cli("log", "verify").stdout.startswith("ok:")


def test_rollback_leaves_the_database_as_it_was(make_proxy, postgres: Postgres) -> None:  # noqa: F811
    proxy, url = start_gateway(make_proxy, postgres, HOLD)
    before = pg_dump(postgres)
    with psycopg.connect(url) as conn:  # psycopg's own BEGIN and COMMIT: savepoints of the held transaction
        conn.execute("INSERT INTO orders (item, qty) VALUES ('figs', 2)")
        conn.execute("UPDATE orders SET item = 'quinces' WHERE qty > %s", (0,))
    if shutil.which("psql"):
        ran = subprocess.run(["psql", url, "-X", "-At", "-c", "DELETE FROM orders WHERE qty = 7"],
                             capture_output=True, text=True)
        assert ran.stdout.strip() == "DELETE 1", ran.stderr
    assert pg_dump(postgres) == before
    hold_id = the_hold(proxy)
    rolled = db(proxy, "rollback", hold_id)
    assert rolled.returncode == 0, rolled.stderr
    assert "rolled back" in rolled.stdout
    assert pg_dump(postgres) == before
    rollback = next(r for r in db_rows(proxy) if r["method"] == "ROLLBACK")
    assert hold_id in rollback["reason"] and "command line" in rollback["reason"]


def test_the_agents_own_transactions_errors_and_a_second_connection(make_proxy, postgres: Postgres) -> None:  # noqa: F811
    proxy, url = start_gateway(make_proxy, postgres, HOLD)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("INSERT INTO orders (item, qty) VALUES ('kiwis', 1)")
        with pytest.raises(errors.NotNullViolation):  # an error outside its own transaction loses nothing else
            conn.execute("INSERT INTO orders (item, qty) VALUES ('nulls', NULL)")
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
        with pytest.raises(ZeroDivisionError), conn.transaction():  # BEGIN ... ROLLBACK: only its own part undone
            conn.execute("INSERT INTO orders (item, qty) VALUES ('figs', 1)")
            raise ZeroDivisionError
        with conn.transaction():  # BEGIN ... COMMIT: kept, in the held transaction
            conn.execute("INSERT INTO orders (item, qty) VALUES ('limes', 1)")
        assert conn.execute("SELECT count(*) FROM orders WHERE item IN ('kiwis', 'figs', 'limes')").fetchone() == (2,)
    with psycopg.connect(url) as conn:  # not autocommit: a failed transaction's COMMIT is a ROLLBACK
        conn.execute("INSERT INTO orders (item, qty) VALUES ('grapes', 1)")
        with pytest.raises(errors.NotNullViolation):
            conn.execute("INSERT INTO orders (item, qty) VALUES ('nulls', NULL)")
        with pytest.raises(errors.InFailedSqlTransaction):
            conn.execute("SELECT 1 FROM orders")
        conn.commit()
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
    with psycopg.connect(url) as conn:  # an open transaction at disconnect is rolled back, as PostgreSQL does
        conn.execute("INSERT INTO orders (item, qty) VALUES ('dates', 1)")
        conn.execute("SELECT count(*) FROM orders WHERE qty > %s", (0,), prepare=True)  # psycopg's _pg3_0
        conn.pgconn.finish()
    with psycopg.connect(url, autocommit=True) as conn:  # a second connection carries on with the held work
        assert conn.execute("SELECT item FROM orders WHERE id > 3 ORDER BY id").fetchall() == [("kiwis",), ("limes",)]
        # The same statement name again: the last connection's prepared statements did not carry over.
        assert conn.execute("SELECT count(*) FROM orders WHERE qty > %s", (0,), prepare=True).fetchone() == (5,)
        conn.execute("UPDATE orders SET qty = 9 WHERE item = 'kiwis'")
    assert items(postgres) == ORIGINAL
    hold_id = the_hold(proxy)
    assert db(proxy, "commit", hold_id).returncode == 0
    assert items(postgres) == [*ORIGINAL, ("kiwis", 9), ("limes", 1)]


def test_a_hostile_agent_cannot_commit_its_work(make_proxy, postgres: Postgres) -> None:  # noqa: F811
    proxy, url = start_gateway(make_proxy, postgres, HOLD)
    with psycopg.connect(url, autocommit=True) as conn, psycopg.ClientCursor(conn) as simple:
        conn.execute("INSERT INTO orders (item, qty) VALUES ('hostile', 1)")
        for sql in ("COMMIT", "END", "COMMIT AND CHAIN", "ROLLBACK", "ABORT"):  # outside its own transaction: no-ops
            simple.execute(sql)
            assert items(postgres) == ORIGINAL, sql
        for sql in ("BEGIN", "COMMIT AND CHAIN", "COMMIT", "BEGIN", "END"):
            simple.execute(sql)
            assert items(postgres) == ORIGINAL, sql
        for sql in ("COMMIT; COMMIT", "SELECT 1 FROM orders; COMMIT", "BEGIN; COMMIT; COMMIT",
                    "ROLLBACK; SELECT 1 FROM orders", "RELEASE SAVEPOINT goex_a; COMMIT"):
            with pytest.raises(errors.InsufficientPrivilege, match="message of their own"):
                simple.execute(sql)
            assert items(postgres) == ORIGINAL, sql
        for sql in ("RELEASE SAVEPOINT goex_s_0", "ROLLBACK TO SAVEPOINT goex_a_0"):
            with pytest.raises(errors.InsufficientPrivilege, match="goex-proxy's own"):
                simple.execute(sql)
        for sql in ("PREPARE TRANSACTION 'x'", "COMMIT PREPARED 'x'"):
            with pytest.raises(errors.InsufficientPrivilege):
                simple.execute(sql)
        with pytest.raises(errors.InsufficientPrivilege, match="modes"):
            simple.execute("BEGIN ISOLATION LEVEL SERIALIZABLE")
        for sql in ("COMMIT", "END", "ROLLBACK", "BEGIN", "SAVEPOINT x"):  # the extended protocol: refused
            with pytest.raises(errors.InsufficientPrivilege, match="simple query protocol"):
                conn.cursor(binary=True).execute(sql)
            with pytest.raises(errors.InsufficientPrivilege, match="simple query protocol"):
                conn.execute(sql, prepare=True)
        with pytest.raises(errors.InsufficientPrivilege):
            conn.execute("DO $$BEGIN COMMIT; END$$")
        with pytest.raises(errors.InsufficientPrivilege, match="simple query protocol"), conn.pipeline():
            conn.execute("UPDATE orders SET qty = 0 WHERE item = %s", ("hostile",))
            conn.execute("COMMIT")  # in a pipeline psycopg sends even its own commands with the extended protocol
        assert items(postgres) == ORIGINAL
        simple.execute("BEGIN")
        simple.execute("SAVEPOINT mine")
        simple.execute("RELEASE SAVEPOINT mine")
        simple.execute("COMMIT")
        assert conn.execute("SELECT count(*) FROM orders WHERE item = 'hostile'").fetchone() == (1,)
    assert items(postgres) == ORIGINAL
    if shutil.which("psql"):
        for script in ("INSERT INTO orders (item, qty) VALUES ('psql', 1); COMMIT", "COMMIT; COMMIT"):
            ran = subprocess.run(["psql", url, "-X", "-At", "-c", script], capture_output=True, text=True)
            assert "message of their own" in ran.stderr
        ran = subprocess.run(["psql", url, "-X", "-At", "-c", "BEGIN", "-c", "INSERT INTO orders (item, qty) VALUES "
                              "('psql', 1)", "-c", "COMMIT", "-c", "END"], capture_output=True, text=True)
        assert ran.returncode == 0, ran.stderr
        assert items(postgres) == ORIGINAL
    hold_id = the_hold(proxy)
    assert db(proxy, "rollback", hold_id).returncode == 0
    assert items(postgres) == ORIGINAL


def test_the_timeout_rolls_back_and_ends_the_connection(make_proxy, postgres: Postgres) -> None:  # noqa: F811
    proxy, url = start_gateway(make_proxy, postgres, HOLD + "    hold_timeout: 2s\n")
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("INSERT INTO orders (item, qty) VALUES ('late', 1)")
        hold_id = the_hold(proxy)
        deadline = time.time() + 15
        while holds(proxy) and time.time() < deadline:
            time.sleep(0.3)
        with pytest.raises(psycopg.OperationalError, match="rolled back"):
            conn.execute("SELECT 1 FROM orders")
    (done,) = holds(proxy, everything=True)
    assert (done["id"], done["state"], done["decided_by"]) == (hold_id, "rolled back", "goex-proxy")
    assert "timeout" in str(done["result"])
    assert items(postgres) == ORIGINAL
    with psycopg.connect(url, autocommit=True) as conn:  # the next connection begins a new one
        conn.execute("INSERT INTO orders (item, qty) VALUES ('next', 1)")
    assert the_hold(proxy) != hold_id
    proxy.stop()  # a `run` that stops ends its held transactions with their connections, and says so
    stopped = holds(proxy, everything=True)[0]
    assert (stopped["state"], stopped["decided_by"]) == ("rolled back", "goex-proxy")
    assert "goex-proxy stopped" in str(stopped["result"])
    assert items(postgres) == ORIGINAL


def test_a_second_connection_waits_for_the_first(make_proxy, postgres: Postgres) -> None:  # noqa: F811
    proxy, url = start_gateway(make_proxy, postgres, HOLD)
    first = psycopg.connect(url, autocommit=True)
    first.execute("INSERT INTO orders (item, qty) VALUES ('first', 1)")
    got: dict[str, object] = {}

    def second() -> None:
        started = time.time()
        with psycopg.connect(url, autocommit=True) as conn:
            got["waited"] = time.time() - started
            got["rows"] = conn.execute("SELECT item FROM orders WHERE item = 'first'").fetchall()

    thread = threading.Thread(target=second)
    thread.start()
    time.sleep(1.5)
    assert thread.is_alive() and not got  # it waits: one connection at a time uses the held transaction
    first.close()
    thread.join(20)
    assert got["rows"] == [("first",)] and float(got["waited"]) >= 1.4  # type: ignore[arg-type]
    assert items(postgres) == ORIGINAL


def test_commit_against_run_with_workers_and_a_stopped_gateway(make_proxy, postgres: Postgres) -> None:  # noqa: F811
    proxy, url = start_gateway(make_proxy, postgres, HOLD, workers=2)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("INSERT INTO orders (item, qty) VALUES ('kept', 1)")
    assert db(proxy, "commit", the_hold(proxy)).returncode == 0
    assert items(postgres)[-1] == ("kept", 1)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("INSERT INTO orders (item, qty) VALUES ('lost', 1)")
    hold_id = the_hold(proxy)
    proxy.proc.kill()  # the gateway's process ends without a word: the server rolls the transaction back
    proxy.proc.wait(10)
    time.sleep(0.5)
    assert items(postgres)[-1] == ("kept", 1)
    gone = db(proxy, "commit", hold_id)
    assert gone.returncode == 1 and "no longer running" in gone.stderr
    proxy.start(workers=2)
    deadline = time.time() + 20
    while holds(proxy) and time.time() < deadline:  # the gateway records it as it starts
        time.sleep(0.3)
    done = holds(proxy, everything=True)[0]
    assert (done["id"], done["state"]) == (hold_id, "rolled back")
    assert "process ended" in str(done["result"])


def test_a_connection_that_ends_mid_statement(make_proxy, postgres: Postgres) -> None:  # noqa: F811
    proxy, url = start_gateway(make_proxy, postgres, HOLD)
    conn = psycopg.connect(url, autocommit=True)
    conn.execute("INSERT INTO orders (item, qty) VALUES ('before', 1)")
    conn.execute("BEGIN")
    conn.execute("INSERT INTO orders (item, qty) VALUES ('open', 1)")
    conn.pgconn.send_query(b"SELECT pg_sleep(2) FROM orders LIMIT 1")
    conn.pgconn.flush()
    time.sleep(0.3)
    conn.pgconn.finish()  # gone while its statement runs, inside a transaction of its own
    started = time.time()
    with psycopg.connect(url, autocommit=True) as again:  # attached once that statement ended and was cleaned up
        assert time.time() - started >= 1.0
        assert again.execute("SELECT item FROM orders WHERE id > 3").fetchall() == [("before",)]
        assert again.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
    assert db(proxy, "commit", the_hold(proxy)).returncode == 0
    assert items(postgres) == [*ORIGINAL, ("before", 1)]


MODEL_CODE = """```python
import os, psycopg
with psycopg.connect(os.environ["DATABASE_URL"], autocommit=True) as conn:
    conn.execute("INSERT INTO orders (item, qty) VALUES ('by the model', 1)")
print("inserted")
```
"""


def test_execute_offers_the_held_transaction_with_the_rest(make_proxy, postgres: Postgres) -> None:  # noqa: F811
    from tests.fake_openai import FakeOpenAI

    with FakeOpenAI(api_key="sk-test-llm-key") as fake:
        llm = (f"llm: {{base_url: '{fake.base_url}', model: fake-model, api_key: {{env: TEST_LLM_KEY}}, "
               "timeout: 10s}\n")
        proxy, _ = start_gateway(make_proxy, postgres, HOLD + llm)
        proxy.env["TEST_LLM_KEY"] = "sk-test-llm-key"
        for then, expected in (("undo", ORIGINAL), ("keep", [*ORIGINAL, ("by the model", 1)])):
            fake.script(MODEL_CODE)
            ran = proxy.run_cli("execute", "--config", str(proxy.config), "add an order", "--agent", "mailbot",
                                "--yes", "--then", then, timeout=120)
            assert ran.returncode == 0, ran.stdout + ran.stderr
            assert "inserted" in ran.stdout and "held: undone by" in ran.stdout  # the row, with what undoes it
            assert ("rolled back" if then == "undo" else "committed") in ran.stdout
            assert items(postgres) == expected
            assert holds(proxy) == []


def test_a_second_connection_that_waits_too_long_is_refused(make_proxy, postgres: Postgres,  # noqa: F811
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """The gateway in this process (as `exec --jail` starts one without `run`), its wait cut to a second."""
    from goex_proxy.config import load_config
    from goex_proxy.db import hold
    from goex_proxy.db.gateway import InProcessGateway

    proxy, _ = start_gateway(make_proxy, postgres, HOLD)
    monkeypatch.setenv("GOEX_PROXY_HOME", str(proxy.home))
    monkeypatch.setattr(hold, "ATTACH_SECONDS", 1.0)
    gateway = InProcessGateway(load_config(proxy.config))
    try:
        url = f"postgresql://mailbot:{TOKENS['mailbot']}@127.0.0.1:{gateway.config.databases.listen[1]}/shop"
        with psycopg.connect(url, autocommit=True) as first:
            first.execute("INSERT INTO orders (item, qty) VALUES ('first', 1)")
            with pytest.raises(psycopg.OperationalError, match="in use by another of its connections"):
                psycopg.connect(url, connect_timeout=10).close()
            first.execute("INSERT INTO orders (item, qty) VALUES ('still', 1)")  # the first goes on
    finally:
        gateway.close()  # its held transaction ends with it, rolled back
    assert items(postgres) == ORIGINAL
    stopped = holds(proxy, everything=True)[0]
    assert (stopped["state"], stopped["statements"]) == ("rolled back", 2)
    assert "goex-proxy stopped" in str(stopped["result"])


def test_copy_in_and_out_of_a_held_transaction(make_proxy, postgres: Postgres) -> None:  # noqa: F811
    proxy, url = start_gateway(make_proxy, postgres, HOLD)
    policy = proxy.home / "policies" / "shop.yaml"  # read again by the gateway when it changes
    policy.write_text(policy.read_text() + "  - name: load orders\n    allow: {database: shop, statements: [copy, insert], "
                      "tables: [orders]}\n")
    with psycopg.connect(url, autocommit=True) as conn, conn.cursor() as cur:
        with cur.copy("COPY orders (item, qty) FROM STDIN") as copy:
            copy.write_row(("copied", 5))
        with cur.copy("COPY orders (item, qty) TO STDOUT") as copy:
            assert [tuple(r) for r in copy.rows()][-1] == ("copied", "5")
        with pytest.raises(errors.NotNullViolation), cur.copy("COPY orders (item, qty) FROM STDIN") as copy:
            copy.write_row(("broken", None))  # its error loses nothing else
        assert conn.execute("SELECT item FROM orders WHERE id > 3").fetchall() == [("copied",)]
    assert items(postgres) == ORIGINAL
    assert db(proxy, "commit", the_hold(proxy)).returncode == 0
    assert items(postgres) == [*ORIGINAL, ("copied", 5)]


def test_a_raw_client_pipelining_tricks_commits_nothing(make_proxy, postgres: Postgres) -> None:  # noqa: F811
    """Everything written at once, past any client library: the agent is told the statuses it would see without the
    hold, nothing it sends commits, and a Query slipped into an unsynced batch ends the connection."""
    import os
    import socket
    import struct

    from goex_proxy.db.wire import message, parse_payload

    def extended(sql: str, sync: bool = True) -> bytes:
        return (message(b"P", parse_payload("", sql)) + message(b"B", b"\0\0" + struct.pack("!HHH", 0, 0, 0))
                + message(b"E", b"\0" + struct.pack("!I", 0)) + (message(b"S") if sync else b""))

    def query(sql: str) -> bytes:
        return message(b"Q", sql.encode() + b"\0")

    proxy, url = start_gateway(make_proxy, postgres, HOLD)
    conn = psycopg.connect(url, autocommit=True, sslmode="disable")  # written raw: no TLS
    got = b""
    with socket.socket(fileno=os.dup(conn.pgconn.socket)) as sock:
        sock.settimeout(30)
        sock.sendall(query("INSERT INTO orders (item, qty) VALUES ('raw', 1)") + query("BEGIN") + query("COMMIT")
                     + query("COMMIT") + extended("COMMIT") + extended("UPDATE orders SET qty = 0 WHERE id = 1")
                     + query("BEGIN") + extended("INSERT INTO orders (item, qty) VALUES ('raw2', 1)", sync=False)
                     + query("COMMIT") + message(b"S"))
        while chunk := sock.recv(65536):
            got += chunk
    conn.close()
    statuses = [got[i + 5:i + 6] for i in range(len(got)) if got.startswith(b"Z\x00\x00\x00\x05", i)]
    assert statuses == [b"I", b"T", b"I", b"I", b"I", b"I", b"T"], got
    assert b"simple query protocol" in got and b"inside an extended-protocol batch" in got
    assert items(postgres) == ORIGINAL
    with psycopg.connect(url, autocommit=True) as again:  # the open BEGIN's part was rolled back at the disconnect
        assert again.execute("SELECT item, qty FROM orders WHERE id = 1 OR id > 3 ORDER BY id").fetchall() == \
            [("apples", 0), ("raw", 1)]
    assert items(postgres) == ORIGINAL


def test_a_commit_the_server_refuses_is_reported_not_committed(make_proxy, postgres: Postgres) -> None:  # noqa: F811
    proxy, url = start_gateway(make_proxy, postgres, HOLD)
    alter(postgres, "ALTER TABLE orders ADD CONSTRAINT one_each UNIQUE (item) DEFERRABLE INITIALLY DEFERRED")
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("INSERT INTO orders (item, qty) VALUES ('apples', 1)")  # checked only at the real COMMIT
        hold_id = the_hold(proxy)
        refused = db(proxy, "commit", hold_id)
        assert refused.returncode == 1
        assert f"held transaction {hold_id} not committed" in refused.stdout and "one_each" in refused.stdout
        (done,) = holds(proxy, everything=True)
        assert done["state"] == "rolled back"
        commit = next(r for r in db_rows(proxy) if r["method"] == "COMMIT")
        assert "one_each" in commit["error"]
    finally:
        alter(postgres, "ALTER TABLE orders DROP CONSTRAINT one_each")
    assert items(postgres) == ORIGINAL


def test_the_servers_idle_transaction_limit_does_not_end_a_hold(make_proxy, postgres: Postgres) -> None:  # noqa: F811
    alter(postgres, f"ALTER ROLE {APP_USER[0]} SET idle_in_transaction_session_timeout = '1s'")
    try:
        proxy, url = start_gateway(make_proxy, postgres, HOLD)
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("INSERT INTO orders (item, qty) VALUES ('patient', 1)")
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("SELECT 1 FROM orders")  # after a reset, the limit is lifted again
        time.sleep(2.5)
        assert db(proxy, "commit", the_hold(proxy)).returncode == 0
    finally:
        alter(postgres, f"ALTER ROLE {APP_USER[0]} RESET idle_in_transaction_session_timeout")
    assert items(postgres) == [*ORIGINAL, ("patient", 1)]


def test_each_connection_gets_its_own_settings(make_proxy, postgres: Postgres) -> None:  # noqa: F811
    proxy, url = start_gateway(make_proxy, postgres, HOLD)
    with psycopg.connect(url, autocommit=True, application_name="one") as conn:
        conn.execute("INSERT INTO orders (item, qty) VALUES ('kept', 1)")
        assert conn.execute("SHOW application_name").fetchone() == ("one",)
    with psycopg.connect(url, autocommit=True, application_name="two") as conn:  # as if it had logged in itself
        assert conn.execute("SHOW application_name").fetchone() == ("two",)
        assert conn.info.parameter_status("application_name") == "two"  # what it was told at its start
        assert conn.execute("SELECT count(*) FROM orders WHERE item = 'kept'").fetchone() == (1,)
    assert db(proxy, "commit", the_hold(proxy)).returncode == 0
    assert items(postgres)[-1] == ("kept", 1)


def test_reads_in_a_held_transaction_name_their_hold(make_proxy, postgres: Postgres) -> None:  # noqa: F811
    """A read in a held transaction sees its uncommitted writes: its row says which hold it ran in, as a write's
    does (`log` and `show` list it with it), though it has nothing to undo."""
    proxy, url = start_gateway(make_proxy, postgres, HOLD)
    with psycopg.connect(url, autocommit=True) as conn:
        assert conn.execute("SELECT count(*) FROM orders").fetchone() == (3,)
        conn.execute("DELETE FROM orders WHERE item = %s", ("pears",))
        assert conn.execute("SELECT count(*) FROM orders WHERE qty > %s", (0,)).fetchone() == (2,)
    hold_id = the_hold(proxy)
    rows = db_rows(proxy)
    assert [(r["method"], r["undo_class"]) for r in rows] == [
        ("SELECT", f"held: in held transaction {hold_id}, changes nothing"),
        ("DELETE", f"held: undone by `goex-proxy db rollback {hold_id}` until committed"),
        ("SELECT", f"held: in held transaction {hold_id}, changes nothing")]
    shown = proxy.cli("show", str(rows[0]["id"]))
    assert f"undo: held: in held transaction {hold_id}, changes nothing" in shown.stdout
    read = proxy.cli("undo", str(rows[0]["id"]), "--yes")
    assert read.returncode == 1 and "nothing to undo" in read.stderr, read.stderr
    session = proxy.cli("undo", "--agent", "mailbot", "--since", "1h", "--dry-run")
    assert str(rows[0]["id"]) not in session.stdout + session.stderr  # a read is no statement to undo
    assert (db(proxy, "rollback", hold_id).returncode, items(postgres)) == (0, ORIGINAL)
