"""`goex-proxy run` as a person watches it: a line per request, config edits applied live, a clean stop."""

from __future__ import annotations

import base64
import os
import pty
import re
import signal
import socket
import subprocess
import threading
import time
from datetime import datetime, timedelta, timezone

import pytest
import requests

from tests.conftest import GOEX, TOKENS, wait_port

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
    assert logged(proxy, f"allow     {ok.headers['X-Goex-Request-Id']} mailbot GET https://example.com/hello?x=1 200 (")
    assert logged(proxy, f"deny      {no.headers['X-Goex-Request-Id']} mailbot POST https://example.com/hello 403 (")
    assert "ms): no rule allows POST example.com/hello for agent 'mailbot'" in proxy.log_text()
    assert logged(proxy, f"challenge {challenge.headers['X-Goex-Request-Id']} - GET http://example.com/ 407 (")


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
    """A CONNECT tunnel authenticated once is closed at the reload that removes its agent (its requests are checked
    against the config as it is now too); the client's new tunnel is refused."""
    proxy = make_proxy(POLICY)
    slackbot = session(proxy, "slackbot")
    assert slackbot.get("https://example.com/one").status_code == 200  # the tunnel stays open (keep-alive)
    text = proxy.config.read_text()
    line = f'  slackbot: {{token: "{TOKENS["slackbot"]}"}}\n'
    assert line in text
    proxy.config.write_text(text.replace(line, ""))
    assert logged(proxy, "config reloaded: agents")
    assert logged(proxy, "ended a connection of agent 'slackbot'")
    with pytest.raises(requests.exceptions.ProxyError, match="407"):
        slackbot.get("https://example.com/two")
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


LIVE_POLICY = {"live": """
    version: 1
    name: live
    rules:
      - name: read the example
        allow: {host: example.com, methods: [GET]}
      - name: post notes
        allow: {host: example.com, methods: [POST], path: /notes}
      - name: post to slack
        allow: {host: slack.com, methods: [POST], path: "/api/*"}
"""}
MAPS_SECRET = "CANARY-live-maps-key-7"
MAPS = """credentials:
  maps:
    secret: maps-key
    hosts: [example.com]
    inject: {query: key}
"""
#: `run`'s line per request: time, decision, id, agent, method, URL, status, undo class (writes), duration, why.
REQUEST_LINE = re.compile(r"(?P<time>\d\d:\d\d:\d\d) (?P<decision>[a-z]+) +(?P<id>[0-9A-Z]{13}) (?P<agent>\S+) "
                          r"(?P<method>[A-Z]+) (?P<url>\S+) (?P<status>\d{3}|failed)(?: undo: (?P<undo>.+?))? "
                          r"\((?P<ms>\d+) ms\)(?:: (?P<why>.*))?")
#: The local time the proxy is given (POSIX TZ "GOX-05:45"), so that a line in UTC would be seen.
AHEAD = timezone(timedelta(hours=5, minutes=45))


def request_lines(text: str) -> dict[str, re.Match[str]]:
    """The request lines in `run`'s output, by request id."""
    return {m["id"]: m for m in map(REQUEST_LINE.fullmatch, text.splitlines()) if m}


def start_run(proxy, *options: str, stdout, env: dict[str, str] | None = None) -> None:
    """`goex-proxy run` with `options`, its output to `stdout` (a file or a pseudo-terminal); stopped by make_proxy."""
    proxy.proc = subprocess.Popen([*GOEX, "run", "--config", str(proxy.config), *options], env=env or proxy.env,
                                  stdout=stdout, stderr=subprocess.STDOUT)
    wait_port(proxy.port, proc=proxy.proc)


def seconds_apart(clock: str, now: datetime) -> float:
    """How far `HH:MM:SS` is from `now`'s time of day (across midnight too)."""
    h, m, s = map(int, clock.split(":"))
    apart = abs(h * 3600 + m * 60 + s - (now.hour * 3600 + now.minute * 60 + now.second))
    return min(apart, 86400 - apart)


def test_run_lines_show_time_decision_agent_method_url_status_and_undo_class_but_never_a_secret(make_proxy):
    """Issue 18 item 5: each line starts with the local time, and a write says what undo could do for it. A secret
    injected into the URL, or sent by the agent in one, is shown as its placeholder, also in the denial's reason."""
    proxy = make_proxy(LIVE_POLICY, start=False, extra_config=MAPS)
    stored = proxy.run_cli("secrets", "set", "--config", str(proxy.config), "maps-key", input=MAPS_SECRET.encode())
    assert stored.returncode == 0, stored.stderr
    proxy.env["TZ"] = "GOX-05:45"
    proxy.start()
    s = session(proxy)
    answers = [s.get("https://example.com/echo?key=placeholder&q=1"), s.post("https://example.com/notes", json={}),
               s.post("https://slack.com/api/chat.postMessage", json={"channel": "C0BOTS", "text": "hello"}),
               s.post(f"https://example.com/leak/{MAPS_SECRET}")]
    assert [r.status_code for r in answers][2:] == [200, 403]
    ids = [r.headers["X-Goex-Request-Id"] for r in answers]
    assert eventually(lambda: set(ids) <= set(request_lines(proxy.log_text()))), proxy.log_text()
    now, text = datetime.now(AHEAD), proxy.log_text()
    lines = [request_lines(text)[i] for i in ids]
    assert [(m["decision"], m["agent"], m["method"], m["status"], m["undo"]) for m in lines] == [
        ("allow", "mailbot", "GET", "200", None), ("allow", "mailbot", "POST", str(answers[1].status_code), "no rule"),
        ("allow", "mailbot", "POST", "200", "exact"), ("deny", "mailbot", "POST", "403", None)]
    assert [m["url"] for m in lines] == ["https://example.com/echo?q=1&key=goex-placeholder-maps",
                                         "https://example.com/notes?key=goex-placeholder-maps",
                                         "https://slack.com/api/chat.postMessage",
                                         "https://example.com/leak/goex-placeholder-maps"]
    assert lines[3]["why"] == "no rule allows POST example.com/leak/goex-placeholder-maps for agent 'mailbot'"
    assert all(seconds_apart(m["time"], now) < 120 for m in lines), [m["time"] for m in lines]
    for spelling in (MAPS_SECRET, base64.b64encode(MAPS_SECRET.encode()).decode(), MAPS_SECRET.encode().hex()):
        assert spelling not in text
    assert "\x1b" not in text  # not a terminal: no colour


class Terminal:
    """The reading end of a pseudo-terminal, drained into a buffer by a thread until the other end closes."""

    def __init__(self, fd: int) -> None:
        self.fd, self.chunks = fd, []
        self.thread = threading.Thread(target=self._drain, daemon=True)
        self.thread.start()

    def _drain(self) -> None:
        while True:
            try:
                chunk = os.read(self.fd, 65536)
            except OSError:  # EIO: the proxy closed it
                return
            if not chunk:
                return
            self.chunks.append(chunk)

    def text(self) -> str:
        return b"".join(self.chunks).decode(errors="replace").replace("\r\n", "\n")


@pytest.mark.parametrize("no_color", [None, "1"])
def test_run_colours_its_lines_on_a_terminal_unless_no_color_is_set(make_proxy, no_color):
    """On a terminal the decision and the status are coloured as mitmdump colours them; NO_COLOR turns that off."""
    proxy = make_proxy(POLICY, start=False)
    env = {k: v for k, v in proxy.env.items() if k != "NO_COLOR"} | ({"NO_COLOR": no_color} if no_color else {})
    main, child = pty.openpty()
    try:
        start_run(proxy, stdout=child, env=env)
    finally:
        os.close(child)
    terminal = Terminal(main)
    try:
        ok = session(proxy).get("https://example.com/hello")
        no = session(proxy).post("https://example.com/hello")
        ok_id, no_id = ok.headers["X-Goex-Request-Id"], no.headers["X-Goex-Request-Id"]
        assert eventually(lambda: no_id in terminal.text()), terminal.text()
        proxy.stop()
        terminal.thread.join(10)
    finally:
        os.close(main)
    text = terminal.text()
    if no_color:
        assert "\x1b" not in text and {ok_id, no_id} <= set(request_lines(text))
    else:
        assert re.search(rf"\x1b\[2m\d\d:\d\d:\d\d\x1b\[0m \x1b\[32mallow +\x1b\[0m \x1b\[2m{ok_id}\x1b\[0m mailbot ", text), text
        assert "\x1b[1;32mGET\x1b[0m" in text and "\x1b[1;32m200\x1b[0m" in text
        assert re.search(rf"\x1b\[31mdeny +\x1b\[0m \x1b\[2m{no_id}\x1b\[0m mailbot .*\x1b\[1;31m403\x1b\[0m", text), text


def test_quiet_run_shows_reloads_and_rejected_edits_with_their_time_but_no_request_lines(make_proxy):
    """`--quiet` leaves out the line per request, not what changed in the proxy or went wrong."""
    proxy = make_proxy(POLICY, start=False)
    with open(proxy.log_path, "ab") as log:
        start_run(proxy, "--quiet", stdout=log)
    ok = session(proxy).get("https://example.com/hello")
    assert ok.status_code == 200
    proxy.write_policy("open", POLICY["open"].replace("read the example", "read the example page"))
    assert logged(proxy, "policies reloaded: open")
    proxy.config.write_text(proxy.config.read_text() + "surprise: [\n")
    assert logged(proxy, "config reload rejected")
    time.sleep(0.5)  # a request line would have been written by now
    text = proxy.log_text()
    assert re.search(r"^\d\d:\d\d:\d\d policies reloaded: open$", text, re.M), text
    assert re.search(r"^\d\d:\d\d:\d\d config reload rejected; keeping the last good config and policies:\n"
                     r" {9}\S*config\.yaml:\d+:\d+: invalid YAML", text, re.M), text
    assert ok.headers["X-Goex-Request-Id"] not in text and not request_lines(text)


HOLD_POLICY = {"held": """
    version: 1
    name: held
    rules:
      - name: post notes
        allow: {host: example.com, methods: [POST], path: /notes, hold: true}
"""}


def test_a_held_request_has_the_decision_its_row_has_and_ends_with_what_a_person_decided(make_proxy):
    """Approved: `hold`, its status and undo class; denied: `hold`, 403 and why. The time of the wait is in it."""
    proxy = make_proxy(HOLD_POLICY)
    answers: list[requests.Response] = []
    for verdict in ("approve", "deny"):
        waiting = threading.Thread(target=lambda: answers.append(session(proxy).post("https://example.com/notes",
                                                                                       timeout=60)))
        waiting.start()
        assert eventually(lambda: len(proxy.rows()) == len(answers) + 1)
        request_id = str(proxy.rows()[-1]["id"])
        time.sleep(0.3)
        decided = proxy.cli(verdict, request_id)
        assert decided.returncode == 0, decided.stderr
        waiting.join(30)
    assert [r.status_code for r in answers] == [200, 403]
    ids = [r.headers["X-Goex-Request-Id"] for r in answers]
    assert eventually(lambda: set(ids) <= set(request_lines(proxy.log_text()))), proxy.log_text()
    approved, denied = (request_lines(proxy.log_text())[i] for i in ids)
    assert (approved["decision"], approved["method"], approved["status"], approved["undo"]) == \
        ("hold", "POST", "200", "no rule")
    assert (denied["decision"], denied["status"], denied["undo"]) == ("hold", "403", None) and denied["why"]
    assert int(approved["ms"]) >= 300
