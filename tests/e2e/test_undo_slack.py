"""`goex-proxy undo` with the Slack pack against the Slack fake: messages, reactions and a created channel."""

from __future__ import annotations

import json
import sys

import pytest

pytestmark = pytest.mark.e2e

POLICY = {"slack": """
    version: 1
    rules:
      - name: slack methods
        allow: {host: slack.com, methods: [POST], path: "/api/*"}
"""}
AGENT = """
import json, requests
api = "https://slack.com/api/"
def call(method, **body):
    return requests.post(api + method, json=body, timeout=20).json()
room = call("conversations.create", name="agent-room")["channel"]["id"]
call("chat.postMessage", channel=room, text="welcome to my room")
posted = call("chat.postMessage", channel="C0BOTS", text="hello bots")
call("reactions.add", channel="C0BOTS", timestamp=posted["ts"], name="wave")
call("chat.postMessage", channel="C0NOPE", text="")   # fails (ok: false): nothing to undo
print(json.dumps({"room": room}))
"""


def test_a_slack_session_is_undone_in_dependency_order(make_proxy, upstream):
    proxy = make_proxy(POLICY)
    r = proxy.exec("mailbot", sys.executable, "-c", AGENT)
    assert r.returncode == 0, r.stderr
    room = json.loads(r.stdout)["room"]
    state = upstream.state
    assert len(state.slack_messages) == 2 and state.slack_reactions and not state.slack_channels[room]["is_archived"]
    classes = [row["undo_class"] for row in proxy.rows()]
    assert classes == ["lossy", "exact", "exact", "exact", "not effective"]

    r = proxy.cli("undo", "--agent", "mailbot", "--since", "1h", "--yes")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "session of mailbot: 4 undone" in r.stdout and "did not take effect" in r.stdout
    assert state.slack_messages == {} and state.slack_reactions == set() and state.slack_channels[room]["is_archived"]
    undo_calls = state.slack_calls[5:]
    # Newest first: the reaction goes before its message, the room's message before the room is archived.
    assert undo_calls == ["reactions.remove", "chat.delete", "chat.delete", "conversations.archive"]
    compensations = [row for row in proxy.rows() if row["undo_of"]]
    assert len(compensations) == 4 and all(row["agent"] == "mailbot" and row["status"] == 200 for row in compensations)
