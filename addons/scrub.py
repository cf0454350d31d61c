"""Stage 9, scrub: echoes of injected secrets become placeholders, and upstream `X-Goex-*` headers are removed."""

from __future__ import annotations

from collections.abc import Callable

from mitmproxy import http

from goex_proxy import bodies
from goex_proxy.addons import flowmeta, replies
from goex_proxy.addons.failclosed import fail_closed
from goex_proxy.addons.state import ProxyState


def scrub_error_pages(state: ProxyState) -> None:
    """mitmproxy answers a broken upstream with its own error page, quoting the bytes it got, and calls no hook that
    could change it; its page formatter is wrapped (once per process) so that quoted secrets become placeholders."""
    import importlib

    global _error_page_state
    _error_page_state = state
    for name, required in (("_http1", True), ("_http2", True), ("_http3", False)):
        try:
            module = importlib.import_module(f"mitmproxy.proxy.layers.http.{name}")
            original = module.format_error
        except (ImportError, AttributeError):
            if required:  # a mitmproxy laid out otherwise: refuse to run rather than leak through its error pages
                raise
            continue
        if getattr(original, "goex_scrubbed", False):
            continue

        def format_error(status_code: int, message: str, _original: Callable[[int, str], bytes] = original) -> bytes:
            scrub = _error_page_state.scrubber if _error_page_state is not None else None
            return _original(status_code, scrub.text(message) if scrub else message)

        format_error.goex_scrubbed = True  # type: ignore[attr-defined]
        module.format_error = format_error


_error_page_state: ProxyState | None = None


class Scrub:
    """Cleans upstream responses, and mitmproxy's own error pages, before the agent sees them."""

    def __init__(self, state: ProxyState) -> None:
        self.state = state
        scrub_error_pages(state)

    @fail_closed("scrub")
    def responseheaders(self, flow: http.HTTPFlow) -> None:
        if flow.response is None or flowmeta.is_own_response(flow):
            return
        self._clean_headers(flow, flow.response)

    def _clean_headers(self, flow: http.HTTPFlow, response: http.Response) -> None:
        flowmeta.set_headers_scrubbed(flow, response)
        headers = response.headers
        prefix = replies.PREFIX.encode()
        scrub = self.state.scrubber
        if scrub or any(k.lower().startswith(prefix) for k, _ in headers.fields):  # raw fields: cheap to scan
            headers.fields = tuple((k, scrub.bytes(v) if scrub else v) for k, v in headers.fields
                                   if not k.lower().startswith(prefix))
        headers["X-Goex-Request-Id"] = flowmeta.request_id(flow)
        d = flowmeta.decision(flow)
        if d is not None:
            headers["X-Goex-Decision"] = d.label

    @fail_closed("scrub")
    def response(self, flow: http.HTTPFlow) -> None:
        """An upstream that echoes a secret (in any spelling) shows the agent the placeholder instead."""
        if flow.response is None or flowmeta.is_own_response(flow):
            return
        if not flowmeta.headers_scrubbed(flow, flow.response):  # replaced after its headers came (inject retried it)
            self._clean_headers(flow, flow.response)
        if not self.state.scrubber:
            return
        coding = flow.response.headers.get("content-encoding", "")
        try:
            content = bodies.decode(flow.response.raw_content or b"", coding)
        except ValueError as exc:  # what we cannot undo could hide a secret: nothing unchecked reaches the agent
            replies.reply(flow, 502, {"error": "goex-proxy: the upstream response's content encoding "
                                               f"({coding!r}) cannot be checked for secrets, so it is withheld",
                                      "reason": str(exc)[:200]})
            return
        cleaned = self.state.scrubber.bytes(content)
        if cleaned != content:
            flow.response.content = cleaned  # re-encoded with the response's Content-Encoding
        if flow.response.trailers:
            fields = flow.response.trailers.fields
            flow.response.trailers.fields = tuple((k, self.state.scrubber.bytes(v)) for k, v in fields)

    @fail_closed("scrub")
    def websocket_message(self, flow: http.HTTPFlow) -> None:
        """Messages from the upstream over an allowed WebSocket are scrubbed like bodies."""
        if flow.websocket is None or not self.state.scrubber:
            return
        message = flow.websocket.messages[-1]
        if not message.from_client:
            message.content = self.state.scrubber.bytes(message.content)
