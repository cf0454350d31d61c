"""Undo under a policy that lets deletes through only as their reversible twins: each compensation goes upstream
exactly as planned (a DELETE that undoes a create is not turned into a trash call), and the report names it."""

from __future__ import annotations

import json
import sys

import pytest

pytestmark = pytest.mark.e2e

POLICY = {"gmail": """
    version: 1
    rules:
      - name: deleting mail moves it to the trash
        allow: {host: gmail.googleapis.com, methods: [DELETE], path: "/gmail/v1/users/me/messages/*"}
        rewrite: reversible
      - name: putting mail in and trash or untrash
        allow: {host: gmail.googleapis.com, methods: [POST],
                paths: ["/gmail/v1/users/me/messages", "/gmail/v1/users/me/messages/*/{trash,untrash}"]}
      - name: reads
        allow: {host: gmail.googleapis.com, methods: [GET], path: "/gmail/v1/users/me/**"}
"""}
AGENT = """
import base64, json, requests
api = "https://gmail.googleapis.com/gmail/v1/users/me"
raw = base64.urlsafe_b64encode(b"Subject: put in by the agent\\r\\n\\r\\nhi").decode()
made = requests.post(api + "/messages", json={"raw": raw, "labelIds": ["INBOX"]}, timeout=20)
gone = requests.delete(api + "/messages/m1", timeout=20)
print(json.dumps({"insert": made.status_code, "id": made.json()["id"], "delete": gone.status_code}))
"""


def test_a_session_undo_sends_each_compensation_as_planned_not_as_its_twin(make_proxy, upstream):
    gmail = upstream.state.gmail
    before = gmail.snapshot(by_content=True)
    proxy = make_proxy(POLICY)
    r = proxy.exec("mailbot", sys.executable, "-c", AGENT)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert (out["insert"], out["delete"]) == (200, 200)
    assert "TRASH" in gmail.messages["m1"].label_ids and out["id"] in gmail.messages

    dry = proxy.cli("undo", "--agent", "mailbot", "--since", "1h", "--dry-run", "--json")
    plans = [json.loads(line) for line in dry.stdout.splitlines() if '"steps"' in line]
    planned = sorted((s["method"], s["url"]) for p in plans for s in p["steps"])
    assert planned, dry.stdout + dry.stderr
    assert planned == sorted([("DELETE", f"https://gmail.googleapis.com/gmail/v1/users/me/messages/{out['id']}"),
                              ("POST", "https://gmail.googleapis.com/gmail/v1/users/me/messages/m1/untrash")])

    r = proxy.cli("undo", "--agent", "mailbot", "--since", "1h", "--yes")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "session of mailbot: 2 undone" in r.stdout
    # The message the agent put in is deleted, not moved to the trash; the one it deleted is back in the inbox.
    assert out["id"] not in gmail.messages
    assert gmail.snapshot(by_content=True) == before
    sent = sorted((str(row["method"]), f"https://{row['host']}{row['path']}") for row in proxy.rows()
                  if row["undo_of"] and row["method"] != "GET")   # (a guard's read is recorded as the undo's too)
    assert sent == planned
    for method, url in planned:  # the report names what went upstream, for every step
        assert f"done: {method} {url} -> " in r.stdout
    assert "twin" not in r.stdout + r.stderr
