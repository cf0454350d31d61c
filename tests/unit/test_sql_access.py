"""The gateway's config read again: what an open connection may go on with, and what waits for a restart."""

from __future__ import annotations

from pathlib import Path

from goex_proxy.config import load_config
from goex_proxy.db.access import Grant, read_again, revoked
from goex_proxy.dbconfig import restart_changes

AGENTS = "agents:\n  bot: {token: bot-token-123456}\n  other: {token: other-token-123456}\n"
SHOP = "  shop:\n    host: db.internal\n    user: app\n    password: shop-db\n    agents: [bot]\n"


def config(path: Path, databases: str, agents: str = AGENTS):
    path.write_text("version: 1\n" + agents + "databases:\n  listen: 127.0.0.1:7000\n" + databases)
    return load_config(path)


def test_a_connection_goes_on_only_while_the_config_admits_it(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    running = config(path, SHOP)
    grant = Grant(running.agents["bot"], running.databases.by_name["shop"])
    assert revoked(grant, "bot", running) is None
    # Another agent added to the database, another database: the connection goes on.
    assert revoked(grant, "bot", config(path, SHOP.replace("[bot]", "[bot, other]") + SHOP.replace("shop", "crm")
                                     + "    env: CRM_URL\n")) is None
    assert revoked(grant, "bot", config(path, SHOP.replace("[bot]", "[other]")))[0] == "42501"
    assert revoked(grant, "bot", config(path, SHOP.replace("shop", "crm")))[0] == "3D000"
    assert revoked(grant, "bot", config(path, SHOP.replace("db.internal", "db2.internal")))[0] == "57P01"
    assert revoked(grant, "bot", config(path, SHOP.replace("[bot]", "['*']"), AGENTS.replace(
        "bot-token-123456", "new-token-1234567")))[0] == "28000"


def test_listen_and_the_first_database_wait_for_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    running = config(path, SHOP)
    assert restart_changes(running.databases, running.databases) == []
    moved = config(path, SHOP).databases.__class__(("127.0.0.1", 7001), running.databases.by_name)
    assert restart_changes(running.databases, moved) == ["databases.listen"]
    none = running.databases.__class__()
    assert restart_changes(none, running.databases)[0].startswith("databases (the gateway starts")
    assert restart_changes(running.databases, none) == []   # the gateway goes on, refusing every connection
    # The gateway keeps where it listens, whatever the file says now.
    path.write_text(path.read_text().replace("7000", "7001"))
    assert read_again(running)[0].databases.listen == ("127.0.0.1", 7000)
