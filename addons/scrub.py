"""Stage 5, scrub: an upstream cannot speak as goex-proxy; its `X-Goex-*` headers are removed, and the id added."""

from __future__ import annotations

from goex_proxy.addons import flowmeta, replies
from goex_proxy.addons.failclosed import fail_closed
from goex_proxy.addons.state import ProxyState
from mitmproxy import http


class Scrub:
    """Cleans upstream responses before the agent sees them."""

    def __init__(self, state: ProxyState) -> None:
        self.state = state

    @fail_closed("scrub")
    def responseheaders(self, flow: http.HTTPFlow) -> None:
        if flow.response is None or flowmeta.is_own_response(flow):
            return
        for name in {k for k in flow.response.headers if k.lower().startswith(replies.PREFIX)}:
            del flow.response.headers[name]
        flow.response.headers["X-Goex-Request-Id"] = flowmeta.request_id(flow)
        d = flowmeta.decision(flow)
        if d is not None:
            flow.response.headers["X-Goex-Decision"] = d.label
