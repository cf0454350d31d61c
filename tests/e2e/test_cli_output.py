"""The command line's output contracts, against the audit log of a real proxy: `policy test --against-log` compares
policy with policy, and its piped table prints every row whole, ids unsplit (issue 15, item 5)."""

from __future__ import annotations

import json
import subprocess
import time
from datetime import datetime

import pytest
import requests

from tests.conftest import GOEX

pytestmark = pytest.mark.e2e

SLACK = "https://slack.com/api"
#: What the proxy enforced at first: nothing for Slack yet.
NOT_YET = """
    version: 1
    name: team
    rules:
      - name: nothing for slack yet
        allow: {host: example.com, path: /nothing}
"""
TEAM = """
    version: 1
    name: team
    rules:
      - name: read channels
        allow: {host: slack.com, methods: [GET], path: "/api/conversations.list"}
      - name: post
        allow: {host: slack.com, methods: [POST], path: "/api/chat.postMessage"}
      - name: files
        allow: {host: files.slack.com}
      - name: internal
        allow: {host: "10.0.0.1", methods: [GET]}
"""
#: TEAM without the two rules whose requests something else than the policy refused.
STRICTER = """version: 1
name: team
rules:
  - name: read channels
    allow: {host: slack.com, methods: [GET], path: "/api/conversations.list"}
  - name: post
    allow: {host: slack.com, methods: [POST], path: "/api/chat.postMessage"}
"""
#: A credential bound to files.slack.com whose secret was never stored: injection refuses what the policy allows.
UNSET_CREDENTIAL = """credentials:
  unset:
    secret: never-stored
    hosts: [files.slack.com]
    inject: {header: X-Api-Key, value: "{secret}"}
"""


def session(proxy, agent: str = "slackbot") -> requests.Session:
    s = requests.Session()
    s.proxies = {"http": proxy.proxy_url(agent), "https": proxy.proxy_url(agent)}
    s.verify = str(proxy.ca_cert)
    s.trust_env = False
    return s


def piped(proxy, *args: str, columns: int = 40) -> subprocess.CompletedProcess[str]:
    """A goex-proxy command with its output piped, as narrow as `columns` says a terminal would be."""
    head, rest = args[0], args[1:]
    if head in ("policy", "files", "secrets") and rest:
        argv = [head, rest[0], "--config", str(proxy.config), *rest[1:]]
    else:
        argv = [head, "--config", str(proxy.config), *rest]
    return subprocess.run([*GOEX, *argv], env={**proxy.env, "COLUMNS": str(columns)}, capture_output=True, text=True,
                          timeout=60)


def wait_rows(proxy, count: int, timeout: float = 10.0) -> list[dict[str, object]]:
    deadline = time.time() + timeout
    while len(rows := proxy.rows()) < count and time.time() < deadline:
        time.sleep(0.05)
    return rows


def assert_piped_table(text: str, ids: list[str]) -> None:
    """Each id whole on the line of its row, and no line ending in a space."""
    lines = text.splitlines()
    assert [line for line in lines if line != line.rstrip()] == []
    for rid in ids:
        assert any(line.startswith(rid + " ") or f" {rid} " in line for line in lines), (rid, text)


def test_policy_test_compares_policy_with_policy(make_proxy, upstream, tmp_path):
    """Testing the loaded policy unchanged reports no change, though the log holds denials by the SSRF guard, by
    credential injection, by identity (407), before policy, and by a policy since replaced; a stricter file reports
    exactly the requests its own rules decide differently, and its piped table keeps every id whole. The file tested
    in a configured policy's place keeps the agents the config narrows that policy to."""
    proxy = make_proxy({"team": NOT_YET}, start=False, extra_config=UNSET_CREDENTIAL)
    config = proxy.config.read_text()
    proxy.config.write_text(config.replace("  - policies/team.yaml", "  - {use: policies/team.yaml, agents: [slackbot]}"))
    proxy.start()
    s = session(proxy)
    assert s.get(f"{SLACK}/conversations.list").status_code == 403  # denied before the policy below was loaded
    policy = proxy.write_policy("team", TEAM)
    deadline = time.time() + 10
    while s.get(f"{SLACK}/conversations.list").status_code != 200 and time.time() < deadline:
        time.sleep(0.2)
    ssrf = s.get("http://10.0.0.1/admin")
    assert ssrf.status_code == 403 and ssrf.json()["rule"] == "upstream.block_private_networks"
    injected = s.get("https://files.slack.com/x")
    assert injected.status_code == 403 and injected.json()["rule"] == "inject"
    wrong = requests.get("http://slack.com/api/conversations.list", timeout=10,
                         proxies={"http": f"http://slackbot:wrong-token-9999@127.0.0.1:{proxy.port}"})
    assert wrong.status_code == 407
    assert s.get(f"{SLACK}/conversations.list", headers={"Host": "evil.example"}).status_code == 403
    assert s.post(f"{SLACK}/chat.delete", json={"ts": "1"}).status_code == 403  # denied by the policy itself
    assert session(proxy, "mailbot").get(f"{SLACK}/conversations.list").status_code == 403  # not mailbot's policy
    rows = wait_rows(proxy, 9)
    rules = {r["rule"] for r in rows}
    assert {"upstream.block_private_networks", "inject", "identify"} <= rules
    assert any(str(r["reason"]).startswith("refused before policy") for r in rows)

    unchanged = proxy.cli("policy", "test", str(policy), "--against-log", "--json")
    assert unchanged.returncode == 0, unchanged.stderr
    assert unchanged.stdout == ""
    said = proxy.cli("policy", "test", str(policy), "--against-log")
    assert said.returncode == 0 and said.stdout.startswith("no change:"), said.stdout

    stricter = tmp_path / "team.yaml"
    stricter.write_text(STRICTER)
    r = proxy.cli("policy", "test", str(stricter), "--against-log", "--json")
    assert r.returncode == 0, r.stderr
    changes = [json.loads(line) for line in r.stdout.splitlines()]
    assert sorted((c["url"], c["before"], c["after"], c["recorded"]) for c in changes) == [
        ("http://10.0.0.1/admin", "allow", "deny", "deny"), ("https://files.slack.com/x", "allow", "deny", "deny")]
    for c in changes:
        assert datetime.fromisoformat(c["time"]).timestamp() == pytest.approx(c["ts"], abs=0.001)

    table = piped(proxy, "policy", "test", str(stricter), "--against-log", columns=40)
    assert table.returncode == 0, table.stderr
    assert table.stdout.startswith("2 of ")
    assert_piped_table(table.stdout, [c["id"] for c in changes])
    assert "…" not in table.stdout  # piped, nothing is cut either
