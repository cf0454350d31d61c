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

from tests.conftest import serve_json

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
    shown = proxy.cli("show", card["id"]).stdout
    assert "decision: hold" in shown and "wait: hold, approved by" in shown, shown
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


def _session(proxy: Any, agent: str) -> Any:
    import requests

    session = requests.Session()
    session.proxies = {"https": proxy_url(proxy, agent), "http": proxy_url(proxy, agent)}
    session.verify = str(proxy.ca_cert)
    return session


def proxy_url(proxy: Any, agent: str) -> str:
    return f"http://{agent}:{agent}-token-{agent}@127.0.0.1:{proxy.port}"


WAITERS = 20


def test_twenty_agents_wait_at_once_while_another_agents_calls_flow(make_proxy, upstream):
    proxy = make_proxy({"slack": """
        version: 1
        rules:
          - name: reads
            allow: {host: slack.com, methods: [GET], path: /api/conversations.list}
          - name: deletes wait for a person
            allow: {host: slack.com, methods: [POST], path: /api/chat.delete, hold: {timeout: 2m}}
    """}, start=False)
    names = [f"agent{i:02d}" for i in range(WAITERS + 1)]
    text = proxy.config.read_text()
    extra = "".join(f'  {n}: {{token: "{n}-token-{n}"}}\n' for n in names)
    proxy.config.write_text(text.replace("agents:\n", "agents:\n" + extra, 1))
    proxy.start()
    results: dict[str, int] = {}

    def delete(name: str) -> None:
        r = _session(proxy, name).post("https://slack.com/api/chat.delete", json={"channel": "C0BOTS", "ts": name},
                                       timeout=120)
        results[name] = r.status_code

    threads = [threading.Thread(target=delete, args=(n,), daemon=True) for n in names[:WAITERS]]
    for t in threads:
        t.start()
    waiting = wait_for(lambda: len(found := pending(proxy)) == WAITERS and found, timeout=60, what="20 held requests")
    assert {w["agent"] for w in waiting} == set(names[:WAITERS])

    reader = _session(proxy, names[WAITERS])
    for _ in range(30):  # while twenty wait, the twenty-first agent's reads are answered one after another
        r = reader.get("https://slack.com/api/conversations.list", timeout=10)
        assert r.status_code == 200 and r.json()["ok"] is True
    assert not results and all(t.is_alive() for t in threads) and "chat.delete" not in upstream.state.slack_calls

    for w in waiting:
        assert proxy.cli("approve" if w["agent"] < "agent10" else "deny", w["id"]).returncode == 0
    for t in threads:
        t.join(60)
    assert sorted(results.items()) == [(n, 200 if n < "agent10" else 403) for n in names[:WAITERS]]
    assert upstream.state.slack_calls.count("chat.delete") == 10
    assert proxy.cli("log", "verify").returncode == 0


def test_curl_waits_for_approval_and_a_held_call_counts_against_limits_only_when_sent(make_proxy, upstream):
    proxy = make_proxy({"slack": """
        version: 1
        rules:
          - name: one delete an hour and each held
            allow:
              host: slack.com
              methods: [POST]
              path: /api/chat.delete
              limit: {count: 1, per: 1h}
              hold: {timeout: 2m}
    """})
    curl = ["curl", "-sS", "--cacert", str(proxy.ca_cert), "-X", "POST", "-H", "Content-Type: application/json"]

    def curl_delete(ts: str) -> threading.Thread:
        out: dict[str, Any] = {}

        def go() -> None:
            r = proxy.exec("mailbot", *curl, "-d", json.dumps({"channel": "C0BOTS", "ts": ts}),
                           "https://slack.com/api/chat.delete", timeout=150)
            out.update(json.loads(r.stdout or "{}"))
        thread = threading.Thread(target=go, daemon=True)
        thread.out = out  # type: ignore[attr-defined]
        thread.start()
        return thread

    first = curl_delete("1.0")
    card = one_pending(proxy)
    assert proxy.cli("deny", card["id"]).returncode == 0  # denied: not charged
    first.join(60)
    assert "denied" in first.out["reason"]  # type: ignore[attr-defined]
    second = curl_delete("2.0")
    card = wait_for(lambda: [p for p in pending(proxy) if p["id"] != card["id"]], what="the second hold")[0]
    assert proxy.cli("approve", card["id"]).returncode == 0
    second.join(60)
    assert second.out.get("ok") is not None  # type: ignore[attr-defined]  # the upstream's answer, relayed
    third = curl_delete("3.0")  # the limit is spent by the approved one: refused before it waits
    third.join(60)
    assert "limit reached" in third.out["reason"] and not pending(proxy)  # type: ignore[attr-defined]
    assert upstream.state.slack_calls.count("chat.delete") == 1
    assert proxy.cli("log", "verify").returncode == 0


@pytest.mark.parametrize("how", ["stop", "kill"])
def test_a_restart_while_a_request_waits_denies_it_and_loses_no_row(make_proxy, upstream, how):
    proxy = make_proxy(POLICY)
    deleting = Agent(proxy, "chat.delete", {"channel": "C0BOTS", "ts": "1.0"})
    card = one_pending(proxy)
    if how == "stop":
        proxy.stop()
        out = deleting.outcome()
        assert out["status"] == 403 and "goex-proxy stopped while the request waited" in out["body"]["reason"]
    else:
        proxy.kill()
        deleting.join(60)
        assert deleting.result is None  # the connection broke: the client says so itself
    proxy.start()
    row = wait_for(lambda: [r for r in proxy.rows() if r["id"] == card["id"] and r["error"]], what="the outcome")[0]
    assert "stopped while the request waited; it was not sent" in row["error"]
    assert json.loads(row["approval"])["state"] == "stopped"
    assert not pending(proxy) and "chat.delete" not in upstream.state.slack_calls
    r = proxy.cli("approve", card["id"])
    assert r.returncode == 1 and "it was stopped" in r.stderr
    assert proxy.cli("log", "verify").returncode == 0


def test_a_held_http2_stream_does_not_hold_the_other_streams_of_its_connection(make_proxy, upstream):
    import h2.events

    from tests.e2e.test_dos import H2Client

    proxy = make_proxy({"github": """
        version: 1
        rules:
          - name: reads
            allow: {host: api.github.com, methods: [GET], path: /repos/**}
          - name: deletes wait
            allow: {host: api.github.com, methods: [DELETE], path: /repos/**, hold: {timeout: 1m}}
    """})
    client = H2Client(proxy)
    held = client.start("DELETE", "/repos/octo/hello")
    card = one_pending(proxy)
    reads = [client.start("GET", "/repos/octo/hello") for _ in range(5)]
    answered: dict[int, str] = {}

    def read_until(streams: set[int]) -> None:
        client.sock.settimeout(1)
        end = time.monotonic() + 30
        while not streams <= answered.keys() and time.monotonic() < end:
            try:
                data = client.sock.recv(65536)
            except (TimeoutError, OSError):
                continue
            for event in client.conn.receive_data(data):
                if isinstance(event, h2.events.ResponseReceived):
                    answered[event.stream_id] = dict(event.headers)[":status"]
            client.flush()

    read_until(set(reads))  # the reads on the same connection are answered while the delete waits
    assert [answered[s] for s in reads] == ["200"] * 5 and held not in answered
    assert proxy.cli("approve", card["id"]).returncode == 0
    read_until({held})
    assert answered[held] in ("200", "204") and [s.method for s in upstream.state.seen].count("DELETE") == 1


def test_an_approval_does_not_send_what_the_policy_stopped_allowing_while_it_waited(make_proxy, upstream):
    proxy = make_proxy(POLICY)
    deleting = Agent(proxy, "chat.delete", {"channel": "C0BOTS", "ts": "1.0"})
    card = one_pending(proxy)
    proxy.write_policy("slack", POLICY["slack"].replace('path: "/api/*"', 'path: "/api/reactions.*"'))
    wait_for(lambda: "policies reloaded" in proxy.log_text(), what="the reload")
    assert proxy.cli("approve", card["id"]).returncode == 0
    out = deleting.outcome()
    assert out["status"] == 403 and "no longer allowed when its wait ended" in out["body"]["reason"]
    assert "chat.delete" not in upstream.state.slack_calls


def test_one_agent_cannot_bury_the_person_under_waiting_requests(make_proxy, upstream):
    proxy = make_proxy({"slack": """
        version: 1
        rules:
          - name: deletes wait
            allow: {host: slack.com, methods: [POST], path: /api/chat.delete, hold: {timeout: 2m}}
    """})
    statuses: list[int] = []

    def delete(i: int) -> None:
        session = _session(proxy, "mailbot")
        session.proxies = {"https": proxy.proxy_url("mailbot")}
        statuses.append(session.post("https://slack.com/api/chat.delete", json={"ts": str(i)}, timeout=150).status_code)

    threads = [threading.Thread(target=delete, args=(i,), daemon=True) for i in range(33)]
    for t in threads:
        t.start()
    refused = wait_for(lambda: statuses == [403] and statuses, timeout=60, what="the 33rd request refused")
    assert refused == [403] and len(pending(proxy)) == 32
    row = next(r for r in proxy.rows() if r["decision"] == "deny")
    assert "already has 32 requests waiting for a person" in str(row["reason"])


def test_without_run_the_person_at_exec_is_told_on_stderr_and_the_agents_output_stays_its_own(make_proxy, upstream):
    proxy = make_proxy(POLICY, start=False)  # exec starts a proxy of its own
    deleting = Agent(proxy, "chat.delete", {"channel": "C0BOTS", "ts": "1.0"})
    card = one_pending(proxy)
    assert proxy.cli("approve", card["id"]).returncode == 0
    assert deleting.outcome()["body"]["error"] == "message_not_found"  # its stdout parsed as the program's JSON
    told = deleting.error.splitlines()
    assert told[0].startswith(f"goex-proxy: held      {card['id']} mailbot") and "goex-proxy approve ID" in told[0]
    assert told[1].startswith(f"goex-proxy: approved  {card['id']} mailbot by ")


# What a red team found: other readings of a request, stale pre-images, refusals after a wait ----------------------

HOLD_DELETES = {"slack": """
    version: 1
    rules:
      - name: slack posts
        allow: {host: slack.com, methods: [POST], path: "/api/*"}
      - name: deleting waits
        allow: {host: slack.com, methods: [POST], path: /api/chat.delete, hold: {timeout: 1m}}
      - name: items
        allow: {host: slack.com, methods: [POST, GET], path: "/items/*"}
      - name: deleting items waits
        allow: {host: slack.com, methods: [DELETE], path: "/items/*", hold: {timeout: 1m}}
"""}


@pytest.mark.parametrize(("how", "args"), [
    ("method override header", ["-X", "POST", "-H", "X-HTTP-Method-Override: DELETE", "https://slack.com/items/1"]),
    ("_method in the query", ["-X", "POST", "https://slack.com/items/1?_method=DELETE"]),
    ("a read that overrides", ["-H", "X-HTTP-Method-Override: DELETE", "https://slack.com/items/2"]),
    ("the path in capitals", ["-X", "POST", "--json", "{}", "https://slack.com/api/CHAT.DELETE"]),
    ("a format suffix", ["-X", "POST", "--json", "{}", "https://slack.com/api/chat.delete.json"]),
])
def test_a_request_waits_if_any_way_a_server_reads_it_waits(make_proxy, upstream, how, args):
    proxy = make_proxy(HOLD_DELETES)
    out: dict[str, Any] = {}
    agent = threading.Thread(target=lambda: out.update(r=proxy.exec("mailbot", "curl", "-sS", "-m", "60", *args)),
                             daemon=True)
    agent.start()
    card = one_pending(proxy)
    if "override" in how or "_method" in how:
        assert card["card"]["runs_as"] == ["DELETE"] and "a server may run as DELETE" in card["card"]["summary"]
    time.sleep(0.5)
    assert agent.is_alive() and not [s for s in upstream.state.seen if s.host == "slack.com"]
    assert proxy.cli("deny", card["id"]).returncode == 0
    agent.join(60)
    assert not [s for s in upstream.state.seen if s.host == "slack.com"]


def test_a_resource_changed_while_the_request_waited_is_not_overwritten(make_proxy, tmp_path):
    policy = {"rest": """
        version: 1
        review: {needs-preimage: hold 1m}
        rules:
          - name: the notes API
            allow: {host: notes.example, methods: [GET, PUT]}
    """}
    with serve_json(tmp_path, {"posts": [{"id": 1, "title": "one"}]}) as base:
        proxy = make_proxy(policy, routes={"notes.example": base})
        out: dict[str, Any] = {}
        put = ("import requests; r = requests.put('http://notes.example/posts/1', json={'title': 'agent'}, "
               "timeout=60); print(r.status_code, r.text)")
        agent = threading.Thread(target=lambda: out.update(r=proxy.exec("mailbot", sys.executable, "-c", put)),
                                 daemon=True)
        agent.start()
        card = one_pending(proxy)
        assert card["undo_class"] == "needs-preimage"
        import requests

        requests.put(f"{base}/posts/1", json={"id": 1, "title": "a colleague's edit"}, timeout=10)
        assert proxy.cli("approve", card["id"]).returncode == 0
        agent.join(60)
        assert out["r"].stdout.startswith("403") and "the resource changed while the request waited" in out["r"].stdout
        assert requests.get(f"{base}/posts/1", timeout=10).json()["title"] == "a colleague's edit"
        row = next(r for r in proxy.rows() if r["id"] == card["id"])
        assert json.loads(row["approval"])["state"] == "refused"
        assert "nothing to review" in proxy.cli("review").stdout  # it was not sent: not in the review queue


def test_a_token_changed_while_a_request_waited_stops_it(make_proxy, upstream):
    """The reload closes every connection of the old token (the waiting request's too), so the request no longer
    waits and is never sent, whoever approves it after."""
    proxy = make_proxy(POLICY)
    deleting = Agent(proxy, "chat.delete", {"channel": "C0BOTS", "ts": "1.0"})
    card = one_pending(proxy)
    text = proxy.config.read_text()
    proxy.config.write_text(text.replace('"mailbot-token-1"', '"mailbot-token-rotated-9"'))
    wait_for(lambda: "config reloaded" in proxy.log_text(), what="the config reload")
    wait_for(lambda: not pending(proxy), what="the waiting request to end")
    approved = proxy.cli("approve", card["id"])
    assert approved.returncode != 0 and "no longer waiting" in approved.stderr
    deleting.join(60)
    assert deleting.result is None and "ended a connection of agent 'mailbot'" in proxy.log_text()
    assert "chat.delete" not in upstream.state.slack_calls


def test_a_delay_that_runs_out_after_the_policy_began_to_hold_it_is_not_sent(make_proxy, upstream):
    proxy = make_proxy({"slack": POLICY["slack"].replace("delay 3s", "delay 8s")})
    creating = Agent(proxy, "conversations.create", {"name": "late-room"})  # lossy: delayed 8s
    card = one_pending(proxy)
    proxy.write_policy("slack", POLICY["slack"].replace("lossy: delay 3s", "lossy: hold"))
    wait_for(lambda: "policies reloaded" in proxy.log_text(), what="the reload")
    assert any(p["id"] == card["id"] for p in pending(proxy))  # the reload came before the delay ran out
    out = creating.outcome()  # no person looked at it: the hold the policy now says stops it
    assert out["status"] == 403 and "now hold it for a person" in out["body"]["reason"]
    assert "conversations.create" not in upstream.state.slack_calls
