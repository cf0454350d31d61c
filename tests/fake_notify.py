"""Small receivers of notifications on 127.0.0.1, each checking what its vendor documents: a generic JSON webhook,
ntfy's publish API (title, priority, tags and the `Actions` header's short format) and Slack's incoming webhooks
(Block Kit sections, actions blocks and link buttons, with Slack's limits and its plain-text error answers)."""

from __future__ import annotations

import base64
import email.header
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

#: ntfy: priorities by name and number; a message longer than this becomes an attachment; at most three actions.
NTFY_PRIORITIES = {"min": 1, "low": 2, "default": 3, "high": 4, "max": 5, "urgent": 5,
                   **{str(n): n for n in range(1, 6)}}
NTFY_MESSAGE_BYTES = 4096
NTFY_MAX_ACTIONS = 3
#: Slack Block Kit limits (section text, button text, URL, action id, elements of an actions block).
SLACK_SECTION_TEXT, SLACK_BUTTON_TEXT, SLACK_URL, SLACK_ACTION_ID, SLACK_ELEMENTS = 3000, 75, 3000, 255, 25


class Receiver:
    """An HTTP server in a thread that hands each POST to `handle(path, headers, body)` -> (status, type, body)."""

    def __init__(self) -> None:
        self.seen: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                status, kind, answer = outer.handle(self.path, {k.lower(): v for k, v in self.headers.items()}, body)
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            do_PUT = do_POST

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def handle(self, path: str, headers: dict[str, str], body: bytes) -> tuple[int, str, bytes]:
        raise NotImplementedError

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class WebhookReceiver(Receiver):
    """A generic webhook: takes any JSON object POSTed to /hook."""

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def handle(self, path: str, headers: dict[str, str], body: bytes) -> tuple[int, str, bytes]:
        if path != "/hook" or not headers.get("content-type", "").startswith("application/json"):
            return 400, "text/plain", b"expected a JSON POST to /hook"
        with self.lock:
            self.seen.append(json.loads(body))
        return 204, "text/plain", b""


def _rfc2047(value: str) -> str:
    """A header value as ntfy reads it: RFC 2047 encoded words decoded, anything else as is."""
    if "=?" not in value:
        return value
    return "".join(part.decode(charset or "ascii") if isinstance(part, bytes) else part
                   for part, charset in email.header.decode_header(value))


def _split(text: str, sep: str) -> list[str]:
    """Split on `sep` outside double or single quotes (ntfy's header format allows either around a value)."""
    parts, current, quote = [], "", ""
    for ch in text:
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "\"'":
            quote = ch
        elif ch == sep:
            parts.append(current)
            current = ""
            continue
        current += ch
    return [*parts, current]


def parse_ntfy_actions(header: str) -> list[dict[str, str]]:
    """ntfy's `Actions` header, short or long format: `<action>, <label>, <url>, key=value...` separated by `;`.
    Raises ValueError as ntfy answers 400."""
    actions = []
    for raw in _split(header, ";"):
        fields = [f.strip().strip("\"'") if "=" not in f else f.strip() for f in _split(raw, ",") if f.strip()]
        action: dict[str, str] = {}
        positional = ["action", "label", "url"]
        for field in fields:
            key, sep, value = field.partition("=")
            if sep and re.fullmatch(r"[a-z.A-Z_-]+", key):
                action[key] = value.strip("\"'")
            elif positional:
                action[positional.pop(0)] = field
            else:
                raise ValueError(f"term {field!r} is not a key=value pair")
        if action.get("action") not in ("view", "broadcast", "http"):
            raise ValueError(f"action {action.get('action')!r} unknown")
        if not action.get("label") or (action["action"] in ("view", "http") and not action.get("url")):
            raise ValueError("label and url are required")
        if action["action"] == "http":
            action.setdefault("method", "POST")
        actions.append(action)
    if len(actions) > NTFY_MAX_ACTIONS:
        raise ValueError("too many actions")
    return actions


class FakeNtfy(Receiver):
    """ntfy's publish endpoint: POST/PUT /<topic>, the body the message, parameters in X- headers or their aliases;
    answers the message as JSON. A topic in `protected` needs `Authorization: Bearer <token>`."""

    def __init__(self, protected: dict[str, str] | None = None) -> None:
        super().__init__()
        self.protected = protected or {}

    def topic_url(self, topic: str) -> str:
        return f"http://127.0.0.1:{self.port}/{topic}"

    @staticmethod
    def _param(headers: dict[str, str], *names: str) -> str | None:
        found = next((headers[n] for n in names if n in headers), None)
        return _rfc2047(found) if found is not None else None

    def handle(self, path: str, headers: dict[str, str], body: bytes) -> tuple[int, str, bytes]:
        topic = path.lstrip("/")
        if not re.fullmatch(r"[-_A-Za-z0-9]{1,64}", topic):
            return self._error(404, 40401, "page not found")
        if topic in self.protected and headers.get("authorization") != f"Bearer {self.protected[topic]}":
            return self._error(403, 40301, "forbidden")
        priority = self._param(headers, "x-priority", "priority", "prio", "p") or "default"
        if priority.lower() not in NTFY_PRIORITIES:
            return self._error(400, 40007, "invalid priority")
        try:
            actions = parse_ntfy_actions(self._param(headers, "x-actions", "actions", "action") or "") \
                if self._param(headers, "x-actions", "actions", "action") else []
        except ValueError as exc:
            return self._error(400, 40018, f"invalid request: actions invalid, {exc}")
        tags = self._param(headers, "x-tags", "tags", "tag", "ta")
        message = {"id": base64.b32encode(str(len(self.seen)).encode()).decode()[:12], "event": "message",
                   "topic": topic, "title": self._param(headers, "x-title", "title", "ti", "t"),
                   "priority": NTFY_PRIORITIES[priority.lower()], "tags": tags.split(",") if tags else [],
                   "click": self._param(headers, "x-click", "click"), "actions": actions,
                   "content_type": headers.get("content-type")}
        if len(body) > NTFY_MESSAGE_BYTES:
            message["attachment"] = {"name": "attachment.txt", "size": len(body)}
            message["message"] = "You received a file: attachment.txt"
        else:
            message["message"] = body.decode("utf-8")
        with self.lock:
            self.seen.append(message)
        return 200, "application/json", json.dumps(message).encode()

    @staticmethod
    def _error(status: int, code: int, text: str) -> tuple[int, str, bytes]:
        return status, "application/json", json.dumps({"code": code, "http": status, "error": text}).encode()


def _text_object(obj: Any, limit: int, types: tuple[str, ...]) -> bool:
    return (isinstance(obj, dict) and obj.get("type") in types and isinstance(obj.get("text"), str)
            and 0 < len(obj["text"]) <= limit and set(obj) <= {"type", "text", "emoji", "verbatim"})


def _valid_button(element: Any) -> bool:
    return (isinstance(element, dict) and element.get("type") == "button"
            and _text_object(element.get("text"), SLACK_BUTTON_TEXT, ("plain_text",))
            and len(str(element.get("action_id", ""))) <= SLACK_ACTION_ID
            and (element.get("url") is None or 0 < len(str(element["url"])) <= SLACK_URL)
            and element.get("style") in (None, "primary", "danger")
            and set(element) <= {"type", "text", "action_id", "url", "value", "style", "confirm",
                                 "accessibility_label"})


def _valid_block(block: Any) -> bool:
    if not isinstance(block, dict):
        return False
    if block.get("type") == "section":
        return _text_object(block.get("text"), SLACK_SECTION_TEXT, ("plain_text", "mrkdwn"))
    if block.get("type") == "actions":
        elements = block.get("elements")
        ids = [e.get("action_id") for e in elements or [] if isinstance(e, dict) and e.get("action_id")]
        return (isinstance(elements, list) and 0 < len(elements) <= SLACK_ELEMENTS
                and all(_valid_button(e) for e in elements) and len(ids) == len(set(ids)))
    return block.get("type") in ("divider", "header", "context")


class FakeSlackWebhook(Receiver):
    """A Slack incoming webhook at /services/T…/B…/<secret>: JSON with `text` and/or `blocks`; answers `ok`, or
    400 with Slack's plain-text error codes (invalid_payload, no_text, invalid_blocks), 404 no_service."""

    SECRET = "fakeSlackHookSecret0123"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/services/T0FAKE/B0FAKE/{self.SECRET}"

    def handle(self, path: str, headers: dict[str, str], body: bytes) -> tuple[int, str, bytes]:
        if path != f"/services/T0FAKE/B0FAKE/{self.SECRET}":
            return 404, "text/plain", b"no_service"
        try:
            payload = json.loads(body)
        except ValueError:
            return 400, "text/plain", b"invalid_payload"
        if not isinstance(payload, dict) or not headers.get("content-type", "").startswith("application/json"):
            return 400, "text/plain", b"invalid_payload"
        blocks = payload.get("blocks")
        if not payload.get("text") and not blocks:
            return 400, "text/plain", b"no_text"
        if blocks is not None and (not isinstance(blocks, list) or not all(_valid_block(b) for b in blocks)):
            return 400, "text/plain", b"invalid_blocks"
        with self.lock:
            self.seen.append(payload)
        return 200, "text/plain", b"ok"
