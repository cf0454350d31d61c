"""The Gmail fake behaves as Gmail does where undo depends on it: new ids on insert, labels, drafts, errors."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from tests.fake_gmail import GmailFake

ME = "/gmail/v1/users/me"
RAW = b"From: bob@example.com\r\nTo: me@example.com\r\nSubject: ?>?> report\r\n\r\nQuarterly numbers attached.\r\n"


def call(g: GmailFake, method: str, path: str, body: dict[str, Any] | None = None, **query: str) -> tuple[int, Any]:
    status, payload, *_ = g.handle(method, ME + path, query, body or {})
    return status, payload


def b64(raw: bytes, pad: bool = True) -> str:
    text = base64.urlsafe_b64encode(raw).decode()
    return text if pad else text.rstrip("=")


def labels_of(g: GmailFake, mid: str) -> list[str]:
    return sorted(call(g, "GET", f"/messages/{mid}", format="minimal")[1].get("labelIds", []))


def assert_error(reply: tuple[int, Any], code: int, status: str, reason: str) -> None:
    assert reply[0] == code
    error = reply[1]["error"]
    assert (error["code"], error["status"]) == (code, status)
    assert error["errors"] == [{"message": error["message"], "domain": "global", "reason": reason}]


def test_seed_mailbox_lists_and_gets_m1():
    g = GmailFake()
    assert call(g, "GET", "/messages") == (200, {"messages": [{"id": "m1", "threadId": "t1"}], "resultSizeEstimate": 1})
    status, msg = call(g, "GET", "/messages/m1")
    assert status == 200 and msg["labelIds"] == ["INBOX"] and msg["threadId"] == "t1" and msg["snippet"] == "hello"
    headers = {h["name"]: h["value"] for h in msg["payload"]["headers"]}
    assert (headers["Subject"], headers["From"], headers["To"]) == ("hello", "alice@example.com", "me@example.com")
    assert base64.urlsafe_b64decode(msg["payload"]["body"]["data"]) == b"hello\r\n"
    assert {"historyId", "internalDate", "sizeEstimate"} <= msg.keys()


def test_empty_list_omits_messages_key():
    g = GmailFake(seed=False)
    assert call(g, "GET", "/messages") == (200, {"resultSizeEstimate": 0})
    assert call(g, "GET", "/drafts") == (200, {"resultSizeEstimate": 0})
    assert call(g, "GET", "/settings/filters") == (200, {})


def test_raw_round_trip_is_base64url():
    g = GmailFake()
    encoded = b64(RAW, pad=False)
    assert "-" in encoded or "_" in encoded      # the URL-safe alphabet is exercised
    status, ref = call(g, "POST", "/messages", {"raw": encoded, "labelIds": ["INBOX"]})
    assert status == 200
    raw = call(g, "GET", f"/messages/{ref['id']}", format="raw")[1]["raw"]
    assert raw == b64(RAW) and base64.urlsafe_b64decode(raw) == RAW
    assert g.messages[ref["id"]].raw == RAW


def test_insert_and_import_give_a_new_id_every_time():
    g = GmailFake()
    before = g.snapshot(by_content=True)
    raw = b64(g.messages["m1"].raw)
    assert call(g, "DELETE", "/messages/m1") == (204, None)
    assert "m1" not in g.messages
    first = call(g, "POST", "/messages", {"raw": raw, "labelIds": ["INBOX"]})[1]
    second = call(g, "POST", "/messages/import", {"raw": raw, "labelIds": ["INBOX"]})[1]
    assert len({"m1", first["id"], second["id"]}) == 3
    assert first["labelIds"] == ["INBOX"]
    no_raw = call(g, "POST", "/messages", {"labelIds": ["INBOX"]})
    assert_error(no_raw, 400, "INVALID_ARGUMENT", "invalidArgument")
    assert "'raw' RFC822 payload" in no_raw[1]["error"]["message"]
    call(g, "DELETE", f"/messages/{second['id']}")
    assert g.snapshot(by_content=True) == before      # the same mailbox by content ...
    assert g.snapshot() != GmailFake().snapshot()     # ... though not by id


def test_import_takes_internal_date_from_the_date_header_and_insert_does_not():
    g = GmailFake()
    raw = b64(g.messages["m1"].raw)   # Date: Tue, 14 Nov 2023 22:13:20 +0000
    imported = call(g, "POST", "/messages/import", {"raw": raw})[1]["id"]
    inserted = call(g, "POST", "/messages", {"raw": raw})[1]["id"]
    assert g.messages[imported].internal_date == 1_700_000_000_000
    assert g.messages[inserted].internal_date != 1_700_000_000_000
    dated = call(g, "POST", "/messages", {"raw": raw}, internalDateSource="dateHeader")[1]["id"]
    assert g.messages[dated].internal_date == 1_700_000_000_000


def test_trash_and_untrash_restore_the_labels():
    g = GmailFake()
    call(g, "POST", "/messages/m1/modify", {"addLabelIds": ["STARRED"]})
    before = g.snapshot()
    status, ref = call(g, "POST", "/messages/m1/trash")
    assert status == 200 and sorted(ref["labelIds"]) == ["STARRED", "TRASH"]
    assert g.snapshot() != before
    assert call(g, "GET", "/messages")[1] == {"resultSizeEstimate": 0}    # trash is hidden from list ...
    assert call(g, "GET", "/messages", includeSpamTrash="true")[1]["messages"] == [{"id": "m1", "threadId": "t1"}]
    assert call(g, "POST", "/messages/m1/untrash")[1]["id"] == "m1"
    assert labels_of(g, "m1") == ["INBOX", "STARRED"]
    assert g.snapshot() == before


def test_modify_adds_and_removes_and_rejects_unknown_labels():
    g = GmailFake()
    lid = g.add_label("Receipts")
    status, ref = call(g, "POST", "/messages/m1/modify", {"addLabelIds": [lid, "UNREAD"], "removeLabelIds": ["INBOX"]})
    assert status == 200 and sorted(ref["labelIds"]) == sorted([lid, "UNREAD"])
    assert_error(call(g, "POST", "/messages/m1/modify", {"addLabelIds": ["Label_999"]}), 400, "INVALID_ARGUMENT",
                 "invalidArgument")
    assert_error(call(g, "POST", "/messages/m1/modify", {"addLabelIds": ["SENT"]}), 400, "INVALID_ARGUMENT",
                 "invalidArgument")
    assert labels_of(g, "m1") == sorted([lid, "UNREAD"])


def test_batch_modify_and_batch_delete():
    g = GmailFake()
    other = g.add_message(RAW, ["INBOX"])
    assert call(g, "POST", "/messages/batchModify", {"ids": ["m1", other], "removeLabelIds": ["INBOX"]}) == (204, None)
    assert labels_of(g, "m1") == labels_of(g, other) == []
    assert call(g, "POST", "/messages/batchDelete", {"ids": ["m1", other]}) == (204, None)
    assert g.messages == {}


def test_label_list_get_counts_and_create_fields():
    g = GmailFake()
    status, label = call(g, "POST", "/labels", {"name": "Work", "labelListVisibility": "labelHide",
                                                 "color": {"textColor": "#000000", "backgroundColor": "#ffffff"}})
    assert status == 200 and label["type"] == "user" and label["id"].startswith("Label_")
    assert label["labelListVisibility"] == "labelHide" and label["color"]["textColor"] == "#000000"
    names = {lab["name"] for lab in call(g, "GET", "/labels")[1]["labels"]}
    assert {"INBOX", "SENT", "TRASH", "SPAM", "DRAFT", "UNREAD", "STARRED", "IMPORTANT", "Work"} <= names
    call(g, "POST", "/messages/m1/modify", {"addLabelIds": [label["id"], "UNREAD"]})
    got = call(g, "GET", f"/labels/{label['id']}")[1]
    assert (got["messagesTotal"], got["messagesUnread"], got["threadsTotal"]) == (1, 1, 1)


def test_duplicate_label_name_is_409():
    g = GmailFake()
    g.add_label("Receipts")
    assert_error(call(g, "POST", "/labels", {"name": "receipts"}), 409, "ALREADY_EXISTS", "duplicate")
    assert call(g, "POST", "/labels", {"name": "Receipts"})[1]["error"]["message"] == "Label name exists or conflicts"
    assert sum(lab["name"].lower() == "receipts" for lab in g.labels.values()) == 1


def test_label_put_replaces_and_patch_merges():
    g = GmailFake()
    lid = g.add_label("Old", labelListVisibility="labelHide")
    status, label = call(g, "PATCH", f"/labels/{lid}", {"name": "New"})
    assert status == 200 and (label["name"], label["labelListVisibility"]) == ("New", "labelHide")
    status, label = call(g, "PUT", f"/labels/{lid}", {"name": "Newer"})
    assert status == 200 and label == {"id": lid, "name": "Newer", "type": "user"}
    other = g.add_label("Other")
    assert call(g, "PATCH", f"/labels/{other}", {"name": "NEWER"})[0] == 409


def test_label_delete_strips_it_from_every_message():
    g = GmailFake()
    lid = g.add_label("Later")
    other = g.add_message(RAW, [lid, "INBOX"])
    call(g, "POST", "/messages/m1/modify", {"addLabelIds": [lid]})
    assert call(g, "DELETE", f"/labels/{lid}") == (204, None)
    assert labels_of(g, "m1") == labels_of(g, other) == ["INBOX"]
    assert_error(call(g, "GET", f"/labels/{lid}"), 404, "NOT_FOUND", "notFound")


@pytest.mark.parametrize("method", ["DELETE", "PUT", "PATCH"])
def test_system_labels_cannot_be_changed(method):
    g = GmailFake()
    assert_error(call(g, method, "/labels/INBOX", {"name": "Mine"}), 400, "INVALID_ARGUMENT", "invalidArgument")
    assert g.labels["INBOX"] == {"id": "INBOX", "name": "INBOX", "type": "system"}


def test_draft_create_get_list_delete():
    g = GmailFake()
    status, draft = call(g, "POST", "/drafts", {"message": {"raw": b64(RAW)}})
    assert status == 200 and draft["message"]["labelIds"] == ["DRAFT"]
    assert call(g, "GET", f"/drafts/{draft['id']}")[1]["message"]["payload"]["mimeType"] == "text/plain"
    assert call(g, "GET", "/drafts")[1] == {"drafts": [{"id": draft["id"], "message": {
        "id": draft["message"]["id"], "threadId": draft["message"]["threadId"]}}], "resultSizeEstimate": 1}
    assert call(g, "DELETE", f"/drafts/{draft['id']}") == (204, None)
    assert g.drafts == {} and draft["message"]["id"] not in g.messages
    assert_error(call(g, "GET", f"/drafts/{draft['id']}"), 404, "NOT_FOUND", "notFound")


def test_draft_update_gives_its_message_a_new_id():
    g = GmailFake()
    did = g.add_draft(RAW)
    old = g.drafts[did]
    status, draft = call(g, "PUT", f"/drafts/{did}", {"id": did, "message": {"raw": b64(RAW + b"P.S.\r\n")}})
    assert status == 200 and draft["id"] == did and draft["message"]["id"] != old
    assert old not in g.messages and g.messages[draft["message"]["id"]].raw.endswith(b"P.S.\r\n")


def test_draft_send_removes_the_draft_and_records_the_sent_message():
    g = GmailFake()
    did = g.add_draft(RAW)
    held = g.drafts[did]
    status, sent = call(g, "POST", "/drafts/send", {"id": did})
    assert status == 200 and sent["labelIds"] == ["SENT"]
    assert did not in g.drafts and held not in g.messages
    assert g.sent == [sent] and g.messages[sent["id"]].raw == RAW


def test_send_needs_a_recipient_and_is_recorded():
    g = GmailFake()
    assert_error(call(g, "POST", "/messages/send", {"raw": b64(b"Subject: x\r\n\r\nhi")}), 400, "INVALID_ARGUMENT",
                 "invalidArgument")
    assert_error(call(g, "POST", "/messages/send", {}), 400, "INVALID_ARGUMENT", "invalidArgument")
    assert g.sent == []
    status, sent = call(g, "POST", "/messages/send", {"raw": b64(RAW), "threadId": "t1"})
    assert status == 200 and sent["threadId"] == "t1" and sent["labelIds"] == ["SENT"]
    assert g.sent == [sent]


def test_filters_create_get_list_delete_and_no_update():
    g = GmailFake()
    lid = g.add_label("Boss")
    spec = {"criteria": {"from": "boss@example.com"}, "action": {"addLabelIds": [lid], "removeLabelIds": ["INBOX"]}}
    status, made = call(g, "POST", "/settings/filters", spec)
    assert status == 200 and made == {"id": made["id"], **spec}
    assert call(g, "GET", f"/settings/filters/{made['id']}") == (200, made)
    assert call(g, "GET", "/settings/filters") == (200, {"filter": [made]})
    assert_error(call(g, "POST", "/settings/filters", spec), 400, "FAILED_PRECONDITION", "failedPrecondition")
    unknown_label = {"criteria": {"from": "x"}, "action": {"addLabelIds": ["nope"]}}
    assert_error(call(g, "POST", "/settings/filters", unknown_label), 400, "INVALID_ARGUMENT", "invalidArgument")
    assert call(g, "PUT", f"/settings/filters/{made['id']}", spec)[0] == 404
    assert call(g, "DELETE", f"/settings/filters/{made['id']}") == (204, None)
    assert g.filters == {}


@pytest.mark.parametrize(("method", "path"), [
    ("GET", "/messages/nope"), ("POST", "/messages/nope/trash"), ("POST", "/messages/nope/modify"),
    ("DELETE", "/messages/nope"), ("GET", "/drafts/nope"), ("PUT", "/drafts/nope"), ("GET", "/labels/nope"),
    ("DELETE", "/settings/filters/nope"), ("GET", "/no/such/route"),
])
def test_unknown_ids_answer_google_404(method, path):
    g = GmailFake()
    reply = call(g, method, path, {"message": {"raw": b64(RAW)}})
    assert_error(reply, 404, "NOT_FOUND", "notFound")
    assert reply[1]["error"]["message"] == "Requested entity was not found."


def test_formats_minimal_and_metadata():
    g = GmailFake()
    minimal = call(g, "GET", "/messages/m1", format="minimal")[1]
    assert "payload" not in minimal and "raw" not in minimal and minimal["labelIds"] == ["INBOX"]
    meta = call(g, "GET", "/messages/m1", format="metadata", metadataHeaders="Subject")[1]
    assert meta["payload"]["headers"] == [{"name": "Subject", "value": "hello"}] and "body" not in meta["payload"]


def test_label_ids_filter_on_list():
    g = GmailFake()
    other = g.add_message(RAW, ["STARRED"])
    thread = g.messages[other].thread_id
    assert call(g, "GET", "/messages", labelIds="STARRED")[1]["messages"] == [{"id": other, "threadId": thread}]
    assert [m["id"] for m in call(g, "GET", "/messages")[1]["messages"]] == [other, "m1"]   # newest first


def test_snapshot_by_content_maps_label_ids_to_names():
    g = GmailFake()
    lid = g.add_label("Keep")
    call(g, "POST", "/messages/m1/modify", {"addLabelIds": [lid]})
    g.add_filter({"from": "a@example.com"}, {"addLabelIds": [lid]})
    before, before_ids = g.snapshot(by_content=True), g.snapshot()
    call(g, "DELETE", f"/labels/{lid}")
    fid = next(iter(g.filters))
    call(g, "DELETE", f"/settings/filters/{fid}")
    assert g.snapshot(by_content=True) != before
    new = g.add_label("Keep")
    call(g, "POST", "/messages/m1/modify", {"addLabelIds": [new]})
    g.add_filter({"from": "a@example.com"}, {"addLabelIds": [new]})
    assert g.snapshot(by_content=True) == before
    assert g.snapshot() != before_ids
    assert before["messages"] == [(g.messages["m1"].raw, ["INBOX", "Keep"])]
