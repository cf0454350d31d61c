"""Real clients through the gateway, as an agent's code would use them with the DATABASE_URL `env` gives: asyncpg,
and SQLAlchemy with the psycopg and asyncpg drivers. Simple selects, parameters, prepared statements, a transaction,
and a refused statement surfacing as the client's own exception with the reason."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import asyncpg
import pytest
import sqlalchemy
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from tests.e2e import test_db_gateway
from tests.e2e.test_db_gateway import db_rows, direct
from tests.e2e.test_db_rules import start_with
from tests.pg import APP_USER, server_bin

pytestmark = [pytest.mark.e2e,
              pytest.mark.skipif(server_bin() is None, reason="PostgreSQL is not installed (tests/install-tools)")]

#: The session's PostgreSQL server, the gateway tests' fixture under a name of this module's.
pg_server = test_db_gateway.postgres

POLICY = """\
version: 1
name: shop
agents: [mailbot]
rules:
  - name: read orders
    allow: {database: shop, statements: [select], tables: [orders]}
  - name: change orders
    allow: {database: shop, statements: [update, insert], tables: [orders]}
  # psycopg's TypeInfo (SQLAlchemy asks it for hstore when it connects) looks a type up by name.
  - name: client type lookups
    allow: {database: shop, statements: [select], tables: [pg_type], functions: [to_regtype]}
"""


@pytest.fixture
def shop(make_proxy, pg_server) -> tuple[Any, str]:
    """The proxy and the URL `goex-proxy env` gives mailbot."""
    proxy, _ = start_with(make_proxy, pg_server, POLICY)
    shown = proxy.cli("env", "--agent", "mailbot", "--format", "json")
    assert shown.returncode == 0, shown.stderr
    return proxy, json.loads(shown.stdout)["env"]["DATABASE_URL"]


def params_recorded(proxy: Any, sql: str) -> list[Any]:
    """The parameters the audit log keeps for the statements with this SQL."""
    return [json.loads(r["req_body"]).get("params") for r in db_rows(proxy) if json.loads(r["req_body"])["sql"] == sql]


def test_asyncpg(shop, pg_server) -> None:
    proxy, url = shop

    async def agent() -> None:
        conn = await asyncpg.connect(url)
        try:
            assert await conn.fetchval("SELECT count(*) FROM orders") == 3  # the simple query protocol's neighbour
            rows = await conn.fetch("SELECT item FROM orders WHERE qty > $1 AND item <> $2 ORDER BY id", 2, "x")
            assert [r["item"] for r in rows] == ["apples", "plums"]
            statement = await conn.prepare("SELECT qty FROM orders WHERE item = $1")
            assert [await statement.fetchval(item) for item in ("pears", "plums")] == [1, 7]
            async with conn.transaction():
                await conn.execute("UPDATE orders SET qty = $1 WHERE item = $2", 5, "pears")
                await conn.execute("INSERT INTO orders (item, qty) VALUES ($1, $2)", "kiwis", 2)
            with pytest.raises(asyncpg.InsufficientPrivilegeError, match="no rule allows DELETE on orders"):
                await conn.execute("DELETE FROM orders WHERE id = $1", 1)
            with pytest.raises(asyncpg.InsufficientPrivilegeError, match="no rule allows SELECT on payroll"):
                await conn.fetch("SELECT salary FROM payroll")
            assert await statement.fetchval("pears") == 5  # the connection and its prepared statement go on
        finally:
            await conn.close()

    asyncio.run(agent())
    assert direct(pg_server, "SELECT item, qty FROM orders ORDER BY id") == [
        ("apples", 3), ("pears", 5), ("plums", 7), ("kiwis", 2)]
    # asyncpg sends binary parameters without types: the server's types make them values in the log, not hex.
    assert params_recorded(proxy, "UPDATE orders SET qty = $1 WHERE item = $2") == [[5, "pears"]]
    assert params_recorded(proxy, "SELECT qty FROM orders WHERE item = $1") == [["pears"], ["plums"], ["pears"]]
    assert APP_USER[1] not in proxy.log_text()


@pytest.mark.parametrize("driver", ["psycopg", "asyncpg"])
def test_sqlalchemy(shop, pg_server, driver: str) -> None:
    proxy, url = shop
    url = url.replace("postgresql://", f"postgresql+{driver}://")

    def work(conn: Any) -> list[Any]:
        return conn.execute(text("SELECT item FROM orders WHERE qty >= :least ORDER BY id"), {"least": 3}).all()

    async def run_async() -> tuple[list[Any], Exception]:
        engine = create_async_engine(url)
        try:
            async with engine.connect() as conn:
                found = await conn.run_sync(work)
            async with engine.begin() as conn:
                await conn.execute(text("UPDATE orders SET qty = qty + 1 WHERE item = :item"), {"item": "pears"})
            async with engine.connect() as conn:
                try:
                    await conn.execute(text("DELETE FROM orders WHERE id = :id"), {"id": 1})
                except sqlalchemy.exc.DBAPIError as exc:
                    return found, exc
            raise AssertionError("the DELETE was not refused")
        finally:
            await engine.dispose()

    if driver == "asyncpg":
        found, refused = asyncio.run(run_async())
    else:
        engine = sqlalchemy.create_engine(url)
        with engine.connect() as conn:
            found = work(conn)
        with engine.begin() as conn:
            conn.execute(text("UPDATE orders SET qty = qty + 1 WHERE item = :item"), {"item": "pears"})
        with engine.connect() as conn, pytest.raises(sqlalchemy.exc.DBAPIError) as caught:
            conn.execute(text("DELETE FROM orders WHERE id = :id"), {"id": 1})
        refused = caught.value
        engine.dispose()
    assert [r[0] for r in found] == ["apples", "plums"]
    assert "goex-proxy refused the statement: no rule allows DELETE on orders" in str(refused)
    assert getattr(refused.orig, "sqlstate", None) == "42501"
    assert direct(pg_server, "SELECT item, qty FROM orders ORDER BY id") == [("apples", 3), ("pears", 2), ("plums", 7)]
