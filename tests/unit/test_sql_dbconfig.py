"""The `databases:` section: what it reads, each mistake as one located line, and what the agent is given."""

from __future__ import annotations

from pathlib import Path

import pytest

from goex_proxy.config import load_config
from goex_proxy.dbconfig import DEFAULT_LISTEN
from goex_proxy.errors import ConfigError
from goex_proxy.sandbox import agentenv

AGENTS = "agents:\n  bot: {token: bot-token-123456}\n  other: {token: other-token-123456}\n"
SHOP = "  shop:\n    host: db.internal\n    user: app\n    password: shop-db\n    agents: [bot]\n"


def config(tmp_path: Path, text: str):
    path = tmp_path / "config.yaml"
    path.write_text("version: 1\n" + AGENTS + text)
    return load_config(path)


def test_a_database_with_its_defaults(tmp_path: Path) -> None:
    loaded = config(tmp_path, "databases:\n" + SHOP)
    shop = loaded.databases.by_name["shop"]
    assert (shop.host, shop.port, shop.dbname, shop.user, shop.sslmode, shop.env, shop.transaction) == \
        ("db.internal", 5432, "shop", "app", "prefer", "DATABASE_URL", "auto")
    assert shop.password.vault == "shop-db" and shop.password.reveal({"shop-db": "pw"}) == "pw"
    assert shop.capture_rows == 10000
    assert config(tmp_path, "databases:\n" + SHOP + "    capture_rows: 50\n").databases.by_name["shop"].capture_rows == 50
    assert loaded.databases.listen == DEFAULT_LISTEN
    assert [d.name for d in loaded.databases.for_agent("bot")] == ["shop"]
    assert loaded.databases.for_agent("other") == []


def test_the_agent_gets_a_url_with_its_own_identity(tmp_path: Path) -> None:
    loaded = config(tmp_path, "databases:\n  listen: 127.0.0.1:7000\n" + SHOP +
                    "  crm:\n    host: db.internal\n    user: crm\n    password: {env: CRM_PW}\n    agents: ['*']\n"
                    "    env: CRM_URL\n")
    env = agentenv.agent_env(loaded, "bot")
    assert env["DATABASE_URL"] == "postgresql://bot:bot-token-123456@127.0.0.1:7000/shop"
    assert env["CRM_URL"] == "postgresql://bot:bot-token-123456@127.0.0.1:7000/crm"
    assert "DATABASE_URL" not in agentenv.agent_env(loaded, "other")
    assert agentenv.agent_env(loaded, "bot", proxy_host="host.docker.internal")["CRM_URL"].startswith(
        "postgresql://bot:bot-token-123456@host.docker.internal:7000/")
    withheld = agentenv.withheld(loaded)
    assert {"CRM_PW", "PGPASSWORD", "PGPASSFILE"} <= withheld


@pytest.mark.parametrize(("text", "message"), [
    ("databases:\n" + SHOP.replace("password: shop-db", "password: {value: x}"), "unknown key 'value'"),
    ("databases:\n" + SHOP.replace("    password: shop-db\n", ""), "missing the required key 'password'"),
    ("databases:\n" + SHOP + "    transaction: sometimes\n", "must be auto or hold"),
    ("databases:\n" + SHOP + "    transaction: hold\n    hold_timeout: soon\n", "hold_timeout' must be a duration"),
    ("databases:\n" + SHOP + "    hold_timeout: 5m\n", "applies only to 'transaction: hold'"),
    ("databases:\n" + SHOP + "    sslmode: verify-ca\n", "must be one of disable, prefer, require, verify-full"),
    ("databases:\n" + SHOP + "    port: 99999\n", "'databases.shop.port' must be a port number"),
    ("databases:\n" + SHOP + "    capture_rows: 0\n", "'databases.shop.capture_rows' must be a number of rows"),
    ("databases:\n" + SHOP.replace("[bot]", "[robot]"), "names 'robot', which is not in 'agents'"),
    ("databases:\n" + SHOP.replace("[bot]", "[]"), "must name the agents that may use it"),
    ("databases:\n" + SHOP + "    env: 1BAD\n", "is not an environment variable name"),
    ("databases:\n" + SHOP + "    ca: missing.pem\n", "does not exist"),
    ("databases:\n  listen: 6433\n" + SHOP, "'databases.listen' must be HOST:PORT"),
    ("databases:\n" + SHOP + SHOP.replace("shop:", "shop2:"), "DATABASE_URL is also given to agent 'bot'"),
    ("databases:\n" + SHOP + "    flavour: pg\n", "unknown key 'flavour'"),
    ("databases: [shop]\n", "'databases' must be a mapping"),
])
def test_mistakes_are_one_located_line(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        config(tmp_path, text)
    assert any(message in str(p) and str(p).startswith(f"{tmp_path / 'config.yaml'}:") for p in err.value.problems), \
        err.value.problems


def test_a_gateway_beyond_this_machine_is_warned_about(tmp_path: Path) -> None:
    from goex_proxy.config import config_problems

    path = tmp_path / "config.yaml"
    path.write_text("version: 1\n" + AGENTS + "databases:\n  listen: 0.0.0.0:6433\n" + SHOP)
    assert load_config(path).databases.listen == ("0.0.0.0", 6433)   # a warning, not an error
    from goex_proxy.config import parse_config
    from goex_proxy.yamlsrc import Checker, load

    check = Checker(str(path))
    parse_config(load(path.read_text(), str(path))[0], path, check)
    assert [p.message for p in check.problems if p.severity == "warning"] == [
        "'databases.listen' 0.0.0.0 is not a loopback address: the statements and results of an agent that does not "
        "ask for TLS would cross the network unencrypted (set 'databases.tls: require')"]
    assert config_problems(path) == []
    path.write_text("version: 1\n" + AGENTS + "databases:\n  listen: 0.0.0.0:6433\n  tls: require\n" + SHOP)
    check = Checker(str(path))
    parse_config(load(path.read_text(), str(path))[0], path, check)
    assert check.problems == []  # every agent's connection is encrypted


def test_a_held_database_and_its_timeout(tmp_path: Path) -> None:
    loaded = config(tmp_path, "databases:\n" + SHOP + "    transaction: hold\n    hold_timeout: 30m\n")
    shop = loaded.databases.by_name["shop"]
    assert (shop.transaction, shop.hold_timeout) == ("hold", 1800.0)
    assert config(tmp_path, "databases:\n" + SHOP + "    transaction: hold\n").databases.by_name["shop"].hold_timeout \
        == 3600.0
