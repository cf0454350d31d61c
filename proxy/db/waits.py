"""What happens to an allowed statement before it is sent: counted against its rules' limits (exactly: the audit
writer checks every cap against the hits of every process writing the log, in the transaction that records the
statement), and held for a person or delayed as its rule (`hold:`, `delay:`) or its policies' `review:` say. A wait is
recorded before it starts and what became of it after; the agent's connection waits with it."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

from ..approvals import notify
from ..approvals import store as approvals
from ..approvals.gate import Choice, choose, refusal
from ..approvals.sqlcard import sql_card
from ..audit import store as audit
from ..errors import AuditError, NotFound
from ..policy.engine import Decision, Policy, PolicySet
from ..policy.limits import Charge
from ..policy.sql import decide, limits_of
from ..policy.sqlparse import Statement
from ..printable import shown
from . import record

log = logging.getLogger("goex_proxy.db")
#: Where a wait and its end are told, as the HTTP gate tells them: `run`'s output, also with --quiet, and the stderr
#: of an `exec --jail` that started its own gateway (else a held statement would be a silent hang there).
live = logging.getLogger("goex_proxy.live")

#: How often a waiting statement's state is read from the approvals table (a person may decide in another process).
POLL_SECONDS = 0.2
#: How many statements of one agent may wait at once in this gateway; past it they are refused, not queued, so that
#: an agent cannot bury the person under cards.
MOST_WAITING_PER_AGENT = 32


@dataclass(frozen=True)
class Admitted:
    """A statement whose row this module recorded: sent unless `refusal` says why not (its row already says so);
    `approval` is what became of its wait, for its outcome."""

    request_id: str
    refusal: str | None = None
    approval: str | None = None


class Waits:
    """The gateway's limits, holds and delays (`admit`), and the statements waiting now."""

    def __init__(self, gateway: Any) -> None:
        self.gateway = gateway            # config, writer, quiet, policies(), record_intent(), new_id()
        self.owner = approvals.this_process()
        self.per_agent: dict[str, int] = {}
        self.waiting: set[str] = set()
        self._announcing: set[asyncio.Task[None]] = set()
        self._reader: Any = None
        self._lock = threading.Lock()

    async def admit(self, session: Any, sql: str, params: list[Any] | None, statements: tuple[Statement, ...],
                    decision: Decision, policies: tuple[Policy, ...], planned: Any = None) -> Admitted | None:
        """Record and hold back an allowed statement as its limits and waits say; None when none applies (the session
        records and sends it as it does any other)."""
        if decision.effect != "allow" or not statements:
            return None
        review = PolicySet(policies).review_for(session.agent) if any(p.review for p in policies) else {}
        undo_class = planned.undo_class if planned is not None else record.undo_class(statements)
        hold = getattr(session, "hold", None)  # a held transaction's writes are undone exactly, by its rollback
        klass = ("exact" if hold is not None else undo_class.partition(":")[0]) if undo_class else None
        choice = choose(decision.wait, _waiting_rule(policies, decision), review, klass)
        if choice.action == "go" and not decision.count_limits:
            return None
        row = self._row(session, sql, params, statements, decision) | {"undo_class": undo_class}
        if hold is not None:
            row = hold.mark(row)
        if choice.action in ("hold", "delay"):
            return await self._wait(session, row, statements, decision, choice, klass or "read", sql, params)
        charge = _charge(policies, session.agent, decision.count_limits, time.time())
        over = await self.gateway.record_intent(row, charge)
        if over is not None:
            return await self._refuse(session, row, decision, over)
        self._say(decision.label, row, session.agent)
        if choice.action == "review":
            entry = {"request_id": row["id"], "ts": row["ts"], "agent": session.agent, "kind": "review",
                     "state": approvals.PASSED, "undo_class": klass, "why": choice.why, "owner": self.owner}
            self.gateway.writer.apply(lambda conn, writer: approvals.insert(conn, entry)).add_done_callback(approvals.log_failure)
        return Admitted(str(row["id"]))

    def _row(self, session: Any, sql: str, params: list[Any] | None, statements: tuple[Statement, ...],
             decision: Decision) -> dict[str, Any]:
        return record.statement_row(self.gateway.new_id(), session.database, session.agent, session.client, sql,
                                    params, statements, decision, session.scrub, self.gateway.config.max_body_bytes)

    async def _refuse(self, session: Any, row: dict[str, Any], decision: Decision, reason: str) -> Admitted:
        """Record a statement refused before it waited or was sent (a limit reached, too many waiting)."""
        denied = Decision("deny", reason, decision.rule)
        row = row | {"decision": "deny", "reason": session.scrub.text(reason), "undo_class": None}
        await self.gateway.record_intent(row | record.refused(reason, row["ts"]))
        self._say("deny", row, session.agent, denied.reason)
        return Admitted(str(row["id"]), refusal=reason)

    def _say(self, label: str, row: dict[str, Any], agent: str, reason: str | None = None, always: bool = False) -> None:
        """`run`'s line for the statement, as the session writes one (holds and their ends always get one)."""
        if always or not self.gateway.quiet:
            (live if always else log).info("%s %s %s %s %s%s", label, row["id"], agent, row["method"], row["url"],
                                           f": {shown(reason)}" if reason else "")

    async def _wait(self, session: Any, row: dict[str, Any], statements: tuple[Statement, ...], decision: Decision,
                    choice: Choice, klass: str, sql: str, params: list[Any] | None) -> Admitted:
        """Record the wait, wait, then let the statement go or refuse it."""
        assert choice.wait is not None
        agent = session.agent
        if self.per_agent.get(agent, 0) >= MOST_WAITING_PER_AGENT:
            return await self._refuse(session, row, decision, f"agent '{agent}' already has {MOST_WAITING_PER_AGENT} "
                                                               "statements waiting for a person; this one was not sent "
                                                               "(try again once they are decided)")
        self.per_agent[agent] = self.per_agent.get(agent, 0) + 1  # counted before the first await
        try:
            return await self._hold(session, row, statements, decision, choice, klass, sql, params)
        finally:
            self.per_agent[agent] -= 1

    async def _hold(self, session: Any, row: dict[str, Any], statements: tuple[Statement, ...], decision: Decision,
                    choice: Choice, klass: str, sql: str, params: list[Any] | None) -> Admitted:
        assert choice.wait is not None
        request_id, agent, now = str(row["id"]), session.agent, time.time()
        card = sql_card(session.database.name, row["url"], agent, row["method"], sql, params, klass, choice.why,
                        session.scrub)
        holds = choice.action == "hold"
        row = row | {"decision": choice.action,
                     "reason": f"{decision.reason}; {'held for approval' if holds else 'delayed'}: {choice.why}"}
        entry = {"ts": now, "agent": agent, "kind": choice.action, "state": approvals.HELD if holds else approvals.DELAYED,
                 "deadline": now + choice.wait.seconds, "on_timeout": choice.wait.on_timeout, "undo_class": klass,
                 "why": choice.why, "card": json.dumps(card), "owner": self.owner}
        try:
            await asyncio.wrap_future(self.gateway.writer.record_wait(self.gateway.class_later(row), entry))
        except AuditError as exc:
            from .session import Refused

            raise Refused("58000", f"goex-proxy could not record the statement, so it was not sent: {exc}") from None
        waits = "until a person decides" if holds else f"{choice.wait.seconds:g}s"
        self._say("held" if holds else "delayed", row, agent, f"({waits}) {card['summary']}", always=True)
        task = asyncio.get_running_loop().create_task(
            notify.announce(self.gateway, request_id, {**card, "agent": agent}, entry["deadline"], choice.action))
        self._announcing.add(task)  # a task nothing refers to may be collected before it ends
        task.add_done_callback(self._announcing.discard)
        self.waiting.add(request_id)
        try:
            settled = await self._until_decided(session, request_id, entry)
        except asyncio.CancelledError:  # the gateway is closing: nothing was sent, and the row says so
            with contextlib.suppress(Exception):
                await asyncio.wrap_future(self.gateway.writer.apply(
                    lambda conn, writer: approvals.stop_one(conn, writer, request_id, time.time())))
            raise
        finally:
            self.waiting.discard(request_id)
        return await self._end(session, row, statements, settled)

    async def _until_decided(self, session: Any, request_id: str, entry: dict[str, Any]) -> approvals.Settled:
        """Poll the approvals table until a person (in any process), the clock or the agent ends the wait."""
        began = time.monotonic()
        while True:
            await asyncio.sleep(POLL_SECONDS)
            if session.reader.at_eof() or session.writer.is_closing():
                return await self._settle(request_id, approvals.ABANDONED, "the agent's client closed its connection")
            if session.cancelled_at > began:
                return await self._settle(request_id, approvals.ABANDONED, "the agent cancelled the statement")
            if time.time() >= entry["deadline"]:
                sends = entry["kind"] == "delay" or entry["on_timeout"] == "send"
                return await self._settle(request_id, approvals.SENT if sends else approvals.TIMED_OUT, None)
            try:
                found = await asyncio.to_thread(self._read, request_id)
            except Exception as exc:  # a locked or unreadable database: the wait goes on, its deadline holds
                log.warning("could not read the approvals table: %s", exc)
                continue
            if found is not None and found["state"] not in approvals.WAITING:
                return approvals.Settled(str(found["state"]), False, found)

    async def _settle(self, request_id: str, to: str, reason: str | None) -> approvals.Settled:
        """End a wait ourselves, unless a person decided first: either way, the state it ends in."""
        return await asyncio.wrap_future(self.gateway.writer.apply(
            lambda conn, writer: approvals.settle(conn, request_id, to, approvals.WAITING, "goex-proxy", reason)))

    def _read(self, request_id: str) -> dict[str, Any] | None:
        """A waiting statement's approvals entry (in a worker thread: one read-only connection, one read at a time)."""
        with self._lock:
            if self._reader is None:
                self._reader = audit.connect(self.gateway.config, readonly=True)
            try:
                return approvals.get(self._reader, request_id)
            except NotFound:
                return None

    async def _end(self, session: Any, row: dict[str, Any], statements: tuple[Statement, ...],
                   settled: approvals.Settled) -> Admitted:
        """Send what was approved (or whose delay ran out) if the config and policies in force now still allow it,
        its limits included; else record why not."""
        request_id, entry = str(row["id"]), settled.entry
        reason, charged = None, None
        if settled.state in approvals.GOING:
            reason, charged = await self._still_allowed(session, request_id, statements, settled)
            if reason is None:
                said = "its time ran out" if entry.get("decided_by") == "goex-proxy" else f"by {entry.get('decided_by')}"
                self._say(settled.state, row, session.agent, f"{said}; sending it", always=True)
                return Admitted(request_id, approval=approvals.outcome(entry, charged))
            entry = {**entry, "state": approvals.REFUSED, "reason": reason}
            self.gateway.writer.apply(lambda conn, writer: approvals.refuse_after_release(
                conn, request_id, reason)).add_done_callback(approvals.log_failure)
        reason = reason or refusal(entry)
        self.gateway.record_outcome(request_id, record.refused(session.scrub.text(reason), row["ts"])
                                    | {"approval": approvals.outcome(entry)})
        self._say(str(entry["state"]), row, session.agent, f"not sent: {session.scrub.text(reason)}", always=True)
        return Admitted(request_id, refusal=reason)

    async def _still_allowed(self, session: Any, request_id: str, statements: tuple[Statement, ...],
                             settled: approvals.Settled) -> tuple[str | None, str | None]:
        """Decide the statement again under the config and policies in force now, and count it: (why it is refused,
        None) or (None, the charge as its row keeps it)."""
        policies = await self.gateway.policies()  # the config too, if it was edited meanwhile
        agent, name = session.agent, session.database.name
        if (why := self.gateway.revoked(session)) is not None:
            return f"{why[1].split('; ')[0]} while it waited; it was not sent", None
        now = time.time()
        again = decide(policies, name, agent, statements, now)[0]
        if again.effect != "allow":
            return f"no longer allowed when its wait ended: {again.reason}", None
        if settled.state == approvals.SENT:  # no person looked at it: a policy that now holds it stops it
            review = PolicySet(policies).review_for(agent)
            undo_class = settled.entry.get("undo_class")
            if choose(again.wait, _waiting_rule(policies, again), review,
                      None if undo_class in (None, "read") else undo_class).action == "hold":
                return ("the policies changed while it waited and now hold it for a person; it was not sent (run it "
                        "again to have it held)"), None
        if not again.count_limits:
            return None, None
        charge = _charge(policies, agent, again.count_limits, now)
        assert charge is not None
        refused = await asyncio.wrap_future(self.gateway.writer.apply(
            lambda conn, writer: approvals.release(conn, writer, request_id, charge)))
        if refused is not None:
            return refused, None
        return None, audit.charged(charge.keys, charge.at)

    def close(self) -> None:
        with self._lock:
            if self._reader is not None:
                self._reader.close()
                self._reader = None


def _waiting_rule(policies: tuple[Policy, ...], decision: Decision) -> str | None:
    """The name of the rule whose wait the decision has (of those that allowed the statements of a message)."""
    if decision.wait is None:
        return None
    keys = set((decision.rule or "").split(", "))
    return next((r.name for p in policies for r in p.sql_rules if r.key in keys and r.wait == decision.wait), None)


def _charge(policies: tuple[Policy, ...], agent: str, keys: tuple[str, ...], now: float) -> Charge | None:
    """What a statement counts against: its limited rules, with their caps (checked when its row is written)."""
    return Charge(agent, keys, now, limits_of(policies, keys)) if keys else None
