"""The command line's output contracts, against the audit log of a real proxy: `policy test --against-log` compares
policy with policy; --json is one JSON object per line with headers as JSON and ISO 8601 times; piped tables and
`show` print every row whole, ids unsplit, with no trailing spaces (issue 15, items 5 and 10)."""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import subprocess
import sys
import time
from datetime import datetime

import pytest
import requests

from tests.conftest import GOEX, TOKENS

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


def raw_get(proxy, url: str, headers: list[tuple[str, str]], agent: str = "slackbot") -> bytes:
    """A plain-HTTP request through the proxy, headers sent as given (repeats too)."""
    creds = base64.b64encode(f"{agent}:{TOKENS[agent]}".encode()).decode()
    host = url.split("/")[2]
    lines = [f"GET {url} HTTP/1.1", f"Host: {host}", f"Proxy-Authorization: Basic {creds}",
             *(f"{k}: {v}" for k, v in headers), "Connection: close"]
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as s:
        s.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        answer = b""
        while chunk := s.recv(65536):
            answer += chunk
    return answer


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

    both = proxy.cli("policy", "test", str(policy), str(stricter), "--against-log")  # two files named `team`
    assert both.returncode == 2 and "are both policy 'team'" in both.stderr, both.stdout + both.stderr


def test_json_headers_are_json_and_times_are_iso(make_proxy, upstream):
    """`show --json` gives headers as [name, value] pairs (repeats kept), never a string of JSON; it and `log --json`
    give `time`, ISO 8601 with its zone, beside the epoch `ts`."""
    proxy = make_proxy({"team": TEAM})
    answer = raw_get(proxy, "http://slack.com/api/conversations.list", [("X-Trace", "one"), ("X-Trace", "two")])
    assert answer.startswith(b"HTTP/1.1 "), answer[:200]
    [row] = wait_rows(proxy, 1)
    shown = proxy.cli("show", str(row["id"]), "--json")
    assert shown.returncode == 0, shown.stderr
    assert len(shown.stdout.splitlines()) == 1
    record = json.loads(shown.stdout)
    assert isinstance(record["req_headers"], list)
    assert [v for k, v in record["req_headers"] if k == "X-Trace"] == ["one", "two"]
    assert all(isinstance(pair, list) and len(pair) == 2 for pair in record["req_headers"])
    assert record["resp_headers"] is None or isinstance(record["resp_headers"], list)
    moment = datetime.fromisoformat(record["time"])
    assert moment.tzinfo is not None and moment.timestamp() == pytest.approx(record["ts"], abs=0.001)

    [logged] = [json.loads(line) for line in proxy.cli("log", "--json").stdout.splitlines()]
    assert logged["id"] == record["id"] and logged["time"] == record["time"]
    assert datetime.fromisoformat(logged["time"]).tzinfo is not None


def test_piped_show_log_and_secrets_are_whole_lines_without_trailing_spaces(make_proxy, upstream):
    """Piped, `show` neither pads nor wraps (a long JSON value stays on its line), and the tables of `log` and
    `secrets list` print each row whole, ids unsplit and nothing cut to the terminal width COLUMNS names."""
    proxy = make_proxy({"team": TEAM}, extra_config=UNSET_CREDENTIAL)
    s = session(proxy)
    long_text = "a joke that goes on " * 10
    s.post(f"{SLACK}/chat.postMessage", json={"channel": "C0BOTS", "text": long_text})
    long_path = "/api/conversations.list?cursor=" + "c" * 150
    s.get(f"https://slack.com{long_path}")
    rows = wait_rows(proxy, 2)

    shown = piped(proxy, "show", str(rows[0]["id"]))
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert [line for line in lines if line != line.rstrip()] == []
    assert f'  "text": "{long_text}"' in lines  # one line, as long as it is

    listed = piped(proxy, "log", columns=40)
    assert listed.returncode == 0, listed.stderr
    assert_piped_table(listed.stdout, [str(r["id"]) for r in rows])
    assert f"https://slack.com{long_path}" in listed.stdout and "…" not in listed.stdout

    secrets = piped(proxy, "secrets", "list", columns=40)
    assert secrets.returncode == 0, secrets.stderr
    assert_piped_table(secrets.stdout, ["secret", "vault:never-stored"])


def test_authorize_timeout_is_a_duration(make_proxy, upstream):
    """`authorize --timeout` reads a duration as `execute --timeout` does (a plain number is still seconds)."""
    proxy = make_proxy({"team": TEAM}, start=False, extra_config="""credentials:
  api:
    secret: api-oauth
    hosts: [api.oauth.example]
    inject:
      oauth2: {provider: generic, authorize_url: "https://oauth.example/authorize",
               token_url: "https://oauth.example/token", client_id: goex-test-client}
""")
    started = time.monotonic()
    waited = proxy.cli("authorize", "api", "--no-browser", "--timeout", "1s")
    assert waited.returncode == 2 and "within 1s; nothing was stored" in waited.stderr, waited.stderr
    assert time.monotonic() - started < 30
    assert "within 1s" in proxy.cli("authorize", "api", "--no-browser", "--timeout", "1").stderr
    bad = proxy.cli("authorize", "api", "--no-browser", "--timeout", "5 minutes")
    assert bad.returncode == 2 and "must be a duration like 30s, 5m" in bad.stderr


def test_a_ctrl_c_ends_a_command_with_one_line_and_the_shells_code(make_proxy, tmp_path):
    """A Ctrl-C while a command waits (here `secrets set` reading the secret from a pipe) ended it with click's
    "Aborted!" and exit 1, which a script cannot tell from a failure; it is now one line and 130, as shells give."""
    proxy = make_proxy({}, start=False)
    p = subprocess.Popen([*GOEX, "secrets", "set", "--config", str(proxy.config), "some-secret"], env=proxy.env,
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 30
    while not _reading_stdin(p.pid):  # its modules loaded and its config read: now blocked in read(0, ...)
        assert p.poll() is None and time.monotonic() < deadline, p.communicate()
        time.sleep(0.05)
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=30)
    assert (p.returncode, err) == (130, "goex-proxy: interrupted\n"), err
    assert "some-secret" not in proxy.run_cli("secrets", "list", "--config", str(proxy.config)).stdout


def _reading_stdin(pid: int) -> bool:
    """Whether the process is blocked in read() on its standard input, as /proc/PID/syscall says (x86_64 and
    aarch64 numbers)."""
    read = {"x86_64": "0", "aarch64": "63"}[os.uname().machine]
    try:
        with open(f"/proc/{pid}/syscall") as f:
            fields = f.read().split()
    except OSError:
        return False
    return len(fields) > 1 and fields[0] == read and int(fields[1], 16) == 0


@pytest.mark.parametrize("lands_in", ["click", "goex_proxy.cli.logs"])
def test_a_ctrl_c_before_the_command_line_is_up_is_one_line_too(lands_in):
    """A Ctrl-C in the first tens of milliseconds, while click (imported with the command line) or the command's
    module (imported when click looks the command up) is still being imported, ended in a traceback or in click's
    "Aborted!" and 1; it is one line and 130 as under a command. The interrupt is raised where such a Ctrl-C lands,
    by an import hook, so that the test does not race the clock; the entry point is the installed script's."""
    code = f"""
import builtins, importlib, sys
real_import, real_module = builtins.__import__, importlib.import_module
def hooked(name, *args, **kwargs):
    if name == {lands_in!r}:
        raise KeyboardInterrupt
    return real_import(name, *args, **kwargs)
def module(name, package=None):
    if name == {lands_in!r}:
        raise KeyboardInterrupt
    return real_module(name, package)
builtins.__import__, importlib.import_module = hooked, module
sys.argv = ["goex-proxy", "log", "--help"]
from importlib.metadata import entry_points
(script,) = [e for e in entry_points(group="console_scripts") if e.name == "goex-proxy"]
script.load()()
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stderr) == (130, "goex-proxy: interrupted\n"), done.stderr


def test_the_command_line_collects_while_a_command_runs_but_not_while_it_imports():
    """The script turns the cyclic collector off while the command line and the command's module are imported (they
    make no garbage, and its passes cost milliseconds of every command) and freezes what is left at exit; a command
    that runs for days (`run`, `console`) must still have it on while it runs."""
    code = """
import atexit, gc, importlib, sys
seen = {}
real_module = importlib.import_module
def module(name, package=None):
    if name == "goex_proxy.cli.logs":
        seen["importing"] = gc.isenabled()
        loaded = real_module(name, package)
        real_load = loaded.load_audit_settings
        def load_audit_settings(path):
            seen["running"] = gc.isenabled()
            return real_load(path)
        loaded.load_audit_settings = load_audit_settings
        return loaded
    return real_module(name, package)
importlib.import_module = module
atexit.register(lambda: print(seen, gc.get_freeze_count() > 0))
sys.argv = ["goex-proxy", "log", "--config", "/nonexistent/config.yaml"]
from importlib.metadata import entry_points
(script,) = [e for e in entry_points(group="console_scripts") if e.name == "goex-proxy"]
script.load()()
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.stderr.startswith("goex-proxy: no config at /nonexistent/config.yaml"), done.stderr
    assert done.stdout == "{'importing': False, 'running': True} True\n"
