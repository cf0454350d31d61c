"""Stage 2, decide: turn the flow into a RequestView and ask the pure policy engine; a denial answers 403."""

from __future__ import annotations

import logging
import time

from goex_proxy.addons import flowmeta, replies
from goex_proxy.addons.failclosed import fail_closed
from goex_proxy.addons.state import ProxyState
from goex_proxy.policy import decide
from goex_proxy.requestview import RequestView
from mitmproxy import dns, http, tcp, udp
from mitmproxy.flow import Error

log = logging.getLogger(__name__)


def request_view(flow: http.HTTPFlow, agent: str | None) -> RequestView:
    """What the policy sees of a flow: the host it will connect to, the path without its query, the decoded body."""
    req = flow.request
    return RequestView(
        agent=agent,
        method=req.method.upper(),
        scheme=req.scheme,
        host=req.host.lower().rstrip("."),
        port=req.port,
        path=req.path.split("?", 1)[0] or "/",
        query=tuple(req.query.items(multi=True)),
        headers=tuple((k.lower(), v) for k, v in req.headers.items(multi=True)),
        body=req.get_content(strict=False) or b"",
    )


class Decide:
    """Allows or denies each request by policy; counts allowed requests against their rules' limits."""

    def __init__(self, state: ProxyState) -> None:
        self.state = state

    @fail_closed("decide")
    def request(self, flow: http.HTTPFlow) -> None:
        if flow.response or flow.error or not flow.live:
            return
        agent = flowmeta.agent(flow)
        now = time.time()
        d = decide(request_view(flow, agent), self.state.policies, now, self.state.limits)
        flowmeta.set_decision(flow, d)
        if d.effect == "deny":
            replies.denied(flow, d)
        elif d.count_limits and agent:
            self.state.limits.record(d.count_limits, agent, now)

    def tcp_start(self, flow: tcp.TCPFlow) -> None:
        """Raw TCP through a tunnel cannot be inspected, so it is never relayed (policy and audit would be skipped)."""
        self._refuse_uninspectable(flow, "TCP")

    def udp_start(self, flow: udp.UDPFlow) -> None:
        self._refuse_uninspectable(flow, "UDP")

    def dns_request(self, flow: dns.DNSFlow) -> None:
        """DNS through a tunnel to port 53 would be forwarded by mitmproxy itself: answer SERVFAIL instead."""
        log.warning("refused a DNS query through the proxy to %s", flow.server_conn.address)
        flow.error = Error("goex-proxy does not relay DNS")

    @staticmethod
    def _refuse_uninspectable(flow: tcp.TCPFlow | udp.UDPFlow, kind: str) -> None:
        address = flow.server_conn.address
        log.warning("refused a raw %s stream to %s: goex-proxy relays only HTTP(S) it can inspect", kind, address)
        flow.server_conn.error = f"goex-proxy refuses raw {kind}"  # checked before mitmproxy connects upstream
        flow.kill()
