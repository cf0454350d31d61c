"""The web console for real: served by `goex-proxy run` (a `console:` section) and by `goex-proxy console` on its own,
asked with httpx. An agent's request made through `exec` shows up in the log and on the live stream, escaped; a held
request approved from the approvals page completes; undo from a request's page restores the Slack fake."""

from __future__ import annotations

import contextlib
import json
import re
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import GOEX, free_port, wait_port
from tests.e2e.test_approvals import Agent, posted, wait_for

pytestmark = pytest.mark.e2e

SLACK = {"slack": """
    version: 1
    rules:
      - name: slack methods
        allow: {host: slack.com, methods: [POST], path: "/api/*"}
"""}
HOLDING = {"slack": """
    version: 1
    review: {exact: pass, needs-preimage: pass, lossy: delay 3s, irreversible: hold 30s}
    rules:
      - name: slack methods
        allow: {host: slack.com, methods: [POST], path: "/api/*"}
"""}
SCRIPT = "<script>alert(1)</script>"
EVIL = """
import json, requests
r = requests.post("https://slack.com/api/chat.postMessage", json={"channel": "C0BOTS", "text": "<script>alert(1)</script>"},
                  headers={"X-Note": "<script>alert(1)</script>"}, timeout=20)
print(json.dumps(r.json()))
"""
LINK = re.compile(r"(http://127\.0\.0\.1:\d+)/\?token=([A-Za-z0-9_-]+)")


def with_console(make_proxy: Any, policies: dict[str, str]) -> tuple[Any, str, str]:
    """A started `goex-proxy run` serving its console; the console's base URL and the token `run` printed."""
    port = free_port()
    proxy = make_proxy(policies, extra_config=f"console: {{listen: '127.0.0.1:{port}'}}\n")
    found = wait_for(lambda: LINK.search(proxy.log_text()), what="the console's link")
    assert found.group(1) == f"http://127.0.0.1:{port}"
    return proxy, found.group(1), found.group(2)


def signed_in(base: str, token: str) -> httpx.Client:
    client = httpx.Client(base_url=base, timeout=30)
    r = client.get(f"/?token={token}")
    assert r.status_code == 303 and r.headers["location"] == "/" and f"goex_console_{base.rsplit(':', 1)[1]}" in client.cookies
    return client


def csrf_of(page: str) -> str:
    found = re.search(r'name="csrf" value="([0-9a-f]{64})"', page)
    assert found, "a form with its CSRF token"
    return found.group(1)


def first_event(client: httpx.Client, url: str, got: list[str]) -> threading.Thread:
    def listen() -> None:
        with client.stream("GET", url, timeout=60) as r:
            for line in r.iter_lines():
                if line.startswith("data: "):
                    got.append(line)
                    return

    reader = threading.Thread(target=listen, daemon=True)
    reader.start()
    return reader



@dataclass(frozen=True)
class Served:
    """`goex-proxy console` running on its own over a proxy's state directory: its process, port, output, base URL and
    first sign-in token."""

    process: subprocess.Popen[bytes]
    port: int
    out: Path
    base: str
    token: str


@contextlib.contextmanager
def console_alone(proxy: Any, tmp_path: Path) -> Iterator[Served]:
    """Start `goex-proxy console` on a free loopback port over the proxy's config; stop it (SIGTERM) on leaving."""
    port = free_port()
    out = tmp_path / "console.out"
    with open(out, "wb") as sink:
        process = subprocess.Popen([*GOEX, "console", "--config", str(proxy.config), "--listen", f"127.0.0.1:{port}"],
                                   env=proxy.env, stdout=sink, stderr=subprocess.STDOUT)
    try:
        wait_port(port, proc=process)
        found = wait_for(lambda: LINK.search(out.read_text()), what="the console's link")
        yield Served(process, port, out, found.group(1), found.group(2))
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(15)


def test_run_serves_the_console_where_an_agents_request_appears_live_and_escaped(make_proxy, upstream):
    proxy, base, token = with_console(make_proxy, SLACK)
    anonymous = httpx.Client(base_url=base, timeout=30)
    for path in ("/", "/approvals", "/events", "/static/console.css"):
        assert anonymous.get(path).status_code == 401, path
    assert anonymous.get("/?token=" + "x" * 43).status_code == 401
    assert anonymous.get(f"/?token={token}", headers={"Host": f"rebind.example:{base.rsplit(':', 1)[1]}"}) \
        .status_code == 400
    client = signed_in(base, token)
    page = client.get("/")
    assert page.status_code == 200 and "No requests recorded yet" in page.text
    stream = re.search(r'data-stream="([^"]+)"', page.text).group(1).replace("&amp;", "&")  # type: ignore[union-attr]
    got: list[str] = []
    reader = first_event(client, stream, got)

    r = proxy.exec("mailbot", sys.executable, "-c", EVIL)
    assert r.returncode == 0 and json.loads(r.stdout)["ok"] is True, r.stderr
    rid = str(proxy.rows()[-1]["id"])
    reader.join(30)
    assert got and rid in got[0] and "chat.postMessage" in got[0], got
    assert rid in client.get("/").text and rid in client.get("/?agent=mailbot&decision=allow").text
    assert rid not in client.get("/?agent=slackbot").text

    detail = client.get(f"/request/{rid}")
    assert detail.status_code == 200 and detail.headers["cache-control"] == "no-store"
    text = detail.text
    assert SCRIPT not in text and text.count("&lt;script&gt;alert(1)&lt;/script&gt;") >= 2  # the header and the body
    assert "X-Note" in text and "intact" in text and "slack methods" in text and "exact" in text
    assert "frame-ancestors 'none'" in detail.headers["content-security-policy"]

    proxy.stop()
    log = proxy.log_text()
    assert log.count(token) == 1, "the token is printed once, as the link, and never logged"
    for path in proxy.home.rglob("*"):
        if path.is_file() and path != proxy.log_path:
            assert token.encode() not in path.read_bytes(), path


def test_approving_a_held_request_from_the_approvals_page_lets_the_agents_call_complete(make_proxy, upstream):
    proxy, base, token = with_console(make_proxy, HOLDING)
    ts = Agent(proxy, "chat.postMessage", {"channel": "C0BOTS", "text": "to delete"}).outcome()["body"]["ts"]
    deleting = Agent(proxy, "chat.delete", {"channel": "C0BOTS", "ts": ts})
    client = signed_in(base, token)
    def held() -> str | None:
        text = client.get("/approvals").text
        return text if "chat.delete" in text else None

    page = wait_for(held, what="the held request on the approvals page")
    rid = re.search(r'action="/approvals/([0-9A-Z]+)/approve"', page).group(1)  # type: ignore[union-attr]
    assert 'class="countdown"' in page and "irreversible" in page and f"/approvals/{rid}/deny" in page
    assert client.post(f"/approvals/{rid}/approve", data={}).status_code == 403  # no CSRF token: nothing decided
    assert client.post(f"/approvals/{rid}/approve", data={"csrf": csrf_of(page)},
                       headers={"Origin": "http://evil.example"}).status_code == 403
    assert deleting.is_alive() and upstream.state.slack_calls.count("chat.delete") == 0

    r = client.post(f"/approvals/{rid}/approve", data={"csrf": csrf_of(page)}, headers={"Origin": base})
    assert r.status_code == 303 and r.headers["location"] == "/approvals"
    assert deleting.outcome()["body"]["ok"] is True and ts not in posted(upstream)
    row = next(r for r in proxy.rows() if r["id"] == rid)
    assert json.loads(str(row["approval"]))["decided_by"] == "console" and row["status"] == 200
    again = client.post(f"/approvals/{rid}/approve", data={"csrf": csrf_of(page)})
    assert again.status_code == 409 and "no longer waiting" in again.text
    assert "Nothing waits for you" in client.get("/approvals").text
    assert proxy.cli("log", "verify").returncode == 0


def test_undo_from_a_requests_page_restores_the_slack_fake(make_proxy, upstream):
    proxy, base, token = with_console(make_proxy, SLACK)
    out = Agent(proxy, "chat.postMessage", {"channel": "C0BOTS", "text": "take me back"}).outcome()
    assert out["body"]["ok"] and posted(upstream)
    rid = str(proxy.rows()[-1]["id"])
    client = signed_in(base, token)
    page = client.get(f"/request/{rid}").text
    assert "Undo this request" in page and "chat.delete" in page and "fidelity: <b>exact</b>" in page
    assert client.post(f"/request/{rid}/undo", data={"csrf": "0" * 64}).status_code == 403
    assert posted(upstream), "a refused POST changes nothing"

    done = client.post(f"/request/{rid}/undo", data={"csrf": csrf_of(page)}, headers={"Origin": base})
    assert done.status_code == 200 and "done" in done.text, done.text
    assert posted(upstream) == {} and upstream.state.slack_calls[-1] == "chat.delete"
    undo_rows = [r for r in proxy.rows() if r["undo_of"] == rid]
    assert len(undo_rows) == 1 and undo_rows[0]["status"] == 200
    after = client.get(f"/request/{rid}").text
    assert "already undone" in after and "Undo this request" not in after
    again = client.post(f"/request/{rid}/undo", data={"csrf": csrf_of(page)})
    assert again.status_code == 409 and upstream.state.slack_calls.count("chat.delete") == 1


def test_the_console_command_serves_a_state_directory_on_its_own(make_proxy, upstream, tmp_path: Path):
    proxy = make_proxy(SLACK)  # no console: section, so run serves none
    assert not LINK.search(proxy.log_text())
    with console_alone(proxy, tmp_path) as console:
        base, token, port = console.base, console.token, console.port
        assert httpx.get(f"{base}/", timeout=10).status_code == 401
        client = signed_in(base, token)
        stream = re.search(r'data-stream="([^"]+)"', client.get("/").text).group(1)  # type: ignore[union-attr]
        got: list[str] = []
        reader = first_event(client, stream.replace("&amp;", "&"), got)
        Agent(proxy, "chat.postMessage", {"channel": "C0BOTS", "text": "seen from afar"}).outcome()
        reader.join(30)
        assert got and str(proxy.rows()[-1]["id"]) in got[0]

        taken = subprocess.run([*GOEX, "console", "--config", str(proxy.config), "--listen", f"127.0.0.1:{port}"],
                               env=proxy.env, capture_output=True, text=True, timeout=60)
        assert taken.returncode == 2 and f"cannot serve the console on 127.0.0.1:{port}" in taken.stderr
        assert "Traceback" not in taken.stderr and taken.stderr.count("\n") == 1, taken.stderr
        open_ = subprocess.run([*GOEX, "console", "--config", str(proxy.config), "--listen", "0.0.0.0:1"],
                               env=proxy.env, capture_output=True, text=True, timeout=60)
        assert open_.returncode == 2 and "not a loopback address" in open_.stderr and "TLS" in open_.stderr
    assert console.process.returncode == 0 and console.out.read_text().count(token) == 1


def test_run_no_console_serves_none_and_a_taken_console_port_stops_run_before_it_starts(make_proxy, upstream):
    port = free_port()
    proxy = make_proxy(SLACK, start=False, extra_config=f"console: {{listen: '127.0.0.1:{port}'}}\n")
    with open(proxy.log_path, "ab") as sink:
        run = subprocess.Popen([*GOEX, "run", "--config", str(proxy.config), "--no-console"], env=proxy.env,
                               stdout=sink, stderr=subprocess.STDOUT)
    try:
        wait_port(proxy.port, proc=run)
        assert not LINK.search(proxy.log_text())
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"http://127.0.0.1:{port}/", timeout=5)
    finally:
        run.send_signal(signal.SIGTERM)
        run.wait(15)

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", port))
        taken.listen()
        r = proxy.run_cli("run", "--config", str(proxy.config), timeout=60)
    assert r.returncode == 2 and f"cannot listen on 127.0.0.1:{port}" in r.stderr and "console.listen" in r.stderr
    assert "Traceback" not in r.stderr and "token=" not in r.stdout + r.stderr


def test_a_conflict_is_shown_and_force_is_an_explicit_second_step(make_proxy, upstream):
    from tests.e2e.test_undo_slack import AGENT_EDITS, EDITOR, WITH_HISTORY

    proxy, base, token = with_console(make_proxy, WITH_HISTORY)
    ts = proxy.exec("slackbot", sys.executable, "-c", EDITOR).stdout.strip()
    assert proxy.exec("mailbot", sys.executable, "-c", AGENT_EDITS, ts).returncode == 0
    upstream.state.slack_messages[ts]["text"] = "a person's correction"
    edit = str(next(row for row in proxy.rows() if row["path"] == "/api/chat.update")["id"])
    client = signed_in(base, token)
    page = client.get(f"/request/{edit}").text
    assert "needs-preimage" in page and "First checks" in page and 'name="force"' not in page

    conflict = client.post(f"/request/{edit}/undo", data={"csrf": csrf_of(page)})
    assert conflict.status_code == 409 and "edited again after the agent" in conflict.text
    assert 'name="force" value="1"' in conflict.text and "Undo anyway" in conflict.text
    assert upstream.state.slack_messages[ts]["text"] == "a person's correction"  # nothing clobbered

    forced = client.post(f"/request/{edit}/undo", data={"csrf": csrf_of(conflict.text), "force": "1"})
    assert forced.status_code == 200 and "done" in forced.text, forced.text
    assert upstream.state.slack_messages[ts]["text"] == "original words"


def test_a_denial_from_the_page_carries_its_reason_and_a_delayed_request_can_be_cancelled(make_proxy, upstream):
    proxy, base, token = with_console(make_proxy, {"slack": HOLDING["slack"].replace("delay 3s", "delay 60s")})
    ts = Agent(proxy, "chat.postMessage", {"channel": "C0BOTS", "text": "keep me"}).outcome()["body"]["ts"]
    client = signed_in(base, token)

    def waiting(what: str) -> str | None:
        text = client.get("/approvals").text
        return text if what in text else None

    deleting = Agent(proxy, "chat.delete", {"channel": "C0BOTS", "ts": ts})
    page = wait_for(lambda: waiting("chat.delete"), what="the held delete")
    rid = re.search(r'action="/approvals/([0-9A-Z]+)/deny"', page).group(1)  # type: ignore[union-attr]
    r = client.post(f"/approvals/{rid}/deny", data={"csrf": csrf_of(page), "reason": "<b>that message stays</b>"})
    assert r.status_code == 303
    out = deleting.outcome()
    assert out["status"] == 403 and "<b>that message stays</b>" in out["body"]["reason"] and ts in posted(upstream)

    creating = Agent(proxy, "conversations.create", {"name": "late-room"})
    page = wait_for(lambda: waiting("conversations.create"), what="the delayed create")
    rid = re.search(r'action="/approvals/([0-9A-Z]+)/cancel"', page).group(1)  # type: ignore[union-attr]
    assert "Send now" in page and "Sent in" in page
    assert client.post(f"/approvals/{rid}/cancel", data={"csrf": csrf_of(page)}).status_code == 303
    assert creating.outcome()["status"] == 403 and "conversations.create" not in upstream.state.slack_calls
    states = {json.loads(str(r["approval"]))["state"] for r in proxy.rows() if r["approval"]}
    assert states == {"denied", "cancelled"}
    detail = client.get(f"/request/{rid}").text
    assert "cancelled" in detail and "console" in detail
