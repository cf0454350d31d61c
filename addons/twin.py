"""Stage 4, twin: where the deciding policy rule says `rewrite: reversible`, forward the request's reversible twin
(Gmail's messages.delete as messages.trash) instead, so that what the agent did stays undoable."""

from __future__ import annotations

import dataclasses
import time
from urllib.parse import urlsplit

from mitmproxy import http

from goex_proxy.addons import flowmeta, replies
from goex_proxy.addons.decide import header_pairs, request_view
from goex_proxy.addons.failclosed import fail_closed
from goex_proxy.addons.state import ProxyState
from goex_proxy.policy.engine import Decision, decide
from goex_proxy.policy.requestview import canonical_path
from goex_proxy.undo.plan import Exchange, Step, on_origin, twin_for

#: Headers that describe the agent's body, not the twin's.
_BODY_HEADERS = ("content-length", "content-type", "content-encoding", "transfer-encoding")


class Twin:
    """Rewrites a request into its twin from the undo rules; the twin must be on the same origin and allowed by
    policy too. With no twin to send, the request is denied: the policy allowed it only as reversible."""

    def __init__(self, state: ProxyState) -> None:
        self.state = state

    @fail_closed("twin")
    def request(self, flow: http.HTTPFlow) -> None:
        d = flowmeta.decision(flow)
        if flow.response or flow.error or not flow.live or d is None or not d.rewrite or flowmeta.undo_of(flow):
            return  # an undo step goes exactly as it was planned: its twin would be a different compensation
        req = flow.request
        original = f"{req.method} {req.pretty_url}"
        twin = twin_for(self.state.undo_rules, Exchange(req.method, req.pretty_url, header_pairs(req.headers),
                                                         req.get_content(strict=False)))
        if twin is None:
            self._deny(flow, d, f"rule '{d.rule}' allows {original} only as its reversible twin, and no undo rule "
                                "has a twin for it")
            return
        url = on_origin(twin.url, req.pretty_url)
        if url is None:
            self._deny(flow, d, f"the reversible twin of {original} ({twin.describe()}) is not on the same origin")
            return
        target = urlsplit(url)
        self._rewrite(req, twin, target.path + (f"?{target.query}" if target.query else ""))
        path = canonical_path(target.path or "/")
        if path is None:
            self._deny(flow, d, f"the reversible twin of {original} has an ambiguous path")
            return
        again = decide(request_view(flow, flowmeta.agent(flow), path), self.state.policies, time.time(),
                       self.state.limits)
        if again.effect != "allow":
            self._deny(flow, d, f"{original} is allowed only as its reversible twin {twin.describe()}, which policy "
                                f"does not allow: {again.reason}")
            return
        flowmeta.set_path(flow, path)
        flowmeta.set_decision(flow, dataclasses.replace(
            d, reason=f"{d.reason}; sent as its reversible twin {twin.describe()} instead of {original}"))

    @staticmethod
    def _rewrite(req: http.Request, twin: Step, path: str) -> None:
        req.method = twin.method
        req.path = path
        for name in _BODY_HEADERS:
            req.headers.pop(name, None)
        for name, value in twin.headers:
            req.headers[name] = value
        req.content = twin.body or b""

    @staticmethod
    def _deny(flow: http.HTTPFlow, d: Decision, why: str) -> None:
        replies.refuse(flow, Decision("deny", why, d.rule))
