"""Approvals through a real `goex-proxy run`: held, approved, denied, timed out, delayed and cancelled requests, the
review queue, many waiting agents, and a restart while a request waits."""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

pytestmark = pytest.mark.e2e

POLICY = {"slack": """
    version: 1
    review: {exact: pass, needs-preimage: pass, lossy: delay 3s, irreversible: hold 20s}
    rules:
      - name: slack methods
        allow: {host: slack.com, methods: [POST], path: "/api/*"}
"""}

CALL = """
import json, sys, requests
r = requests.post("https://slack.com/api/" + sys.argv[1], json=json.loads(sys.argv[2]), timeout=120)
print(json.dumps({"status": r.status_code, "body": r.json()}))
"""


class Agent(threading.Thread):
    """One agent call through `goex-proxy exec` (python requests), running while the test decides on it."""

    def __init__(self, proxy: Any, method: str, body: dict[str, Any], agent: str = "mailbot") -> None:
        super().__init__(daemon=True)
        self.proxy, self.args, self.agent = proxy, (method, json.dumps(body)), agent
        self.result: dict[str, Any] | None = None
        self.error = ""
        self.start()

    def run(self) -> None:
        r = self.proxy.exec(self.agent, sys.executable, "-c", CALL, *self.args, timeout=150)
        self.error = r.stderr
        if r.returncode == 0:
            self.result = json.loads(r.stdout)

    def outcome(self, timeout: float = 60) -> dict[str, Any]:
        self.join(timeout)
        assert self.result is not None, self.error
        return self.result


def wait_for(check: Callable[[], Any], timeout: float = 30, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def pending(proxy: Any) -> list[dict[str, Any]]:
    r = proxy.cli("pending", "--json")
    assert r.returncode == 0, r.stderr
    return [json.loads(line) for line in r.stdout.splitlines()]


def posted(upstream: Any) -> dict[str, Any]:
    return {ts: m["text"] for ts, m in upstream.state.slack_messages.items()}


def one_pending(proxy: Any) -> dict[str, Any]:
    return wait_for(lambda: pending(proxy), what="a pending request")[0]  # type: ignore[no-any-return]


def test_an_irreversible_call_waits_for_approval_and_is_sent_once(make_proxy, upstream):
    proxy = make_proxy(POLICY)
    ts = Agent(proxy, "chat.postMessage", {"channel": "C0BOTS", "text": "to delete"}).outcome()["body"]["ts"]
    deleting = Agent(proxy, "chat.delete", {"channel": "C0BOTS", "ts": ts})
    card = one_pending(proxy)
    assert card["kind"] == "hold" and card["undo_class"] == "irreversible" and card["live"]
    assert "chat.delete" in card["card"]["summary"] and "channel=C0BOTS" in card["card"]["summary"]
    time.sleep(1)
    assert deleting.is_alive() and upstream.state.slack_calls.count("chat.delete") == 0  # nothing sent while it waits
    row = next(r for r in proxy.rows() if r["id"] == card["id"])
    assert row["decision"] == "hold" and row["status"] is None  # recorded before it waited

    r = proxy.cli("approve", card["id"])
    assert r.returncode == 0 and "approved" in r.stdout, r.stderr
    assert deleting.outcome()["body"]["ok"] is True
    assert upstream.state.slack_calls.count("chat.delete") == 1 and ts not in posted(upstream)
    again = proxy.cli("approve", card["id"])
    assert again.returncode == 1 and "no longer waiting: it was approved" in again.stderr
    row = next(r for r in proxy.rows() if r["id"] == card["id"])
    approval = json.loads(row["approval"])
    assert row["status"] == 200 and approval["state"] == "approved" and "command line" in approval["decided_by"]
    assert proxy.cli("log", "verify").returncode == 0


def test_a_denied_call_gets_the_persons_reason_and_a_timed_out_one_is_denied(make_proxy, upstream):
    proxy = make_proxy({"slack": POLICY["slack"].replace("hold 20s", "hold 2s")})
    ts = Agent(proxy, "chat.postMessage", {"channel": "C0BOTS", "text": "keep me"}).outcome()["body"]["ts"]
    first = Agent(proxy, "chat.delete", {"channel": "C0BOTS", "ts": ts})
    card = one_pending(proxy)
    r = proxy.cli("deny", card["id"], "--reason", "that message stays")
    assert r.returncode == 0, r.stderr
    out = first.outcome()
    assert out["status"] == 403 and "that message stays" in out["body"]["reason"]

    second = Agent(proxy, "chat.delete", {"channel": "C0BOTS", "ts": ts})
    out = second.outcome()
    assert out["status"] == 403 and "nobody approved it within 2s" in out["body"]["reason"]
    assert upstream.state.slack_calls.count("chat.delete") == 0 and ts in posted(upstream)
    states = [json.loads(r["approval"])["state"] for r in proxy.rows() if r["decision"] == "hold"]
    assert states == ["denied", "timed out"]
    assert proxy.cli("log", "verify").returncode == 0


def test_a_delayed_call_cancelled_in_its_window_never_reaches_the_upstream(make_proxy, upstream):
    proxy = make_proxy({"slack": POLICY["slack"].replace("delay 3s", "delay 30s")})
    creating = Agent(proxy, "conversations.create", {"name": "oops-wrong"})  # lossy: delayed
    card = one_pending(proxy)
    assert card["kind"] == "delay" and card["undo_class"] == "lossy"
    assert proxy.cli("cancel", card["id"]).returncode == 0
    out = creating.outcome()
    assert out["status"] == 403 and "cancelled" in out["body"]["reason"]
    assert "conversations.create" not in upstream.state.slack_calls


def test_a_delay_that_runs_out_sends_the_call_and_queues_it_for_review(make_proxy, upstream):
    proxy = make_proxy(POLICY)  # lossy: delay 3s
    started = time.monotonic()
    out = Agent(proxy, "conversations.create", {"name": "agent-room"}).outcome()
    assert out["body"]["ok"] is True and time.monotonic() - started >= 3
    assert upstream.state.slack_calls.count("conversations.create") == 1
    r = proxy.cli("review")
    assert "sent when its delay ran out" in r.stdout and "conversations.archive" in r.stdout, r.stdout


def test_an_exact_call_passes_at_once_and_is_queued_for_review(make_proxy, upstream):
    proxy = make_proxy(POLICY)
    started = time.monotonic()
    out = Agent(proxy, "reactions.add", {"channel": "C0BOTS", "timestamp": "1.0", "name": "wave"}).outcome()
    assert out["body"]["ok"] is True and time.monotonic() - started < 20 and not pending(proxy)
    r = proxy.cli("review")
    assert r.returncode == 0, r.stderr
    assert "reactions.add" in r.stdout and "passed (undo can take it back)" in r.stdout
    assert "reactions.remove" in r.stdout  # its undo plan
    request_id = r.stdout.split()[0]
    assert proxy.cli("review", "--done", request_id).returncode == 0
    assert "nothing to review" in proxy.cli("review").stdout
    assert proxy.cli("undo", request_id, "--yes").returncode == 0
    assert upstream.state.slack_reactions == set()
