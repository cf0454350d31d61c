"""WebSocket upgrades are decided like any request; `env` prints settings a sandbox can use; mitmdump -s loads us."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect
from websockets.sync.server import serve

from tests.conftest import TOKENS, free_port, wait_port

pytestmark = pytest.mark.e2e

POLICY = {"ws": """
    version: 1
    name: ws
    rules:
      - name: chat socket
        allow: {host: ws.example.com, methods: [GET], path: /chat}
"""}
GITHUB_READ = {"gh": """
    version: 1
    rules:
      - name: read
        allow: {host: api.github.com, methods: [GET]}
"""}


@pytest.fixture
def ws_upstream():
    def echo(conn):
        for message in conn:
            conn.send(f"echo: {message}")

    port = free_port()
    server = serve(echo, "127.0.0.1", port)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield port
    server.shutdown()


def test_websocket_upgrade_goes_through_policy(make_proxy, ws_upstream):
    """An allowed WebSocket upgrade works end to end; one to a path no rule allows is refused with 403."""
    proxy = make_proxy(POLICY, routes={"ws.example.com": f"http://127.0.0.1:{ws_upstream}"})
    with connect("ws://ws.example.com/chat", proxy=proxy.proxy_url(), open_timeout=10) as ws:
        ws.send("hello")
        assert ws.recv(timeout=10) == "echo: hello"
    with pytest.raises(InvalidStatus) as refused:
        connect("ws://ws.example.com/admin", proxy=proxy.proxy_url(), open_timeout=10)
    assert refused.value.response.status_code == 403
    rows = _ended_rows(proxy, 2)
    assert [(r["path"], r["decision"], r["status"]) for r in rows] == [("/chat", "allow", 101), ("/admin", "deny", 403)], (
        [(r["path"], r["error"], r["outcome_hash"]) for r in rows], proxy.log_text()[-4000:])


def _ended_rows(proxy, count: int) -> list[dict[str, object]]:
    """The rows once `count` have their outcome, or after 10 s: an allowed request's outcome is written after its
    answer went to the agent, never waited for (a denial's row is whole before its 403 goes out)."""
    deadline = time.monotonic() + 10
    while True:
        rows = proxy.rows()
        if sum(r["outcome_hash"] is not None for r in rows) >= count or time.monotonic() > deadline:
            return rows
        time.sleep(0.05)


def test_a_websocket_ends_when_its_agents_token_is_changed(make_proxy, ws_upstream):
    """An open WebSocket goes on as the identity it was opened with only while that identity holds: after the agent's
    token is changed in the config, its next message is not relayed and the connection is closed."""
    proxy = make_proxy(POLICY, routes={"ws.example.com": f"http://127.0.0.1:{ws_upstream}"})
    with connect("ws://ws.example.com/chat", proxy=proxy.proxy_url(), open_timeout=10) as ws:
        ws.send("hello")
        assert ws.recv(timeout=10) == "echo: hello"
        text = proxy.config.read_text()
        assert '"mailbot-token-1"' in text
        proxy.config.write_text(text.replace('"mailbot-token-1"', '"mailbot-token-rotated-9"'))
        deadline = time.monotonic() + 10
        while "config reloaded" not in proxy.log_text() and time.monotonic() < deadline:
            time.sleep(0.05)
        with pytest.raises(ConnectionClosed):
            ws.send("after")
            ws.recv(timeout=10)
    assert "no longer valid" in proxy.log_text()


def test_env_formats(make_proxy):
    """`env` prints the agent's proxy URL and CA as shell exports, JSON with the PEM, and a Docker env-file."""
    proxy = make_proxy(POLICY, start=False)
    shell = proxy.cli("env", "--agent", "mailbot").stdout
    assert "unset NO_PROXY no_proxy" in shell
    assert f"export HTTPS_PROXY={shlex.quote(proxy.proxy_url())}" in shell
    doc = json.loads(proxy.cli("env", "--agent", "mailbot", "--format", "json").stdout)
    assert doc["env"]["HTTP_PROXY"] == proxy.proxy_url()
    assert doc["ca_cert_pem"] == proxy.ca_cert.read_text()
    docker = proxy.cli("env", "--agent", "mailbot", "--format", "docker", "--proxy-host", "172.17.0.1",
                       "--ca-path", "/goex/ca.pem").stdout.splitlines()
    assert f"HTTPS_PROXY=http://mailbot:{TOKENS['mailbot']}@172.17.0.1:{proxy.port}" in docker
    assert "SSL_CERT_FILE=/goex/ca.pem" in docker and "NO_PROXY=" in docker


def test_shell_env_drives_a_real_client(make_proxy, upstream):
    """Sourcing `env --format shell` in a shell makes curl go through the proxy with the CA trusted."""
    proxy = make_proxy(GITHUB_READ)
    exports = proxy.cli("env", "--agent", "mailbot").stdout
    script = exports + "curl -sS --fail https://api.github.com/repos/a/b\n"
    r = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=30,
                       env={"PATH": os.environ["PATH"], "NO_PROXY": "*"})
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["full_name"] == "a/b"


def test_addons_load_into_plain_mitmdump(make_proxy, upstream):
    """The pipeline loads into `mitmdump -s` with --set goex_config and enforces the same policy."""
    proxy = make_proxy(GITHUB_READ, start=False)
    import goex_proxy.addons as addons_pkg
    port = proxy.port
    mitmdump = Path(sys.executable).parent / "mitmdump"
    proc = subprocess.Popen([str(mitmdump), "-q", "--listen-host", "127.0.0.1", "-p", str(port),
                             "--set", f"confdir={proxy.home}", "--set", "connection_strategy=lazy",
                             "--set", f"ssl_verify_upstream_trusted_ca={_bundle(proxy)}",
                             "-s", addons_pkg.__file__, "--set", f"goex_config={proxy.config}"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        wait_port(port, proc=proc)
        ok = proxy.exec("mailbot", "curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "https://api.github.com/repos/a/b")
        no = proxy.exec("mailbot", "curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "-X", "POST",
                        "https://api.github.com/repos/a/b")
        assert (ok.stdout, no.stdout) == ("200", "403")
        assert [r["decision"] for r in proxy.rows()] == ["allow", "deny"]
    finally:
        proc.terminate()
        proc.wait(10)


def test_a_script_loaded_again_closes_the_old_pipeline_and_the_new_one_enforces(make_proxy, upstream, tmp_path):
    """mitmdump loads a script again when its file changes (an upgrade of goex-proxy under a running mitmdump). The
    old pipeline's `done` was called synchronously and its coroutine dropped ("never awaited"): its audit writer,
    gate and policy watcher were never stopped. Now it is stopped, and the new pipeline decides and records every
    request after the reload, on the same chain."""
    import goex_proxy.addons as addons_pkg

    proxy = make_proxy(GITHUB_READ, start=False)
    script = tmp_path / "goex_pipeline.py"  # a copy: the package's own file is every other test's too
    script.write_text(Path(addons_pkg.__file__).read_text())
    output = tmp_path / "mitmdump.out"
    mitmdump = Path(sys.executable).parent / "mitmdump"
    with output.open("wb") as out:
        proc = subprocess.Popen([str(mitmdump), "--listen-host", "127.0.0.1", "-p", str(proxy.port),
                                 "--set", f"confdir={proxy.home}", "--set", "connection_strategy=lazy",
                                 "--set", f"ssl_verify_upstream_trusted_ca={_bundle(proxy)}",
                                 "-s", str(script), "--set", f"goex_config={proxy.config}"],
                                stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONWARNINGS": "always"})
    get = ("curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "https://api.github.com/repos/a/b")
    try:
        wait_port(proxy.port, proc=proc)
        assert proxy.exec("mailbot", *get).stdout == "200"
        later = script.stat().st_mtime + 5
        os.utime(script, (later, later))
        deadline = time.monotonic() + 20
        while output.read_text(errors="replace").count("Loading script") < 2:
            assert time.monotonic() < deadline, output.read_text(errors="replace")[-2000:]
            time.sleep(0.1)
        time.sleep(0.5)  # the old pipeline's done, on the loop
        assert proxy.exec("mailbot", *get).stdout == "200"
        assert proxy.exec("mailbot", *get[:-1], "-X", "POST", get[-1]).stdout == "403"
    finally:
        proc.terminate()
        proc.wait(15)
    text = output.read_text(errors="replace")
    assert "never awaited" not in text and "Traceback" not in text, text[-3000:]
    assert [r["decision"] for r in proxy.rows()] == ["allow", "allow", "deny"]
    verified = proxy.cli("log", "verify")
    assert verified.returncode == 0 and "3 rows" in verified.stdout, verified.stdout + verified.stderr


def test_plain_mitmdump_with_unsafe_options_is_refused(make_proxy):
    """Under mitmdump, the pipeline refuses to run with options that would let traffic bypass it."""
    import goex_proxy.addons as addons_pkg

    proxy = make_proxy(GITHUB_READ, start=False)
    mitmdump = Path(sys.executable).parent / "mitmdump"
    r = subprocess.run([str(mitmdump), "-q", "--listen-host", "127.0.0.1", "-p", str(proxy.port),
                        "--set", f"confdir={proxy.home}", "-s", addons_pkg.__file__,
                        "--set", f"goex_config={proxy.config}"], capture_output=True, text=True, timeout=60)
    assert r.returncode != 0
    assert "connection_strategy=lazy" in r.stdout + r.stderr


def _bundle(proxy) -> Path:
    """mitmdump's own options do not read our config's extra_ca: give it the test CA directly."""
    return Path(proxy.config.read_text().split("extra_ca: [")[1].split("]")[0])


def test_pings_do_not_outlive_a_revoked_identity(make_proxy, ws_upstream):
    """Ping and pong frames pass with no hook: after the agent's token is changed, a WebSocket that only pings (each
    ping's 125 bytes reach the upstream and come back in its pong) must be closed all the same, at the reload and not
    at its next message. Before, it went on pinging both ways for as long as it liked."""
    proxy = make_proxy(POLICY, routes={"ws.example.com": f"http://127.0.0.1:{ws_upstream}"})
    with connect("ws://ws.example.com/chat", proxy=proxy.proxy_url(), open_timeout=10) as ws:
        assert ws.ping(b"before").wait(timeout=10)
        text = proxy.config.read_text()
        proxy.config.write_text(text.replace('"mailbot-token-1"', '"mailbot-token-rotated-9"'))
        deadline = time.monotonic() + 10
        while "config reloaded" not in proxy.log_text() and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)
        with pytest.raises(ConnectionClosed):
            for _ in range(3):
                assert not ws.ping(b"exfiltrated after the token was changed").wait(timeout=3)
    assert "no longer valid" in proxy.log_text()
