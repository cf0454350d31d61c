"""Stage 9, scrub: echoes of injected secrets become placeholders, and upstream `X-Goex-*` headers are removed."""

from __future__ import annotations

import weakref
from collections.abc import Callable

from mitmproxy import http

from goex_proxy import bodies
from goex_proxy.addons import flowmeta, replies
from goex_proxy.addons.failclosed import fail_closed
from goex_proxy.addons.state import ProxyState
from goex_proxy.redact import ScrubStream


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
        #: each WebSocket's matcher for the upstream's messages (kept here, not in flow.metadata, which can be exported)
        self._streams: weakref.WeakKeyDictionary[http.HTTPFlow, ScrubStream] = weakref.WeakKeyDictionary()
        scrub_error_pages(state)

    @fail_closed("scrub")
    def responseheaders(self, flow: http.HTTPFlow) -> None:
        if flow.response is None or flowmeta.is_own_response(flow):
            return
        self._clean_headers(flow, flow.response)

    def _clean_headers(self, flow: http.HTTPFlow, response: http.Response) -> None:
        """The status line's reason and the header names and values are scrubbed as streams (a secret split across
        two fields, or between the reason and a field, is caught); upstream `X-Goex-*` fields are dropped."""
        flowmeta.set_headers_scrubbed(flow, response)
        headers = response.headers
        prefix = replies.PREFIX.encode()
        scrub = self.state.scrubber
        if scrub:
            kept = [(k, v) for k, v in headers.fields if not k.lower().startswith(prefix)]
            if scrub.touches([response.data.reason, *(v for _, v in kept)]) or scrub.touches([k for k, _ in kept]):
                names, values = scrub.stream(), scrub.stream()
                response.data.reason = values.feed(response.data.reason)
                kept = [(names.feed(k), values.feed(v)) for k, v in kept]
            headers.fields = tuple(kept)
        elif any(k.lower().startswith(prefix) for k, _ in headers.fields):  # raw fields: cheap to scan
            headers.fields = tuple((k, v) for k, v in headers.fields if not k.lower().startswith(prefix))
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
        response = flow.response
        problem = unscannable(response)
        if problem is None:
            try:
                content = bodies.decode(response.raw_content or b"", response.headers.get("content-encoding", ""))
            except ValueError as exc:  # what we cannot undo could hide a secret: nothing unchecked reaches the agent
                problem = f"its content encoding cannot be undone ({str(exc)[:200]})"
        if problem is None:
            problem = self._clean_body(response, content)
        if problem is not None:
            replies.reply(flow, 502, {"error": "goex-proxy: the upstream's answer cannot be checked for secrets, so "
                                               "it is withheld", "reason": problem})
            return
        if response.trailers:
            response.trailers.fields = self.state.scrubber.fields(response.trailers.fields)

    def _clean_body(self, response: http.Response, content: bytes) -> str | None:
        """Scrub the decoded body in place (a range of a body keeps its length); why it cannot be, if it cannot."""
        scrub = self.state.scrubber
        for layer in bodies.inner_layers(content):
            if scrub.bytes(layer) != layer:
                return "a secret is inside a compressed layer within the body"
        cleaned = scrub.part(content) if response.status_code == 206 else scrub.bytes(content)
        if cleaned != content:
            response.content = cleaned  # re-encoded with the response's Content-Encoding
        return None

    @fail_closed("scrub")
    def websocket_message(self, flow: http.HTTPFlow) -> None:
        """Messages from the upstream over an allowed WebSocket are scrubbed as one stream (a secret split across
        messages is caught where it ends, and a possible start of one is withheld at the end of a message)."""
        if flow.websocket is None or not self.state.scrubber:
            return
        message = flow.websocket.messages[-1]
        if not message.from_client:
            stream = self._streams.get(flow)
            if stream is None:
                stream = self._streams[flow] = self.state.scrubber.stream()
            message.content = stream.feed(message.content)


def unscannable(response: http.Response) -> str | None:
    """Why an answer's bytes could reach the agent in a form the scrubber does not read, if they could: a transfer
    coding other than chunked (the client would undo it), or several byte ranges in one answer."""
    codings = [c.strip().lower() for v in response.headers.get_all("transfer-encoding") for c in v.split(",")]
    if any(c not in ("chunked", "identity", "") for c in codings):
        return f"it has the transfer coding {', '.join(codings)!r}; goex-proxy relays only chunked"
    if response.status_code == 206 and "multipart/byteranges" in response.headers.get("content-type", "").lower():
        return "it holds several byte ranges (multipart/byteranges); ask for one range at a time"
    return None
