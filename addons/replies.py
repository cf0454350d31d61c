"""The responses goex-proxy itself gives an agent: 407, 403 with the rule and reason, and 502 on internal failure."""

from __future__ import annotations

import json
from typing import Any

from mitmproxy import http

from goex_proxy.addons import flowmeta
from goex_proxy.policy.engine import Decision

PREFIX = "x-goex-"


def reply(flow: http.HTTPFlow, status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> None:
    """Answer the agent ourselves; nothing is forwarded once a flow has a response."""
    body = {**body, "request_id": flowmeta.request_id(flow)}
    if flow.response is not None and not flowmeta.is_own_response(flow) and flowmeta.replaced(flow) is None:
        flowmeta.set_replaced(flow, flow.response)  # the upstream's answer, for the row (see `rows.outcome`)
    upstream = flowmeta.replaced(flow)
    closing = {"Connection": "close"} if upstream is not None and upstream.status_code == 101 and \
        flow.request.http_version.upper().startswith("HTTP/1") else {}
    flow.response = http.Response.make(
        status,
        json.dumps(body, indent=2) + "\n",
        # In place of a 101, the agent's connection ends with this answer: mitmproxy has already made the upstream's
        # connection a pipe for the new protocol and would hand it to the next request on the agent's connection (its
        # HTTP/1 client then fails on it, and that request hangs unanswered).
        {"Content-Type": "application/json", "X-Goex-Request-Id": body["request_id"], **closing, **(headers or {})},
    )
    flowmeta.mark_own_response(flow)


def auth_required(flow: http.HTTPFlow, why: str) -> None:
    reply(flow, 407, {"error": "goex-proxy: proxy authentication required", "reason": why,
                      "hint": "use a proxy URL of the form http://AGENT:TOKEN@host:port (see `goex-proxy env`)"},
          {"Proxy-Authenticate": 'Basic realm="goex-proxy"'})


def refuse(flow: http.HTTPFlow, d: Decision) -> None:
    """Record a deny decision made by a stage and answer 403 with it."""
    flowmeta.set_decision(flow, d)
    denied(flow, d)


def denied(flow: http.HTTPFlow, d: Decision) -> None:
    reply(flow, 403, {"error": "goex-proxy: denied by policy", "decision": "deny", "rule": d.rule, "reason": d.reason,
                      "allowed_instead": list(d.allowed_instead)},
          {"X-Goex-Decision": "deny", "X-Goex-Rule": d.rule or "(default deny)"})


def internal_error(flow: http.HTTPFlow, stage: str) -> None:
    reply(flow, 502, {"error": f"goex-proxy: internal error in the {stage} stage; nothing was forwarded",
                      "stage": stage}, {"X-Goex-Decision": "error"})


def said(response: http.Response) -> str:
    """What goex-proxy's own error answer says (its `error` and `reason`), in at most 300 characters."""
    try:
        body = json.loads(response.get_text(strict=False) or "{}")
        text = ": ".join(str(body[k]) for k in ("error", "reason") if body.get(k))
    except (ValueError, TypeError, AttributeError):
        text = response.get_text(strict=False) or ""
    return text.removeprefix("goex-proxy: ")[:300]
