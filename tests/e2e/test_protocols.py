"""What the proxy cannot inspect (raw TCP in a tunnel, an HTTP Upgrade to anything but WebSocket) is refused before it
reaches anyone, unless a rule with that `protocol` allows it: then it is relayed and audited."""

from __future__ import annotations

import base64
import socket
import time

import pytest

from tests.conftest import TOKENS, LoopbackServer

pytestmark = pytest.mark.e2e

CREDS = base64.b64encode(f"slackbot:{TOKENS['slackbot']}".encode()).decode()
POLICY = """
    version: 1
    name: p
    agents: [slackbot]
    rules:
      - name: web
        allow: {host: slack.com, path: "/upgrade-foo"}
      - name: foo upgrade
        allow: {host: slack.com, path: "/upgrade-foo", protocol: foo}
      - name: database
        allow: {host: db.test, protocol: tcp, ports: [5432]}
"""


def _echo(conn: socket.socket) -> None:
    while data := conn.recv(1024):
        conn.sendall(data)


@pytest.fixture
def echo():
    server = LoopbackServer(_echo)  # echoes what it receives
    yield server
    server.close()


@pytest.fixture
def proxy(make_proxy, echo):
    route = f"http://127.0.0.1:{echo.port}"
    return make_proxy({"p": POLICY}, routes={"db.test:5432": route, "db.test:5433": route})


def tunnel(proxy, target: str) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", proxy.port), timeout=5)
    s.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\nProxy-Authorization: Basic {CREDS}\r\n\r\n".encode())
    assert s.recv(1024).startswith(b"HTTP/1.1 200")
    return s


def read_all(s: socket.socket, until: bytes = b"", timeout: float = 3) -> bytes:
    s.settimeout(timeout)
    got = b""
    try:
        while chunk := s.recv(4096):
            got += chunk
            if until and until in got:
                break
    except (TimeoutError, ConnectionResetError):
        pass
    return got


def upgrade(s: socket.socket, path: str, protocol: str | None) -> bytes:
    extra = f"Connection: Upgrade\r\nUpgrade: {protocol}\r\n" if protocol else ""
    s.sendall(f"GET {path} HTTP/1.1\r\nHost: slack.com\r\n{extra}\r\n".encode())
    return read_all(s, b"\r\n\r\n")


def test_raw_tcp_a_rule_allows_is_relayed_and_audited(proxy, echo):
    with tunnel(proxy, "db.test:5432") as s:
        s.sendall(b"\x00\x00\x00\x08\x04\xd2\x16\x2f")  # a PostgreSQL SSLRequest: not HTTP, not TLS
        assert read_all(s, b"\x2f") == b"\x00\x00\x00\x08\x04\xd2\x16\x2f"
    assert echo.accepted == 1
    row = proxy.rows()[-1]
    assert (row["method"], row["url"], row["decision"], row["rule"], row["agent"]) == (
        "CONNECT", "tcp://db.test:5432", "allow", "p/database", "slackbot")


def test_raw_tcp_to_a_port_no_rule_names_never_connects(proxy, echo):
    with tunnel(proxy, "db.test:5433") as s:
        s.sendall(b"\x00\x00\x00\x08\x04\xd2\x16\x2f")
        assert read_all(s) == b""
    assert echo.accepted == 0
    row = proxy.rows()[-1]
    assert (row["url"], row["decision"]) == ("tcp://db.test:5433", "deny")
    assert "no rule allows raw TCP to db.test:5433" in row["reason"]


def test_an_upgrade_no_rule_names_is_refused_before_the_upstream(proxy, upstream):
    with tunnel(proxy, "slack.com:80") as s:
        answer = upgrade(s, "/upgrade-foo", "bar") + read_all(s, b"}")
    assert answer.startswith(b"HTTP/1.1 403") and b"upgrading to 'bar'" in answer
    assert upstream.seen_paths("slack.com") == []


def test_several_upgrade_protocols_at_once_are_refused(proxy, upstream):
    with tunnel(proxy, "slack.com:80") as s:
        answer = upgrade(s, "/upgrade-foo", "foo, h2c") + read_all(s, b"}")
    assert answer.startswith(b"HTTP/1.1 403") and b"request-upgrade" in answer
    assert upstream.seen_paths("slack.com") == []


def test_an_upgrade_a_rule_names_is_relayed(proxy, upstream):
    with tunnel(proxy, "slack.com:80") as s:
        assert upgrade(s, "/upgrade-foo", "foo").startswith(b"HTTP/1.1 101")
        s.sendall(b"hello foo")
        assert read_all(s, b"hello foo") == b"hello foo"
    assert [seen.body for seen in upstream.state.seen if seen.method == "RAW"] == [b"hello foo"]
    assert proxy.rows()[-1]["rule"] == "p/foo upgrade"


def test_a_switch_of_protocols_nobody_asked_for_is_not_relayed(proxy, upstream):
    """The upstream answers 101 to a plain GET: the agent gets 502, and nothing it sends after reaches the upstream."""
    with tunnel(proxy, "slack.com:80") as s:
        answer = upgrade(s, "/upgrade-foo", None) + read_all(s, b"}")
        assert answer.startswith(b"HTTP/1.1 502") and b"switched protocols" in answer
        try:
            s.sendall(b"smuggled")
        except OSError:
            pass
        read_all(s, timeout=1)
    assert not any(seen.method == "RAW" for seen in upstream.state.seen)


def remove_slackbot(proxy) -> None:
    text = proxy.config.read_text()
    line = f'  slackbot: {{token: "{TOKENS["slackbot"]}"}}\n'
    assert line in text
    proxy.config.write_text(text.replace(line, ""))
    deadline = time.monotonic() + 10
    while "config reloaded: agents" not in proxy.log_text() and time.monotonic() < deadline:
        time.sleep(0.05)


def test_a_raw_stream_already_relayed_ends_when_its_agent_is_removed(proxy, echo):
    """The stream was allowed and relayed; once slackbot is removed from the config, its next bytes are not relayed and
    the connection is closed, and the row says why the stream ended. Before, a stream outlived its agent."""
    with tunnel(proxy, "db.test:5432") as s:
        s.sendall(b"before")
        assert read_all(s, b"before") == b"before"
        remove_slackbot(proxy)
        s.sendall(b"after")
        assert read_all(s) == b""
    assert echo.accepted == 1
    deadline = time.monotonic() + 10
    while (row := proxy.rows()[-1])["ended"] is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert (row["url"], row["decision"]) == ("tcp://db.test:5432", "allow")
    assert "ended the stream" in row["error"] and "no longer valid" in row["error"]
    assert "agent 'slackbot'" in proxy.log_text()


def test_raw_tcp_in_a_tunnel_whose_agent_was_removed_is_refused(proxy, echo):
    """The tunnel was accepted for slackbot; slackbot is then removed from the config. The tunnel is closed at the
    reload, and its raw bytes never reach the upstream. Before, the stream took the tunnel's identity without checking
    it again."""
    with tunnel(proxy, "db.test:5432") as s:
        remove_slackbot(proxy)
        try:
            s.sendall(b"\x00\x00\x00\x08\x04\xd2\x16\x2f")
        except OSError:
            pass
        assert read_all(s) == b""
    assert echo.accepted == 0
    assert all(row["decision"] != "allow" for row in proxy.rows())
    assert "ended a connection of agent 'slackbot'" in proxy.log_text() and "no longer valid" in proxy.log_text()
