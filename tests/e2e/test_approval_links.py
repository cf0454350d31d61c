"""One-time approval links end to end: a real uvicorn link server over a real audit database, notifications to real
local receivers (a webhook, ntfy, a Slack incoming webhook), and a held request through a real `goex-proxy run`
approved from its webhook's link."""

from __future__ import annotations

import asyncio
import json
import re
import sqlite3
import sys
import threading
import time
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import trustme

from goex_proxy.approvalconfig import Approvals
from goex_proxy.approvals import store
from goex_proxy.approvals.linkserver import LinkServer, allowed_hosts, serve_links
from goex_proxy.approvals.notify import announce
from goex_proxy.audit.seal import Seal
from goex_proxy.audit.writer import AuditWriter
from goex_proxy.config import Config, load_config
from goex_proxy.errors import StateError
from goex_proxy.ids import RequestIds
from tests.conftest import GoexProxy, free_port, wait_port
from tests.e2e.test_approvals import CALL, wait_for
from tests.fake_notify import FakeNtfy, FakeSlackWebhook, WebhookReceiver

pytestmark = pytest.mark.e2e

NTFY_TOKEN = "tk_fakeNtfyAccessToken42"
CARD = {"method": "POST", "url": "https://slack.com/api/chat.delete", "fields": {"channel": "C0BOTS", "ts": "1.0"},
        "undo_class": "irreversible", "undo_rule": "slack/chat.delete", "undo": ["nothing: a deleted message is gone"],
        "why": "irreversible: review says hold up to 5m",
        "summary": "POST https://slack.com/api/chat.delete with channel=C0BOTS, ts=1.0. It waits because "
                   "irreversible: review says hold up to 5m. Undo could not take it back."}


def approvals_yaml(port: int, webhook: WebhookReceiver, ntfy: FakeNtfy, extra: str = "") -> str:
    return (f"approvals:\n  listen: 127.0.0.1:{port}\n{extra}  notify:\n    - webhook: {webhook.url}\n"
            f"    - ntfy: {{url: '{ntfy.topic_url('goex-approvals')}', token_env: GOEX_TEST_NTFY_TOKEN}}\n"
            "    - slack: {url_env: GOEX_TEST_SLACK_HOOK}\n")


class Loop:
    """An event loop in a thread, as `goex-proxy run` has one: the link server and `announce` run in it."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, Any], timeout: float = 30) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@dataclass
class State:
    """What `announce` reads of the proxy's state."""

    config: Config
    writer: AuditWriter


@dataclass
class Links:
    """A link server from `serve_links` over a state directory's audit database, and the receivers it notifies."""

    config: Config
    writer: AuditWriter
    loop: Loop
    server: LinkServer
    webhook: WebhookReceiver
    ntfy: FakeNtfy
    slack: FakeSlackWebhook
    ids: RequestIds

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.server.address[1]}"

    def wait(self, kind: str = "hold", card: dict[str, Any] | None = None, seconds: float = 300) -> str:
        """A request recorded as waiting (its row and approvals entry, as the gate writes them), owned by us."""
        rid, now = self.ids.new(), time.time()
        row = {"id": rid, "ts": now, "agent": "mailbot", "method": "POST", "scheme": "https", "host": "slack.com",
               "port": 443, "path": "/api/chat.delete", "url": "https://slack.com/api/chat.delete", "decision": kind}
        entry = {"ts": now, "agent": "mailbot", "kind": kind, "state": store.HELD if kind == "hold" else store.DELAYED,
                 "deadline": now + seconds, "on_timeout": "deny", "undo_class": "irreversible", "why": "a test",
                 "card": json.dumps(card or CARD), "owner": store.this_process()}
        self.writer.record_wait(row, entry).result(10)
        return rid

    def announce(self, rid: str, kind: str = "hold", card: dict[str, Any] | None = None) -> dict[str, Any]:
        """Announce a waiting request as the gate does; the webhook's message about it."""
        self.loop.run(announce(State(self.config, self.writer), rid, card or CARD, time.time() + 300, kind))
        return next(m for m in self.webhook.seen if m["request_id"] == rid)

    def entry(self, rid: str) -> dict[str, Any]:
        conn = sqlite3.connect(f"file:{self.config.audit_db}?mode=ro", uri=True)
        try:
            return store.get(conn, rid)
        finally:
            conn.close()


def home_with(tmp_path: Path, ca: Path, approvals: str) -> GoexProxy:
    """A state directory made by `goex-proxy init`, with the test's config (not started)."""
    return GoexProxy(tmp_path / "home", None, ca, {}, extra_config=approvals)


@pytest.fixture
def receivers(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[WebhookReceiver, FakeNtfy, FakeSlackWebhook]]:
    webhook, ntfy, slack = WebhookReceiver(), FakeNtfy({"goex-approvals": NTFY_TOKEN}), FakeSlackWebhook()
    monkeypatch.setenv("GOEX_TEST_SLACK_HOOK", slack.url)
    monkeypatch.setenv("GOEX_TEST_NTFY_TOKEN", NTFY_TOKEN)
    yield webhook, ntfy, slack
    for r in (webhook, ntfy, slack):
        r.close()


@pytest.fixture
def links(tmp_path: Path, upstream_ca: tuple[trustme.CA, Path], receivers: Any) -> Iterator[Links]:
    webhook, ntfy, slack = receivers
    home = home_with(tmp_path, upstream_ca[1], approvals_yaml(free_port(), webhook, ntfy))
    config = load_config(home.config)
    writer = AuditWriter(config.audit_db, Seal(config.state_dir))
    loop = Loop()
    server = loop.run(serve_links(config))
    try:
        yield Links(config, writer, loop, server, webhook, ntfy, slack, RequestIds())
    finally:
        loop.run(server.close())
        loop.close()
        writer.close()


def client() -> httpx.Client:
    return httpx.Client(timeout=10, trust_env=False, follow_redirects=False)


def test_a_webhook_gets_the_card_and_its_approve_link_approves_exactly_once(links: Links) -> None:
    rid = links.wait()
    message = links.announce(rid)
    assert message["card"] == CARD and message["kind"] == "hold" and set(message["links"]) == {"approve", "deny"}
    approve, deny = message["links"]["approve"], message["links"]["deny"]
    assert re.fullmatch(re.escape(links.base) + r"/a/[A-Za-z0-9_-]{43}", approve) and approve != deny
    with client() as http:
        page = http.get(approve)
        assert page.status_code == 200 and "Approve this request?" in page.text and '<form method="post">' in page.text
        assert links.entry(rid)["state"] == store.HELD  # opening the link did nothing
        done = http.post(approve)
        assert done.status_code == 200 and "Approved: the request is being sent." in done.text
        entry = links.entry(rid)
        assert entry["state"] == store.APPROVED and entry["decided_by"] == "link (webhook, ntfy, slack)"
        again = http.post(approve)
        assert again.status_code == 410 and "already used" in again.text and "Each link works once" in again.text
        sibling = http.post(deny)  # a request's links are used up together: nothing can undo the decision
        assert sibling.status_code == 410 and links.entry(rid)["state"] == store.APPROVED
        assert http.get(approve).status_code == 410


def test_a_forged_or_expired_link_is_refused(links: Links) -> None:
    rid = links.wait()
    expired = links.writer.apply(lambda conn, writer: store.make_links(conn, rid, ["approve"], time.time() - 1))
    token = expired.result(10)["approve"]
    with client() as http:
        for forged in ("A" * 43, "not-a-token", "%3Cscript%3E", "A" * 43 + "/x"):
            assert http.post(f"{links.base}/a/{forged}").status_code == 404
            assert http.get(f"{links.base}/a/{forged}").status_code == 404
        gone = http.post(f"{links.base}/a/{token}")
        assert gone.status_code == 410 and "This link expired at" in gone.text
        assert http.get(f"{links.base}/").status_code == 404
        assert http.put(f"{links.base}/a/{token}").status_code == 405
    assert links.entry(rid)["state"] == store.HELD


def test_a_request_no_longer_waiting_says_what_became_of_it(links: Links) -> None:
    rid = links.wait()
    message = links.announce(rid)
    conn = sqlite3.connect(links.config.audit_db)
    try:
        store.decide(conn, rid, "deny", "alice (command line)", "not today")
    finally:
        conn.close()
    with client() as http:
        shown = http.get(message["links"]["approve"])
        assert shown.status_code == 409 and "no longer waiting: it was denied by alice (command line)" in shown.text
        refused = http.post(message["links"]["approve"])
        assert refused.status_code == 409 and "it was denied by alice (command line)" in refused.text
    assert links.entry(rid)["state"] == store.DENIED


def test_a_delayed_request_s_links_cancel_it_or_send_it_now(links: Links) -> None:
    first, second = links.wait("delay"), links.wait("delay")
    one, two = links.announce(first, "delay"), links.announce(second, "delay")
    assert [a["label"] for a in one["actions"]] == ["Cancel", "Send now"]
    with client() as http:
        assert "Cancel this delayed request?" in http.get(one["links"]["cancel"]).text
        assert http.post(one["links"]["cancel"]).status_code == 200
        assert "Send this delayed request now?" in http.get(two["links"]["approve"]).text
        assert "being sent now" in http.post(two["links"]["approve"]).text
    assert links.entry(first)["state"] == store.CANCELLED and links.entry(second)["state"] == store.APPROVED


def test_the_page_escapes_what_the_agent_sent_and_keeps_its_token_to_itself(links: Links) -> None:
    evil = {**CARD, "url": "https://slack.com/api/chat.postMessage?x=\"><img src=x onerror=alert(1)>",
            "fields": {"text": "<script>alert('card')</script>", "<b>key</b>": "v"},
            "summary": "POST with text=<script>alert('summary')</script> & \"quotes\"",
            "undo": ["POST https://evil.example/<iframe src=//evil.example>"]}
    rid = links.wait(card=evil)
    message = links.announce(rid, card=evil)
    with client() as http:
        page = http.get(message["links"]["approve"])
    assert page.status_code == 200
    text = page.text
    assert "<script>alert" not in text and "<img" not in text and "<iframe" not in text and "<b>key" not in text
    assert "&lt;script&gt;alert(&#x27;summary&#x27;)&lt;/script&gt; &amp; &quot;quotes&quot;" in text
    nonce = re.search(r"script-src 'nonce-([^']+)'", page.headers["content-security-policy"])
    assert nonce is not None and text.count("<script") == 1 and f'<script nonce="{nonce.group(1)}">' in text
    assert "<link" not in text and "src=\"http" not in text  # nothing fetched from elsewhere
    csp = page.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "frame-ancestors 'none'" in csp and "form-action 'self'" in csp
    assert page.headers["referrer-policy"] == "no-referrer" and page.headers["cache-control"] == "no-store"
    assert page.headers["x-frame-options"] == "DENY" and page.headers["x-content-type-options"] == "nosniff"
    assert "server" not in page.headers
    assert message["links"]["approve"].rsplit("/", 1)[1] not in text  # the form posts to its own URL


def test_a_host_other_than_the_configured_one_is_refused(links: Links) -> None:
    rid = links.wait()
    approve = links.announce(rid)["links"]["approve"]
    port = links.server.address[1]
    with client() as http:
        for host in ("evil.example", f"evil.example:{port}", f"localhost:{port}", "127.0.0.1", ""):
            refused = http.post(approve, headers={"Host": host})
            assert refused.status_code == 400 and refused.headers["referrer-policy"] == "no-referrer", host
        assert links.entry(rid)["state"] == store.HELD
        assert http.post(approve, headers={"Host": f"127.0.0.1:{port}"}).status_code == 200


def test_the_hosts_a_public_url_adds() -> None:
    def hosts(listen: tuple[str, int], public_url: str | None) -> set[str]:
        return set(allowed_hosts(Config(file=Path("c"), state_dir=Path("."),
                                        approvals=Approvals(listen=listen, public_url=public_url))))

    assert hosts(("127.0.0.1", 8790), None) == {"127.0.0.1:8790"}
    assert hosts(("0.0.0.0", 8790), "https://Goex.Example.net/approvals") == {
        "0.0.0.0:8790", "goex.example.net", "goex.example.net:443"}
    assert hosts(("::1", 8790), "https://goex.example.net:8443") == {"[::1]:8790", "goex.example.net:8443"}


def test_links_behind_a_reverse_proxy_answer_under_the_public_host_with_or_without_its_path(
        tmp_path: Path, upstream_ca: tuple[trustme.CA, Path], receivers: Any) -> None:
    webhook, ntfy, _ = receivers
    home = home_with(tmp_path, upstream_ca[1], approvals_yaml(
        free_port(), webhook, ntfy, "  public_url: https://goex.example.net/approvals/\n"))
    config = load_config(home.config)
    writer, loop = AuditWriter(config.audit_db, Seal(config.state_dir)), Loop()
    server = loop.run(serve_links(config))
    try:
        env = Links(config, writer, loop, server, webhook, ntfy, receivers[2], RequestIds())
        rid = env.wait()
        message = env.announce(rid)
        approve, deny = message["links"]["approve"], message["links"]["deny"]
        assert approve.startswith("https://goex.example.net/approvals/a/")
        local = f"http://127.0.0.1:{server.address[1]}"
        with client() as http:  # as a reverse proxy in front passes them: the public Host, the path kept or cut
            kept = http.get(local + urlsplit(deny).path, headers={"Host": "goex.example.net"})
            assert kept.status_code == 200 and "Deny this request?" in kept.text
            assert http.get(local + urlsplit(deny).path, headers={"Host": "goex.example.net:443"}).status_code == 200
            assert http.get(local + urlsplit(deny).path, headers={"Host": "goex.example.net:8443"}).status_code == 400
            cut = http.post(local + "/a/" + approve.rsplit("/", 1)[1], headers={"Host": "goex.example.net"})
            assert cut.status_code == 200 and env.entry(rid)["state"] == store.APPROVED
    finally:
        loop.run(server.close())
        loop.close()
        writer.close()


def test_ntfy_gets_a_titled_message_whose_http_actions_decide(links: Links) -> None:
    rid = links.wait()
    message = links.announce(rid)
    sent = next(m for m in links.ntfy.seen if rid in m["message"])
    assert sent["topic"] == "goex-approvals" and sent["title"] == "Held for approval: POST slack.com"
    assert sent["priority"] == 4 and sent["tags"] == ["warning", "goex-proxy", "irreversible"]
    assert sent["message"].startswith(CARD["summary"]) and "attachment" not in sent
    assert sent["click"] == message["links"]["approve"]
    assert [(a["action"], a["label"], a["url"], a["method"], a["clear"]) for a in sent["actions"]] == [
        ("http", "Approve", message["links"]["approve"], "POST", "true"),
        ("http", "Deny", message["links"]["deny"], "POST", "true")]
    with client() as http:  # the ntfy app's `http` action: the method and URL it was given, no body
        tapped = http.request(sent["actions"][1]["method"], sent["actions"][1]["url"])
    assert tapped.status_code == 200 and links.entry(rid)["state"] == store.DENIED


def test_slack_gets_blocks_whose_buttons_open_the_page(links: Links) -> None:
    rid = links.wait()
    links.announce(rid)
    payload = next(p for p in links.slack.seen if rid in p["blocks"][0]["text"]["text"])
    section, actions = payload["blocks"]
    assert section["type"] == "section" and "channel=C0BOTS" in section["text"]["text"]
    buttons = {b["text"]["text"]: b["url"] for b in actions["elements"]}
    assert set(buttons) == {"Approve", "Deny"}
    with client() as http:  # a link button opens its URL in the browser: the page, then one tap on its button
        assert "Deny this request?" in http.get(buttons["Deny"]).text and links.entry(rid)["state"] == store.HELD
        assert http.post(buttons["Deny"]).status_code == 200
    assert links.entry(rid)["state"] == store.DENIED


def test_a_failing_channel_does_not_stop_the_others(links: Links, monkeypatch: pytest.MonkeyPatch,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("GOEX_TEST_SLACK_HOOK", links.slack.url.replace(FakeSlackWebhook.SECRET, "wrongSecret"))
    monkeypatch.setenv("GOEX_TEST_NTFY_TOKEN", "tk_wrong")
    rid = links.wait()
    links.announce(rid)  # the webhook still gets its message
    lines = [r.getMessage() for r in caplog.records if r.name == "goex_proxy.approvals.notify"]
    assert sorted(lines) == [f"could not notify notify[1] (ntfy) of request {rid}: it answered HTTP 403",
                             f"could not notify notify[2] (slack) of request {rid}: it answered HTTP 404 (no_service)"]
    assert not any("wrongSecret" in line or "tk_wrong" in line for line in lines)


def test_a_listen_address_in_use_is_a_clear_error(links: Links) -> None:
    with pytest.raises(StateError, match=r"cannot serve approval links on 127\.0\.0\.1:\d+: Address already in use"):
        links.loop.run(serve_links(links.config))


# Through a real `goex-proxy run` ---------------------------------------------------------------------------------

POLICY = {"slack": """
    version: 1
    review: {irreversible: hold 90s}
    rules:
      - name: slack methods
        allow: {host: slack.com, methods: [POST], path: "/api/*"}
"""}


def call(proxy: GoexProxy, method: str, body: dict[str, Any]) -> dict[str, Any]:
    r = proxy.exec("mailbot", sys.executable, "-c", CALL, method, json.dumps(body), timeout=150)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)  # type: ignore[no-any-return]


def test_a_held_request_is_approved_from_its_webhook_link_and_completes(make_proxy, upstream, receivers) -> None:
    webhook, ntfy, _ = receivers
    port = free_port()
    proxy = make_proxy(POLICY, extra_config=approvals_yaml(port, webhook, ntfy))
    wait_port(port, timeout=10)  # `run` serves the links itself
    assert f"approval links on http://127.0.0.1:{port}" in proxy.log_text()
    ts = call(proxy, "chat.postMessage", {"channel": "C0BOTS", "text": "to delete"})["body"]["ts"]
    result: dict[str, Any] = {}
    agent = threading.Thread(target=lambda: result.update(call(proxy, "chat.delete", {"channel": "C0BOTS",
                                                                                      "ts": ts})))
    agent.start()
    message = wait_for(lambda: next(iter(webhook.seen), None), what="the webhook's notification")
    assert message["kind"] == "hold" and message["card"]["undo_class"] == "irreversible"
    assert "chat.delete" in message["card"]["summary"]
    time.sleep(0.5)
    assert agent.is_alive() and "chat.delete" not in upstream.state.slack_calls  # it waits for the person
    with client() as http:
        assert http.post(message["links"]["approve"]).status_code == 200
        agent.join(60)
        assert result["body"]["ok"] is True and upstream.state.slack_calls.count("chat.delete") == 1
        assert http.post(message["links"]["approve"]).status_code == 410
    row = next(r for r in proxy.rows() if r["id"] == message["request_id"])
    approval = json.loads(str(row["approval"]))
    assert row["status"] == 200 and approval["state"] == "approved"
    assert approval["decided_by"] == "link (webhook, ntfy, slack)"
    assert proxy.cli("log", "verify").returncode == 0


def test_connections_that_never_send_a_request_are_closed(links: Links) -> None:
    import socket

    from goex_proxy.approvals.served import HEAD_SECONDS

    silent = []
    for _ in range(5):
        s = socket.create_connection(("127.0.0.1", links.server.address[1]), timeout=HEAD_SECONDS + 10)
        s.sendall(b"GET /a/x HTTP/1.1\r\nHost: 127.0.0.1")  # a head that never ends
        silent.append(s)
    started = time.monotonic()
    for s in silent:
        assert s.recv(1024) == b""  # closed by the server, not by the test's timeout
    assert HEAD_SECONDS <= time.monotonic() - started + 1 < HEAD_SECONDS + 8
    with client() as http:
        assert http.get(links.base + "/a/forged").status_code == 404  # and it still serves the rest
