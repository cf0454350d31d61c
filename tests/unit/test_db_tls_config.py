"""`databases.tls`: what it reads, a wrong value as one located line, the URL the agent is given under each mode, and
the certificate the gateway makes from the state directory's CA."""

from __future__ import annotations

import datetime
import ssl
from pathlib import Path

import pytest

from goex_proxy.config import load_config
from goex_proxy.db import agenttls
from goex_proxy.errors import ConfigError
from goex_proxy.sandbox import agentenv

AGENTS = "agents:\n  bot: {token: bot-token-123456}\n"
SHOP = "  shop:\n    host: db.internal\n    user: app\n    password: shop-db\n    agents: [bot]\n"


def config(tmp_path: Path, text: str):
    path = tmp_path / "config.yaml"
    path.write_text("version: 1\n" + AGENTS + "databases:\n  listen: 127.0.0.1:7000\n" + text + SHOP)
    return load_config(path)


@pytest.mark.parametrize(("text", "mode"), [("", "offer"), ("  tls: offer\n", "offer"), ("  tls: require\n", "require"),
                                            ("  tls: off\n", "off"), ("  tls: 'off'\n", "off")])
def test_the_modes_and_the_default(tmp_path: Path, text: str, mode: str) -> None:
    loaded = config(tmp_path, text)
    assert loaded.databases.tls == mode
    assert list(loaded.databases.by_name) == ["shop"]  # `tls` is the gateway's, not a database


@pytest.mark.parametrize("value", ["on", "yes-please", "true", "{host: x}", "[offer]", "required"])
def test_a_wrong_value_is_one_clear_line(tmp_path: Path, value: str) -> None:
    with pytest.raises(ConfigError) as raised:
        config(tmp_path, f"  tls: {value}\n")
    lines = str(raised.value).splitlines()
    assert len(lines) == 1, lines
    assert ":6:8:" in lines[0] and "'databases.tls' must be off, offer or require" in lines[0], lines[0]


def test_the_url_checks_the_gateway_under_require_only(tmp_path: Path) -> None:
    plain = "postgresql://bot:bot-token-123456@127.0.0.1:7000/shop"
    assert agentenv.agent_env(config(tmp_path, ""), "bot")["DATABASE_URL"] == plain
    assert agentenv.agent_env(config(tmp_path, "  tls: off\n"), "bot")["DATABASE_URL"] == plain
    required = config(tmp_path, "  tls: require\n")
    env = agentenv.agent_env(required, "bot")
    assert env["DATABASE_URL"] == f"{plain}?sslmode=verify-full&sslrootcert={required.ca_cert}"
    assert env["SSL_CERT_FILE"] == str(required.ca_cert)  # the same CA the agent trusts for HTTPS
    elsewhere = agentenv.agent_env(required, "bot", proxy_host="host.docker.internal", ca_path="/certs/goex ca.pem")
    assert elsewhere["DATABASE_URL"].endswith("@host.docker.internal:7000/shop?sslmode=verify-ca&sslrootcert="
                                              "/certs/goex%20ca.pem")  # a name not on the certificate: its chain


def test_the_certificate_is_the_cas_for_the_listen_address_and_loopback(tmp_path: Path) -> None:
    from mitmproxy.certs import CertStore

    CertStore.from_store(tmp_path, "mitmproxy", 2048)
    now = datetime.datetime.now(datetime.UTC)
    context, ends = agenttls.server_context(tmp_path, "db.lan", now)
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2
    assert datetime.timedelta(days=89) < ends - now <= datetime.timedelta(days=90)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".gateway")) == []  # its file removed
    assert agenttls.names("0.0.0.0") == ("127.0.0.1", "::1", "localhost")
    assert agenttls.names("10.1.2.3") == ("10.1.2.3", "127.0.0.1", "::1", "localhost")
    certificates = agenttls.Certificates()
    first = certificates.context(tmp_path, "127.0.0.1")
    assert certificates.context(tmp_path, "127.0.0.1") is first  # made once
    assert certificates.context(tmp_path, "10.1.2.3") is not first


def test_a_gateway_whose_ca_is_missing_does_not_start_and_says_why(tmp_path: Path) -> None:
    import asyncio

    from goex_proxy.db.gateway import Gateway
    from goex_proxy.errors import GoexError
    from goex_proxy.statedir import init

    init(tmp_path / "home")
    (tmp_path / "home" / agenttls.CA_FILE).unlink()
    loaded = load_config(tmp_path / "home" / "config.yaml")

    async def start() -> str:
        gateway = Gateway(loaded)
        try:
            await gateway.start()
        except GoexError as exc:
            return str(exc)
        finally:
            await gateway.close()
        return "started"

    assert asyncio.run(start()) == ("goex-proxy cannot make the database gateway's TLS certificate from its CA "
                                    f"({tmp_path / 'home' / agenttls.CA_FILE}): No such file or directory")
