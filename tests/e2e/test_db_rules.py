"""SQL rules' `limit`, `hold` and `delay` through a real `goex-proxy run` and a real PostgreSQL, psycopg as the agent:
a limit counted exactly and charged only for what is sent, a held statement sent once approved and refused with the
person's reason when denied, a delayed one sent when its time is up."""

from __future__ import annotations

import json
import shutil
import threading
import time
from collections.abc import Callable
from typing import Any

import psycopg
import pytest
from psycopg import errors

from tests.conftest import TOKENS, free_port, wait_port
from tests.e2e import test_db_gateway
from tests.e2e.test_db_gateway import ORDERS, db_rows, direct
from tests.pg import APP_USER, Postgres, server_bin

pytestmark = [pytest.mark.e2e,
              pytest.mark.skipif(server_bin() is None, reason="PostgreSQL is not installed (tests/install-tools)")]

#: The session's PostgreSQL server, the gateway tests' fixture under a name of this module's.
pg_server = test_db_gateway.postgres

RULES = """\
version: 1
name: shop
agents: [mailbot]
rules:
  - name: read orders
    allow: {{database: shop, statements: [select], tables: [orders]}}
  - name: change orders
    allow: {{database: shop, statements: [delete, update], tables: [orders]{change}}}
"""


def start(make_proxy, pg: Postgres, change: str, workers: int = 1) -> tuple[Any, str]:
    """A `goex-proxy run` whose rule 'change orders' has `change` (", limit: ..." and the like), the orders reset;
    the proxy and mailbot's URL."""
    return start_with(make_proxy, pg, RULES.format(change=change), workers)


def start_with(make_proxy, pg: Postgres, policy: str, workers: int = 1, more: str = "") -> tuple[Any, str]:
    """A `goex-proxy run` with the `shop` database and this policy (and `more` config), the orders reset; the proxy
    and mailbot's URL."""
    with psycopg.connect(pg.dsn(APP_USER, "shop"), autocommit=True) as conn:
        conn.execute("TRUNCATE orders RESTART IDENTITY")
        with conn.cursor() as cur:
            cur.executemany("INSERT INTO orders (item, qty) VALUES (%s, %s)", ORDERS)
    port = free_port()
    extra = (f"databases:\n  listen: 127.0.0.1:{port}\n  shop:\n    host: 127.0.0.1\n    port: {pg.port}\n"
             f"    dbname: shop\n    user: {APP_USER[0]}\n    password: shop-db\n    agents: [mailbot]\n{more}")
    proxy = make_proxy({"shop": policy}, start=False, extra_config=extra)
    stored = proxy.run_cli("secrets", "set", "--config", str(proxy.config), "shop-db", input=APP_USER[1].encode())
    assert stored.returncode == 0, stored.stderr
    proxy.start(workers=workers)
    wait_port(port, proc=proxy.proc)
    return proxy, f"postgresql://mailbot:{TOKENS['mailbot']}@127.0.0.1:{port}/shop"


def wait_for(check: Callable[[], Any], timeout: float = 30, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if found := check():
            return found
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def pending(proxy: Any) -> list[dict[str, Any]]:
    listed = proxy.cli("pending", "--json")
    assert listed.returncode == 0, listed.stderr
    return [json.loads(line) for line in listed.stdout.splitlines()]


class Agent(threading.Thread):
    """One statement run by psycopg in a thread (it blocks while the statement waits): its error, or None."""

    def __init__(self, url: str, sql: str, params: tuple[Any, ...] = ()) -> None:
        super().__init__(daemon=True)
        self.url, self.sql, self.params = url, sql, params
        self.error: Exception | None = None
        self.took = 0.0
        self.start()

    def run(self) -> None:
        started = time.monotonic()
        try:
            with psycopg.connect(self.url, autocommit=True) as conn:
                conn.execute(self.sql, self.params)
        except Exception as exc:  # noqa: BLE001 - the test reads it
            self.error = exc
        self.took = time.monotonic() - started

    def outcome(self, timeout: float = 60) -> Exception | None:
        self.join(timeout)
        assert not self.is_alive(), "the statement is still waiting"
        return self.error


def test_a_limit_is_exact_and_the_next_statement_is_refused(make_proxy, pg_server) -> None:
    proxy, url = start(make_proxy, pg_server, ", limit: {count: 2, per: 1h}", workers=2)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("UPDATE orders SET qty = 10 WHERE id = %s", (1,))
        conn.execute("DELETE FROM orders WHERE id = %s", (2,))
        with pytest.raises(errors.InsufficientPrivilege, match="limit reached: rule 'change orders' allows at most 2 "
                                                               "per 1h for agent 'mailbot'"):
            conn.execute("DELETE FROM orders WHERE id = %s", (3,))
        assert conn.execute("SELECT count(*) FROM orders").fetchone() == (2,)  # reads have no limit
    assert direct(pg_server, "SELECT id, qty FROM orders ORDER BY id") == [(1, 10), (3, 7)]
    # Racing connections: the writer counts every hit under one lock, so none gets past the cap.
    racers = [Agent(url, "UPDATE orders SET qty = qty + 1 WHERE id = %s", (1,)) for _ in range(6)]
    assert all(isinstance(r.outcome(), errors.InsufficientPrivilege) for r in racers)
    assert direct(pg_server, "SELECT qty FROM orders WHERE id = 1") == [(10,)]
    rows = db_rows(proxy)
    refused = [r for r in rows if r["decision"] == "deny"]
    assert len(refused) == 7 and all("limit reached" in r["reason"] for r in refused)
    assert sum(1 for r in rows if r["decision"] == "allow" and r["method"] != "SELECT") == 2
    assert proxy.cli("log", "verify").stdout.startswith("ok:")


def test_each_statement_of_a_message_counts_against_the_limit(make_proxy, pg_server) -> None:
    proxy, url = start(make_proxy, pg_server, ", limit: {count: 3, per: 1h}")
    with psycopg.connect(url, autocommit=True) as conn, psycopg.ClientCursor(conn) as cur:  # the simple protocol
        with pytest.raises(errors.InsufficientPrivilege, match="limit reached"):  # four at once: none runs
            cur.execute("DELETE FROM orders WHERE id = 1; DELETE FROM orders WHERE id = 2; "
                        "UPDATE orders SET qty = 0 WHERE id = 3; DELETE FROM orders WHERE id = 4")
        cur.execute("DELETE FROM orders WHERE id = 1; SELECT 1 FROM orders; DELETE FROM orders WHERE id = 2")
        cur.execute("UPDATE orders SET qty = 0 WHERE id = 3")
        with pytest.raises(errors.InsufficientPrivilege, match="limit reached"):
            cur.execute("UPDATE orders SET qty = 1 WHERE id = 3")
    assert direct(pg_server, "SELECT id, qty FROM orders") == [(3, 0)]
    assert proxy.cli("log", "verify").stdout.startswith("ok:")  # two hits of one rule for one row


def test_a_held_statement_is_sent_once_approved(make_proxy, pg_server) -> None:
    proxy, url = start(make_proxy, pg_server, ", hold: {timeout: 2m}")
    agent = Agent(url, "DELETE FROM orders WHERE item = %s OR item = %s", ("pears", APP_USER[1]))
    card = wait_for(lambda: pending(proxy), what="the held DELETE")[0]
    assert (card["agent"], card["kind"], card["card"]["database"]) == ("mailbot", "hold", "shop")
    assert card["why"] == "rule 'change orders' says hold up to 2m"
    assert card["card"]["sql"] == "DELETE FROM orders WHERE item = $1 OR item = $2"
    assert card["card"]["fields"] == {"$1": "pears", "$2": "[database password]"}  # scrubbed, as in the log
    assert "DELETE on database 'shop' by agent 'mailbot'" in card["card"]["summary"]
    time.sleep(0.5)
    assert agent.is_alive() and direct(pg_server, "SELECT count(*) FROM orders") == [(3,)]  # not sent while it waits
    approved = proxy.cli("approve", card["id"])
    assert approved.returncode == 0, approved.stderr
    assert agent.outcome() is None
    assert direct(pg_server, "SELECT item FROM orders ORDER BY id") == [("apples",), ("plums",)]
    row = next(r for r in db_rows(proxy) if r["id"] == card["id"])
    assert (row["decision"], row["status"], json.loads(row["resp_body"])["rows"]) == ("hold", 0, 1)
    assert json.loads(row["approval"])["state"] == "approved"
    assert APP_USER[1] not in json.dumps(row)
    assert proxy.cli("log", "verify").stdout.startswith("ok:")


def test_a_denied_statement_is_refused_with_the_reason_and_not_charged(make_proxy, pg_server) -> None:
    proxy, url = start(make_proxy, pg_server, ", hold: {timeout: 2m}, limit: {count: 1, per: 1h}")
    first = Agent(url, "DELETE FROM orders WHERE id = %s", (1,))
    card = wait_for(lambda: pending(proxy), what="the held DELETE")[0]
    denied = proxy.cli("deny", card["id"], "--reason", "not the apples")
    assert denied.returncode == 0 and "the agent gets a PostgreSQL error (42501)" in denied.stdout, denied.stderr
    refused = first.outcome()
    assert isinstance(refused, errors.InsufficientPrivilege)
    assert "held for approval and denied" in str(refused) and "not the apples" in str(refused)
    # The denied one was never sent, so it counted against no limit: the next one may still go, once approved.
    second = Agent(url, "DELETE FROM orders WHERE id = %s", (2,))
    card = wait_for(lambda: pending(proxy), what="the second DELETE")[0]
    assert proxy.cli("approve", card["id"]).returncode == 0
    assert second.outcome() is None
    assert direct(pg_server, "SELECT id FROM orders ORDER BY id") == [(1,), (3,)]
    third = Agent(url, "DELETE FROM orders WHERE id = %s", (3,))
    card = wait_for(lambda: pending(proxy), what="the third DELETE")[0]
    assert proxy.cli("approve", card["id"]).returncode == 0
    assert "limit reached" in str(third.outcome())  # approved, but the limit is spent: not sent
    assert direct(pg_server, "SELECT id FROM orders ORDER BY id") == [(1,), (3,)]
    assert proxy.cli("log", "verify").stdout.startswith("ok:")


def test_a_delayed_statement_waits_then_runs_and_a_hold_times_out(make_proxy, pg_server) -> None:
    proxy, url = start(make_proxy, pg_server, ", delay: 2s")
    agent = Agent(url, "UPDATE orders SET qty = 0 WHERE id = %s", (1,))
    assert agent.outcome() is None and agent.took >= 2
    assert direct(pg_server, "SELECT qty FROM orders WHERE id = 1") == [(0,)]
    assert "delayed" in proxy.log_text()
    proxy.stop()
    proxy, url = start(make_proxy, pg_server, ", hold: {timeout: 1s}")
    with psycopg.connect(url, autocommit=True) as conn:
        with pytest.raises(errors.InsufficientPrivilege, match="nobody approved it within 1s"):
            conn.execute("DELETE FROM orders WHERE id = %s", (1,))
        assert conn.execute("SELECT count(*) FROM orders").fetchone() == (3,)  # the connection goes on


BOTH = """\
version: 1
name: shop
agents: [mailbot, slackbot]
rules:
  - name: read orders
    allow: {databases: [shop, shop2], statements: [select], tables: [orders]}
"""


def test_databases_are_reloaded_and_revoked_connections_end(make_proxy, pg_server) -> None:
    """`databases:` edited under a running `run`: added and changed databases and agents apply to new connections,
    and a connection no longer admitted (its agent, its database removed) is refused at its next statement."""
    proxy, url = start_with(make_proxy, pg_server, BOTH)
    original = proxy.config.read_text()
    slackbot = url.replace(f"mailbot:{TOKENS['mailbot']}", f"slackbot:{TOKENS['slackbot']}")
    second = original.replace("    agents: [mailbot]\n", "    agents: [mailbot]\n  shop2:\n    host: 127.0.0.1\n"
                              f"    port: {pg_server.port}\n    dbname: shop\n    user: {APP_USER[0]}\n"
                              "    password: shop-db\n    agents: [mailbot]\n")
    mailbot = psycopg.connect(url, autocommit=True)
    assert mailbot.execute("SELECT count(*) FROM orders").fetchone() == (3,)
    with pytest.raises(psycopg.OperationalError, match="may not use database 'shop'"):
        psycopg.connect(slackbot).close()
    # shop is now slackbot's, and shop2 is added for mailbot.
    edit(proxy, second.replace("    agents: [mailbot]\n  shop2:", "    agents: [slackbot]\n  shop2:"))
    wait_for(lambda: "databases reloaded: shop, shop2" in proxy.log_text(), what="the gateway's reload")
    with pytest.raises(errors.InsufficientPrivilege, match="agent 'mailbot' may no longer use database 'shop'"):
        mailbot.execute("SELECT count(*) FROM orders")
    assert mailbot.closed or mailbot.broken
    with psycopg.connect(slackbot, autocommit=True) as conn:
        assert conn.execute("SELECT count(*) FROM orders").fetchone() == (3,)
    with psycopg.connect(url.replace("/shop", "/shop2"), autocommit=True) as conn:
        assert conn.execute("SELECT count(*) FROM orders").fetchone() == (3,)
        edit(proxy, original)  # shop2 removed, shop mailbot's again
        wait_for(lambda: proxy.log_text().count("databases reloaded") == 2, what="the second reload")
        with pytest.raises(psycopg.Error, match="database 'shop2' was removed"):
            conn.execute("SELECT count(*) FROM orders")
    with psycopg.connect(url, autocommit=True) as conn:
        assert conn.execute("SELECT count(*) FROM orders").fetchone() == (3,)
        # Where the gateway listens changes only at a restart, and `run` says so; it goes on where it was.
        port = url.rsplit(":", 1)[1].split("/")[0]
        edit(proxy, original.replace(f"listen: 127.0.0.1:{port}", "listen: 127.0.0.1:1"))
        wait_for(lambda: "databases.listen take" in proxy.log_text(), what="the restart warning")
        assert conn.execute("SELECT count(*) FROM orders").fetchone() == (3,)
    with psycopg.connect(url, autocommit=True) as conn:
        assert conn.execute("SELECT 1 FROM orders LIMIT 1").fetchone() == (1,)
    assert "Traceback" not in proxy.log_text() and "reload failed" not in proxy.log_text()


def edit(proxy: Any, text: str) -> None:
    """Rewrite the config as a person would, its modification time surely new."""
    before = proxy.config.stat().st_mtime_ns
    proxy.config.write_text(text)
    if proxy.config.stat().st_mtime_ns == before:
        import os

        os.utime(proxy.config, ns=(before + 1_000_000, before + 1_000_000))


REVIEWED = """\
version: 1
name: shop
agents: [mailbot]
review: {irreversible: hold 2m}
rules:
  - name: read orders
    allow: {database: shop, statements: [select], tables: [orders]}
  - name: change orders
    allow: {database: shop, statements: [delete], tables: [orders], limit: {count: 10, per: 1h}}
"""


def test_review_holds_irreversible_statements_and_a_stopping_proxy_ends_the_wait(make_proxy, pg_server) -> None:
    proxy, url = start_with(make_proxy, pg_server, REVIEWED)
    with psycopg.connect(url, autocommit=True) as conn:
        assert conn.execute("SELECT count(*) FROM orders").fetchone() == (3,)  # a read changes nothing: not held
        # A DELETE of a table with a key has its rows captured (undo puts them back exactly): not held either.
        assert conn.execute("DELETE FROM orders WHERE id = %s", (1,)).rowcount == 1
    assert pending(proxy) == []
    agent = Agent(url, "TRUNCATE orders", ())  # no capture sees the rows a TRUNCATE removes
    card = wait_for(lambda: pending(proxy), what="the held TRUNCATE")[0]
    assert card["undo_class"] == "irreversible" and card["why"] == "irreversible: review says hold up to 2m"
    proxy.stop()  # nothing was sent, and the log says so
    assert agent.outcome() is not None
    assert direct(pg_server, "SELECT count(*) FROM orders") == [(2,)]
    row = next(r for r in db_rows(proxy) if r["id"] == card["id"])
    assert row["decision"] == "hold" and "stopped while the request waited" in row["error"]
    assert json.loads(row["approval"])["state"] == "stopped"
    assert proxy.cli("log", "verify").stdout.startswith("ok:")


def test_a_statement_the_agent_cancels_while_it_waits_is_not_sent(make_proxy, pg_server) -> None:
    import asyncio

    import asyncpg

    proxy, url = start(make_proxy, pg_server, ", hold: {timeout: 2m}")

    async def agent() -> None:
        conn = await asyncpg.connect(url)
        with pytest.raises(TimeoutError):  # asyncpg sends a cancel request when its timeout runs out
            await conn.execute("DELETE FROM orders WHERE id = $1", 1, timeout=2)
        assert await conn.fetchval("SELECT count(*) FROM orders") == 3  # the connection goes on
        await conn.close()

    asyncio.run(agent())
    assert pending(proxy) == []
    row = wait_for(lambda: [r for r in db_rows(proxy) if r["decision"] == "hold" and r.get("error")],
                   what="the cancelled statement's outcome")[0]
    assert "the agent cancelled the statement while it waited; it was not sent" in row["error"]
    assert direct(pg_server, "SELECT count(*) FROM orders") == [(3,)]


def test_a_held_statement_is_notified_and_approved_from_its_link(make_proxy, pg_server) -> None:
    import httpx

    from tests.fake_notify import WebhookReceiver

    webhook = WebhookReceiver()
    try:
        port = free_port()
        proxy, url = start_with(make_proxy, pg_server, RULES.format(change=", hold: {timeout: 2m}"),
                                more=f"approvals:\n  listen: 127.0.0.1:{port}\n  notify:\n    - webhook: {webhook.url}\n")
        agent = Agent(url, "UPDATE orders SET qty = %s WHERE item = %s", (9, "plums"))
        message = wait_for(lambda: next(iter(webhook.seen), None), what="the webhook's notification")
        assert message["kind"] == "hold" and message["text"].startswith("Held for approval: UPDATE shop")
        assert message["card"]["fields"] == {"$1": "9", "$2": "plums"} and message["card"]["database"] == "shop"
        with httpx.Client(timeout=10, trust_env=False) as http:
            assert http.post(message["links"]["approve"]).status_code == 200
        assert agent.outcome() is None
        assert direct(pg_server, "SELECT qty FROM orders WHERE item = 'plums'") == [(9,)]
        row = next(r for r in db_rows(proxy) if r["id"] == message["request_id"])
        assert json.loads(row["approval"])["decided_by"] == "link (webhook)"
    finally:
        webhook.close()


@pytest.mark.skipif(shutil.which("psql") is None, reason="psql is not installed")
def test_without_run_a_jailed_command_is_told_its_statement_waits(make_proxy, pg_server) -> None:
    """`exec --jail` starts a gateway of its own: a held statement is not a silent hang, and is decided as ever."""
    proxy, _ = start(make_proxy, pg_server, ", hold: {timeout: 2m}")
    proxy.stop()
    done: dict[str, Any] = {}
    script = 'psql "$DATABASE_URL" -X -At -c "DELETE FROM orders WHERE id = 2"'
    agent = threading.Thread(target=lambda: done.update(ran=proxy.run_cli(
        "exec", "--jail", "--config", str(proxy.config), "--agent", "mailbot", "--", "sh", "-c", script,
        timeout=120)))
    agent.start()
    card = wait_for(lambda: pending(proxy), timeout=60, what="the held DELETE")[0]
    assert proxy.cli("approve", card["id"]).returncode == 0
    agent.join(60)
    ran = done["ran"]
    assert ran.returncode == 0, ran.stderr
    assert f"held {card['id']} mailbot DELETE postgresql://shop/shop" in ran.stderr
    assert "decide from another shell" in ran.stderr
    assert direct(pg_server, "SELECT id FROM orders ORDER BY id") == [(1,), (3,)]


def test_a_statement_waiting_out_its_delay_is_not_sent_once_its_agent_loses_the_database(make_proxy,
                                                                                       pg_server) -> None:
    """The config edited while a statement waits: what no longer admits its connection stops it, in the words a
    revoked connection is told."""
    proxy, url = start(make_proxy, pg_server, ", delay: 4s")
    agent = Agent(url, "UPDATE orders SET qty = 0 WHERE id = %s", (1,))
    wait_for(lambda: "delayed" in proxy.log_text(), what="the delay")
    edit(proxy, proxy.config.read_text().replace("    agents: [mailbot]\n", "    agents: [slackbot]\n"))
    error = agent.outcome()
    assert isinstance(error, errors.InsufficientPrivilege), error
    assert "may no longer use database 'shop'" in str(error) and "while it waited; it was not sent" in str(error)
    assert direct(pg_server, "SELECT qty FROM orders WHERE id = 1") != [(0,)]
