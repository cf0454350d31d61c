"""Stage 8, record: the request row is committed before anything is forwarded; the outcome is written after."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Coroutine
from concurrent.futures import Future
from typing import Any

from mitmproxy import http, tcp

from goex_proxy.addons import flowmeta, replies, rows
from goex_proxy.addons.decide import methods_run_as, refuse_stream
from goex_proxy.addons.failclosed import fail_closed
from goex_proxy.addons.state import ProxyState
from goex_proxy.policy.engine import Decision

log = logging.getLogger(__name__)

#: A request or response body past this size has its row built in a worker thread: the event loop serves other
#: requests meanwhile (decoding, the scrubber's scan and sha256 let go of the GIL). A smaller one is built on the
#: loop, where it costs less than handing it over.
OFF_LOOP_BYTES = 256 * 1024
#: The methods of requests that only read (RFC 9110's safe methods, but TRACE, which echoes what it was sent): sent
#: without waiting for their row's commit unless `audit.wait_for_reads`.
READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def large(*messages: http.Message | None) -> bool:
    """Whether any of these messages has a body past `OFF_LOOP_BYTES` (as received: encoded bodies count as sent)."""
    return any(m is not None and len(m.raw_content or b"") > OFF_LOOP_BYTES for m in messages)


def _closed_before_its_end(flow: http.HTTPFlow) -> None:
    """A response that came after the audit log closed (goex-proxy stopping: the first process of `run` serves on
    while its workers stop) is not passed on: its row was recorded interrupted when the log closed, and the agent got
    an answer its row said it never had."""
    flowmeta.set_recorded(flow, "final")
    if flow.killable:
        flow.kill()


class Record:
    """Writes every request to the audit log, write-ahead: a row with no outcome means "may have happened"."""

    def __init__(self, state: ProxyState) -> None:
        self.state = state

    def request_row(self, flow: http.HTTPFlow) -> dict[str, Any]:
        return rows.request_row(self.state, flow)

    def outcome(self, flow: http.HTTPFlow) -> dict[str, Any]:
        return rows.outcome(self.state, flow)

    @fail_closed("record")
    def request(self, flow: http.HTTPFlow) -> Coroutine[Any, Any, None] | None:
        """A read goes on as its row is queued; any other request once its row is committed (the coroutine, which
        mitmproxy awaits)."""
        if not flow.live or flowmeta.recorded(flow):
            return None
        if not self._goes_on_unwaited(flow):
            return self._committed_first(flow)
        self.state.audit().read_intent(self.request_row(flow))
        flowmeta.set_recorded(flow, "intent")
        return None

    def _goes_on_unwaited(self, flow: http.HTTPFlow) -> bool:
        """Whether the request is a read whose row need not be committed before it is sent: an allowed GET, HEAD or
        OPTIONS that no server runs as another method (an override), counts toward no limit (a limit is counted
        across workers by the log's writer), asks for no upgrade (what follows it is a stream), has no body (servers
        read a body in ways beyond the policy's), and a writer process that takes it and a log that took its last
        rows, every read it did not take written since (else every row waits, and is refused while the log cannot take
        it: an agent that fills the disk does not read unrecorded). `audit.wait_for_reads` makes every request wait."""
        d = flowmeta.decision(flow)
        request = flow.request
        return (request.method in READ_METHODS and d is not None and d.effect == "allow" and flow.response is None
                and not self.state.config.wait_for_reads and flowmeta.charge(flow) is None
                and flowmeta.view(flow) is not None and READ_METHODS.issuperset(methods_run_as(flow))
                and "upgrade" not in request.headers and not request.raw_content and self.state.audit().takes_reads())

    @fail_closed("record")
    async def _committed_first(self, flow: http.HTTPFlow) -> None:
        d = flowmeta.decision(flow)
        if flow.response is None and (d is None or d.effect != "allow"):
            raise RuntimeError("a request reached the record stage with no allow decision")
        writer = self.state.audit()
        final = flow.response is not None
        charge = flowmeta.charge(flow) if not final else None
        # The flow waits for this hook, so no other stage touches it while a thread builds its row.
        row = await asyncio.to_thread(self.request_row, flow) if large(flow.request) else self.request_row(flow)
        refused = await writer.awaited_intent(row, charge)
        if refused is not None and charge is not None and d is not None:  # other proxies' hits reached a cap first
            self.state.limits.take_back(charge)
            denial = Decision("deny", refused, d.rule)
            flowmeta.set_decision(flow, denial)
            replies.denied(flow, denial)
            await writer.awaited_intent(self.request_row(flow))
            final = True
        flowmeta.set_recorded(flow, "final" if final else "intent")

    @fail_closed("record")
    def http_connect(self, flow: http.HTTPFlow) -> None:
        """A refused CONNECT (wrong identity) is recorded too; an accepted one is just a tunnel."""
        if flow.response is not None and flowmeta.is_own_response(flow) and self.state.writer is not None:
            self._watch(self.state.writer.record_intent(self.request_row(flow)))
            flowmeta.set_recorded(flow, "final")

    def response(self, flow: http.HTTPFlow) -> Coroutine[Any, Any, None] | None:
        return self._finish(flow)

    def error(self, flow: http.HTTPFlow) -> Coroutine[Any, Any, None] | None:
        return self._finish(flow)

    def _finish(self, flow: http.HTTPFlow) -> Coroutine[Any, Any, None] | None:
        """Queue the outcome, built here, or for a large exchange a coroutine (which mitmproxy awaits, the flow
        waiting for it) that builds it in a thread: the scrub stage then reuses the scan of its body, the live log its
        undo class, and no other stage touches the flow meanwhile."""
        if flowmeta.recorded(flow) != "intent":
            return None
        if self.state.writer is None:
            _closed_before_its_end(flow)
            return None
        flowmeta.set_recorded(flow, "final")
        if large(flow.request, flow.response):
            return self._finish_off_loop(flow)
        # Not awaited: the request already happened. The writer logs a failure itself.
        self.state.writer.outcome_in_turn(flowmeta.request_id(flow), self.outcome(flow))
        return None

    async def _finish_off_loop(self, flow: http.HTTPFlow) -> None:
        outcome = await asyncio.to_thread(self.outcome, flow)
        if self.state.writer is None:  # closed meanwhile
            _closed_before_its_end(flow)
            return
        self.state.writer.record_outcome(flowmeta.request_id(flow), outcome)

    @fail_closed("record")
    async def tcp_start(self, flow: tcp.TCPFlow) -> None:
        """A raw TCP stream gets a row, committed before it is relayed (an allowed upgrade has its request's row)."""
        d = flowmeta.decision(flow)
        if d is None or (d.rule is None and d.effect == "allow") or self.state.writer is None:
            return
        host, port = flow.server_conn.address or ("", 0)
        peer = flow.client_conn.peername
        row = {"id": flowmeta.request_id(flow), "ts": flow.timestamp_created, "agent": flowmeta.agent(flow),
               "client": f"{peer[0]}:{peer[1]}" if peer else None, "method": "CONNECT", "scheme": "tcp",
               "host": host, "port": port, "path": "", "url": f"tcp://{host}:{port}", "decision": d.label,
               "rule": d.rule, "reason": d.reason, "report": d.report}
        if d.effect != "allow":
            row.update({"error": f"refused: {d.reason}", "ended": time.time(), "duration_ms": 0.0})
        charge = flowmeta.charge(flow)
        refused = await self.state.writer.awaited_intent(row, charge)
        if refused is not None and charge is not None:  # other proxies' hits reached a cap first
            self.state.limits.take_back(charge)
            row.update({"decision": "deny", "reason": refused, "error": f"refused: {refused}", "ended": time.time(),
                        "duration_ms": 0.0})
            await self.state.writer.awaited_intent(row)
            refuse_stream(flow, f"raw TCP to {host}:{port}: {refused}")
        flowmeta.set_recorded(flow, "intent" if d.effect == "allow" and refused is None else "final")

    def tcp_end(self, flow: tcp.TCPFlow) -> None:
        if flowmeta.recorded(flow) != "intent" or self.state.writer is None:
            return
        flowmeta.set_recorded(flow, "final")
        received = sum(len(m.content) for m in flow.messages if not m.from_client)
        ended = time.time()
        self.state.writer.record_outcome(flowmeta.request_id(flow), {
            "resp_body_size": received, "ended": ended,
            "duration_ms": round((ended - flow.timestamp_created) * 1000, 3),
            "error": self.state.scrubber.text(flow.error.msg) if flow.error else None})

    def tcp_error(self, flow: tcp.TCPFlow) -> None:
        self.tcp_end(flow)

    @staticmethod
    def _watch(future: Future[None]) -> None:
        def done(f: Future[None]) -> None:
            if f.exception() is not None:
                log.error("could not record an outcome: %s", f.exception())
        future.add_done_callback(done)
