"""Row-level undo of SQL through the gateway end to end: a real PostgreSQL, a real `goex-proxy run`, psycopg as the
agent; each write's rows captured in its own statement, and `goex-proxy undo ID` restoring exactly those rows."""

from __future__ import annotations

import json
import re
import sqlite3

import psycopg
import pytest
from psycopg import errors

from goex_proxy.ids import packed
from tests.conftest import free_port
from tests.e2e.test_approvals import wait_for
from tests.e2e.test_console import LINK, csrf_of, signed_in
from tests.e2e.test_db_gateway import db_rows, direct, gateway_pg, postgres, start_gateway  # noqa: F401
from tests.pg import APP_USER, server_bin

pytestmark = [pytest.mark.e2e,
              pytest.mark.skipif(server_bin() is None, reason="PostgreSQL is not installed (tests/install-tools)")]

ALL = "SELECT id, item, qty FROM orders ORDER BY id"


@pytest.fixture
def gateway(make_proxy, postgres):  # noqa: F811
    return start_gateway(make_proxy, postgres)


def person(pg, sql: str) -> None:
    """A person's change, straight to the database."""
    with psycopg.connect(pg.dsn(APP_USER, "shop"), autocommit=True) as conn:
        conn.execute(sql)


def last(proxy, method: str) -> dict:
    """The newest row of the gateway's of this method (not an undo)."""
    return [r for r in db_rows(proxy) if r["method"] == method and not r.get("undo_of")][-1]


def undo(proxy, request_id: str, *more: str):
    return proxy.cli("undo", request_id, "--yes", *more)


def test_an_update_and_a_delete_of_several_rows_are_undone_by_id(gateway) -> None:
    proxy, url = gateway
    pg = gateway_pg(gateway)
    before = direct(pg, ALL)
    with psycopg.connect(url, autocommit=True) as conn:
        assert conn.execute("UPDATE orders SET qty = qty * %s WHERE qty < %s", (10, 5)).rowcount == 2
    update = last(proxy, "UPDATE")
    assert update["undo_class"] == "exact"
    assert "undo: exact  (2 row(s) of public.orders captured)" in proxy.cli("show", update["id"]).stdout
    shown = proxy.cli("undo", update["id"], "--dry-run")
    assert shown.returncode == 0, shown.stderr
    assert 'set back 2 row(s): (1), (2)' in shown.stdout
    assert direct(pg, ALL) == [(1, "apples", 30), (2, "pears", 10), (3, "plums", 7)]  # --dry-run changed nothing
    done = undo(proxy, update["id"])
    assert done.returncode == 0, done.stderr
    assert direct(pg, ALL) == before

    with psycopg.connect(url, autocommit=True) as conn:
        assert conn.execute("DELETE FROM orders WHERE qty > %s", (2,)).rowcount == 2
    assert direct(pg, ALL) == [(2, "pears", 1)]
    delete = last(proxy, "DELETE")
    done = undo(proxy, delete["id"])
    assert done.returncode == 0, done.stderr
    assert direct(pg, ALL) == before
    again = undo(proxy, delete["id"])
    assert again.returncode == 1 and "already undone" in again.stderr
    undos = [r for r in db_rows(proxy) if r.get("undo_of")]
    assert [(r["undo_of"], r["method"], r["status"]) for r in undos] == [(update["id"], "UPDATE", 0),
                                                                         (delete["id"], "INSERT", 0)]
    verified = proxy.cli("log", "verify")
    assert verified.returncode == 0, verified.stdout + verified.stderr


def test_an_update_from_a_list_is_undone(gateway) -> None:
    proxy, url = gateway
    pg = gateway_pg(gateway)
    before = direct(pg, ALL)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("UPDATE orders o SET qty = v.q FROM (VALUES (1, %s), (3, %s), (3, 99)) AS v(id, q) "
                     "WHERE o.id = v.id", (10, 30))
    changed = direct(pg, ALL)
    assert changed[1] == before[1] and changed != before
    done = undo(proxy, last(proxy, "UPDATE")["id"])
    assert done.returncode == 0, done.stderr
    assert direct(pg, ALL) == before


def test_a_persons_change_in_between_is_a_conflict_and_nothing_changes(gateway) -> None:
    proxy, url = gateway
    pg = gateway_pg(gateway)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("UPDATE orders SET qty = 0 WHERE id IN (%s, %s)", (1, 3))
        conn.execute("DELETE FROM orders WHERE id = %s", (2,))
    update, delete = last(proxy, "UPDATE"), last(proxy, "DELETE")
    person(pg, "UPDATE orders SET item = 'plums (person)' WHERE id = 3")
    person(pg, "INSERT INTO orders (id, item, qty) VALUES (2, 'pears (person)', 5)")
    now = direct(pg, ALL)
    refused = undo(proxy, update["id"])
    assert refused.returncode == 3, refused.stderr
    assert "the row with key (3) changed since: item \"plums\" -> \"plums (person)\"" in refused.stderr
    refused = undo(proxy, delete["id"])
    assert refused.returncode == 3 and "a row with key (2) exists again" in refused.stderr
    assert direct(pg, ALL) == now  # row 1 was not set back either: one transaction


def test_an_insert_is_undone_and_the_agent_sees_what_it_would_without_capture(gateway) -> None:
    proxy, url = gateway
    pg = gateway_pg(gateway)
    before = direct(pg, ALL)
    with psycopg.connect(url, autocommit=True) as conn:
        cur = conn.execute("INSERT INTO orders (item, qty) VALUES (%s, %s), (%s, %s)", ("kiwis", 4, "figs", 2))
        assert (cur.rowcount, cur.description, cur.statusmessage) == (2, None, "INSERT 0 2")
        cur = conn.execute("UPDATE orders SET qty = qty + 1 WHERE item = %s RETURNING *", ("kiwis",))
        assert [c.name for c in cur.description] == ["id", "item", "qty"] and cur.fetchall() == [(4, "kiwis", 5)]
        cur = conn.execute("UPDATE orders o SET qty = qty + 1 WHERE item = %s RETURNING o.qty, item", ("figs",),
                           binary=True)
        assert [c.name for c in cur.description] == ["qty", "item"] and cur.fetchall() == [(3, "figs")]
        with psycopg.ClientCursor(conn) as simple:  # the simple query protocol
            simple.execute("DELETE FROM orders WHERE item = 'nothing here'")
            assert (simple.rowcount, simple.description, simple.statusmessage) == (0, None, "DELETE 0")
            simple.execute("UPDATE orders SET qty = qty WHERE item = 'figs' RETURNING id")
            assert simple.fetchall() == [(5,)] and simple.statusmessage == "UPDATE 1"
        for _ in range(6):  # psycopg prepares what runs often: Bind and Execute of a named statement
            assert conn.execute("UPDATE orders SET qty = qty WHERE id = %s", (1,), prepare=True).rowcount == 1
    rows = db_rows(proxy)
    updates = [r for r in rows if r["method"] == "UPDATE" and r["row_images"]]
    assert len(updates) == 9 and all(r["undo_class"] == "exact" for r in updates)
    insert = last(proxy, "INSERT")
    blocked = undo(proxy, insert["id"])  # the rows it inserted were updated since: undo those first
    assert blocked.returncode == 3 and "the row with key (4) changed since: qty 4 -> 5" in blocked.stderr
    for row in (updates[1], updates[0], insert):
        done = undo(proxy, row["id"])
        assert done.returncode == 0, done.stderr
    assert direct(pg, ALL) == before
    empty = [r for r in db_rows(proxy) if r["method"] == "DELETE"][-1]
    assert empty["undo_class"] is None and empty["row_images"] is None  # it changed nothing


def test_rows_that_cannot_be_captured_are_irreversible(gateway) -> None:
    proxy, url = gateway
    pg = gateway_pg(gateway)
    person(pg, "CREATE TABLE IF NOT EXISTS loose (item text, qty int)")
    person(pg, "GRANT ALL ON loose TO " + APP_USER[0])
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("UPDATE orders SET id = id WHERE id = %s", (1,))
        with conn.transaction():  # the agent's own transaction, rolled back: its rows never changed
            conn.execute("UPDATE orders SET qty = 1 WHERE id = %s", (1,))
            raise psycopg.Rollback()
    rows = [r for r in db_rows(proxy) if r["method"] == "UPDATE"]
    assert rows[0]["undo_class"].startswith("irreversible: UPDATE sets a primary-key column")
    assert rows[1]["undo_class"] == "irreversible: its transaction was rolled back (wholly, or to a savepoint after it)"
    assert rows[1]["row_images"] is None
    refused = undo(proxy, rows[1]["id"])
    assert refused.returncode == 2 and "rolled back" in refused.stderr


def test_a_table_without_a_primary_key_or_with_a_trigger_is_irreversible(gateway) -> None:
    proxy, url = gateway
    pg = gateway_pg(gateway)
    person(pg, "ALTER TABLE orders DROP CONSTRAINT orders_pkey")
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            assert conn.execute("UPDATE orders SET qty = 0 WHERE id = %s", (1,)).rowcount == 1
    finally:
        person(pg, "ALTER TABLE orders ADD PRIMARY KEY (id)")
    person(pg, "CREATE FUNCTION bump() RETURNS trigger LANGUAGE plpgsql AS 'BEGIN NEW.qty := NEW.qty + 1; "
               "RETURN NEW; END'")
    person(pg, "CREATE TRIGGER bump BEFORE UPDATE ON orders FOR EACH ROW EXECUTE FUNCTION bump()")
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            assert conn.execute("UPDATE orders SET qty = 0 WHERE id = %s", (2,)).rowcount == 1
    finally:
        person(pg, "DROP TRIGGER bump ON orders")
        person(pg, "DROP FUNCTION bump()")
    first, second = [r for r in db_rows(proxy) if r["method"] == "UPDATE"]
    assert first["undo_class"] == "irreversible: table public.orders has no primary key: its rows cannot be found " \
                                  "again to be restored"
    assert second["undo_class"] == "irreversible: table orders has triggers: they may change rows the statement " \
                                   "does not hand back"
    assert first["row_images"] is None and second["row_images"] is None
    assert direct(pg, ALL) == [(1, "apples", 0), (2, "pears", 1), (3, "plums", 7)]


def test_an_edited_image_fails_verify_and_undo_refuses(gateway) -> None:
    proxy, url = gateway
    pg = gateway_pg(gateway)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("DELETE FROM orders WHERE id = %s", (3,))
    delete = last(proxy, "DELETE")
    images = json.loads(delete["row_images"])
    assert images["rows"] == [{"id": 3, "item": "plums", "qty": 7}]
    images["rows"][0]["qty"] = 7000
    db = sqlite3.connect(proxy.home / "audit.db")
    db.execute("UPDATE requests SET row_images = ? WHERE id = ?", (json.dumps(images).encode(), packed(delete["id"])))
    db.commit()
    verified = proxy.cli("log", "verify")
    assert verified.returncode != 0 and delete["id"] in verified.stdout + verified.stderr
    refused = undo(proxy, delete["id"])
    assert refused.returncode == 2 and "does not match its hash" in refused.stderr
    assert direct(pg, ALL) == [(1, "apples", 3), (2, "pears", 1)]


def test_a_statement_over_the_capture_bound_fails_with_nothing_changed(make_proxy, postgres) -> None:  # noqa: F811
    proxy, url = start_gateway(make_proxy, postgres, "    capture_rows: 2\n")
    pg = gateway_pg((proxy, url))
    before = direct(pg, ALL)
    with psycopg.connect(url, autocommit=True) as conn:
        with pytest.raises(psycopg.errors.ProgramLimitExceeded, match="more than 2 rows.*nothing was changed"):
            conn.execute("UPDATE orders SET qty = qty + %s WHERE id > 0", (1,))
        with psycopg.ClientCursor(conn) as simple, pytest.raises(psycopg.errors.ProgramLimitExceeded):
            simple.execute("DELETE FROM orders WHERE id > 0")
        assert direct(pg, ALL) == before
        for _ in range(6):  # each run of a prepared statement counts from one (in one transaction too)
            assert conn.execute("UPDATE orders SET qty = qty WHERE id < %s", (3,), prepare=True).rowcount == 2
        with conn.transaction():
            for _ in range(3):
                assert conn.execute("UPDATE orders SET qty = qty WHERE id < %s", (3,), prepare=True).rowcount == 2
        assert conn.execute("DELETE FROM orders WHERE id < %s", (3,)).rowcount == 2
    refused = [r for r in db_rows(proxy) if (r["error"] or "").startswith("54000")]
    assert len(refused) == 2 and all("capture_rows" in r["error"] for r in refused)


def test_a_session_undo_takes_back_its_statements_newest_first(gateway) -> None:
    proxy, url = gateway
    pg = gateway_pg(gateway)
    before = direct(pg, ALL)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("INSERT INTO orders (item, qty) VALUES (%s, %s)", ("kiwis", 4))
        conn.execute("UPDATE orders SET qty = qty + 100 WHERE item IN (%s, %s)", ("kiwis", "apples"))
        conn.execute("DELETE FROM orders WHERE item = %s OR id = %s", ("kiwis", 2))
        assert conn.execute("SELECT count(*) FROM orders").fetchone() == (2,)
    shown = proxy.cli("undo", "--agent", "mailbot", "--since", "1h", "--dry-run")
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.count("fidelity: exact") == 3 and direct(pg, ALL) != before
    done = proxy.cli("undo", "--agent", "mailbot", "--since", "1h", "--yes")
    assert done.returncode == 0, done.stderr
    assert direct(pg, ALL) == before
    assert [r["method"] for r in db_rows(proxy) if r.get("undo_of")] == ["INSERT", "UPDATE", "DELETE"]


def test_statements_in_the_agents_own_transaction_count_once_it_commits(gateway) -> None:
    proxy, url = gateway
    pg = gateway_pg(gateway)
    before = direct(pg, ALL)
    with psycopg.connect(url) as conn:  # not autocommit: psycopg sends BEGIN first, COMMIT at the end
        conn.execute("UPDATE orders SET qty = 50 WHERE id = %s", (1,))
        conn.execute("DELETE FROM orders WHERE id = %s", (2,))
        with conn.transaction():  # a savepoint, released
            conn.execute("UPDATE orders SET qty = 70 WHERE id = %s", (3,))
    with psycopg.connect(url) as conn:
        conn.execute("UPDATE orders SET qty = 0 WHERE id = %s", (1,))
        conn.rollback()
    with psycopg.connect(url) as conn:
        conn.execute("UPDATE orders SET qty = 0 WHERE id = %s", (1,))
        with pytest.raises(psycopg.errors.DivisionByZero):
            conn.execute("SELECT 1 / 0 FROM orders")
    rows = [r for r in db_rows(proxy) if r["method"] in ("UPDATE", "DELETE")]
    assert [r["undo_class"] for r in rows[:3]] == ["exact"] * 3
    assert [r["undo_class"] for r in rows[3:]] == ["irreversible: its transaction was rolled back (wholly, or to a "
                                                   "savepoint after it)"] * 2
    for row in reversed(rows[:3]):
        done = undo(proxy, row["id"])
        assert done.returncode == 0, done.stderr
    assert direct(pg, ALL) == before
    conn = psycopg.connect(url)
    conn.execute("UPDATE orders SET qty = 0 WHERE id = %s", (1,))
    conn.close()  # in its transaction: the server rolls it back
    cut = [r for r in db_rows(proxy) if r["method"] == "UPDATE" and not r.get("undo_of")][-1]
    assert cut["undo_class"] == "irreversible: the connection ended before its transaction's end was seen"
    assert direct(pg, ALL) == before


SHAPES = [
    ("UPDATE orders SET qty = qty + %s WHERE qty < %s", (1, 5)),
    ("UPDATE orders SET qty = qty + %s WHERE qty < %s RETURNING *", (1, 5)),
    ("UPDATE orders AS o SET qty = 2 WHERE o.id = %s RETURNING o.item, qty * 2 AS double, 'x' AS qty", (1,)),
    ("UPDATE orders o SET qty = v.q FROM (VALUES (1, 10), (3, %s)) AS v(id, q) WHERE o.id = v.id RETURNING v.q",
     (30,)),
    ("DELETE FROM orders WHERE id = %s RETURNING id, item", (2,)),
    ("DELETE FROM orders WHERE id > %s", (100,)),
    ("INSERT INTO orders (id, item, qty) VALUES (%s, %s, 1), (%s, 'b', 2) RETURNING *", (10, "a", 11)),
    ("INSERT INTO orders (id, item, qty) VALUES (%s, 'c', 1) ON CONFLICT DO NOTHING", (1,)),
    ("INSERT INTO orders (id, item, qty) SELECT id + 20, item, qty FROM orders WHERE id < %s RETURNING id", (3,)),
]


def outcome_of(cur) -> tuple:
    description = None if cur.description is None else [(c.name, c.type_code) for c in cur.description]
    return description, cur.fetchall() if cur.description is not None else None, cur.statusmessage, cur.rowcount


def reset(pg) -> None:
    """The orders table as start_gateway leaves it."""
    person(pg, "DELETE FROM orders WHERE id > 3")
    person(pg, "INSERT INTO orders (id, item, qty) VALUES (1, 'apples', 3), (2, 'pears', 1), (3, 'plums', 7) "
               "ON CONFLICT (id) DO UPDATE SET item = EXCLUDED.item, qty = EXCLUDED.qty")


@pytest.mark.parametrize("binary", [False, True])
def test_the_agent_sees_exactly_what_it_would_without_capture(gateway, binary: bool) -> None:
    proxy, url = gateway
    pg = gateway_pg(gateway)
    with psycopg.connect(pg.dsn(APP_USER, "shop")) as straight, psycopg.connect(url, autocommit=True) as agent:
        for sql, params in SHAPES:
            for prepare in (False, True):
                reset(pg)
                with straight.cursor(binary=binary) as cur:  # the same statement straight to the server, undone
                    cur.execute(sql, params, prepare=prepare)
                    expected = outcome_of(cur)
                straight.rollback()
                with agent.cursor(binary=binary) as cur:  # the extended protocol (prepared: Bind, Execute only)
                    cur.execute(sql, params, prepare=prepare)
                    assert outcome_of(cur) == expected, sql
                reset(pg)
                with psycopg.ClientCursor(agent) as cur:  # the simple query protocol
                    cur.execute(sql, params)
                    assert outcome_of(cur) == expected, sql
    captured = [r for r in db_rows(proxy) if r["method"] in ("UPDATE", "DELETE", "INSERT")]
    assert len(captured) == 4 * len(SHAPES)  # each statement twice extended, twice simple
    assert {r["undo_class"] for r in captured} <= {"exact", None}
    assert sum(r["undo_class"] == "exact" for r in captured) >= 2 * len(SHAPES)


def test_a_table_the_session_finds_other_than_the_catalog_read_is_not_undone(gateway) -> None:
    proxy, url = gateway
    pg = gateway_pg(gateway)
    person(pg, "CREATE SCHEMA IF NOT EXISTS shadow")
    person(pg, "CREATE TABLE IF NOT EXISTS shadow.orders (id int PRIMARY KEY, item text, qty int)")
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            # Connections made from now on (the gateway's catalog reader among them) find shadow.orders first; the
            # agent's session, made before, finds public.orders (as a session's own SET search_path would).
            person(pg, f"ALTER ROLE {APP_USER[0]} SET search_path = shadow, public")
            with pytest.raises(errors.InsufficientPrivilege, match="not the one goex-proxy read the catalog of"):
                conn.execute("UPDATE orders SET qty = 5 WHERE id = %s", (1,))
            assert conn.execute("UPDATE public.orders SET qty = 5 WHERE id = %s", (1,)).rowcount == 1
    finally:
        person(pg, f"ALTER ROLE {APP_USER[0]} RESET search_path")
        person(pg, "DROP SCHEMA shadow CASCADE")
    assert direct(pg, ALL)[0] == (1, "apples", 5)
    refused, update = [r for r in db_rows(proxy) if r["method"] == "UPDATE"]
    assert refused["undo_class"] is None and "nothing was changed" in refused["error"]  # planned exact: never less
    assert update["undo_class"] == "exact"


def test_rows_with_an_identity_column_always_generated_are_put_back_as_they_were(gateway) -> None:
    proxy, url = gateway
    pg = gateway_pg(gateway)
    person(pg, "ALTER TABLE orders ALTER COLUMN id DROP DEFAULT")
    person(pg, "ALTER TABLE orders ALTER COLUMN id ADD GENERATED ALWAYS AS IDENTITY (START 100)")
    try:
        before = direct(pg, ALL)
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("DELETE FROM orders WHERE id IN (%s, %s)", (1, 3))
        done = undo(proxy, last(proxy, "DELETE")["id"])  # the ids given back, not new ones (OVERRIDING SYSTEM VALUE)
        assert done.returncode == 0, done.stderr
        assert direct(pg, ALL) == before
    finally:
        person(pg, "ALTER TABLE orders ALTER COLUMN id DROP IDENTITY")
        person(pg, "ALTER TABLE orders ALTER COLUMN id SET DEFAULT nextval('orders_id_seq')")


def test_rows_printed_inexactly_by_the_agents_settings_are_not_put_back_rounded(make_proxy, postgres) -> None:  # noqa: F811
    """A client may start up with extra_float_digits or IntervalStyle of its own, or SET them: the images would then
    be printed rounded (or ambiguously) and an undo would put back other values. Asked at startup, they are not passed
    on; SET, the write fails with nothing changed (a statement planned exact must stay so, whatever `review:` says
    of irreversible ones)."""
    import asyncio

    import asyncpg

    from tests.e2e.test_db_gateway import POLICY

    settable = POLICY + "  - name: settings\n    allow: {database: shop, statements: [set]}\n"
    proxy, url = start_gateway(make_proxy, postgres, policy=settable)
    pg = gateway_pg((proxy, url))
    values = "price = 3.14159265358979, span = '-1 day -2 hours', days = '[2024-03-04,2024-05-06)'"
    person(pg, "ALTER TABLE orders ADD COLUMN price float8, ADD COLUMN span interval, ADD COLUMN days daterange")
    try:
        person(pg, "INSERT INTO orders (id, item, qty) VALUES (4, 'figs', 2)")
        person(pg, f"UPDATE orders SET {values}")
        before = direct(pg, "SELECT id, price, span, days FROM orders ORDER BY id")

        async def agent(settings: dict[str, str], sets: list[str], key: int) -> None:
            conn = await asyncpg.connect(url, server_settings=settings)
            try:
                for sql in sets:
                    await conn.execute(sql)
                if sets:
                    with pytest.raises(asyncpg.InsufficientPrivilegeError, match="prints values so that undo"):
                        await conn.execute("DELETE FROM orders WHERE id = $1", key)
                    await conn.execute("RESET ALL")
                assert await conn.execute("DELETE FROM orders WHERE id = $1", key) == "DELETE 1"
            finally:
                await conn.close()

        asyncio.run(agent({"extra_float_digits": "-15", "IntervalStyle": "sql_standard", "DateStyle": "SQL, DMY"}, [], 1))
        asyncio.run(agent({}, ["SET extra_float_digits = -15"], 2))
        asyncio.run(agent({}, ["SET IntervalStyle = sql_standard"], 3))
        asyncio.run(agent({}, ["SET DateStyle = 'SQL, DMY'"], 4))
        deletes = [r for r in db_rows(proxy) if r["method"] == "DELETE"]
        assert [r["undo_class"] for r in deletes] == ["exact"] + [None, "exact"] * 3
        assert all("nothing was changed" in r["error"] for r in deletes[1::2])
        for row in reversed(deletes[::2]):
            done = undo(proxy, row["id"])
            assert done.returncode == 0, done.stderr
        assert direct(pg, "SELECT id, price, span, days FROM orders ORDER BY id") == before
    finally:
        person(pg, "DELETE FROM orders WHERE id = 4")
        person(pg, "ALTER TABLE orders DROP COLUMN price, DROP COLUMN span, DROP COLUMN days")


def test_a_rollback_is_not_taken_for_a_commit_sent_with_it_or_after_it(gateway) -> None:
    """Which statements a transaction's end settles is followed statement by statement: `ROLLBACK; COMMIT` in one
    message (the COMMIT outside any transaction) leaves the rolled back rows' images out, and so does a pipeline
    whose COMMIT ends one transaction before another that is rolled back later."""
    proxy, url = gateway
    pg = gateway_pg(gateway)
    before = direct(pg, ALL)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("BEGIN")
        conn.execute("UPDATE orders SET qty = 50 WHERE id = %s", (1,))
        with psycopg.ClientCursor(conn) as simple:
            simple.execute("ROLLBACK; COMMIT")
        with conn.pipeline():
            conn.execute("BEGIN")
            conn.execute("UPDATE orders SET qty = 60 WHERE id = %s", (2,))
            conn.execute("COMMIT")
            conn.execute("BEGIN")
            conn.execute("UPDATE orders SET qty = 70 WHERE id = %s", (3,))
        conn.execute("ROLLBACK")
    assert direct(pg, ALL) == [before[0], (2, "pears", 60), before[2]]
    first, second, third = [r for r in db_rows(proxy) if r["method"] == "UPDATE"]
    assert first["undo_class"].startswith("irreversible: its transaction was rolled back"), first["undo_class"]
    assert second["undo_class"] == "exact"
    assert third["undo_class"].startswith("irreversible: its transaction was rolled back"), third["undo_class"]
    assert first["row_images"] is None and third["row_images"] is None


def test_a_table_with_a_json_column_is_irreversible(gateway) -> None:
    """A json column keeps its text as written (key order, duplicate keys, spaces, `1e2`), which the jsonb image
    normalizes: its rows put back would not be the rows deleted."""
    proxy, url = gateway
    pg = gateway_pg(gateway)
    person(pg, "CREATE DOMAIN doc AS json")
    person(pg, "ALTER TABLE orders ADD COLUMN note json, ADD COLUMN notes doc[]")
    try:
        person(pg, """UPDATE orders SET note = '{"b": 1e2, "a": 2, "a": 3}', notes = ARRAY['{"z": 1,  "y": 2}'::doc]""")
        with psycopg.connect(url, autocommit=True) as conn:
            assert conn.execute("DELETE FROM orders WHERE id = %s", (1,)).rowcount == 1
        row = last(proxy, "DELETE")
        assert row["undo_class"] == "irreversible: table orders has a json column: its text is not kept as written " \
                                    "in the image", row["undo_class"]
        assert row["row_images"] is None
    finally:
        person(pg, "ALTER TABLE orders DROP COLUMN note, DROP COLUMN notes")
        person(pg, "DROP DOMAIN doc")


def with_console(make_proxy, postgres):  # noqa: F811
    """The gateway's `run` serving its console too: the proxy, mailbot's URL, the console's base and a signed-in
    client."""
    port = free_port()
    proxy, url = start_gateway(make_proxy, postgres, more=f"console:\n  listen: '127.0.0.1:{port}'\n")
    found = wait_for(lambda: LINK.search(proxy.log_text()), what="the console's link")
    return proxy, url, found.group(1), signed_in(found.group(1), found.group(2))


def test_a_statement_is_undone_from_its_page_in_the_console(make_proxy, postgres) -> None:  # noqa: F811
    """The console's request page shows a statement's captured rows and undoes them as `undo ID` does; a person's
    change in between is a conflict with no way to force it, and nothing changed."""
    proxy, url, base, client = with_console(make_proxy, postgres)
    pg = gateway_pg((proxy, url))
    before = direct(pg, ALL)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("UPDATE orders SET qty = 0 WHERE id = %s", (1,))
        conn.execute("DELETE FROM orders WHERE id = %s", (2,))
    update, delete = last(proxy, "UPDATE"), last(proxy, "DELETE")

    page = client.get(f"/request/{update['id']}").text
    assert "set back 1 row(s): (1)" in page and "Undo this statement" in page, page
    person(pg, "UPDATE orders SET qty = 99 WHERE id = 1")
    refused = client.post(f"/request/{update['id']}/undo", data={"csrf": csrf_of(page)},
                          headers={"Origin": base})
    assert refused.status_code == 409 and "conflict" in refused.text and "force" not in refused.text.lower()
    assert direct(pg, "SELECT qty FROM orders WHERE id = 1") == [(99,)]
    forced = client.post(f"/request/{update['id']}/undo", data={"csrf": csrf_of(page), "force": "1"},
                         headers={"Origin": base})
    assert forced.status_code == 409 and direct(pg, "SELECT qty FROM orders WHERE id = 1") == [(99,)]

    page = client.get(f"/request/{delete['id']}").text
    assert "insert back 1 row(s): (2)" in page
    done = client.post(f"/request/{delete['id']}/undo", data={"csrf": csrf_of(page)}, headers={"Origin": base})
    assert done.status_code == 200 and re.search(r"undone \w+: INSERT 0 1", done.text), done.text
    assert direct(pg, "SELECT id, item, qty FROM orders WHERE id = 2") == [r for r in before if r[0] == 2]
    after = client.get(f"/request/{delete['id']}").text
    assert "already undone" in after and "Undo this statement" not in after
    assert proxy.cli("log", "verify").returncode == 0


def test_a_sessions_statements_are_undone_from_the_consoles_session_page(make_proxy, postgres) -> None:  # noqa: F811
    """The console's session undo plans an agent's statements with its requests, and one confirm restores their rows,
    newest first, as `goex-proxy undo --agent A --since WHEN` does."""
    proxy, url, base, client = with_console(make_proxy, postgres)
    pg = gateway_pg((proxy, url))
    before = direct(pg, ALL)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("UPDATE orders SET qty = qty + 1 WHERE id = %s", (1,))
        conn.execute("UPDATE orders SET qty = qty + 1 WHERE id = %s", (1,))  # undone first, then the one before
        conn.execute("DELETE FROM orders WHERE id = %s", (3,))
        conn.execute("SELECT count(*) FROM orders")
    wait_for(lambda: last(proxy, "DELETE").get("undo_class") == "exact", what="the DELETE's outcome")
    page = client.get("/session", params={"agent": "mailbot", "since": "1h"}).text
    assert "Database statements" in page and "Undo these 3 request(s)" in page, page
    assert page.count("set back 1 row(s): (1)") == 2 and "insert back 1 row(s): (3)" in page
    ids = re.findall(r'name="id" value="(\w+)"', page)
    done = client.post("/session/undo", data={"csrf": csrf_of(page), "agent": "mailbot", "id": ids},
                       headers={"Origin": base})
    assert done.status_code == 200, done.text
    assert direct(pg, ALL) == before
    again = client.get("/session", params={"agent": "mailbot", "since": "1h"}).text
    assert again.count("already undone") == 3 and 'id="nothing"' in again



def test_a_session_undo_that_fails_at_one_statement_still_says_which_it_restored(make_proxy,
                                                                                  postgres) -> None:  # noqa: F811
    """The console's session undo restores statements one transaction each, newest first: when a later one fails (the
    server refuses its restore), the page must still say which were restored. It said only 'Not undone' with the
    failure, while the newer statement's rows were back, so the person could not tell what the database now holds."""
    proxy, url, base, client = with_console(make_proxy, postgres)
    pg = gateway_pg((proxy, url))
    before = direct(pg, ALL)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("UPDATE orders SET qty = 5 WHERE id = %s", (1,))
        conn.execute("DELETE FROM orders WHERE id = %s", (3,))
    wait_for(lambda: last(proxy, "DELETE").get("undo_class") == "exact", what="the DELETE's outcome")
    update, delete = last(proxy, "UPDATE"), last(proxy, "DELETE")
    person(pg, "CREATE FUNCTION no_updates() RETURNS trigger LANGUAGE plpgsql AS "
               "$$BEGIN RAISE EXCEPTION 'orders are not updated here'; END$$")
    person(pg, "CREATE TRIGGER no_updates BEFORE UPDATE ON orders FOR EACH ROW EXECUTE FUNCTION no_updates()")
    try:
        page = client.get("/session", params={"agent": "mailbot", "since": "1h"}).text
        ids = re.findall(r'name="id" value="(\w+)"', page)
        assert set(ids) == {update["id"], delete["id"]}, page
        done = client.post("/session/undo", data={"csrf": csrf_of(page), "agent": "mailbot", "id": ids},
                           headers={"Origin": base})
        assert direct(pg, "SELECT id, item, qty FROM orders WHERE id = 3") == [r for r in before if r[0] == 3]
        assert done.status_code == 409, done.text
        assert re.search(rf"{delete['id']}</a>: undone \w+: INSERT 0 1", done.text), done.text
        assert re.search(rf"{update['id']}</a>: cannot undo .*orders are not updated here", done.text), done.text
    finally:
        person(pg, "DROP TRIGGER no_updates ON orders")
        person(pg, "DROP FUNCTION no_updates()")


def test_a_statement_is_not_undone_into_another_database_its_name_now_points_at(gateway) -> None:
    """Undo restores rows through the database's entry in the config as it is now. Once `shop` names another
    database (its dbname or port edited since: staging moved to production), the captured rows must not be written
    there: an undone DELETE would insert rows the statement never took from it."""
    proxy, url = gateway
    pg = gateway_pg(gateway)
    with psycopg.connect(pg.dsn(), autocommit=True) as conn:
        conn.execute("DROP DATABASE IF EXISTS shop_moved WITH (FORCE)")
        conn.execute(f"CREATE DATABASE shop_moved OWNER {APP_USER[0]}")
    try:
        with psycopg.connect(pg.dsn(APP_USER, "shop_moved"), autocommit=True) as conn:
            conn.execute("CREATE TABLE orders (id serial PRIMARY KEY, item text NOT NULL, qty int NOT NULL)")
        with psycopg.connect(url, autocommit=True) as conn:
            assert conn.execute("DELETE FROM orders WHERE id = %s", (1,)).rowcount == 1
        delete = last(proxy, "DELETE")
        text = proxy.config.read_text()
        assert "    dbname: shop\n" in text
        proxy.config.write_text(text.replace("    dbname: shop\n", "    dbname: shop_moved\n"))
        done = undo(proxy, delete["id"])
        assert done.returncode != 0, done.stdout
        assert "now names another database" in done.stderr, done.stderr
        with psycopg.connect(pg.dsn(APP_USER, "shop_moved"), autocommit=True) as conn:
            assert conn.execute("SELECT count(*) FROM orders").fetchone() == (0,)
    finally:
        with psycopg.connect(pg.dsn(), autocommit=True) as conn:
            conn.execute("DROP DATABASE IF EXISTS shop_moved WITH (FORCE)")


def test_a_write_planned_exact_never_runs_uncaptured_after_a_setting_changes(make_proxy, postgres) -> None:  # noqa: F811
    """`review:` decides by the class a statement is planned with: a write planned exact that the session's settings
    (SET under a `set` rule, or set_config) would print inexactly, or that finds another table by its name, must not
    run as an irreversible write that review let pass. It fails, nothing changed, and the agent is told why."""
    from tests.e2e.test_db_gateway import POLICY

    policy = POLICY.replace("rules:\n", "review: {irreversible: delay 1s}\nrules:\n") + (
        "  - name: settings\n    allow: {database: shop, statements: [set]}\n"
        "  - name: settings by function\n    allow: {database: shop, statements: [select], functions: [set_config]}\n")
    proxy, url = start_gateway(make_proxy, postgres, policy=policy)
    pg = gateway_pg((proxy, url))
    before = direct(pg, ALL)
    with psycopg.connect(url, autocommit=True) as conn:
        for change in ("SET extra_float_digits = -15", "SET IntervalStyle = sql_standard",
                       "SELECT set_config('DateStyle', 'SQL, DMY', false)"):
            conn.execute(change)
            with pytest.raises(errors.InsufficientPrivilege, match="prints values so that undo would not put"):
                conn.execute("DELETE FROM orders WHERE id = %s", (1,))
            with pytest.raises(errors.InsufficientPrivilege, match="prints values so that undo would not put"):
                conn.execute("UPDATE orders SET qty = 0 WHERE id = %s", (1,), prepare=True)
            assert direct(pg, ALL) == before
            conn.execute("RESET ALL")
        assert conn.execute("DELETE FROM orders WHERE id = %s", (1,)).rowcount == 1
    rows = [r for r in db_rows(proxy) if r["method"] in ("DELETE", "UPDATE")]
    assert [r["undo_class"] for r in rows] == [None] * 6 + ["exact"]
    assert all("42501" in r["error"] and "nothing was changed" in r["error"] for r in rows[:6])
    for row in db_rows(proxy):  # nothing irreversible ran without its review's delay (set_config included)
        if (row["undo_class"] or "").startswith("irreversible"):
            assert row["decision"] == "delay", row
    assert [r["decision"] for r in db_rows(proxy) if r["method"] in ("SET", "SELECT")] == ["delay"] * 6


def test_a_table_with_a_money_or_reg_column_is_irreversible_before_it_runs(gateway) -> None:
    """money prints by the session's lc_monetary (which a SET changes, and the server's may differ by the time of an
    undo), a reg* type as a name the search_path resolves: an image of either may be put back as another amount or
    another object. Known from the catalog, so before the statement runs (as `review:` needs)."""
    proxy, url = gateway
    pg = gateway_pg(gateway)
    person(pg, "CREATE DOMAIN prices AS money[]")
    person(pg, "ALTER TABLE orders ADD COLUMN price money, ADD COLUMN prices prices")
    try:
        person(pg, "UPDATE orders SET price = 1234.5, prices = ARRAY[2.25::money]")
        with psycopg.connect(url, autocommit=True) as conn:
            assert conn.execute("DELETE FROM orders WHERE id = %s", (1,)).rowcount == 1
        row = last(proxy, "DELETE")
        assert row["undo_class"] == "irreversible: table orders has a money column: it prints by the session's " \
                                    "lc_monetary, so an amount could be put back as another", row["undo_class"]
        assert row["row_images"] is None
        person(pg, "ALTER TABLE orders DROP COLUMN price, DROP COLUMN prices, ADD COLUMN kind regclass")
        with psycopg.connect(url, autocommit=True) as conn:
            assert conn.execute("DELETE FROM orders WHERE id = %s", (2,)).rowcount == 1
        row = last(proxy, "DELETE")
        assert row["undo_class"].startswith("irreversible: table orders has a column of type regclass"), \
            row["undo_class"]
    finally:
        person(pg, "ALTER TABLE orders DROP COLUMN IF EXISTS price, DROP COLUMN IF EXISTS prices, "
                   "DROP COLUMN IF EXISTS kind")
        person(pg, "DROP DOMAIN prices")


def test_the_capture_counter_is_not_a_setting_the_agent_sees(make_proxy, postgres) -> None:  # noqa: F811
    """A captured statement counts its rows in a setting named by the session's marker (set_config, local to the
    transaction): PostgreSQL lists such a placeholder neither in SHOW ALL nor in pg_settings, inside the transaction
    or after it, so the marker stays the gateway's."""
    from tests.e2e.test_db_gateway import POLICY

    policy = POLICY + "  - name: settings view\n    allow: {database: shop, statements: [select], tables: [pg_settings]}\n"
    proxy, url = start_gateway(make_proxy, postgres, policy=policy)
    with psycopg.connect(url) as conn:
        assert conn.execute("UPDATE orders SET qty = qty WHERE id < %s", (3,)).rowcount == 2
        inside = [r[0] for r in conn.execute("SHOW ALL")] + [r[0] for r in conn.execute("SELECT name FROM pg_settings")]
        conn.commit()
        after = [r[0] for r in conn.execute("SHOW ALL")] + [r[0] for r in conn.execute("SELECT name FROM pg_settings")]
    assert len(inside) > 300 and len(after) > 300
    assert not [name for name in inside + after if "goex" in name]
    assert last(proxy, "UPDATE")["undo_class"] == "exact"
