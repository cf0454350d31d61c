"""LiveLog: one line per request as it ends, for the person watching `goex-proxy run` (not a stage: it only reads)."""

from __future__ import annotations

import json
import logging
import time

from mitmproxy import http

from goex_proxy.addons import flowmeta
from goex_proxy.addons.state import ProxyState
from goex_proxy.printable import shown

#: The logger `run` shows at INFO (`--quiet` leaves it at WARNING).
log = logging.getLogger("goex_proxy.live")


class LiveLog:
    """Writes `id agent METHOD url -> decision status (duration)` when a request is answered or fails, with
    secrets replaced and control characters escaped; after the scrub stage, so it sees what the agent saw."""

    def __init__(self, state: ProxyState) -> None:
        self.state = state

    def line(self, flow: http.HTTPFlow) -> str:
        decision = flowmeta.decision(flow)
        label = "challenge" if flowmeta.challenged(flow) else decision.label if decision else "error"
        if flow.response is not None:
            outcome = str(flow.response.status_code)
        else:
            outcome = f"failed: {flow.error.msg if flow.error else 'no response'}"
        url = f"{flow.request.host}:{flow.request.port}" if flow.request.method == "CONNECT" else flowmeta.url(flow)
        took = (time.time() - flow.request.timestamp_start) * 1000
        text = (f"{flowmeta.request_id(flow)} {flowmeta.agent(flow) or '-'} {flow.request.method} {url} -> {label} "
                f"{outcome} ({took:.0f} ms)")
        if decision and decision.effect != "allow" and decision.reason:
            text += f": {decision.reason}"
        elif flow.response is not None and flow.response.status_code >= 500 and flowmeta.is_own_response(flow):
            text += f": {_own_error(flow.response)}"
        return shown(self.state.scrubber.text(text))

    def http_connect(self, flow: http.HTTPFlow) -> None:
        if flow.response is not None and flow.response.status_code >= 300:  # a refused tunnel; accepted ones are quiet
            log.info("%s", self.line(flow))

    def response(self, flow: http.HTTPFlow) -> None:
        log.info("%s", self.line(flow))

    def error(self, flow: http.HTTPFlow) -> None:
        log.info("%s", self.line(flow))


def _own_error(response: http.Response) -> str:
    """What goex-proxy's own error answer says (its `error` and `reason`), in at most 300 characters."""
    try:
        body = json.loads(response.get_text(strict=False) or "{}")
        text = ": ".join(str(body[k]) for k in ("error", "reason") if body.get(k))
    except (ValueError, TypeError, AttributeError):
        text = response.get_text(strict=False) or ""
    return text.removeprefix("goex-proxy: ")[:300]
