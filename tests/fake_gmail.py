"""An in-memory fake of the Gmail API v1 for one mailbox (`users/me`): messages, drafts, labels, settings.filters."""

from __future__ import annotations

import base64
import binascii
import copy
import email
import email.message
import email.utils
import itertools
import json
import re
from collections.abc import Callable
from dataclasses import InitVar, dataclass, field
from typing import Any

Reply = tuple[int, Any]
SYSTEM_LABELS = ("INBOX", "SENT", "TRASH", "SPAM", "DRAFT", "UNREAD", "STARRED", "IMPORTANT")
NOT_APPLICABLE = ("DRAFT", "SENT")   # system labels that modify may neither add nor remove
LABEL_FIELDS = ("name", "messageListVisibility", "labelListVisibility", "color")
VISIBILITY = {"messageListVisibility": ("show", "hide"),
              "labelListVisibility": ("labelShow", "labelShowIfUnread", "labelHide")}
STATUS = {400: "INVALID_ARGUMENT", 404: "NOT_FOUND", 409: "ALREADY_EXISTS"}
REASON = {400: "invalidArgument", 404: "notFound", 409: "duplicate"}
NO_RAW = "'raw' RFC822 payload message string or uploading message via /upload/* URL required"
SEED_RAW = (b"From: alice@example.com\r\nTo: me@example.com\r\nSubject: hello\r\n"
            b"Date: Tue, 14 Nov 2023 22:13:20 +0000\r\n\r\nhello\r\n")


class GmailError(Exception):
    """A Google JSON error answer: `{"error": {code, message, errors: [...], status}}`."""

    def __init__(self, code: int, message: str, reason: str | None = None, status: str | None = None) -> None:
        super().__init__(message)
        self.code, self.reason, self.status = code, reason or REASON[code], status or STATUS[code]

    def body(self) -> dict[str, Any]:
        message = str(self)
        return {"error": {"code": self.code, "message": message, "status": self.status,
                          "errors": [{"message": message, "domain": "global", "reason": self.reason}]}}


def not_found() -> GmailError:
    return GmailError(404, "Requested entity was not found.")


def b64url(data: bytes) -> str:
    """Base64url with padding, as Gmail answers."""
    return base64.urlsafe_b64encode(data).decode()


def decode_raw(value: Any) -> bytes:
    """The bytes of a `raw` field; padding is optional, as Gmail accepts either."""
    if not isinstance(value, str) or not value:
        raise GmailError(400, NO_RAW)
    try:
        return base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
    except (binascii.Error, ValueError) as e:
        raise GmailError(400, "Invalid value for ByteString: " + value[:40]) from e


@dataclass
class Message:
    """One stored message: its RFC 822 bytes and labels; `pre_trash` holds the labels trash took away."""

    id: str
    thread_id: str
    raw: bytes
    label_ids: list[str]
    internal_date: int
    history_id: int
    pre_trash: list[str] = field(default_factory=list)

    @property
    def parsed(self) -> email.message.Message:
        return email.message_from_bytes(self.raw)

    def ref(self) -> dict[str, Any]:
        """The short form Gmail returns from send, insert, modify, trash: id, threadId, labelIds."""
        out: dict[str, Any] = {"id": self.id, "threadId": self.thread_id}
        if self.label_ids:
            out["labelIds"] = list(self.label_ids)
        return out

    def resource(self, fmt: str = "full", headers: list[str] | None = None) -> dict[str, Any]:
        """The Message resource in `format` full, metadata, minimal or raw."""
        out = {**self.ref(), "snippet": snippet(self.parsed), "sizeEstimate": len(self.raw),
               "historyId": str(self.history_id), "internalDate": str(self.internal_date)}
        if fmt == "raw":
            out["raw"] = b64url(self.raw)
        elif fmt == "metadata":
            part = self.parsed
            wanted = {h.lower() for h in headers or []}
            out["payload"] = {"mimeType": part.get_content_type(),
                              "headers": [h for h in header_list(part) if not wanted or h["name"].lower() in wanted]}
        elif fmt == "full":
            out["payload"] = message_part(self.parsed, "")
        return out


def header_list(part: email.message.Message) -> list[dict[str, str]]:
    return [{"name": k, "value": str(v)} for k, v in part.items()]


def message_part(part: email.message.Message, part_id: str) -> dict[str, Any]:
    """A MessagePart: headers, and either a base64url body or the child parts."""
    out: dict[str, Any] = {"partId": part_id, "mimeType": part.get_content_type(),
                           "filename": part.get_filename() or "", "headers": header_list(part)}
    if part.is_multipart():
        children = part.get_payload()
        assert isinstance(children, list)
        out["body"] = {"size": 0}
        out["parts"] = [message_part(c, f"{part_id}.{i}" if part_id else str(i)) for i, c in enumerate(children)]
    else:
        data = part.get_payload(decode=True)
        data = data if isinstance(data, bytes) else b""
        out["body"] = {"size": len(data), "data": b64url(data)} if data else {"size": 0}
    return out


def snippet(msg: email.message.Message) -> str:
    """The first text/plain part, whitespace collapsed, cut to 100 characters."""
    for part in msg.walk():
        if part.get_content_type() == "text/plain":
            data = part.get_payload(decode=True)
            text = data.decode(part.get_content_charset() or "utf-8", "replace") if isinstance(data, bytes) else ""
            return " ".join(text.split())[:100]
    return ""


@dataclass
class GmailFake:
    """One mailbox (`users/me`); `handle` answers one request. Callers hold the server's lock.

    State is public for tests: `messages` (id -> Message, drafts' messages included), `drafts` (draft id -> message
    id), `labels` (id -> Label fields, system labels included), `filters` (id -> Filter), `sent` (every message sent).

    The reference gives no status for a delete, only "if successful, the response body is empty" (some of its
    pages: "an empty JSON object"): Gmail answers 204; with `deletes_answer_200` the fake answers 200 `{}` instead.
    """

    seed: InitVar[bool] = True
    messages: dict[str, Message] = field(default_factory=dict)
    drafts: dict[str, str] = field(default_factory=dict)
    labels: dict[str, dict[str, Any]] = field(default_factory=dict)
    filters: dict[str, dict[str, Any]] = field(default_factory=dict)
    sent: list[dict[str, Any]] = field(default_factory=list)
    counter: itertools.count[int] = field(default_factory=lambda: itertools.count(2))
    history: itertools.count[int] = field(default_factory=lambda: itertools.count(1000))
    clock_ms: itertools.count[int] = field(default_factory=lambda: itertools.count(1_700_000_000_000, 1000))
    deletes_answer_200: bool = False

    def __post_init__(self, seed: bool) -> None:
        for name in SYSTEM_LABELS:
            self.labels.setdefault(name, {"id": name, "name": name, "type": "system"})
        if seed:
            self.add_message(SEED_RAW, ["INBOX"], message_id="m1", thread_id="t1")

    # -- request dispatch --------------------------------------------------------------------------------------------

    def handle(self, method: str, path: str, query: dict[str, str], body: dict[str, Any]) -> Reply:
        """Route one request; a GmailError becomes Google's JSON error answer."""
        rest = path.removeprefix("/gmail/v1/users/me")
        try:
            if rest != path:
                for verb, pattern, handler in ROUTES:
                    if verb == method and (m := pattern.fullmatch(rest)):
                        status, payload = handler(self, query, body, *m.groups())
                        return (200, {}) if status == 204 and self.deletes_answer_200 else (status, payload)
            raise not_found()
        except GmailError as e:
            return e.code, e.body()

    # -- seed and inspection helpers ---------------------------------------------------------------------------------

    def add_message(self, raw: bytes, labels: list[str] | None = None, *, thread_id: str | None = None,
                    message_id: str | None = None, internal_date: int | None = None) -> str:
        """Store a message as it stands (no side effects) and return its id; labels must exist."""
        self._check_labels(labels or [])
        n = next(self.counter)
        mid = message_id or f"m{n}"
        self.messages[mid] = Message(mid, thread_id or f"t{n}", raw, list(dict.fromkeys(labels or [])),
                                     internal_date if internal_date is not None else next(self.clock_ms),
                                     next(self.history))
        return mid

    def add_label(self, name: str, **fields: Any) -> str:
        """Create a user label (as POST /labels does) and return its id."""
        return str(self._create_label({}, {"name": name, **fields})[1]["id"])

    def add_filter(self, criteria: dict[str, Any], action: dict[str, Any]) -> str:
        """Create a filter (as POST /settings/filters does) and return its id."""
        return str(self._create_filter({}, {"criteria": criteria, "action": action})[1]["id"])

    def add_draft(self, raw: bytes) -> str:
        """Create a draft (as POST /drafts does) and return the draft id."""
        return str(self._create_draft({}, {"message": {"raw": b64url(raw)}})[1]["id"])

    def snapshot(self, by_content: bool = False) -> dict[str, Any]:
        """The mailbox as plain data, for before/after comparison.

        By id: {"messages": {id: {"threadId", "labelIds" (sorted), "raw"}}, "drafts": {draft id: message id},
        "labels": {id: Label fields}, "filters": {id: {"criteria", "action"}}}.
        With by_content=True nothing mentions a server-assigned id (they legitimately change when undo re-creates):
        {"messages": sorted [(raw, sorted label names)], "drafts": sorted [raw], "labels": sorted [Label fields
        without id], "filters": sorted [{"criteria", "action"} with label ids as names]}. Thread grouping and
        internalDate are left out of both.
        """
        if not by_content:
            return {"messages": {m.id: {"threadId": m.thread_id, "labelIds": sorted(m.label_ids), "raw": m.raw}
                                 for m in self.messages.values()},
                    "drafts": dict(self.drafts),
                    "labels": copy.deepcopy(self.labels),
                    "filters": {i: {"criteria": f["criteria"], "action": f["action"]} for i, f in self.filters.items()}}
        name = {i: lab["name"] for i, lab in self.labels.items()}

        def names(ids: list[str]) -> list[str]:
            return sorted(name.get(i, i) for i in ids)

        filters = [{"criteria": f["criteria"], "action": {k: names(v) if k.endswith("LabelIds") else v
                                                           for k, v in f["action"].items()}}
                   for f in self.filters.values()]
        return {"messages": sorted((m.raw, names(m.label_ids)) for m in self.messages.values()),
                "drafts": sorted(self.messages[mid].raw for mid in self.drafts.values()),
                "labels": sorted(({k: v for k, v in lab.items() if k != "id"} for lab in self.labels.values()),
                                 key=lambda lab: str(lab["name"])),
                "filters": sorted(copy.deepcopy(filters), key=lambda f: json.dumps(f, sort_keys=True))}

    # -- internals ---------------------------------------------------------------------------------------------------

    def _message(self, mid: str) -> Message:
        if mid not in self.messages:
            raise not_found()
        return self.messages[mid]

    def _has_thread(self, thread_id: str) -> bool:
        return any(m.thread_id == thread_id for m in self.messages.values())

    def _check_labels(self, ids: list[str]) -> None:
        for lid in ids:
            if lid not in self.labels:
                raise GmailError(400, f"Invalid label: {lid}")

    def _relabel(self, msg: Message, add: list[str], remove: list[str]) -> None:
        msg.label_ids = [lid for lid in dict.fromkeys(msg.label_ids + add) if lid not in remove or lid in add]
        msg.history_id = next(self.history)

    def _new_message(self, body: dict[str, Any], labels: list[str], internal_date: int | None = None) -> Message:
        """Store a message from a request body's `raw` under a new id; a `threadId` is kept only if it exists."""
        raw = decode_raw(body.get("raw"))
        thread = body.get("threadId")
        known = isinstance(thread, str) and self._has_thread(thread)
        mid = self.add_message(raw, labels, thread_id=thread if known else None, internal_date=internal_date)
        return self.messages[mid]

    def _send(self, body: dict[str, Any]) -> Message:
        raw = decode_raw(body.get("raw"))
        parsed = email.message_from_bytes(raw)
        if not any(parsed.get(h) for h in ("To", "Cc", "Bcc")):
            raise GmailError(400, "Recipient address required")
        msg = self._new_message(body, ["SENT"])
        self.sent.append(msg.ref())
        return msg

    def _date_header_ms(self, raw: bytes) -> int | None:
        date = email.message_from_bytes(raw).get("Date")
        try:
            return int(email.utils.parsedate_to_datetime(str(date)).timestamp() * 1000) if date else None
        except (TypeError, ValueError):
            return None

    # -- users.messages ----------------------------------------------------------------------------------------------

    def _list_messages(self, query: dict[str, str], body: dict[str, Any]) -> Reply:
        wanted = [lid for lid in (query.get("labelIds") or "").split(",") if lid]
        hidden = set() if query.get("includeSpamTrash") == "true" else {"SPAM", "TRASH"}
        found = [m for m in reversed(self.messages.values())
                 if all(lid in m.label_ids for lid in wanted) and not hidden.intersection(m.label_ids)]
        found.sort(key=lambda m: -m.internal_date)
        return 200, self._page(found, query, "messages", lambda m: {"id": m.id, "threadId": m.thread_id})

    def _page(self, items: list[Any], query: dict[str, str], key: str, show: Callable[[Any], dict[str, Any]]
              ) -> dict[str, Any]:
        """One page of a list answer; the `key` list is left out when empty, as Gmail does."""
        try:
            start, size = int(query.get("pageToken") or 0), min(int(query.get("maxResults") or 100), 500)
        except ValueError as e:
            raise GmailError(400, "Invalid pageToken or maxResults") from e
        out: dict[str, Any] = {}
        if page := items[start:start + size]:
            out[key] = [show(i) for i in page]
        if start + size < len(items):
            out["nextPageToken"] = str(start + size)
        out["resultSizeEstimate"] = len(items)
        return out

    def _get_message(self, query: dict[str, str], body: dict[str, Any], mid: str) -> Reply:
        fmt = query.get("format", "full")
        if fmt not in ("full", "metadata", "minimal", "raw"):
            raise GmailError(400, f"Invalid value at 'format' ({fmt})")
        header = query.get("metadataHeaders")
        return 200, self._message(mid).resource(fmt, [header] if header else None)

    def _send_message(self, query: dict[str, str], body: dict[str, Any]) -> Reply:
        return 200, self._send(body).ref()

    def _store(self, query: dict[str, str], body: dict[str, Any], date_source: str) -> Reply:
        """Insert or import: a new message (always a new id) with exactly the labels given."""
        labels = list(body.get("labelIds") or [])
        self._check_labels(labels)
        raw = decode_raw(body.get("raw"))
        when = self._date_header_ms(raw) if query.get("internalDateSource", date_source) == "dateHeader" else None
        return 200, self._new_message(body, labels, when).ref()

    def _insert_message(self, query: dict[str, str], body: dict[str, Any]) -> Reply:
        """users.messages.insert is POST /messages (like IMAP APPEND); internalDate defaults to now."""
        return self._store(query, body, "receivedTime")

    def _import_message(self, query: dict[str, str], body: dict[str, Any]) -> Reply:
        """users.messages.import; internalDate defaults to the Date header."""
        return self._store(query, body, "dateHeader")

    def _trash(self, query: dict[str, str], body: dict[str, Any], mid: str) -> Reply:
        """Adds TRASH and takes INBOX away, remembering it for untrash."""
        msg = self._message(mid)
        if "TRASH" not in msg.label_ids:
            msg.pre_trash = [lid for lid in msg.label_ids if lid == "INBOX"]
            self._relabel(msg, ["TRASH"], msg.pre_trash)
        return 200, msg.ref()

    def _untrash(self, query: dict[str, str], body: dict[str, Any], mid: str) -> Reply:
        """Removes TRASH and gives back what trash took away."""
        msg = self._message(mid)
        if "TRASH" in msg.label_ids:
            self._relabel(msg, msg.pre_trash, ["TRASH"])
            msg.pre_trash = []
        return 200, msg.ref()

    def _label_change(self, body: dict[str, Any]) -> tuple[list[str], list[str]]:
        add, remove = list(body.get("addLabelIds") or []), list(body.get("removeLabelIds") or [])
        self._check_labels(add + remove)
        for lid in add + remove:
            if lid in NOT_APPLICABLE:
                raise GmailError(400, f"Invalid label: {lid}")
        return add, remove

    def _modify(self, query: dict[str, str], body: dict[str, Any], mid: str) -> Reply:
        msg = self._message(mid)
        add, remove = self._label_change(body)
        self._relabel(msg, add, remove)
        return 200, msg.ref()

    def _delete_message(self, query: dict[str, str], body: dict[str, Any], mid: str) -> Reply:
        self._message(mid)
        self._drop(mid)
        return 204, None

    def _drop(self, mid: str) -> None:
        """Permanently remove a message, and any draft that holds it."""
        self.messages.pop(mid, None)
        for did in [d for d, m in self.drafts.items() if m == mid]:
            del self.drafts[did]

    def _batch_modify(self, query: dict[str, str], body: dict[str, Any]) -> Reply:
        """Unknown ids are skipped; labels are checked before anything changes."""
        add, remove = self._label_change(body)
        for mid in body.get("ids") or []:
            if mid in self.messages:
                self._relabel(self.messages[mid], add, remove)
        return 204, None

    def _batch_delete(self, query: dict[str, str], body: dict[str, Any]) -> Reply:
        for mid in body.get("ids") or []:
            self._drop(mid)
        return 204, None

    # -- users.drafts ------------------------------------------------------------------------------------------------

    def _draft(self, did: str, fmt: str | None = None) -> dict[str, Any]:
        if did not in self.drafts:
            raise not_found()
        msg = self.messages[self.drafts[did]]
        return {"id": did, "message": msg.resource(fmt) if fmt else msg.ref()}

    def _draft_message(self, body: dict[str, Any]) -> Message:
        message = body.get("message")
        if not isinstance(message, dict):
            raise GmailError(400, "Missing draft message")
        return self._new_message(message, ["DRAFT"])

    def _list_drafts(self, query: dict[str, str], body: dict[str, Any]) -> Reply:
        found = list(reversed(self.drafts))
        return 200, self._page(found, query, "drafts", lambda d: {"id": d, "message": {
            "id": self.drafts[d], "threadId": self.messages[self.drafts[d]].thread_id}})

    def _create_draft(self, query: dict[str, str], body: dict[str, Any]) -> Reply:
        msg = self._draft_message(body)
        did = f"r{next(self.counter)}"
        self.drafts[did] = msg.id
        return 200, self._draft(did)

    def _get_draft(self, query: dict[str, str], body: dict[str, Any], did: str) -> Reply:
        return 200, self._draft(did, query.get("format", "full"))

    def _update_draft(self, query: dict[str, str], body: dict[str, Any], did: str) -> Reply:
        """Replaces the draft's message; the new one gets a new message id, as Gmail does."""
        old = self._draft(did)["message"]["id"]
        msg = self._draft_message(body)
        self.messages.pop(old)
        self.drafts[did] = msg.id
        return 200, self._draft(did)

    def _delete_draft(self, query: dict[str, str], body: dict[str, Any], did: str) -> Reply:
        self._draft(did)
        self.messages.pop(self.drafts.pop(did))
        return 204, None

    def _send_draft(self, query: dict[str, str], body: dict[str, Any]) -> Reply:
        """Sends an existing draft (body `{"id"}`): the draft is gone, a SENT message takes its place."""
        did = str(body.get("id") or "")
        held = self.messages[self._draft(did)["message"]["id"]]
        msg = self._send({"raw": b64url(held.raw), "threadId": held.thread_id})
        self._drop(held.id)
        return 200, msg.ref()

    # -- users.labels ------------------------------------------------------------------------------------------------

    def _label(self, lid: str, user_only: bool = False, verb: str = "") -> dict[str, Any]:
        if lid not in self.labels:
            raise not_found()
        if user_only and self.labels[lid]["type"] == "system":
            raise GmailError(400, f"Invalid {verb} request")
        return self.labels[lid]

    def _label_fields(self, body: dict[str, Any], own_id: str | None) -> dict[str, Any]:
        """The writable fields of a Label body, checked: a name that is free, known visibility values."""
        fields = {k: copy.deepcopy(body[k]) for k in LABEL_FIELDS if k in body}
        if "name" in fields:
            name = fields["name"]
            if not isinstance(name, str) or not name.strip():
                raise GmailError(400, "Invalid label name")
            if any(lab["name"].lower() == name.lower() for i, lab in self.labels.items() if i != own_id):
                raise GmailError(409, "Label name exists or conflicts")
        for k, allowed in VISIBILITY.items():
            if k in fields and fields[k] not in allowed:
                raise GmailError(400, f"Invalid value for {k}: {fields[k]}")
        return fields

    def _list_labels(self, query: dict[str, str], body: dict[str, Any]) -> Reply:
        return 200, {"labels": [dict(lab) for lab in self.labels.values()]}

    def _get_label(self, query: dict[str, str], body: dict[str, Any], lid: str) -> Reply:
        """A Label with its counts, which labels.list leaves out."""
        label = dict(self._label(lid))
        tagged = [m for m in self.messages.values() if lid in m.label_ids]
        unread = [m for m in tagged if "UNREAD" in m.label_ids]
        label.update(messagesTotal=len(tagged), messagesUnread=len(unread),
                     threadsTotal=len({m.thread_id for m in tagged}), threadsUnread=len({m.thread_id for m in unread}))
        return 200, label

    def _create_label(self, query: dict[str, str], body: dict[str, Any]) -> Reply:
        if "name" not in body:
            raise GmailError(400, "Invalid label name")
        fields = self._label_fields(body, None)
        lid = f"Label_{next(self.counter)}"
        self.labels[lid] = {"id": lid, **fields, "type": "user"}
        return 200, dict(self.labels[lid])

    def _update_label(self, query: dict[str, str], body: dict[str, Any], lid: str) -> Reply:
        """PUT: the body replaces every writable field; a name is required."""
        self._label(lid, user_only=True, verb="update")
        if "name" not in body:
            raise GmailError(400, "Invalid label name")
        self.labels[lid] = {"id": lid, **self._label_fields(body, lid), "type": "user"}
        return 200, dict(self.labels[lid])

    def _patch_label(self, query: dict[str, str], body: dict[str, Any], lid: str) -> Reply:
        """PATCH: only the fields given change."""
        label = self._label(lid, user_only=True, verb="update")
        label.update(self._label_fields(body, lid))
        return 200, dict(label)

    def _delete_label(self, query: dict[str, str], body: dict[str, Any], lid: str) -> Reply:
        """Deletes the label and takes it off every message, as Gmail does."""
        self._label(lid, user_only=True, verb="delete")
        del self.labels[lid]
        for msg in self.messages.values():
            if lid in msg.label_ids:
                self._relabel(msg, [], [lid])
        return 204, None

    # -- users.settings.filters --------------------------------------------------------------------------------------

    def _filter(self, fid: str) -> dict[str, Any]:
        if fid not in self.filters:
            raise not_found()
        return copy.deepcopy(self.filters[fid])

    def _list_filters(self, query: dict[str, str], body: dict[str, Any]) -> Reply:
        return 200, {"filter": [copy.deepcopy(f) for f in self.filters.values()]} if self.filters else {}

    def _get_filter(self, query: dict[str, str], body: dict[str, Any], fid: str) -> Reply:
        return 200, self._filter(fid)

    def _create_filter(self, query: dict[str, str], body: dict[str, Any]) -> Reply:
        """A filter needs some criteria and some action; its labels must exist; an identical one is refused."""
        criteria, action = body.get("criteria"), body.get("action")
        if not isinstance(criteria, dict) or not criteria:
            raise GmailError(400, "Filter doesn't have any criteria")
        if not isinstance(action, dict) or not action:
            raise GmailError(400, "Filter doesn't have any actions")
        self._check_labels(list(action.get("addLabelIds") or []) + list(action.get("removeLabelIds") or []))
        if any(f["criteria"] == criteria and f["action"] == action for f in self.filters.values()):
            raise GmailError(400, "Filter already exists", "failedPrecondition", "FAILED_PRECONDITION")
        fid = f"ANe1Bm{next(self.counter)}"
        self.filters[fid] = {"id": fid, "criteria": copy.deepcopy(criteria), "action": copy.deepcopy(action)}
        return 200, self._filter(fid)

    def _delete_filter(self, query: dict[str, str], body: dict[str, Any], fid: str) -> Reply:
        self._filter(fid)
        del self.filters[fid]
        return 204, None


Handler = Callable[..., Reply]
ID = "([^/]+)"
TABLE: list[tuple[str, str, Handler]] = [
    ("GET", "/messages", GmailFake._list_messages),
    ("POST", "/messages", GmailFake._insert_message),
    ("POST", "/messages/send", GmailFake._send_message),
    ("POST", "/messages/import", GmailFake._import_message),
    ("POST", "/messages/batchModify", GmailFake._batch_modify),
    ("POST", "/messages/batchDelete", GmailFake._batch_delete),
    ("GET", "/messages/{id}", GmailFake._get_message),
    ("DELETE", "/messages/{id}", GmailFake._delete_message),
    ("POST", "/messages/{id}/trash", GmailFake._trash),
    ("POST", "/messages/{id}/untrash", GmailFake._untrash),
    ("POST", "/messages/{id}/modify", GmailFake._modify),
    ("GET", "/drafts", GmailFake._list_drafts),
    ("POST", "/drafts", GmailFake._create_draft),
    ("POST", "/drafts/send", GmailFake._send_draft),
    ("GET", "/drafts/{id}", GmailFake._get_draft),
    ("PUT", "/drafts/{id}", GmailFake._update_draft),
    ("DELETE", "/drafts/{id}", GmailFake._delete_draft),
    ("GET", "/labels", GmailFake._list_labels),
    ("POST", "/labels", GmailFake._create_label),
    ("GET", "/labels/{id}", GmailFake._get_label),
    ("PUT", "/labels/{id}", GmailFake._update_label),
    ("PATCH", "/labels/{id}", GmailFake._patch_label),
    ("DELETE", "/labels/{id}", GmailFake._delete_label),
    ("GET", "/settings/filters", GmailFake._list_filters),
    ("POST", "/settings/filters", GmailFake._create_filter),
    ("GET", "/settings/filters/{id}", GmailFake._get_filter),
    ("DELETE", "/settings/filters/{id}", GmailFake._delete_filter),
]
ROUTES = [(verb, re.compile(path.replace("{id}", ID)), handler) for verb, path, handler in TABLE]
