"""An undo killed in the middle of a two-step plan: re-running it finishes without applying any step twice."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from tests.conftest import GOEX
from tests.e2e.test_undo_slack import POLICY

pytestmark = pytest.mark.e2e

# Taking back a channel in two steps: say goodbye in it (a POST: applying it twice posts twice), then archive it
# (harmless to repeat: "already_archived" counts as done).
PACK = """
version: 1
name: closing
rules:
  - name: create a channel
    match: {host: slack.com, methods: [POST], path: /api/conversations.create}
    effective: response.json.ok == true
    class: lossy
    guard: {unneeded: archiving a room loses nothing anyone wrote; it can be unarchived}
    undo:
      - method: POST
        url: https://slack.com/api/chat.postMessage
        json: {channel: "${response.json.channel.id}", text: "closing this room"}
        why: tells the room why it goes away
      - method: POST
        url: https://slack.com/api/conversations.archive
        json: {channel: "${response.json.channel.id}"}
        success: response.json.ok == true || response.json.error == "already_archived"
        repeatable: true
        why: archives the room
"""
AGENT = """
import requests
print(requests.post("https://slack.com/api/conversations.create", json={"name": "agent-room"}, timeout=20)
      .json()["channel"]["id"])
"""


def _agent_made_a_room(make_proxy, tmp_path):
    pack = tmp_path / "closing.yaml"
    pack.write_text(PACK)
    proxy = make_proxy(POLICY, extra_config=f"undo_rules: [{pack}, builtin:slack]\n")
    r = proxy.exec("mailbot", sys.executable, "-c", AGENT)
    assert r.returncode == 0, r.stderr
    return proxy, r.stdout.strip(), str(proxy.rows()[0]["id"])


def _kill_undo_while_upstream_holds(proxy, upstream, request_id: str, held_path: str) -> None:
    """Start `undo`, wait until the upstream has applied the held step, then kill -9 the undo process."""
    upstream.state.hold.add(held_path)
    undo = subprocess.Popen([*GOEX, "undo", "--config", str(proxy.config), request_id, "--yes"], env=proxy.env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.time() + 60
    while held_path not in upstream.seen_paths("slack.com")[1:]:
        assert undo.poll() is None and time.time() < deadline, "the undo never reached the held step"
        time.sleep(0.05)
    undo.kill()
    undo.wait(10)
    upstream.state.hold.discard(held_path)
    upstream.state.unhold.set()


def test_a_killed_undo_resumes_after_the_steps_already_done(make_proxy, upstream, tmp_path):
    proxy, room, rid = _agent_made_a_room(make_proxy, tmp_path)
    _kill_undo_while_upstream_holds(proxy, upstream, rid, "/api/conversations.archive")
    state = upstream.state
    assert state.slack_channels[room]["is_archived"]          # the archive arrived; its answer never went back
    assert [m["text"] for m in state.slack_messages.values()] == ["closing this room"]

    r = proxy.cli("undo", rid, "--yes")
    assert r.returncode == 0, r.stdout + r.stderr
    # The goodbye (done before the kill) is not posted again; the archive, repeatable, is sent again and counts.
    assert [m["text"] for m in state.slack_messages.values()] == ["closing this room"]
    assert state.slack_calls.count("chat.postMessage") == 1 and state.slack_calls.count("conversations.archive") == 2
    assert proxy.cli("undo", rid, "--yes").returncode == 1  # already undone


def test_a_step_that_may_have_been_applied_is_not_sent_again_without_force(make_proxy, upstream, tmp_path):
    proxy, room, rid = _agent_made_a_room(make_proxy, tmp_path)
    _kill_undo_while_upstream_holds(proxy, upstream, rid, "/api/chat.postMessage")
    state = upstream.state
    assert [m["text"] for m in state.slack_messages.values()] == ["closing this room"]

    r = proxy.cli("undo", rid, "--yes")
    assert r.returncode == 4, r.stdout + r.stderr
    assert "may or may not have been applied" in r.stderr
    assert len(state.slack_messages) == 1 and not state.slack_channels[room]["is_archived"]  # nothing was sent

    r = proxy.cli("undo", rid, "--yes", "--force")   # the person checked and wants it sent again
    assert r.returncode == 0, r.stdout + r.stderr
    assert len(state.slack_messages) == 2 and state.slack_channels[room]["is_archived"]
