"""The open client connections, as `limits:` counts them: who each belongs to, what it is doing, and which to close."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..durations import format_duration
from .clientlimits import ClientLimits


@dataclass
class Conn:
    """One client connection: its peer address, the agent it carries (once a request names one), the requests and
    streams it has in flight, and since when it has had none."""

    key: str
    address: str
    agent: str | None = None
    in_flight: set[str] = field(default_factory=set)
    quiet_since: float = 0.0
    answered: bool = False  # a request on it was answered: it waits for the next one (idle), not for a first one

    def deadline(self, limits: ClientLimits) -> tuple[float, str] | None:
        """When this connection is closed if nothing happens, and which setting says so (None: never, by us)."""
        if self.in_flight:
            return None
        if self.answered:
            return self.quiet_since + limits.idle_timeout, "limits.idle_timeout"
        return self.quiet_since + limits.header_timeout, "limits.header_timeout"


@dataclass(frozen=True)
class Admission:
    """What opening a connection does: whether it is kept (else why not), and which older ones make room for it."""

    admitted: bool
    evict: tuple[str, ...] = ()
    why: str = ""


class ConnectionTable:
    """Counts connections in total, per agent, and per peer address while no request has named an agent. A new
    connection past the total or its address's share of unidentified ones closes the oldest unidentified connection
    (of its address first): one client holding many silent connections cannot lock anyone else out, since it loses
    its own first. Identified connections are closed only by their agent's cap and the timeouts."""

    def __init__(self, limits: ClientLimits, total: int) -> None:
        self.limits = limits
        self.total = total
        self.conns: dict[str, Conn] = {}
        self.unidentified: dict[str, None] = {}  # oldest first
        self.unidentified_by_address: dict[str, dict[str, None]] = {}
        self.per_agent: dict[str, int] = {}

    def open(self, key: str, address: str, now: float) -> Admission:
        evict: list[str] = []
        mine = self.unidentified_by_address.get(address, {})
        if len(mine) >= self.limits.max_unidentified_per_address:
            evict.append(next(iter(mine)))
        if len(self.conns) - len(evict) >= self.total:
            oldest = next((k for k in self.unidentified if k not in evict), None)
            if oldest is None:
                return Admission(False, why=f"{len(self.conns)} connections are open, each carrying an agent's "
                                            f"requests (limits.max_connections is {self.total})")
            evict.append(oldest)
        for old in evict:
            self.close(old)
        self.conns[key] = Conn(key, address, quiet_since=now)
        self.unidentified[key] = None
        self.unidentified_by_address.setdefault(address, {})[key] = None
        return Admission(True, tuple(evict))

    def identify(self, key: str, agent: str) -> bool:
        """Count the connection as `agent`'s from its first request naming one; False (and not counted) when that
        agent already has `max_connections_per_agent` open."""
        conn = self.conns.get(key)
        if conn is None or conn.agent is not None:
            return True
        if self.per_agent.get(agent, 0) >= self.limits.max_connections_per_agent:
            return False
        self._forget_unidentified(conn)
        conn.agent = agent
        self.per_agent[agent] = self.per_agent.get(agent, 0) + 1
        return True

    def begin(self, key: str, what: str) -> None:
        """A request (or a WebSocket or TCP stream) started on the connection: no timeout applies while it runs."""
        if (conn := self.conns.get(key)) is not None:
            conn.in_flight.add(what)

    def end(self, key: str, what: str, now: float, answered: bool = True) -> None:
        """It ended; once none is left, the idle timeout runs (the header timeout, if nothing was answered yet)."""
        if (conn := self.conns.get(key)) is not None:
            conn.in_flight.discard(what)
            conn.answered = conn.answered or answered
            if not conn.in_flight:
                conn.quiet_since = now

    def touch(self, key: str, now: float) -> None:
        """Something still happens on the connection (an answer is being written): its timeout starts again."""
        if (conn := self.conns.get(key)) is not None:
            conn.quiet_since = now

    def awaiting(self, key: str, now: float) -> None:
        """A tunnel was opened: its first request's head is due within the header timeout."""
        if (conn := self.conns.get(key)) is not None:
            conn.answered = False
            conn.quiet_since = now

    def close(self, key: str) -> None:
        conn = self.conns.pop(key, None)
        if conn is None:
            return
        if conn.agent is None:
            self._forget_unidentified(conn)
        else:
            self.per_agent[conn.agent] -= 1
            if not self.per_agent[conn.agent]:
                del self.per_agent[conn.agent]

    def overdue(self, now: float) -> list[tuple[str, str]]:
        """The connections past their deadline, with why; one pass over all of them."""
        out = []
        for conn in self.conns.values():
            due = conn.deadline(self.limits)
            if due is not None and now >= due[0]:
                limit = self.limits.idle_timeout if due[1] == "limits.idle_timeout" else self.limits.header_timeout
                what = "idle between requests" if conn.answered else "without a complete request head"
                out.append((conn.key, f"{what} for {format_duration(limit)} ({due[1]})"))
        return out

    def _forget_unidentified(self, conn: Conn) -> None:
        self.unidentified.pop(conn.key, None)
        mine = self.unidentified_by_address.get(conn.address)
        if mine is not None:
            mine.pop(conn.key, None)
            if not mine:
                del self.unidentified_by_address[conn.address]
