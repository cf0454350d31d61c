"""Notification messages: the generic webhook's JSON, ntfy's publish request, Slack's Block Kit; when links expire;
where each channel's URL comes from; and a failing channel logged in one line without its URL."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from goex_proxy.approvalconfig import LINK_TTL_CAP, Approvals, Channel
from goex_proxy.approvals import notify
from goex_proxy.approvals.notify import Notice
from goex_proxy.config import Config
from goex_proxy.secretref import SecretRef
from tests.fake_notify import parse_ntfy_actions

NOW = 1_800_000_000.0
CARD = {"method": "POST", "url": "https://slack.com/api/chat.delete", "fields": {"channel": "C0BOTS", "ts": "1.0"},
        "undo_class": "irreversible", "undo_rule": "slack/chat.delete", "undo": ["nothing: a deleted message is gone"],
        "why": "irreversible: review says hold up to 10m",
        "summary": "POST https://slack.com/api/chat.delete with channel=C0BOTS, ts=1.0. It waits because "
                   "irreversible: review says hold up to 10m. Undo could not take it back (a deleted message is gone)."}
HOLD_LINKS = {"approve": "https://goex.example.net/a/APPROVE-token", "deny": "https://goex.example.net/a/DENY-token"}


def hold(**kw: object) -> Notice:
    return Notice(**{"request_id": "r-1", "kind": "hold", "card": CARD, "deadline": NOW + 600, "links": HOLD_LINKS,
                     "expires": NOW + 600, "now": NOW, **kw})  # type: ignore[arg-type]


def delay() -> Notice:
    links = {"cancel": "https://goex.example.net/a/CANCEL-token", "approve": "https://goex.example.net/a/SEND-token"}
    return Notice("r-2", "delay", {**CARD, "undo_class": "lossy"}, NOW + 30, links, NOW + 30, NOW)


def ntfy_actions(header: str) -> list[list[str]]:
    """ntfy's documented short header format, read as the fake ntfy reads it."""
    return [[a["action"], a["label"], a["url"], f"method={a['method']}", f"clear={a['clear']}"]
            for a in parse_ntfy_actions(header)]


def test_the_webhook_carries_the_card_and_the_links_in_order() -> None:
    message = notify.webhook_message(hold())
    assert message["event"] == "goex-proxy.waiting" and message["request_id"] == "r-1" and message["kind"] == "hold"
    assert message["card"] == CARD and message["links"] == HOLD_LINKS
    assert [(a["action"], a["label"], a["method"]) for a in message["actions"]] == [("approve", "Approve", "POST"),
                                                                                     ("deny", "Deny", "POST")]
    assert message["deadline"] == NOW + 600 and message["deadline_utc"] == "2027-01-15T08:10:00Z"
    assert message["links_expire"] == NOW + 600
    assert message["text"].startswith("Held for approval: POST slack.com\n") and CARD["summary"] in message["text"]
    assert "request r-1 · undo class: irreversible · decide within 10m" in message["text"]
    json.dumps(message)  # all of it is JSON


def test_a_delay_offers_cancel_then_send_now() -> None:
    message = notify.webhook_message(delay())
    assert [(a["action"], a["label"]) for a in message["actions"]] == [("cancel", "Cancel"), ("approve", "Send now")]
    assert message["text"].startswith("Delayed: POST slack.com is sent in 30s unless cancelled")


def test_without_links_the_notice_says_how_to_decide_on_the_command_line() -> None:
    message = notify.webhook_message(hold(links={}, expires=None))
    assert message["links"] == {} and message["actions"] == [] and message["links_expire"] is None
    assert "decide with `goex-proxy approve r-1` or `goex-proxy deny r-1`" in message["text"]
    headers, _ = notify.ntfy_message(hold(links={}))
    assert "Actions" not in headers and "Click" not in headers
    assert [b["type"] for b in notify.slack_message(hold(links={}))["blocks"]] == ["section"]


def test_ntfy_gets_the_summary_as_text_and_two_http_actions() -> None:
    headers, body = notify.ntfy_message(hold())
    assert body.decode().startswith(CARD["summary"]) and b"request r-1" in body
    assert headers["Title"] == "Held for approval: POST slack.com"
    assert headers["Priority"] == "high" and headers["Tags"] == "warning,goex-proxy,irreversible"
    assert headers["Content-Type"] == "text/plain; charset=utf-8"
    assert ntfy_actions(headers["Actions"]) == [
        ["http", "Approve", HOLD_LINKS["approve"], "method=POST", "clear=true"],
        ["http", "Deny", HOLD_LINKS["deny"], "method=POST", "clear=true"]]
    assert headers["Click"] == HOLD_LINKS["approve"]  # a tap opens the page, which only shows
    delayed, _ = notify.ntfy_message(delay())
    assert delayed["Priority"] == "default" and delayed["Tags"].startswith("hourglass_flowing_sand,")
    assert [a[1] for a in ntfy_actions(delayed["Actions"])] == ["Cancel", "Send now"]


def test_ntfy_quotes_a_link_that_holds_its_separators() -> None:
    links = {"approve": "https://goex.example.net/x,y;z/a/TOKEN1", "deny": "https://goex.example.net/x,y;z/a/TOKEN2"}
    headers, _ = notify.ntfy_message(hold(links=links))
    assert [a[2] for a in ntfy_actions(headers["Actions"])] == [links["approve"], links["deny"]]


def test_ntfy_headers_are_ascii_or_rfc_2047_and_the_body_fits_a_message() -> None:
    card = {**CARD, "url": "https://bücher.example/x", "summary": "é" * 5000, "undo_class": "read (changes nothing)"}
    headers, body = notify.ntfy_message(hold(card=card))
    assert all(v.isascii() for v in headers.values())
    encoded = headers["Title"]
    assert encoded.startswith("=?UTF-8?B?") and encoded.endswith("?=")
    assert base64.b64decode(encoded[10:-2]).decode() == "Held for approval: POST bücher.example"
    assert len(body) <= notify.NTFY_BODY_BYTES and body.decode().endswith("…")  # cut on a character boundary
    assert headers["Tags"].endswith(",read_changes_nothing")


def test_slack_gets_a_section_and_two_link_buttons() -> None:
    message = notify.slack_message(hold())
    assert message["text"] == "Held for approval: POST slack.com" and message["unfurl_links"] is False
    section, actions = message["blocks"]
    assert section["type"] == "section" and section["text"]["type"] == "mrkdwn" and section["text"]["verbatim"]
    assert section["text"]["text"].startswith("*Held for approval: POST slack.com*\n")
    assert "channel=C0BOTS" in section["text"]["text"]
    assert actions["type"] == "actions"
    assert [(b["type"], b["text"], b["url"], b["style"]) for b in actions["elements"]] == [
        ("button", {"type": "plain_text", "text": "Approve"}, HOLD_LINKS["approve"], "primary"),
        ("button", {"type": "plain_text", "text": "Deny"}, HOLD_LINKS["deny"], "danger")]
    assert len({b["action_id"] for b in actions["elements"]}) == 2


def test_slack_text_from_the_agent_cannot_mention_or_link() -> None:
    card = {**CARD, "summary": "POST x with text=<!channel> see <https://evil.example|here> & more" + "x" * 4000}
    text = notify.slack_message(hold(card=card))["blocks"][0]["text"]["text"]
    assert "<!channel>" not in text and "&lt;!channel&gt;" in text and "&lt;https://evil.example|here&gt;" in text
    assert "&amp; more" in text and len(text) <= 3000


def test_links_expire_at_the_deadline_or_sooner_as_link_ttl_says() -> None:
    assert notify.link_expiry(Approvals(), NOW + 600, NOW) == NOW + 600
    assert notify.link_expiry(Approvals(link_ttl=60), NOW + 600, NOW) == NOW + 60
    assert notify.link_expiry(Approvals(), NOW + 30 * 86400, NOW) == NOW + LINK_TTL_CAP


def config_with(tmp_path: Path, *channels: Channel) -> Config:
    return Config(file=tmp_path / "config.yaml", state_dir=tmp_path, audit_db=tmp_path / "audit.db",
                  approvals=Approvals(listen=None, notify=channels))


def test_a_channel_s_url_comes_from_the_environment_or_the_vault(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from goex_proxy.credentials.vault import Vault

    monkeypatch.setenv("HOOK", "https://hooks.example.net/T0/SECRET")
    monkeypatch.setenv("BAD_HOOK", "http://hooks.example.net/T0/SECRET")
    Vault(tmp_path).set("slack-hook", "https://hooks.slack.com/services/T0/B0/VAULTSECRET")
    found = notify.targets(config_with(
        tmp_path, Channel("webhook", SecretRef(env="HOOK")), Channel("slack", SecretRef(vault="slack-hook"), index=1),
        Channel("slack", SecretRef(env="UNSET_HOOK"), index=2), Channel("webhook", SecretRef(env="BAD_HOOK"), index=3),
        Channel("ntfy", SecretRef(inline="https://ntfy.sh/t"), SecretRef(env="UNSET_TOKEN"), index=4)))
    assert [t.url for t in found] == ["https://hooks.example.net/T0/SECRET",
                                      "https://hooks.slack.com/services/T0/B0/VAULTSECRET", None, None, None]
    assert found[2].problem == "its URL (env:UNSET_HOOK) is not set"
    assert found[3].problem is not None and "must be https://" in found[3].problem
    assert found[4].problem == "its token (env:UNSET_TOKEN) is not set"
    assert not any("SECRET" in (t.problem or "") for t in found)


class Receiver:
    """A real HTTP server on 127.0.0.1 that answers every POST with `status`."""

    def __init__(self, status: int, answer: bytes = b"") -> None:
        self.seen: list[tuple[dict[str, str], bytes]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                outer.seen.append((dict(self.headers), self.rfile.read(int(self.headers["Content-Length"] or 0))))
                self.send_response(status)
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/services/T0/B0/HOOKSECRET"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receivers() -> Iterator[list[Receiver]]:
    made = [Receiver(200, b"ok"), Receiver(404, b"no_service"), Receiver(500, b"<html>" + b"x" * 200)]
    yield made
    for r in made:
        r.close()


def test_a_failing_channel_is_one_log_line_without_its_url_and_the_others_still_get_theirs(
        tmp_path: Path, receivers: list[Receiver], caplog: pytest.LogCaptureFixture) -> None:
    from tests.conftest import free_port

    ok, gone, broken = receivers
    closed = f"http://127.0.0.1:{free_port()}/services/T0/B0/HOOKSECRET"
    config = config_with(tmp_path, Channel("slack", SecretRef(inline=gone.url), index=0),
                         Channel("webhook", SecretRef(inline=closed), index=1),
                         Channel("ntfy", SecretRef(inline=broken.url), SecretRef(inline="tk_NTFYSECRET"), index=2),
                         Channel("webhook", SecretRef(inline=ok.url), index=3))
    with caplog.at_level(logging.ERROR, logger="goex_proxy.approvals.notify"):
        sent = asyncio.run(notify.notify(config, hold()))
    assert sent == [False, False, False, True]
    assert json.loads(ok.seen[0][1])["request_id"] == "r-1"
    assert broken.seen[0][0]["Authorization"] == "Bearer tk_NTFYSECRET"  # the token goes to ntfy, and nowhere else
    lines = sorted(r.getMessage() for r in caplog.records)  # sent at once: logged as each ends
    assert lines == ["could not notify notify[0] (slack) of request r-1: it answered HTTP 404 (no_service)",
                     "could not notify notify[1] (webhook) of request r-1: could not connect",
                     "could not notify notify[2] (ntfy) of request r-1: it answered HTTP 500"]
    assert not any("SECRET" in line or "127.0.0.1" in line for line in lines)


def test_announce_with_no_channels_makes_no_links(tmp_path: Path) -> None:
    class State:
        config = config_with(tmp_path)
        writer = None  # would fail if links were made

    asyncio.run(notify.announce(State(), "r-1", CARD, NOW + 60, "hold"))


def test_a_looping_agent_cannot_flood_the_persons_phone() -> None:
    from goex_proxy.approvals.notify import MOST_PER_MINUTE, _flooding

    class State:
        pass

    state, other = State(), State()
    sent = [not _flooding(state, "bot", 1000.0 + i) for i in range(MOST_PER_MINUTE + 3)]
    assert sent == [True] * MOST_PER_MINUTE + [False] * 3
    assert not _flooding(state, "another", 1010.0) and not _flooding(other, "bot", 1010.0)
    assert not _flooding(state, "bot", 1000.0 + 65 + MOST_PER_MINUTE)  # a minute later
