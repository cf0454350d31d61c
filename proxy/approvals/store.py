"""The approvals table: requests that wait for a person or a delay, or passed to be reviewed, and their one-time links.

Every change of state is one conditional UPDATE (`settle`), so that two people, a link and a timeout deciding the same
request at once leave exactly one decision: the first committed wins and the others are told what it was.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import secrets
import sqlite3
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from ..audit import store as audit
from ..audit.writer import AuditWriter
from ..errors import GoexError, NotFound
from ..policy.limits import Charge

log = logging.getLogger("goex_proxy.approvals")

HELD = "held"
DELAYED = "delayed"
#: States of a request still waiting: a person (held) or its delay (delayed).
WAITING = (HELD, DELAYED)
APPROVED = "approved"
SENT = "sent"              # a delay ran out (or a hold with `on_timeout: send` timed out): sent without a person
#: States after which the request goes to the upstream.
GOING = (APPROVED, SENT)
DENIED = "denied"
TIMED_OUT = "timed out"
CANCELLED = "cancelled"
STOPPED = "stopped"        # its proxy stopped while it waited: nothing was sent
#: What the audit row of a request that waited says, when its proxy stopped before anyone decided.
STOPPED_REASON = "goex-proxy stopped while the request waited; it was not sent"
ABANDONED = "abandoned"    # the agent's client closed the connection while it waited: nothing was sent
PASSED = "passed"          # sent at once because undo can take it back; queued for review
REFUSED = "refused"        # let go, then refused as the policy or limits stood when its wait ended: not sent

#: Which state each person's action leads to, and from which states it may.
ACTIONS = {"approve": (APPROVED, WAITING), "deny": (DENIED, WAITING), "cancel": (CANCELLED, (DELAYED,))}


class ApprovalError(GoexError):
    """An approval that cannot be given: the request is not waiting, or a link is not valid."""


@dataclass(frozen=True)
class Settled:
    """The state a request is in after an attempt to change it, and whether that attempt made the change."""

    state: str
    changed: bool
    entry: dict[str, Any]


def this_process() -> str:
    """This process as an approvals owner: its pid and start time (so that a reused pid is not taken for it)."""
    return f"{os.getpid()}:{_started(os.getpid())}"


def _started(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            return f.read().rpartition(")")[2].split()[19]
    except (OSError, IndexError):
        return ""


def alive(owner: str | None) -> bool:
    """Whether the proxy process that owns a waiting request still runs."""
    if not owner or ":" not in owner:
        return False
    pid, _, started = owner.partition(":")
    return pid.isdigit() and _started(int(pid)) == started and started != ""


def _entry(cursor: sqlite3.Cursor, found: tuple[Any, ...] | None) -> dict[str, Any] | None:
    return dict(zip([d[0] for d in cursor.description], found, strict=True)) if found else None


def get(conn: sqlite3.Connection, request_id: str) -> dict[str, Any]:
    cursor = conn.execute("SELECT * FROM approvals WHERE request_id = ?", (request_id,))
    entry = _entry(cursor, cursor.fetchone())
    if entry is None:
        raise NotFound(f"request {request_id!r} has not waited for approval or been queued for review")
    return entry


def settle(conn: sqlite3.Connection, request_id: str, to: str, from_states: Iterable[str], by: str | None = None,
           reason: str | None = None, now: float | None = None) -> Settled:
    """Move a request to `to` if it is in one of `from_states`; either way, the state it ends in. The caller commits
    (or runs it inside the audit writer's transaction)."""
    states = tuple(from_states)
    cursor = conn.execute(
        f"UPDATE approvals SET state = ?, decided_by = ?, decided_at = ?, reason = ? WHERE request_id = ? "
        f"AND state IN ({', '.join('?' * len(states))})",
        (to, by, now or time.time(), reason, request_id, *states))
    entry = get(conn, request_id)
    return Settled(str(entry["state"]), cursor.rowcount == 1, entry)


def decide(conn: sqlite3.Connection, request_id: str, action: str, by: str, reason: str | None = None) -> Settled:
    """A person's `approve`, `deny` or `cancel`, committed; an ApprovalError says why it could not be done."""
    to, from_states = ACTIONS[action]
    with conn:
        conn.execute("BEGIN IMMEDIATE")
        entry = get(conn, request_id)
        if entry["state"] in WAITING and not alive(entry["owner"]):
            raise ApprovalError(f"request {request_id} waited in a goex-proxy that is no longer running; it was not "
                                "sent and cannot be now (the proxy records it as stopped when it starts again)")
        settled = settle(conn, request_id, to, from_states, by, reason)
    if not settled.changed:
        raise ApprovalError(_not_now(request_id, action, settled.entry))
    return settled


def _not_now(request_id: str, action: str, entry: dict[str, Any]) -> str:
    state = entry["state"]
    if action == "cancel" and state == HELD:
        return f"request {request_id} is held for approval, not delayed; deny it instead"
    if state in WAITING:
        return f"request {request_id} is {state}; it cannot be {action}d"
    who = f" by {entry['decided_by']}" if entry.get("decided_by") else ""
    when = time.strftime(" at %H:%M:%S", time.localtime(entry["decided_at"])) if entry.get("decided_at") else ""
    if entry["kind"] == "review":
        return f"request {request_id} did not wait: it passed at once (undo can take it back); see `goex-proxy review`"
    return f"request {request_id} is no longer waiting: it was {state}{who}{when}"


def pending(conn: sqlite3.Connection) -> list[dict[str, Any]]:
    """The requests waiting now (held, then delayed), oldest first, each with `live`: whether its proxy still runs."""
    cursor = conn.execute("SELECT * FROM approvals WHERE state IN (?, ?) ORDER BY ts, request_id", WAITING)
    rows = [e for found in cursor.fetchall() if (e := _entry(cursor, found)) is not None]
    for row in rows:
        row["live"] = alive(row["owner"])
    return rows


def review_queue(conn: sqlite3.Connection, limit: int | None = 50, include_seen: bool = False) -> list[dict[str, Any]]:
    """Requests that went out without a person (passed because undo can take them back, or sent when their delay
    ran out), newest first; those marked seen only with `include_seen`."""
    seen = "" if include_seen else "AND reviewed_at IS NULL"
    cursor = conn.execute(f"SELECT * FROM approvals WHERE ((kind = 'review' AND state = ?) OR state = ?) {seen} "
                          f"ORDER BY ts DESC, request_id DESC" + (f" LIMIT {int(limit)}" if limit else ""),
                          (PASSED, SENT))
    return [e for found in cursor.fetchall() if (e := _entry(cursor, found)) is not None]


def mark_seen(conn: sqlite3.Connection, request_ids: Iterable[str], by: str) -> list[str]:
    """Mark these reviewed; returns the ids that were in the review queue (and now are not)."""
    done = []
    with conn:
        conn.execute("BEGIN IMMEDIATE")
        for request_id in request_ids:
            cursor = conn.execute("UPDATE approvals SET reviewed_at = ?, reviewed_by = ? WHERE request_id = ? AND "
                                  "reviewed_at IS NULL AND ((kind = 'review' AND state = ?) OR state = ?)",
                                  (time.time(), by, request_id, PASSED, SENT))
            if cursor.rowcount:
                done.append(request_id)
    return done


def outcome(entry: dict[str, Any], charged: str | None = None) -> str:
    """What became of a wait, as the request's audit row keeps it (`approval`, under its outcome hash)."""
    kept = {k: entry.get(k) for k in ("kind", "state", "decided_by", "decided_at", "reason", "undo_class")}
    kept["waited_since"] = entry.get("ts")
    if charged or entry.get("charged"):
        kept["charged"] = json.loads(charged or entry["charged"])
    return json.dumps({k: v for k, v in kept.items() if v is not None}, separators=(",", ":"))


def release(conn: Any, writer: AuditWriter, request_id: str, charge: Charge) -> str | None:
    """Under the writer's lock: refuse if another proxy's hits reached a cap meanwhile, else store the hits and the
    charge (the row's outcome will carry it)."""
    refused = writer.over_cap(charge)
    if refused is not None:
        return refused
    conn.executemany("INSERT INTO limit_hits (key, agent, ts, request_id) VALUES (?, ?, ?, ?)",
                     [(key, charge.agent, charge.at, request_id) for key in charge.keys])
    conn.execute("UPDATE approvals SET charged = ? WHERE request_id = ?",
                 (audit.charged(charge.keys, charge.at), request_id))
    return None


def stop_one(conn: Any, writer: AuditWriter, request_id: str, ended: float, reason: str = STOPPED_REASON
             ) -> Settled | None:
    """Record one wait ended by goex-proxy, not by a person or its delay (its proxy stopping, or its row not anchored):
    its state and its row's outcome, `reason` (nothing was sent)."""
    settled = settle(conn, request_id, STOPPED, WAITING, "goex-proxy", reason)
    if not settled.changed:
        return None  # decided just now, or never written: its own path answers it
    writer.update_outcome(request_id, {"error": reason, "ended": ended, "approval": outcome(settled.entry)})
    return settled


# One-time links -------------------------------------------------------------------------------------------------


def insert(conn: Any, entry: dict[str, Any]) -> None:
    """A new entry of the approvals table (a request or statement held, delayed or passed under review)."""
    conn.execute(f"INSERT OR IGNORE INTO approvals ({', '.join(entry)}) VALUES ({', '.join('?' * len(entry))})",
                 tuple(entry.values()))


def refuse_after_release(conn: Any, request_id: str, reason: str) -> None:
    """A request let go by a person or its delay but refused as it went (no longer allowed, over its limit): the
    queue must not say it was sent."""
    conn.execute("UPDATE approvals SET state = ?, reason = ? WHERE request_id = ?", (REFUSED, reason, request_id))


def log_failure(future: Any) -> None:
    """Say so when a change to the approvals table the writer carried out failed (nobody waits for it)."""
    if future.exception() is not None:
        log.error("could not update the approvals table: %s", future.exception())


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def make_links(conn: sqlite3.Connection, request_id: str, actions: Iterable[str], expires: float) -> dict[str, str]:
    """A fresh token per action for this request; only their hashes are stored. The caller commits."""
    out = {}
    for action in actions:
        token = secrets.token_urlsafe(32)
        conn.execute("INSERT INTO approval_links (token_sha256, request_id, action, expires) VALUES (?, ?, ?, ?)",
                     (_digest(token), request_id, action, expires))
        out[action] = token
    return out


def peek_link(conn: sqlite3.Connection, token: str, now: float | None = None) -> tuple[str, dict[str, Any]]:
    """The action a link would take and its request, if the link is valid now (it is not used up by looking)."""
    found = conn.execute("SELECT request_id, action, expires, used_at FROM approval_links WHERE token_sha256 = ?",
                         (_digest(token),)).fetchone()
    if found is None:
        raise ApprovalError("this link is not valid")
    request_id, action, expires, used_at = found
    if used_at is not None:
        raise ApprovalError(f"this link was already used (at {time.strftime('%H:%M:%S', time.localtime(used_at))}); "
                            "each link works once")
    if (now or time.time()) >= expires:
        raise ApprovalError("this link has expired")
    return str(action), get(conn, str(request_id))


def use_link(conn: sqlite3.Connection, token: str, by: str) -> Settled:
    """Carry out a link's action, once: the link and its siblings are used up whatever the outcome."""
    with conn:
        conn.execute("BEGIN IMMEDIATE")
        action, entry = peek_link(conn, token)
        conn.execute("UPDATE approval_links SET used_at = ? WHERE request_id = ? AND used_at IS NULL",
                     (time.time(), entry["request_id"]))
    return decide(conn, str(entry["request_id"]), action, by)
