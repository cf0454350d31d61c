"""Notifications of waiting requests: a card with one-time approve/deny links, to each configured channel."""

from __future__ import annotations

from typing import Any


async def announce(state: Any, request_id: str, card: dict[str, Any], deadline: float, kind: str) -> None:
    """Tell every configured channel that a request waits (not yet built: nothing is sent)."""
    return None
