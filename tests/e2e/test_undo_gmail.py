"""`goex-proxy undo` with the Gmail pack against the Gmail fake: a whole session taken back, the mailbox as before."""

from __future__ import annotations

import json
import sys

import pytest

pytestmark = pytest.mark.e2e

POLICY = {"gmail": """
    version: 1
    rules:
      - name: the mailbox
        allow: {host: gmail.googleapis.com, path: "/gmail/v1/users/me/**"}
"""}


def raw(subject: str, to: str = "") -> bytes:
    return (f"From: me@example.com\r\n{'To: ' + to + chr(13) + chr(10) if to else ''}Subject: {subject}\r\n"
            f"Date: Wed, 15 Nov 2023 10:00:00 +0000\r\n\r\n{subject} body\r\n").encode()


AGENT = """
import base64, json, sys, requests
api = "https://gmail.googleapis.com/gmail/v1/users/me"
ids = json.loads(sys.argv[1])
def call(method, path, **kw):
    r = requests.request(method, api + path, timeout=20, **kw)
    assert r.status_code < 300, (method, path, r.status_code, r.text)
    return r.json() if r.content else None
b64 = lambda s: base64.urlsafe_b64encode(s.encode()).decode()
call("POST", "/drafts", json={"message": {"raw": b64("Subject: agent draft\\r\\n\\r\\nhi")}})
call("PUT", "/drafts/" + ids["draft"], json={"message": {"raw": b64("Subject: rewritten by the agent\\r\\n\\r\\nx")}})
call("POST", "/messages/m1/trash")
call("POST", "/messages/" + ids["keep"] + "/modify", json={"addLabelIds": [ids["receipts"]],
                                                         "removeLabelIds": ["UNREAD"]})
call("DELETE", "/messages/" + ids["doomed"])
call("POST", "/labels", json={"name": "agent-label"})
call("DELETE", "/labels/" + ids["old"])
call("POST", "/settings/filters", json={"criteria": {"from": "boss@example.com"}, "action": {"addLabelIds": ["STARRED"]}})
call("DELETE", "/settings/filters/" + ids["filter"])
call("POST", "/messages/send", json={"raw": b64("To: bob@example.com\\r\\nSubject: sent\\r\\n\\r\\nbye")})
"""


def test_a_gmail_session_is_undone_and_the_mailbox_is_as_before_except_sent_mail(make_proxy, upstream):
    gmail = upstream.state.gmail
    receipts = gmail.add_label("Receipts")
    ids = {"receipts": receipts, "old": gmail.add_label("Old", messageListVisibility="show", labelListVisibility="labelHide"),
           "keep": gmail.add_message(raw("keep me", "me@example.com"), ["INBOX", "UNREAD"]),
           "doomed": gmail.add_message(raw("doomed", "me@example.com"), ["INBOX", receipts]),
           "draft": gmail.add_draft(raw("my draft")),
           "filter": gmail.add_filter({"from": "news@example.com"}, {"removeLabelIds": ["INBOX"]})}
    before = gmail.snapshot(by_content=True)

    proxy = make_proxy(POLICY)
    r = proxy.exec("mailbot", sys.executable, "-c", AGENT, json.dumps(ids))
    assert r.returncode == 0, r.stderr
    classes = [row["undo_class"] for row in proxy.rows()]
    assert classes == ["exact", "needs-preimage", "exact", "needs-preimage", "lossy", "exact", "lossy", "lossy",
                       "needs-preimage", "irreversible: sent mail cannot be recalled"]
    assert gmail.snapshot(by_content=True) != before

    r = proxy.cli("undo", "--agent", "mailbot", "--since", "1h", "--yes")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "session of mailbot: 9 undone" in r.stdout and "sent mail cannot be recalled" in r.stdout + r.stderr

    after = gmail.snapshot(by_content=True)
    sent = [m for m in after["messages"] if "SENT" in m[1]]
    assert len(sent) == 1 and b"Subject: sent" in sent[0][0]          # the one thing undo cannot take back
    after["messages"].remove(sent[0])
    assert after == before
    # The permanently deleted message came back with a new id; the trashed one kept its own.
    assert ids["doomed"] not in gmail.messages and "TRASH" not in gmail.messages["m1"].label_ids


TWIN_POLICY = {"gmail": """
    version: 1
    rules:
      - name: deleting mail moves it to the trash
        allow: {host: gmail.googleapis.com, methods: [DELETE], path: "/gmail/v1/users/me/messages/*"}
        rewrite: reversible
      - name: trash and untrash
        allow: {host: gmail.googleapis.com, methods: [POST], path: "/gmail/v1/users/me/messages/*/{trash,untrash}"}
      - name: labels may be deleted only as reversible
        allow: {host: gmail.googleapis.com, methods: [DELETE], path: "/gmail/v1/users/me/labels/*"}
        rewrite: reversible
"""}
DELETER = """
import sys, requests
api = "https://gmail.googleapis.com/gmail/v1/users/me"
print(requests.delete(api + "/messages/m1", timeout=20).status_code)
r = requests.delete(api + "/labels/" + sys.argv[1], timeout=20)
print(r.status_code, r.json()["reason"])
"""


def test_a_policy_turns_a_permanent_delete_into_its_reversible_twin(make_proxy, upstream):
    gmail = upstream.state.gmail
    label = gmail.add_label("Keep")
    proxy = make_proxy(TWIN_POLICY)
    r = proxy.exec("mailbot", sys.executable, "-c", DELETER, label)
    assert r.returncode == 0, r.stderr
    first, second = r.stdout.splitlines()
    assert first == "200"                                          # trash answers with the message
    assert "TRASH" in gmail.messages["m1"].label_ids                # in the trash, not gone
    assert second.startswith("403") and "no undo rule has a twin" in second and label in gmail.labels

    trashed = proxy.rows()[0]
    assert (trashed["method"], trashed["path"]) == ("POST", "/gmail/v1/users/me/messages/m1/trash")
    assert "sent as its reversible twin POST" in trashed["reason"] and "instead of DELETE" in trashed["reason"]
    assert trashed["undo_class"] == "exact"
    r = proxy.cli("undo", str(trashed["id"]), "--yes")
    assert r.returncode == 0, r.stdout + r.stderr
    assert gmail.messages["m1"].label_ids == ["INBOX"]


DELETER_200 = """
import json, sys, requests
api = "https://gmail.googleapis.com/gmail/v1/users/me"
ids = json.loads(sys.argv[1])
for path in ("/drafts/" + ids["draft"], "/labels/" + ids["label"], "/settings/filters/" + ids["filter"],
             "/messages/" + ids["message"]):
    r = requests.delete(api + path, timeout=20)
    assert (r.status_code, r.json()) == (200, {}), (path, r.status_code, r.text)
"""


def test_deletes_answered_200_with_an_empty_object_are_undone(make_proxy, upstream):
    """The reference gives no status for a delete, only an empty body: a server answering 200 `{}` instead of 204 has
    still deleted, and each delete is still taken back."""
    gmail = upstream.state.gmail
    label = gmail.add_label("Old", messageListVisibility="show", labelListVisibility="labelShow")
    ids = {"draft": gmail.add_draft(raw("my draft")), "label": label,
           "filter": gmail.add_filter({"from": "news@example.com"}, {"removeLabelIds": ["INBOX"]}),
           "message": gmail.add_message(raw("doomed", "me@example.com"), ["INBOX", label])}
    before = gmail.snapshot(by_content=True)
    gmail.deletes_answer_200 = True
    proxy = make_proxy(POLICY)
    r = proxy.exec("mailbot", sys.executable, "-c", DELETER_200, json.dumps(ids))
    assert r.returncode == 0, r.stderr
    deletes = [row for row in proxy.rows() if row["method"] == "DELETE"]
    assert [row["undo_class"] for row in deletes] == ["needs-preimage", "lossy", "needs-preimage", "lossy"]

    r = proxy.cli("undo", "--agent", "mailbot", "--since", "1h", "--yes")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "session of mailbot: 4 undone" in r.stdout
    after = gmail.snapshot(by_content=True)
    # The label came back with a new id and without its messages, so the message put back cannot carry the old one.
    assert after["drafts"] == before["drafts"] and after["filters"] == before["filters"]
    assert after["labels"] == before["labels"]
    assert [m for m in after["messages"] if b"doomed" in m[0]] == [(raw("doomed", "me@example.com"), ["INBOX"])]
