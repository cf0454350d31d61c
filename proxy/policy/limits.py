"""Per-rule, per-agent hit counters for rate and budget limits, seeded from the audit database on start."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass

from .engine import Limit


@dataclass(frozen=True)
class Charge:
    """What one allowed request counts against: its limited rules' keys, at the one time it was decided, and the
    enforced caps among them, which the audit writer checks again against every proxy's hits before recording it."""

    agent: str
    keys: tuple[str, ...]
    at: float
    caps: tuple[tuple[str, Limit], ...] = ()


class LimitCounters:
    """Sliding-window counts of allowed requests, kept in memory; persistence is the audit store's job."""

    def __init__(self) -> None:
        self._hits: dict[tuple[str, str], deque[float]] = {}

    def seed(self, hits: Iterable[tuple[str, str, float]]) -> None:
        """Load (rule key, agent, time) hits, oldest first."""
        for key, agent, ts in hits:
            self._hits.setdefault((key, agent), deque()).append(ts)

    def forget(self, keys: Iterable[str]) -> None:
        """Drop the in-memory hits of these rules (before seeding them again from storage)."""
        drop = set(keys)
        for pair in [p for p in self._hits if p[0] in drop]:
            del self._hits[pair]

    def _window(self, key: str, agent: str, per: float | None, now: float) -> deque[float]:
        hits = self._hits.get((key, agent))
        if hits is None:
            return deque()
        if per is not None:
            while hits and hits[0] <= now - per:
                hits.popleft()
        return hits

    def count(self, key: str, agent: str, per: float | None, now: float) -> int:
        return len(self._window(key, agent, per, now))

    def retry_after(self, key: str, agent: str, limit: Limit, now: float) -> float | None:
        hits = self._window(key, agent, limit.per, now)
        if limit.per is None or len(hits) < limit.count:
            return None
        return max(0.0, hits[-limit.count] + limit.per - now)

    def record(self, keys: Iterable[str], agent: str, now: float) -> None:
        for key in keys:
            self._hits.setdefault((key, agent), deque()).append(now)

    def take_back(self, charge: Charge) -> None:
        """Forget a charge the audit writer refused (another proxy's hits had reached a cap first)."""
        for key in charge.keys:
            hits = self._hits.get((key, charge.agent))
            if hits and charge.at in hits:
                hits.remove(charge.at)
