"""Real clients under `goex-proxy exec` reach real HTTPS upstreams through the proxy with the CA trusted."""

from __future__ import annotations

import json
import shutil
import sys

import pytest

from tests.conftest import GITHUB_POLICY as POLICY
from tests.conftest import GITHUB_URL as URL
from tests.conftest import NODE, NODE_MODULES

pytestmark = pytest.mark.e2e


@pytest.fixture
def proxy(make_proxy):
    return make_proxy(POLICY)


CLIENTS = {
    "requests": f"import requests; r = requests.get('{URL}'); print(r.status_code, r.json()['full_name'])",
    "httpx": f"import httpx; r = httpx.get('{URL}'); print(r.status_code, r.json()['full_name'])",
    "urllib": (
        "import urllib.request, json\n"
        f"r = urllib.request.urlopen('{URL}')\nprint(r.status, json.load(r)['full_name'])"),
    "aiohttp": (
        "import aiohttp, asyncio\n"
        "async def main():\n"
        "    async with aiohttp.ClientSession(trust_env=True) as s:\n"
        f"        async with s.get('{URL}') as r:\n"
        "            print(r.status, (await r.json())['full_name'])\n"
        "asyncio.run(main())"),
}


@pytest.mark.parametrize("client", sorted(CLIENTS))
def test_python_client(proxy, upstream, client):
    """Each Python HTTP client gets the upstream's answer, and the request is in the audit log as allowed."""
    r = proxy.exec("mailbot", sys.executable, "-c", CLIENTS[client])
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("200 octo/hello"), r.stdout
    assert upstream.seen_paths("api.github.com") == ["/repos/octo/hello"]
    row = proxy.rows()[-1]
    assert (row["agent"], row["decision"], row["status"], row["url"]) == ("mailbot", "allow", 200, URL)


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_curl_plain_http_and_https(proxy, upstream):
    """curl over HTTPS (CONNECT) and plain HTTP both pass; the upstream never sees the proxy credentials."""
    for url in (URL, "http://api.github.com/repos/octo/plain"):
        r = proxy.exec("mailbot", "curl", "-sS", "--fail-with-body", url)
        assert r.returncode == 0, r.stderr + r.stdout
    assert upstream.seen_paths("api.github.com") == ["/repos/octo/hello", "/repos/octo/plain"]
    assert all("Proxy-Authorization" not in s.headers for s in upstream.state.seen)


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_http2_to_the_proxy(proxy, upstream):
    """A client that speaks HTTP/2 inside the tunnel is served over HTTP/2, and policy still applies; its rows say
    HTTP/2.0 (the layout leaves only HTTP/1.1 out of a row), read back whole and verify."""
    fmt = "%{http_version} %{http_code}"
    ok = proxy.exec("mailbot", "curl", "-sS", "--http2", "-o", "/dev/null", "-w", fmt, URL)
    denied = proxy.exec("mailbot", "curl", "-sS", "--http2", "-o", "/dev/null", "-w", fmt, "-X", "DELETE", URL)
    assert (ok.stdout, denied.stdout) == ("2 200", "2 403")
    assert [s.method for s in upstream.state.seen] == ["GET"]
    rows = proxy.rows()[-2:]
    assert [(r["method"], r["http_version"], r["status"]) for r in rows] == [("GET", "HTTP/2.0", 200),
                                                                              ("DELETE", "HTTP/2.0", 403)]
    shown = [json.loads(proxy.cli("show", str(r["id"]), "--json").stdout) for r in rows]
    assert [(r["url"], r["http_version"]) for r in shown] == [(URL, "HTTP/2.0")] * 2
    verified = proxy.cli("log", "verify")
    assert verified.returncode == 0 and verified.stdout.startswith("ok:"), verified.stdout


def test_node_fetch(proxy, upstream):
    """Node's built-in fetch (Node 24, NODE_USE_ENV_PROXY set by exec) goes through the proxy and trusts its CA."""
    assert NODE.exists(), "run `npm ci --prefix tests/node` (the CI script does)"
    r = proxy.exec("mailbot", str(NODE), str(NODE_MODULES.parent / "fetch.mjs"), URL)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["status"] == 200 and json.loads(out["body"])["full_name"] == "octo/hello"
    assert proxy.rows()[-1]["agent"] == "mailbot"


def test_exec_exit_code_is_the_commands(proxy):
    """`exec` exits with its command's exit code."""
    assert proxy.exec("mailbot", sys.executable, "-c", "raise SystemExit(7)").returncode == 7


def test_exec_environment(proxy):
    """The command sees the proxy URL with its identity, the CA for every runtime, and no NO_PROXY."""
    code = "import os, json; print(json.dumps(dict(os.environ)))"
    r = proxy.run_cli("exec", "--config", str(proxy.config), "--agent", "slackbot", "--",
                      sys.executable, "-c", code)
    env = json.loads(r.stdout)
    assert env["HTTPS_PROXY"] == env["HTTP_PROXY"] == proxy.proxy_url("slackbot")
    for name in ("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "NODE_EXTRA_CA_CERTS", "GIT_SSL_CAINFO",
                 "PIP_CERT"):
        assert env[name] == str(proxy.ca_cert)
    assert env["NODE_USE_ENV_PROXY"] == "1"
    assert "NO_PROXY" not in env and "no_proxy" not in env


def test_exec_refuses_unknown_agent(proxy):
    """An agent that is not in the config is refused with a message naming the known agents."""
    r = proxy.exec("nobody", "true")
    assert r.returncode == 2
    assert "no agent named 'nobody'" in r.stderr and "mailbot" in r.stderr


def test_exec_passes_sigterm_to_the_command(proxy, tmp_path):
    """SIGTERM sent to `exec` reaches the command, whose exit code `exec` then reports."""
    import signal
    import subprocess
    import time

    marker = tmp_path / "started"
    code = ("import signal, sys, time, pathlib\n"
            "signal.signal(signal.SIGTERM, lambda *a: sys.exit(42))\n"
            f"pathlib.Path({str(marker)!r}).write_text('x')\n"
            "time.sleep(30)\n")
    p = subprocess.Popen([sys.executable, "-m", "goex_proxy", "exec", "--config", str(proxy.config), "--agent",
                          "mailbot", "--", sys.executable, "-c", code], env=proxy.env)
    deadline = time.time() + 20
    while not marker.exists() and time.time() < deadline:
        time.sleep(0.05)
    p.send_signal(signal.SIGTERM)
    assert p.wait(20) == 42
