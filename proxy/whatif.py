"""`policy test --against-log`: replay recorded requests through a candidate policy set and list what would change."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

from .limits import LimitCounters
from .policy import Decision, PolicySet, decide
from .requestview import RequestView, canonical_path

#: Rules that decide before the policy does; their rows are not the policy's to change.
PRE_POLICY_RULES = ("identify", "request-target")


@dataclass(frozen=True)
class Change:
    """A recorded request whose decision would differ under the candidate policies."""

    id: str
    ts: float
    agent: str | None
    method: str
    url: str
    before: str
    after: str
    rule: str | None
    reason: str
    body_truncated: bool


def view_of_row(row: dict[str, Any]) -> RequestView:
    """Rebuild what the policy saw from an audit row (credential headers come back redacted)."""
    path, _, query = (row["path"] or "/").partition("?")
    headers = tuple((k.lower(), v) for k, v in json.loads(row["req_headers"] or "[]"))
    return RequestView(
        agent=row["agent"], method=(row["method"] or "").upper(), scheme=row["scheme"] or "https",
        host=(row["host"] or "").lower().rstrip("."), port=row["port"] or 443, path=canonical_path(path or "/") or path,
        query=tuple(parse_qsl(query, keep_blank_values=True)), headers=headers, body=row["req_body"] or b"",
    )


def replay(rows: Iterable[dict[str, Any]], policies: PolicySet) -> tuple[int, list[Change]]:
    """Decide every row again, oldest first, counting limits as they would have counted; return (rows seen, changes)."""
    counters = LimitCounters()
    changes: list[Change] = []
    seen = 0
    for row in rows:
        if row["method"] == "CONNECT" or row["rule"] in PRE_POLICY_RULES or row["decision"] == "error":
            continue
        seen += 1
        view = view_of_row(row)
        d: Decision = decide(view, policies, row["ts"], counters)
        if d.effect == "allow" and view.agent:
            counters.record(d.count_limits, view.agent, row["ts"])
        before = row["decision"] or "?"
        if d.label != before:
            truncated = (row["req_body_size"] or 0) > len(row["req_body"] or b"")
            changes.append(Change(row["id"], row["ts"], row["agent"], row["method"], row["url"], before, d.label,
                                  d.rule, d.report or d.reason, truncated))
    return seen, changes
