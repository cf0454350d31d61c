"""Stage 8, record: the request row is committed before anything is forwarded; the outcome is written after."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from concurrent.futures import Future
from typing import Any

from mitmproxy import http, tcp

from goex_proxy.addons import flowmeta, replies
from goex_proxy.addons.decide import header_pairs, refuse_stream
from goex_proxy.addons.failclosed import fail_closed
from goex_proxy.addons.state import ProxyState
from goex_proxy.credentials.redact import SecretScrubber, redacted_headers_json
from goex_proxy.net import bodies
from goex_proxy.policy.engine import Decision
from goex_proxy.undo.plan import SAFE_METHODS, Exchange, classify

log = logging.getLogger(__name__)


def _decoded(message: http.Message, scrub: SecretScrubber) -> bytes | None:
    """The body without its content encoding; None if it cannot be decoded (or decodes past the bounds) while secrets
    are being scrubbed."""
    try:
        return bodies.decode(message.raw_content or b"", message.headers.get("content-encoding", ""))
    except ValueError:
        return None if scrub else message.raw_content


def _body(content: bytes | None, limit: int, scrub: SecretScrubber) -> dict[str, Any]:
    """A body as recorded: injected secrets replaced by placeholders, cut at `limit`, with its size and sha256."""
    content = scrub.bytes(content or b"")
    return {"body": content[:limit] if content else None, "size": len(content),
            "sha256": hashlib.sha256(content).hexdigest() if content else None}


#: How much of a path, URL or reason a request without a known agent keeps in its row (no headers, no body).
UNIDENTIFIED_CHARS = 512


class Record:
    """Writes every request to the audit log, write-ahead: a row with no outcome means "may have happened"."""

    def __init__(self, state: ProxyState) -> None:
        self.state = state

    def _limit(self) -> int:
        assert self.state.config is not None
        return int(self.state.config.max_body_bytes)

    def request_row(self, flow: http.HTTPFlow) -> dict[str, Any]:
        req = flow.request
        d = flowmeta.decision(flow)
        scrub = self.state.scrubber
        body = _body(_decoded(req, scrub), self._limit(), scrub)
        peer = flow.client_conn.peername
        row: dict[str, Any] = {
            "id": flowmeta.request_id(flow),
            "ts": req.timestamp_start,
            "agent": flowmeta.agent(flow),
            "client": f"{peer[0]}:{peer[1]}" if peer else None,
            "method": req.method,
            "scheme": req.scheme,
            "host": req.host,
            "port": req.port,
            "path": scrub.text(req.path),
            "url": scrub.text(req.url),
            "http_version": req.http_version,
            "req_headers": redacted_headers_json(header_pairs(req.headers, keep_case=True), scrub),
            "req_body": body["body"],
            "req_body_size": body["size"],
            "req_body_sha256": body["sha256"],
            "decision": "challenge" if flowmeta.challenged(flow) else d.label if d else ("error" if flow.response else "deny"),
            "rule": d.rule if d else None,
            "reason": d.reason if d else None,
            "report": d.report if d else None,
            "credential": flowmeta.credential(flow),
            "undo_of": flowmeta.undo_of(flow),
        }
        pre = flowmeta.preimage(flow)
        if pre is not None:
            pre_body = _body(pre[2], self._limit(), scrub)
            row.update({"pre_status": pre[0], "pre_headers": redacted_headers_json(pre[1], scrub),
                        "pre_body": pre_body["body"], "pre_body_size": pre_body["size"]})
        if row["agent"] is None:  # no identity: a compact row, so that any local process cannot fill the disk
            row.update({"path": row["path"][:UNIDENTIFIED_CHARS], "url": row["url"][:UNIDENTIFIED_CHARS],
                        "req_headers": None, "req_body": None})
        flowmeta.set_url(flow, row["url"])
        if flow.response is not None and flowmeta.is_own_response(flow):
            row.update(self.outcome(flow))
            if d is None:
                row["reason"] = flow.response.get_text(strict=False)
            if row["agent"] is None:
                row.update({"resp_headers": None, "resp_body": None, "reason": (row["reason"] or "")[:UNIDENTIFIED_CHARS]})
        return row

    def outcome(self, flow: http.HTTPFlow) -> dict[str, Any]:
        if flow.response is None:
            err = self.state.scrubber.text(flow.error.msg) if flow.error else "no response"
            return {"error": err, "ended": time.time(),
                    "duration_ms": (time.time() - flow.request.timestamp_start) * 1000} | self.approval(flow)
        resp = flow.response
        body = _body(_decoded(resp, self.state.scrubber), self._limit(), self.state.scrubber)
        ended = resp.timestamp_end or time.time()
        return {
            "status": resp.status_code,
            "resp_headers": redacted_headers_json(header_pairs(resp.headers, keep_case=True), self.state.scrubber),
            "resp_body": body["body"],
            "resp_body_size": body["size"],
            "resp_body_sha256": body["sha256"],
            "error": None,
            "ended": ended,
            "duration_ms": round((ended - flow.request.timestamp_start) * 1000, 3),
            "undo_class": flowmeta.set_undo_class(flow, self.undo_class(flow, resp)),
        } | self.approval(flow)

    @staticmethod
    def approval(flow: http.HTTPFlow) -> dict[str, str]:
        """For a request that waited: what became of the wait, recorded under the outcome hash."""
        kept = flowmeta.approval(flow)
        return {"approval": kept} if kept is not None else {}

    def undo_class(self, flow: http.HTTPFlow, resp: http.Response) -> str | None:
        """What `undo` could do for this exchange ("exact", "irreversible: ...", "no rule"), shown with the row."""
        req = flow.request
        if flowmeta.is_own_response(flow) or req.method.upper() in SAFE_METHODS:
            return None  # a read changed nothing: there is nothing to undo
        pre = flowmeta.preimage(flow) or (None, (), None)
        return classify(self.state.undo_rules, Exchange(req.method, flowmeta.url(flow), header_pairs(req.headers),
                                        req.get_content(strict=False), resp.status_code, header_pairs(resp.headers),
                                        resp.get_content(strict=False), pre[0], pre[1], pre[2]))

    @fail_closed("record")
    async def request(self, flow: http.HTTPFlow) -> None:
        if not flow.live or flowmeta.recorded(flow):
            return
        d = flowmeta.decision(flow)
        if flow.response is None and (d is None or d.effect != "allow"):
            raise RuntimeError("a request reached the record stage with no allow decision")
        assert self.state.writer is not None
        final = flow.response is not None
        charge = flowmeta.charge(flow) if not final else None
        refused = await asyncio.wrap_future(self.state.writer.record_intent(self.request_row(flow), charge))
        if refused is not None and charge is not None and d is not None:  # other proxies' hits reached a cap first
            self.state.limits.take_back(charge)
            denial = Decision("deny", refused, d.rule)
            flowmeta.set_decision(flow, denial)
            replies.denied(flow, denial)
            await asyncio.wrap_future(self.state.writer.record_intent(self.request_row(flow)))
            final = True
        flowmeta.set_recorded(flow, "final" if final else "intent")

    @fail_closed("record")
    def http_connect(self, flow: http.HTTPFlow) -> None:
        """A refused CONNECT (wrong identity) is recorded too; an accepted one is just a tunnel."""
        if flow.response is not None and flowmeta.is_own_response(flow) and self.state.writer is not None:
            self._watch(self.state.writer.record_intent(self.request_row(flow)))
            flowmeta.set_recorded(flow, "final")

    def response(self, flow: http.HTTPFlow) -> None:
        self._finish(flow)

    def error(self, flow: http.HTTPFlow) -> None:
        self._finish(flow)

    def _finish(self, flow: http.HTTPFlow) -> None:
        if flowmeta.recorded(flow) != "intent" or self.state.writer is None:
            return
        flowmeta.set_recorded(flow, "final")
        # Not awaited: the request already happened. The writer logs a failure itself.
        self.state.writer.record_outcome(flowmeta.request_id(flow), self.outcome(flow))

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
        refused = await asyncio.wrap_future(self.state.writer.record_intent(row, charge))
        if refused is not None and charge is not None:  # other proxies' hits reached a cap first
            self.state.limits.take_back(charge)
            row.update({"decision": "deny", "reason": refused, "error": f"refused: {refused}", "ended": time.time(),
                        "duration_ms": 0.0})
            await asyncio.wrap_future(self.state.writer.record_intent(row))
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
