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
    assert "Traceback" not in r.stderr, r.stderr
    assert "session of mailbot: 4 undone" in r.stdout and "did not take effect" in r.stdout
    assert state.slack_messages == {} and state.slack_reactions == set() and state.slack_channels[room]["is_archived"]
    undo_calls = state.slack_calls[5:]
    # Newest first: the reaction goes before its message, the room's message before the room is archived.
    assert undo_calls == ["reactions.remove", "chat.delete", "chat.delete", "conversations.archive"]
    compensations = [row for row in proxy.rows() if row["undo_of"]]
    assert len(compensations) == 4 and all(row["agent"] == "mailbot" and row["status"] == 200 for row in compensations)


EDITOR = """
import requests
api = "https://slack.com/api/"
def call(method, **body):
    return requests.post(api + method, json=body, timeout=20).json()
ts = call("chat.postMessage", channel="C0BOTS", text="original words")["ts"]   # posted by a person, say
print(ts)
"""
AGENT_EDITS = """
import sys, requests
api = "https://slack.com/api/"
r = requests.post(api + "chat.update", json={"channel": "C0BOTS", "ts": sys.argv[1], "text": "the agent's words"},
                  timeout=20).json()
assert r["ok"], r
assert requests.post(api + "files.upload", data={"filename": "report.csv", "content": "a,b"}, timeout=20).json()["ok"]
"""


WITH_HISTORY = {"slack": POLICY["slack"] + """
      - name: read a channel's history
        allow: {host: slack.com, methods: [GET], path: /api/conversations.history}
"""}


def test_an_edit_is_undone_from_the_message_read_before_it_and_an_upload_is_deleted(make_proxy, upstream):
    proxy = make_proxy(WITH_HISTORY)
    ts = proxy.exec("slackbot", sys.executable, "-c", EDITOR).stdout.strip()
    r = proxy.exec("mailbot", sys.executable, "-c", AGENT_EDITS, ts)
    assert r.returncode == 0, r.stderr
    state = upstream.state
    assert state.slack_messages[ts]["text"] == "the agent's words" and len(state.slack_files) == 1
    edit = next(row for row in proxy.rows() if row["path"] == "/api/chat.update")
    assert edit["undo_class"] == "needs-preimage" and b"original words" in edit["pre_body"]

    r = proxy.cli("undo", "--agent", "mailbot", "--since", "1h", "--yes")
    assert r.returncode == 0, r.stdout + r.stderr
    assert state.slack_messages[ts]["text"] == "original words" and state.slack_files == {}


def test_an_edit_someone_changed_again_is_a_conflict(make_proxy, upstream):
    proxy = make_proxy(WITH_HISTORY)
    ts = proxy.exec("slackbot", sys.executable, "-c", EDITOR).stdout.strip()
    assert proxy.exec("mailbot", sys.executable, "-c", AGENT_EDITS, ts).returncode == 0
    upstream.state.slack_messages[ts]["text"] = "a person's correction"
    edit = next(row for row in proxy.rows() if row["path"] == "/api/chat.update")
    r = proxy.cli("undo", str(edit["id"]), "--yes")
    assert r.returncode == 3 and "edited again after the agent" in r.stderr
    assert upstream.state.slack_messages[ts]["text"] == "a person's correction"


def test_a_check_the_policy_refuses_stops_the_undo_as_a_failure_not_a_conflict(make_proxy, upstream):
    proxy = make_proxy(POLICY)                      # no GET of conversations.history: the guard cannot read
    ts = proxy.exec("slackbot", sys.executable, "-c", EDITOR).stdout.strip()
    assert proxy.exec("mailbot", sys.executable, "-c", AGENT_EDITS, ts).returncode == 0
    edit = next(row for row in proxy.rows() if row["path"] == "/api/chat.update")
    r = proxy.cli("undo", str(edit["id"]), "--yes")
    assert r.returncode == 4 and "was refused by the proxy (403)" in r.stderr and "no rule allows GET" in r.stderr
    assert upstream.state.slack_messages[ts]["text"] == "the agent's words"


SETTINGS_AGENT = """
import sys, requests
api = "https://slack.com/api/"
ts = sys.argv[1]
def ok(r):
    assert r.json()["ok"], r.text
ok(requests.post(api + "conversations.rename", data={"channel": "C0GENERAL", "name": "agents-only"}, timeout=20))
ok(requests.post(api + "conversations.setTopic", json={"channel": "C0GENERAL", "topic": "the agent's topic"}, timeout=20))
ok(requests.post(api + "pins.add", data={"channel": "C0BOTS", "timestamp": ts}, timeout=20))
ok(requests.post(api + "reactions.add", params={"channel": "C0BOTS", "timestamp": ts, "name": "eyes"}, timeout=20))
r = requests.post(api + "conversations.rename", json={"channel": "C0NOPE", "name": "x"}, timeout=20).json()
assert r == {"ok": False, "error": "channel_not_found"}, r
"""
READS = {"slack": POLICY["slack"] + """
      - name: read channels
        allow: {host: slack.com, methods: [GET], path: /api/conversations.info}
"""}


def test_arguments_sent_as_a_form_or_a_query_are_undone_and_a_channel_is_put_back_from_what_slack_showed(
        make_proxy, upstream):
    """Slack takes a method's arguments as JSON, a form or a query string: undo reads them whichever way they came. A
    renamed channel and its topic are put back from conversations.info read before; a rename of a channel Slack does
    not know (its read answered ok: false) falls to the rule for what Slack did not show, and failed: nothing to undo."""
    state = upstream.state
    state.slack_channels["C0GENERAL"] = {"id": "C0GENERAL", "name": "general", "is_archived": False, "topic": "chat"}
    proxy = make_proxy(READS)
    ts = proxy.exec("slackbot", sys.executable, "-c", EDITOR).stdout.strip()      # a person's message
    r = proxy.exec("mailbot", sys.executable, "-c", SETTINGS_AGENT, ts)
    assert r.returncode == 0, r.stderr
    assert state.slack_channels["C0GENERAL"]["name"] == "agents-only" and state.slack_pins and state.slack_reactions
    rows = [row for row in proxy.rows() if row["agent"] == "mailbot"]
    assert [row["undo_class"] for row in rows] == ["needs-preimage", "needs-preimage", "exact", "exact", "not effective"]
    assert b"channel_not_found" in rows[-1]["pre_body"]

    r = proxy.cli("undo", "--agent", "mailbot", "--since", "1h", "--yes")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "session of mailbot: 4 undone" in r.stdout
    assert state.slack_channels["C0GENERAL"]["name"] == "general" and state.slack_channels["C0GENERAL"]["topic"] == "chat"
    assert state.slack_pins == set() and state.slack_reactions == set() and ts in state.slack_messages
