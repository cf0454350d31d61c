"""The pure choice of whether a request waits: its rule's `hold:`/`delay:` and its policies' `review:` for its class."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ..policy.engine import Wait, strictest


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
