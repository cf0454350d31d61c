"""The pure choice of whether a request waits (its rule's `hold:`/`delay:` and its policies' `review:` for its class),
and what the agent is told when a wait ends without the request being sent."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from ..durations import format_duration
from ..policy.engine import Wait, strictest
from . import store as approvals
from .store import STOPPED_REASON


@dataclass(frozen=True)
class Choice:
    """What happens to an allowed request before it is sent: `go` (nothing), `review` (sent at once, queued for a
    person to look at), `hold` or `delay` (it waits, as `wait` says); `why` says which rule or class chose it."""

    action: Literal["go", "review", "hold", "delay"]
    wait: Wait | None = None
    why: str = ""


GO = Choice("go")


def choose(rule_wait: Wait | None, rule_name: str | None, review: dict[str, Wait | None],
           undo_class: str | None) -> Choice:
    """The strictest of what the allowing rule says and what `review:` says for the request's undo class (None for
    a read, which changes nothing and is never gated by class)."""
    by_class = review.get(undo_class) if undo_class is not None else None
    classed = undo_class is not None and undo_class in review
    wait = strictest((rule_wait, by_class))
    if wait is None:
        return Choice("review", why=f"{undo_class}: undo can take it back") if classed else GO
    if wait is rule_wait:
        return Choice(wait.kind, wait, f"rule '{rule_name}' says {wait.describe()}")
    return Choice(wait.kind, wait, f"{undo_class}: review says {wait.describe()}")


def refusal(entry: dict[str, Any]) -> str:
    """What the agent is told, and the audit row keeps, when a wait ends without the request being sent."""
    state, who = entry["state"], f" by {entry['decided_by']}" if entry.get("decided_by") else ""
    because = f": {entry['reason']}" if entry.get("reason") else ""
    if state == approvals.DENIED:
        return f"held for approval and denied{who}{because}"
    if state == approvals.CANCELLED:
        return f"cancelled{who} during its delay{because}"
    if state == approvals.TIMED_OUT:
        waited = format_duration(max(1, round(entry["deadline"] - entry["ts"])))
        return f"held for approval; nobody approved it within {waited}, so it was denied"
    if state == approvals.STOPPED:
        return STOPPED_REASON
    if state == approvals.ABANDONED and entry.get("reason"):
        return f"{entry['reason']} while it waited; it was not sent"
    if state == approvals.ABANDONED:
        return "the agent's client closed the connection while the request waited; it was not sent"
    return f"the request's wait ended as {state}{because}; it was not sent"
