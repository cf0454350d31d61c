"""Whole-session undo from the console, for real: `goex-proxy run` serving its console, agents calling the Slack fake
through `exec`, the session's plans shown from an agent and a time window, then carried out on confirmation; a
conflict is shown and force is an explicit second step."""

from __future__ import annotations

import re
import sys
from typing import Any

import pytest

from tests.e2e.test_approvals import Agent, posted
from tests.e2e.test_console import SLACK, csrf_of, signed_in, with_console

pytestmark = pytest.mark.e2e


def test_a_session_undo_shows_its_plans_then_restores_the_slack_fake(make_proxy: Any, upstream: Any) -> None:
    proxy, base, token = with_console(make_proxy, SLACK)
    for text in ("first <script>", "second"):
        assert Agent(proxy, "chat.postMessage", {"channel": "C0BOTS", "text": text}).outcome()["body"]["ok"]
    other = Agent(proxy, "chat.postMessage", {"channel": "C0BOTS", "text": "not mine"}, agent="slackbot").outcome()
    assert other["body"]["ok"] and len(posted(upstream)) == 3
    mine = [str(r["id"]) for r in proxy.rows() if r["agent"] == "mailbot"]
    client = signed_in(base, token)
    assert client.get("/session?agent=mailbot").status_code == 400  # a session needs its window
    page = client.get("/session", params={"agent": "mailbot", "since": "1h"}).text
    assert all(rid in page for rid in mine) and page.count("chat.delete") >= 2 and "Undo these 2 request(s)" in page
    assert str(proxy.rows()[-1]["id"]) not in page  # slackbot's post is not mailbot's session
    assert re.findall(r'name="id" value="([0-9A-Z]+)"', page) == list(reversed(mine))  # newest first
    empty = client.get("/session", params={"agent": "mailbot", "since": "1h", "until": "2000-01-01T00:00"}).text
    assert 'id="nothing"' in empty and "Undo these" not in empty

    assert client.post("/session/undo", data={"agent": "mailbot", "id": mine}).status_code == 403
    assert client.post("/session/undo", data={"agent": "slackbot", "id": mine, "csrf": csrf_of(page)}) \
        .status_code == 409  # a request confirmed for another agent is refused
    assert len(posted(upstream)) == 3, "a refused POST changes nothing"

    done = client.post("/session/undo", data={"agent": "mailbot", "id": mine, "csrf": csrf_of(page)},
                       headers={"Origin": base})
    assert done.status_code == 200, done.text
    assert list(posted(upstream).values()) == ["not mine"]
    assert upstream.state.slack_calls.count("chat.delete") == 2
    assert sorted(str(r["undo_of"]) for r in proxy.rows() if r["undo_of"]) == sorted(mine)
    after = client.get("/session", params={"agent": "mailbot", "since": "1h"}).text
    assert "already undone" in after and 'id="nothing"' in after


def test_a_session_conflict_is_shown_and_force_is_an_explicit_second_step(make_proxy: Any, upstream: Any) -> None:
    from tests.e2e.test_undo_slack import AGENT_EDITS, EDITOR, WITH_HISTORY

    proxy, base, token = with_console(make_proxy, WITH_HISTORY)
    ts = proxy.exec("slackbot", sys.executable, "-c", EDITOR).stdout.strip()
    assert proxy.exec("mailbot", sys.executable, "-c", AGENT_EDITS, ts).returncode == 0
    upstream.state.slack_messages[ts]["text"] = "a person's correction"
    client = signed_in(base, token)
    page = client.get("/session", params={"agent": "mailbot", "since": "1h"}).text
    ids = re.findall(r'name="id" value="([0-9A-Z]+)"', page)
    assert ids and "needs-preimage" in page

    conflict = client.post("/session/undo", data={"agent": "mailbot", "id": ids, "csrf": csrf_of(page)})
    assert conflict.status_code == 409 and "edited again after the agent" in conflict.text
    assert 'name="force" value="1"' in conflict.text and "Undo anyway" in conflict.text
    assert upstream.state.slack_messages[ts]["text"] == "a person's correction"  # nothing clobbered

    forced = client.post("/session/undo", data={"agent": "mailbot", "id": ids, "force": "1",
                                                "csrf": csrf_of(conflict.text)})
    assert forced.status_code == 200, forced.text
    assert upstream.state.slack_messages[ts]["text"] == "original words"
