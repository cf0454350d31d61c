"""The audit rows of requests: what the record stage writes before forwarding and after, and the gate before a
request waits."""

from __future__ import annotations

import hashlib
import logging
import time
from typing import Any

from mitmproxy import http

from goex_proxy.addons import flowmeta, replies, scrub
from goex_proxy.addons.decide import header_pairs
from goex_proxy.addons.state import ProxyState
from goex_proxy.credentials.redact import SecretScrubber, redacted_headers_json
from goex_proxy.net import bodies
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


def _limit(state: ProxyState) -> int:
    assert state.config is not None
    return int(state.config.max_body_bytes)


def request_row(state: ProxyState, flow: http.HTTPFlow) -> dict[str, Any]:
    """The row of a request as it is about to be forwarded (or answered by goex-proxy itself, with its outcome)."""
    req = flow.request
    d = flowmeta.decision(flow)
    scrub = state.scrubber
    body = _body(_decoded(req, scrub), _limit(state), scrub)
    path, url = scrub.texts([req.path, flowmeta.request_url(req)])  # one scan for both when neither holds a secret
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
        "path": path,
        "url": url,
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
        pre_body = _body(pre[2], _limit(state), scrub)
        row.update({"pre_status": pre[0], "pre_headers": redacted_headers_json(pre[1], scrub),
                    "pre_body": pre_body["body"], "pre_body_size": pre_body["size"]})
    if row["agent"] is None:  # no identity: a compact row, so that any local process cannot fill the disk
        row.update({"path": row["path"][:UNIDENTIFIED_CHARS], "url": row["url"][:UNIDENTIFIED_CHARS],
                    "req_headers": None, "req_body": None})
    flowmeta.set_url(flow, row["url"])
    if flow.response is not None and flowmeta.is_own_response(flow):
        row.update(outcome(state, flow))
        if d is None:
            row["reason"] = flow.response.get_text(strict=False)
        if row["agent"] is None:
            row.update({"resp_headers": None, "resp_body": None, "reason": (row["reason"] or "")[:UNIDENTIFIED_CHARS]})
    return row

def outcome(state: ProxyState, flow: http.HTTPFlow) -> dict[str, Any]:
    """How a request ended: the response (bodies scrubbed, cut), or the error."""
    if flow.response is None:
        err = state.scrubber.text(flow.error.msg) if flow.error else "no response"
        return {"error": err, "ended": time.time(),
                "duration_ms": (time.time() - flow.request.timestamp_start) * 1000} | approval(flow)
    resp, error = flow.response, not_passed_on(state, flow)
    upstream = flowmeta.replaced(flow) if flowmeta.is_own_response(flow) else None
    # A stage answered in place of the upstream's answer: the row keeps what happened there, with why the agent did not
    # get it. An answer whose status is no HTTP status at all (mitmproxy reads any integer, 20 digits too) cannot be
    # kept as it came: the row keeps goex-proxy's answer, and says that it stood in for one the upstream sent.
    if upstream is not None:
        kept = 100 <= upstream.status_code <= 999
        error = state.scrubber.text(f"the agent got goex-proxy's {resp.status_code} instead of "
                                    f"{'this answer' if kept else 'the upstream answer'}: {replies.said(resp)}")
        if kept:
            resp = upstream
    body = _body(_decoded(resp, state.scrubber), _limit(state), state.scrubber)
    ended = resp.timestamp_end or time.time()
    return {
        "status": resp.status_code,
        "resp_headers": redacted_headers_json(header_pairs(resp.headers, keep_case=True), state.scrubber),
        "resp_body": body["body"],
        "resp_body_size": body["size"],
        "resp_body_sha256": body["sha256"],
        "error": error,
        "ended": ended,
        "duration_ms": round((ended - flow.request.timestamp_start) * 1000, 3),
        "undo_class": flowmeta.set_undo_class(flow, undo_class(state, flow, resp)),
    } | approval(flow)


def not_passed_on(state: ProxyState, flow: http.HTTPFlow) -> str | None:
    """Why the agent did not get the upstream's answer as recorded with its row, if it did not: mitmproxy refused it
    or it broke off (an error with the response; the agent got mitmproxy's 502, or a cut answer), or scrub withholds
    it. The row keeps the upstream's status, which says what happened there, for undo."""
    if flow.error is not None:
        return f"the agent did not get this answer whole: {state.scrubber.text(flow.error.msg)}"
    problem = scrub.withheld(state, flow)
    if problem is not None:
        return f"withheld from the agent (a 502 instead): it cannot be checked for secrets, as {problem}"
    return None


def approval(flow: http.HTTPFlow) -> dict[str, str]:
    """For a request that waited: what became of the wait, recorded under the outcome hash."""
    kept = flowmeta.approval(flow)
    return {"approval": kept} if kept is not None else {}

#: The undo class of an exchange whose rules raised while it was worked out (followed by the error): the row keeps
#: its outcome, and undo plans nothing from it. An exception there had the outcome never recorded (`_finish` marks
#: the flow recorded first): the row read as in flight, then `interrupted`, while the agent had its answer.
UNCLASSIFIED = "irreversible: its undo class could not be worked out"


def undo_class(state: ProxyState, flow: http.HTTPFlow, resp: http.Response) -> str | None:
    """What `undo` could do for this exchange ("exact", "irreversible: ...", "no rule"), shown with the row."""
    req = flow.request
    if (flowmeta.is_own_response(flow) and resp is flow.response) or req.method.upper() in SAFE_METHODS:
        return None  # a read changed nothing: there is nothing to undo
    pre = flowmeta.preimage(flow) or (None, (), None)
    exchange = Exchange(req.method, flowmeta.url(flow), header_pairs(req.headers), req.get_content(strict=False),
                        resp.status_code, header_pairs(resp.headers), resp.get_content(strict=False), pre[0], pre[1],
                        pre[2])
    before = flowmeta.exchange(flow)
    try:
        return classify(state.undo_rules, before.answered(exchange) if before is not None else exchange)
    except Exception as exc:  # never the reason a request that happened has no outcome in its row
        # The error's type only, in the row and the log: its message may quote the answer, which may echo a secret.
        log.error("the undo class of %s %s could not be worked out (%s)", req.method, flowmeta.url(flow),
                  type(exc).__name__)
        return f"{UNCLASSIFIED} ({type(exc).__name__})"
