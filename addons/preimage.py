"""Stage 6, pre-image: before a mutating request whose undo rule needs it, read the resource as it is (with the same
credential), so that `undo` can put it back."""

from __future__ import annotations

import logging
from collections.abc import Awaitable

from mitmproxy import http

from goex_proxy.addons import flowmeta, sendout
from goex_proxy.addons.decide import header_pairs
from goex_proxy.addons.failclosed import fail_closed
from goex_proxy.addons.inject import inject_into
from goex_proxy.addons.state import ProxyState
from goex_proxy.undo.plan import SAFE_METHODS, Exchange, Step, on_origin, preimage_read

log = logging.getLogger(__name__)


class Preimage:
    """Reads what a PUT, PATCH or DELETE is about to replace. A failed read is recorded (as status 0 with the error)
    and the request still goes on: the pre-image serves undo, not the decision, which was already made."""

    def __init__(self, state: ProxyState) -> None:
        self.state = state

    @fail_closed("preimage")
    def request(self, flow: http.HTTPFlow) -> Awaitable[None] | None:
        """Sync for reads and requests no rule wants a pre-image of; only the read itself is a coroutine."""
        if flow.response or flow.error or not flow.live:
            return None
        return self.read_again(flow)

    def read_again(self, flow: http.HTTPFlow) -> Awaitable[None] | None:
        """Read the pre-image this request's undo rule wants (None when it wants none); the gate reads it again
        when a request that waited is let go, to see that the resource did not change meanwhile."""
        if flow.request.method.upper() in SAFE_METHODS or not self.state.undo_rules or flowmeta.undo_of(flow):
            return None
        req = flow.request
        read = preimage_read(self.state.undo_rules, Exchange(req.method, flowmeta.request_url(req),
                                                             header_pairs(req.headers), req.get_content(strict=False)))
        return self._read(read, flow) if read is not None else None

    @fail_closed("preimage")
    async def _read(self, read: Step, flow: http.HTTPFlow) -> None:  # flow last: fail_closed answers on it
        url = on_origin(read.url, flowmeta.request_url(flow.request))
        if url is None:  # never carry the agent's credential to another origin
            log.warning("%s: pre-image read %s %s is off the request's origin; not made", flowmeta.request_id(flow),
                        read.method, read.url)
            flowmeta.set_preimage(flow, 0, (), f"the read ({read.describe()}) is not on the request's origin".encode())
            return
        name = flowmeta.credential(flow)
        try:  # making the request too: a URL with a character beyond ASCII (UnicodeEncodeError) is a read that failed
            request = http.Request.make(read.method, url, read.body or b"", list(read.headers))
            if name is not None:
                await inject_into(self.state, request, self.state.config.credentials[name], own=True)
            response = await sendout.send(self.state, request, keep=self.state.config.max_body_bytes)
        except Exception as exc:  # the read failed: undo will say there is no usable pre-image
            log.warning("%s: pre-image read %s %s failed: %s", flowmeta.request_id(flow), read.method,
                        read.url, self.state.scrubber.text(str(exc)))
            flowmeta.set_preimage(flow, 0, (), str(exc).encode())
            return
        flowmeta.set_preimage(flow, response.status_code, header_pairs(response.headers, keep_case=True),
                              response.get_content(strict=False) or b"")
