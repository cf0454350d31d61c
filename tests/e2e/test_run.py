"""`goex-proxy run` as a person watches it: a line per request, config edits applied live, a clean stop."""

from __future__ import annotations

import signal
import socket
import threading
import time

import pytest
import requests

from tests.conftest import TOKENS

pytestmark = pytest.mark.e2e

POLICY = {"open": """
    version: 1
    name: open
    rules:
      - name: read the example
        allow: {host: example.com, methods: [GET]}
"""}


def session(proxy, agent="mailbot", token=None):
    s = requests.Session()
    url = proxy.proxy_url(agent) if token is None else f"http://{agent}:{token}@127.0.0.1:{proxy.port}"
    s.proxies = {"http": url, "https": url}
    s.verify = str(proxy.ca_cert)
    s.trust_env = False
    return s


def bare(proxy):
    """A client that sends no proxy credentials (git's first try does that)."""
    s = requests.Session()
    s.proxies = {"http": f"http://127.0.0.1:{proxy.port}"}
    s.trust_env = False
    return s


def eventually(check, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def logged(proxy, text):
    return eventually(lambda: text in proxy.log_text())


def test_run_writes_a_line_per_request_with_its_decision(make_proxy):
    """Before, `run` wrote its start line and then nothing while it worked."""
    proxy = make_proxy(POLICY)
    ok = session(proxy).get("https://example.com/hello?x=1")
    no = session(proxy).post("https://example.com/hello")
    challenge = bare(proxy).get("http://example.com/")
    assert (ok.status_code, no.status_code, challenge.status_code) == (200, 403, 407)
    assert logged(proxy, f"{ok.headers['X-Goex-Request-Id']} mailbot GET https://example.com/hello?x=1 -> allow 200")
    assert logged(proxy, f"{no.headers['X-Goex-Request-Id']} mailbot POST https://example.com/hello -> deny 403 (")
    assert "ms): no rule allows POST example.com/hello for agent 'mailbot'" in proxy.log_text()
    assert logged(proxy, f"{challenge.headers['X-Goex-Request-Id']} - GET http://example.com/ -> challenge 407")


def test_a_request_without_proxy_credentials_is_recorded_as_a_challenge_and_a_wrong_token_as_a_denial(make_proxy):
    """git asks without credentials first, then with them: the first 407 is a challenge, not a refused identity."""
    proxy = make_proxy(POLICY)
    assert bare(proxy).get("http://example.com/").status_code == 407
    assert session(proxy, token="not-the-token-at-all").get("http://example.com/").status_code == 407
    decisions = [(r["agent"], r["decision"], r["reason"]) for r in proxy.rows()]
    assert decisions == [(None, "challenge", "proxy authentication failed: no proxy credentials were sent"),
                         (None, "deny", "proxy authentication failed: unknown agent or wrong token")]
    listed = proxy.cli("log", "--decision", "challenge", "--json")
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.count('"challenge"') == 1


def test_config_edits_apply_while_running_and_a_broken_one_keeps_the_last_good(make_proxy):
    """An agent added to config.yaml can work at once; a broken edit is reported and changes nothing; a new listen
    address is named as waiting for a restart. Before, config.yaml was read only at start, without a word."""
    proxy = make_proxy(POLICY)
    newbot = session(proxy, "newbot", "newbot-token-12345")
    assert newbot.get("http://example.com/").status_code == 407
    text = proxy.config.read_text()
    proxy.config.write_text(text.replace("agents:\n", 'agents:\n  newbot: {token: "newbot-token-12345"}\n', 1))
    assert logged(proxy, "config reloaded: agents")
    assert newbot.get("http://example.com/").status_code == 200

    good = proxy.config.read_text()
    proxy.config.write_text(good + "surprise: [\n")
    assert logged(proxy, "config reload rejected; keeping the last good config")
    assert "invalid YAML" in proxy.log_text()
    assert newbot.get("http://example.com/").status_code == 200

    proxy.config.write_text(good.replace(f"listen: 127.0.0.1:{proxy.port}", "listen: 127.0.0.1:1"))
    assert logged(proxy, "config: listen takes effect only when goex-proxy restarts")
    assert newbot.get("http://example.com/").status_code == 200  # still on the port it started on
    assert "Traceback" not in proxy.log_text()


def test_an_agent_removed_from_the_config_is_cut_off_inside_its_open_tunnel(make_proxy, upstream):
    """A CONNECT tunnel authenticated once; its later requests are checked against the config as it is now."""
    proxy = make_proxy(POLICY)
    slackbot = session(proxy, "slackbot")
    assert slackbot.get("https://example.com/one").status_code == 200  # the tunnel stays open (keep-alive)
    text = proxy.config.read_text()
    line = f'  slackbot: {{token: "{TOKENS["slackbot"]}"}}\n'
    assert line in text
    proxy.config.write_text(text.replace(line, ""))
    assert logged(proxy, "config reloaded: agents")
    refused = slackbot.get("https://example.com/two")
    assert refused.status_code == 407
    assert "no longer valid" in refused.json()["reason"]
    assert upstream.seen_paths("example.com") == ["/one"]


def test_stopping_with_a_request_in_flight_records_it_as_interrupted(make_proxy):
    """Ctrl-C while a request waits for its upstream: the row gets an outcome, `interrupted`, and `run` says so.
    Before, `run` exited without a word and the row stayed pending for ever."""
    proxy = make_proxy(POLICY)
    ended = threading.Event()

    def slow() -> None:
        try:
            session(proxy).get("https://example.com/slow", timeout=30)
        except requests.RequestException:
            pass
        ended.set()

    threading.Thread(target=slow, daemon=True).start()
    assert eventually(lambda: any(r["path"] == "/slow" for r in proxy.rows()))
    time.sleep(0.3)
    assert proxy.proc is not None
    proxy.proc.send_signal(signal.SIGINT)
    assert proxy.proc.wait(20) == 0
    row = next(r for r in proxy.rows() if r["path"] == "/slow")
    assert row["status"] is None
    assert row["error"] == "interrupted: goex-proxy stopped before the request ended"
    assert "goex-proxy stopped with 1 request in flight, recorded as interrupted" in proxy.log_text()
    verified = proxy.cli("log", "verify")
    assert verified.returncode == 0, verified.stdout + verified.stderr


@pytest.mark.parametrize("jail", ["--jail", "--no-jail"])
def test_exec_refuses_a_listener_on_the_proxy_port_that_is_not_this_goex_proxy(make_proxy, jail):
    """Something else holds the port (it accepts and never answers): `exec` says so within seconds and sends it
    nothing. Before, the command hung on it, and had sent it the agent's token."""
    proxy = make_proxy(POLICY, start=False)
    held = socket.create_server(("127.0.0.1", proxy.port))
    received: list[bytes] = []

    def accept() -> None:
        while True:
            try:
                conn, _ = held.accept()
            except OSError:
                return
            conn.settimeout(10)
            try:
                while chunk := conn.recv(65536):
                    received.append(chunk)
            except OSError:
                pass

    threading.Thread(target=accept, daemon=True).start()
    started = time.monotonic()
    r = proxy.run_cli("exec", "--config", str(proxy.config), "--agent", "mailbot", jail, "--",
                      "curl", "-s", "-m", "20", "http://example.com/", timeout=40)
    held.close()
    assert time.monotonic() - started < 15
    assert r.returncode == 2, r.stdout + r.stderr
    assert f"something other than this config's goex-proxy is listening on 127.0.0.1:{proxy.port}" in r.stderr
    assert "Traceback" not in r.stderr
    sent = b"".join(received)
    assert TOKENS["mailbot"].encode() not in sent and b"Proxy-Authorization" not in sent


def test_a_jailed_exec_ends_quietly_even_with_a_request_still_in_flight(make_proxy):
    """The proxy `exec` starts for the jail stops with the command; a request still waiting for its upstream when the
    command ends gets its outcome, and nothing of asyncio's shutdown ("Event loop is closed", "Task was destroyed but it is
    pending", a traceback) reaches the person's terminal."""
    proxy = make_proxy(POLICY, start=False)
    for _ in range(3):
        r = proxy.exec("mailbot", "sh", "-c", "curl -s -o /dev/null http://example.com/fine; "
                       "timeout 1 curl -s -o /dev/null http://example.com/slow; echo ended")
        assert r.returncode == 0 and r.stdout.strip() == "ended", r.stdout + r.stderr
        for noise in ("Traceback", "Event loop is closed", "Task was destroyed", "exception"):
            assert noise not in r.stderr, r.stderr
    rows = proxy.rows()
    assert [r["status"] for r in rows if r["path"] == "/fine"] == [200] * 3
    assert [r["error"] for r in rows if r["path"] == "/slow"] == ["Client disconnected."] * 3  # none left pending


def test_a_config_edit_whose_policy_list_does_not_load_changes_nothing(make_proxy):
    """One edit adds an agent and narrows it to a new policy file that does not load: the whole edit is refused, so
    the agent is not let in under the old, wider policies. Before, the agents applied and the policies did not."""
    proxy = make_proxy(POLICY)
    (proxy.home / "policies" / "narrow.yaml").write_text("version: 1\nname: narrow\nbogus: 1\nrules: []\n")
    text = proxy.config.read_text()
    edited = text.replace("agents:\n", 'agents:\n  carol: {token: "carol-token-12345"}\n', 1)
    edited = edited.replace("  - policies/open.yaml\n", "  - {use: policies/open.yaml, agents: [mailbot]}\n"
                                                         "  - {use: policies/narrow.yaml, agents: [carol]}\n")
    assert edited.count("carol") == 3
    proxy.config.write_text(edited)
    assert logged(proxy, "config reload rejected; keeping the last good config and policies")
    assert "narrow.yaml:3:1" in proxy.log_text()
    assert session(proxy, "carol", "carol-token-12345").get("http://example.com/").status_code == 407
    assert "config reloaded" not in proxy.log_text()
