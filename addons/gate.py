"""Stage 7, gate: an allowed request waits for a person (hold) or a delay when its rule or its undo class says so;
the wait is recorded before it starts, and what became of it after. Other requests never wait behind it."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any

from mitmproxy import http
from mitmproxy.connection import ConnectionState

from goex_proxy.addons import flowmeta, livelog, replies, rows
from goex_proxy.addons.decide import header_pairs, methods_run_as
from goex_proxy.addons.failclosed import fail_closed
from goex_proxy.addons.identify import token_digest
from goex_proxy.addons.preimage import Preimage
from goex_proxy.addons.state import ProxyState
from goex_proxy.approvals import notify
from goex_proxy.approvals import store as approvals
from goex_proxy.approvals.card import card as make_card
from goex_proxy.approvals.gate import STOPPED_REASON, Choice, choose, refusal
from goex_proxy.approvals.store import release as _release
from goex_proxy.approvals.store import stop_one as _stop_one
from goex_proxy.audit import layout
from goex_proxy.audit import store as audit
from goex_proxy.audit.writer import AuditWriter
from goex_proxy.durations import format_duration
from goex_proxy.errors import AuditError
from goex_proxy.policy.engine import Decision, decide
from goex_proxy.policy.limits import Charge
from goex_proxy.undo.plan import FIDELITY_ORDER, SAFE_METHODS, Exchange, UndoRule, expected_class

log = logging.getLogger(__name__)

#: How often the waiting requests' states are read from the approvals table (a person may decide in another process).
POLL_SECONDS = 0.2
#: How many requests of one agent may wait at once (in this proxy); past it they are refused, not queued, so that
#: an agent cannot bury the person under cards.
MOST_WAITING_PER_AGENT = 32


#: What ends a wait whose row could not be anchored (it was refused, and nothing was sent).
UNANCHORED_WAIT = "refused: its row could not be anchored in the audit log; it was not sent"


@dataclass
class _Waiter:
    flow: http.HTTPFlow
    deadline: float
    kind: str
    on_timeout: str
    ending: bool = False  # the proxy is ending the wait itself (timeout, client gone)
    done: asyncio.Future[approvals.Settled] = field(default_factory=lambda: asyncio.get_running_loop().create_future())


class Gate:
    """Holds or delays what its rule (`hold:`, `delay:`) or its policies' `review:` says, by the undo class the
    request will have; queues what passed under `review:` for a person to look at afterwards."""

    def __init__(self, state: ProxyState) -> None:
        self.state = state
        self.owner = approvals.this_process()
        self.waiting: dict[str, _Waiter] = {}
        self.per_agent: dict[str, int] = {}  # how many requests of each agent wait (or are about to)
        self.announcing: set[asyncio.Task[None]] = set()
        self._poller: asyncio.Task[None] | None = None
        self._reader: Any = None  # a read-only connection to the audit database, used off the event loop
        state.before_close.append(self.stop)

    def running(self) -> None:
        """Requests a stopped proxy left waiting were never sent: record them so (and free their cards)."""
        if self.state.writer is not None:
            self.state.writer.apply(_recover_stopped).add_done_callback(approvals.log_failure)

    @fail_closed("gate")
    def request(self, flow: http.HTTPFlow) -> Coroutine[Any, Any, None] | None:
        """A request a person is to see, or that is to wait, is held (the coroutine, which mitmproxy awaits); any other
        goes on at once."""
        if not flow.live or flow.response is not None or flow.error is not None or flowmeta.recorded(flow):
            return None
        d = flowmeta.decision(flow)
        if d is None or d.effect != "allow" or flowmeta.undo_of(flow) is not None:
            return None
        review = self.state.policies.review_for(flowmeta.agent(flow))
        if d.wait is None and not review:
            return None
        exchange = self._exchange(flow)
        runs_as = methods_run_as(flow)
        undo_class, rule = self._worst_class(exchange, runs_as)
        flowmeta.set_exchange(flow, exchange)  # the outcome row's class reads the request from it again
        choice = choose(d.wait, d.rule.partition("/")[2] if d.rule else None, review, undo_class)
        if choice.action == "review":
            flowmeta.set_review(flow, str(undo_class), choice.why)
        elif choice.action in ("hold", "delay"):
            return self._held(d, choice, undo_class, rule, exchange, runs_as, flow)
        return None

    @fail_closed("gate")
    async def _held(self, d: Decision, choice: Choice, undo_class: str | None, rule: UndoRule | None,
                    exchange: Exchange, runs_as: tuple[str, ...], flow: http.HTTPFlow) -> None:
        """Hold the request, unless its agent already has as many waiting as it may: counted and checked in one step,
        before the first await."""
        agent = str(flowmeta.agent(flow))
        if self.per_agent.get(agent, 0) >= MOST_WAITING_PER_AGENT:
            if (charge := flowmeta.charge(flow)) is not None:  # not sent: it counts against no limit
                self.state.limits.take_back(charge)
                flowmeta.clear_charge(flow)
            replies.refuse(flow, Decision("deny", f"agent '{agent}' already has {MOST_WAITING_PER_AGENT} requests "
                                                  "waiting for a person; this one was not sent (try again once "
                                                  "they are decided)", d.rule))
            return
        self.per_agent[agent] = self.per_agent.get(agent, 0) + 1
        try:
            await self._hold(flow, d, choice, undo_class, rule, exchange, runs_as)
        finally:
            self.per_agent[agent] -= 1

    async def _hold(self, flow: http.HTTPFlow, d: Decision, choice: Choice, undo_class: str | None,
                    rule: UndoRule | None, exchange: Exchange, runs_as: tuple[str, ...]) -> None:
        """Record the wait, wait, then let the request go or answer it; never leave the flow intercepted."""
        entry = await self._begin(flow, d, choice, undo_class or "read", make_card(
            exchange, undo_class or "read (changes nothing)", rule, choice.why, self.state.scrubber, runs_as[1:]))
        try:
            await self._end(flow, d, await self._until_decided(flow, entry))
        except BaseException:  # nothing is sent; the wait must not outlive the failure (fail_closed answers 502)
            self._abandon(entry["request_id"], "goex-proxy failed while the request waited; it was not sent")
            raise
        finally:
            flow.resume()

    def _worst_class(self, exchange: Exchange, methods: tuple[str, ...]) -> tuple[str | None, UndoRule | None]:
        """The worst undo class the request has under any method it may be run as (None: every one is a read)."""
        worst: tuple[int, str, UndoRule | None] | None = None
        for method in methods:
            if method in SAFE_METHODS:
                continue
            as_method = exchange if method == exchange.method else dataclasses.replace(exchange, method=method)
            found, rule = expected_class(self.state.undo_rules, as_method)
            rank = FIDELITY_ORDER.index(found)
            if worst is None or rank > worst[0]:
                worst = (rank, found, rule)
        return (worst[1], worst[2]) if worst else (None, None)

    def _exchange(self, flow: http.HTTPFlow) -> Exchange:
        req = flow.request
        pre = flowmeta.preimage(flow) or (None, (), None)
        return Exchange(req.method, flowmeta.request_url(req), header_pairs(req.headers), req.get_content(strict=False),
                        None, (), None, pre[0], pre[1], pre[2])

    async def _begin(self, flow: http.HTTPFlow, d: Decision, choice: Choice, undo_class: str,
                     card: dict[str, Any]) -> dict[str, Any]:
        """Record the request and its wait in one transaction, before it waits; tell the person where they are."""
        assert choice.wait is not None
        writer = self.state.audit()
        charge = flowmeta.charge(flow)
        if charge is not None:  # counted only once it is sent
            self.state.limits.take_back(charge)
            flowmeta.clear_charge(flow)
        now = time.time()
        row = rows.request_row(self.state, flow)
        row["decision"] = choice.action
        row["reason"] = f"{d.reason}; {'held for approval' if choice.action == 'hold' else 'delayed'}: {choice.why}"
        entry = {"ts": now, "agent": row["agent"], "kind": choice.action,
                 "state": approvals.HELD if choice.action == "hold" else approvals.DELAYED,
                 "deadline": now + choice.wait.seconds, "on_timeout": choice.wait.on_timeout, "undo_class": undo_class,
                 "why": choice.why, "card": json.dumps(card), "owner": self.owner}
        try:
            await asyncio.wrap_future(writer.record_wait(row, entry))
        except AuditError:
            # Its row and entry may be committed, not anchored: refused, the entry must not wait for a person (who
            # would approve a request nobody holds). Ended with its row, in the writer's next batch, if it is there.
            request_id = str(row["id"])
            writer.apply(lambda conn, w: _stop_one(conn, w, request_id, time.time(), UNANCHORED_WAIT)
                         ).add_done_callback(approvals.log_failure)
            raise
        flowmeta.set_recorded(flow, "intent")
        flow.intercept()
        request_id = str(row["id"])
        waits = "until a person decides" if choice.action == "hold" else f"{format_duration(choice.wait.seconds)}"
        livelog.event("held" if choice.action == "hold" else "delayed", request_id, row["agent"],
                      f"({waits}) {card['summary']}")
        task = asyncio.get_running_loop().create_task(
            notify.announce(self.state, request_id, {**card, "agent": row["agent"]}, entry["deadline"], choice.action))
        self.announcing.add(task)  # a task nothing refers to may be collected before it ends
        task.add_done_callback(self.announcing.discard)
        return {"request_id": request_id, **entry}

    async def _until_decided(self, flow: http.HTTPFlow, entry: dict[str, Any]) -> approvals.Settled:
        request_id = entry["request_id"]
        waiter = _Waiter(flow, entry["deadline"], entry["kind"], entry["on_timeout"])
        self.waiting[request_id] = waiter
        if self._poller is None or self._poller.done():
            self._poller = asyncio.get_running_loop().create_task(self._poll())
        try:
            return await waiter.done
        finally:
            self.waiting.pop(request_id, None)

    async def _end(self, flow: http.HTTPFlow, d: Decision, settled: approvals.Settled) -> None:
        """Send what was approved (or whose delay ran out) if the policies in force now still allow it, its limits
        included; answer the rest 403."""
        entry, request_id = settled.entry, flowmeta.request_id(flow)
        reason, charged = None, None
        if settled.state in approvals.GOING:
            reason = await self._unchanged(flow)
        if reason is None and settled.state in approvals.GOING:
            reason, charged = await self._still_allowed(flow, d, settled)
        if reason is None and settled.state in approvals.GOING:
            flowmeta.set_approval(flow, approvals.outcome(entry, charged))
            who = f" by {entry['decided_by']}" if entry.get("decided_by") else ""
            said = "its time ran out" if entry.get("decided_by") == "goex-proxy" else who.strip()
            livelog.event(settled.state, request_id, flowmeta.agent(flow), f"{said}; sending it")
            return
        if entry["state"] in approvals.GOING:  # let go, then refused: the queue and the row must not say sent
            entry = {**entry, "state": approvals.REFUSED, "reason": reason}
            self.state.audit().apply(lambda conn, writer: approvals.refuse_after_release(
                conn, request_id, reason)).add_done_callback(approvals.log_failure)
        reason = reason or refusal(entry)
        flowmeta.set_approval(flow, approvals.outcome(entry))
        livelog.event(entry["state"] if entry["state"] not in approvals.GOING else "refused", request_id,
                      flowmeta.agent(flow), f"not sent: {self.state.scrubber.text(reason)}")
        denial = Decision("deny", reason, d.rule)
        flowmeta.set_decision(flow, denial)
        replies.denied(flow, denial)

    async def _unchanged(self, flow: http.HTTPFlow) -> str | None:
        """Why the request must not go after all, if the resource its pre-image was read of has changed while it
        waited (undo would put back the older state, losing the newer one); the row keeps the pre-image it has."""
        kept = flowmeta.preimage(flow)
        if kept is None or kept[0] == 0:  # none was read, or the read failed: undo has no pre-image to go stale
            return None
        reading = Preimage(self.state).read_again(flow)
        if reading is not None:
            await reading
        fresh = flowmeta.preimage(flow)
        flowmeta.set_preimage(flow, *kept)
        if fresh is None or flow.response is not None:
            return None if flow.response is None else "its pre-image could not be read again when its wait ended"
        if (fresh[0], fresh[2]) != (kept[0], kept[2]):
            return ("the resource changed while the request waited (it no longer reads as it did when the request "
                    "arrived), so undo could not put it back as it was; it was not sent: look at it again")
        return None

    async def _still_allowed(self, flow: http.HTTPFlow, d: Decision, settled: approvals.Settled
                             ) -> tuple[str | None, str | None]:
        """Decide the request again under the policies and limits in force now (they may have changed while it
        waited; one that now holds it for a person stops it unless a person let it go), and count it: (why it is
        refused, None) or (None, the charge as its row keeps it)."""
        view, agent = flowmeta.view(flow), flowmeta.agent(flow)
        assert self.state.config is not None
        writer = self.state.audit()
        if view is None or agent is None or agent not in self.state.config.agents:
            return "its agent was removed from the config while the request waited; it was not sent", None
        current = self.state.config.agents[agent].token.reveal()
        if current is None or token_digest(current) != flowmeta.token_digest(flow):
            return "its agent's token was changed while the request waited; it was not sent", None
        now = time.time()
        again = decide(view, self.state.policies, now, self.state.limits)
        if settled.state == approvals.SENT and again.effect == "allow":  # no person looked at it
            undo_class = settled.entry.get("undo_class")
            now_says = choose(again.wait, again.rule, self.state.policies.review_for(agent),
                              None if undo_class in (None, "read") else undo_class)
            if now_says.action == "hold":
                return ("the policies changed while it waited and now hold it for a person; it was not sent (send it "
                        "again to have it held)"), None
        if again.effect != "allow":
            return f"no longer allowed when its wait ended: {again.reason}", None
        if not again.count_limits:
            return None, None
        self.state.limits.record(again.count_limits, agent, now)
        charge = Charge(agent, again.count_limits, now, self.state.policies.enforced_limits(again.count_limits))
        request_id = flowmeta.request_id(flow)
        refused = await asyncio.wrap_future(writer.apply(
            lambda conn, writer: _release(conn, writer, request_id, charge)))
        if refused is not None:
            self.state.limits.take_back(charge)
            return refused, None
        return None, audit.charged(charge.keys, charge.at)

    def _abandon(self, request_id: str, reason: str) -> None:
        """End a wait that failed in the proxy itself: the person's card goes, nothing is sent."""
        if self.state.writer is not None:
            self.state.writer.apply(lambda conn, writer: approvals.settle(
                conn, request_id, approvals.DENIED, approvals.WAITING, "goex-proxy", reason)).add_done_callback(
                approvals.log_failure)

    async def _poll(self) -> None:
        """While anything waits: end the waits whose time ran out or whose client left, and pick up what people
        decided (in this process or another)."""
        while self.waiting:
            await asyncio.sleep(POLL_SECONDS)
            now = time.time()
            for request_id, waiter in list(self.waiting.items()):
                if waiter.flow.error is not None or not waiter.flow.client_conn.state & ConnectionState.CAN_READ:
                    self._settle(request_id, approvals.ABANDONED, "the agent's client gave up on the request "
                                                                  "(closed its connection or reset its stream)")
                elif now >= waiter.deadline:
                    sends = waiter.kind == "delay" or waiter.on_timeout == "send"
                    self._settle(request_id, approvals.SENT if sends else approvals.TIMED_OUT, None)
            ids = [i for i, w in self.waiting.items() if not w.done.done()]
            if not ids:
                continue
            try:
                for entry in await asyncio.to_thread(self._read, ids):
                    waiter = self.waiting.get(entry["request_id"])
                    if waiter is not None and entry["state"] not in approvals.WAITING and not waiter.done.done():
                        waiter.done.set_result(approvals.Settled(entry["state"], False, entry))
            except Exception as exc:  # a locked or unreadable database: the waits go on, their deadlines hold
                log.warning("could not read the approvals table: %s", exc)

    def _read(self, ids: list[str]) -> list[dict[str, Any]]:
        if self._reader is None:
            assert self.state.config is not None
            self._reader = audit.connect(self.state.config, readonly=True)
        cursor = self._reader.execute(
            f"SELECT * FROM approvals WHERE request_id IN ({', '.join('?' * len(ids))})", ids)
        names = [c[0] for c in cursor.description]
        return [dict(zip(names, found, strict=True)) for found in cursor.fetchall()]

    def _settle(self, request_id: str, to: str, reason: str | None) -> None:
        """End a wait ourselves (time ran out, the client left), unless a person decided first; the waiter gets the
        state it ends in either way."""
        waiter = self.waiting[request_id]
        if waiter.ending or self.state.writer is None:
            return
        waiter.ending = True
        loop = asyncio.get_running_loop()

        def done(f: Any) -> None:
            if waiter.done.done():
                return
            if f.exception() is not None:
                log.error("could not end the wait of %s: %s", request_id, f.exception())
                waiter.ending = False  # tried again at the next poll
                return
            waiter.done.set_result(f.result())

        self.state.writer.apply(
            lambda conn, writer: approvals.settle(conn, request_id, to, approvals.WAITING, "goex-proxy", reason)
        ).add_done_callback(lambda f: loop.call_soon_threadsafe(done, f))

    async def stop(self) -> None:
        """At shutdown: what still waits is recorded as not sent, then answered (while the connections still are)."""
        if not self.waiting or self.state.writer is None:
            return
        waiting = list(self.waiting.items())
        ended = time.time()
        settled = await asyncio.wrap_future(self.state.writer.apply(lambda conn, writer: [
            _stop_one(conn, writer, request_id, ended) for request_id, _ in waiting]))
        for (_, waiter), result in zip(waiting, settled, strict=True):
            if result is not None and not waiter.done.done():
                flowmeta.set_recorded(waiter.flow, "final")  # its outcome is written: record must not write another
                waiter.done.set_result(result)
        await asyncio.sleep(0.1)  # let the answers go out before the connections close

    def response(self, flow: http.HTTPFlow) -> None:
        """A request that passed under `review:` and reached its upstream joins the review queue."""
        passed = flowmeta.review(flow)
        if passed is None or flowmeta.is_own_response(flow) or self.state.writer is None:
            return
        entry = {"request_id": flowmeta.request_id(flow), "ts": flow.request.timestamp_start,
                 "agent": flowmeta.agent(flow), "kind": "review", "state": approvals.PASSED,
                 "undo_class": passed[0], "why": passed[1], "owner": self.owner}
        self.state.writer.apply(lambda conn, writer: approvals.insert(conn, entry)).add_done_callback(approvals.log_failure)

    def done(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None


def _recover_stopped(conn: Any, writer: AuditWriter) -> int:
    """Waits whose proxy is gone (it crashed or was killed) end as stopped; their rows get that outcome."""
    count = 0
    for entry in conn.execute("SELECT request_id, owner FROM approvals WHERE state IN (?, ?)",
                              approvals.WAITING).fetchall():
        if approvals.alive(entry[1]):
            continue
        settled = approvals.settle(conn, entry[0], approvals.STOPPED, approvals.WAITING, "goex-proxy",
                                   STOPPED_REASON)
        term, forms = layout.id_term(entry[0])
        found = conn.execute(f"SELECT outcome_hash, decision FROM requests WHERE {term}", forms).fetchone()
        # Only a row whose own (hashed) decision says it waited is recorded as not sent: the approvals table is not
        # under the chain, and an entry added to it must not get a sent request's row signed as "not sent".
        if settled.changed and found is not None and found[0] is None and found[1] in ("hold", "delay"):
            writer.update_outcome(entry[0], {"error": STOPPED_REASON, "ended": time.time(),
                                             "approval": approvals.outcome(settled.entry)})
        count += 1
    if count:
        log.warning("%d request%s waited in a goex-proxy that stopped; recorded as not sent", count,
                    "" if count == 1 else "s")
    return count
