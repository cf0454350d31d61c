"""Stage 10, scrub: echoes of injected secrets become placeholders, and upstream `X-Goex-*` headers are removed."""

from __future__ import annotations

import weakref

from mitmproxy import http, tcp

from goex_proxy.addons import flowmeta, replies, unhooked
from goex_proxy.addons.failclosed import fail_closed
from goex_proxy.addons.state import ProxyState
from goex_proxy.credentials.redact import ScrubStream, SecretScrubber
from goex_proxy.net import bodies


class Scrub:
    """Cleans upstream responses, and mitmproxy's own error pages, before the agent sees them."""

    def __init__(self, state: ProxyState) -> None:
        self.state = state
        #: each WebSocket's or raw stream's matcher for the upstream's messages (kept here, not in flow.metadata, which
        #: can be exported)
        self._streams: weakref.WeakKeyDictionary[http.HTTPFlow | tcp.TCPFlow, ScrubStream] = \
            weakref.WeakKeyDictionary()
        unhooked.scrub_unhooked(state)

    @fail_closed("scrub")
    def responseheaders(self, flow: http.HTTPFlow) -> None:
        if flow.response is None or flowmeta.is_own_response(flow):
            return
        self._mark_headers(flow, flow.response)

    def _mark_headers(self, flow: http.HTTPFlow, response: http.Response) -> None:
        """Drop upstream `X-Goex-*` fields; add the request id and decision."""
        flowmeta.set_headers_scrubbed(flow, response)
        headers = response.headers
        prefix = replies.PREFIX.encode()
        if any(k.lower().startswith(prefix) for k, _ in headers.fields):  # raw fields: cheap to scan
            headers.fields = tuple((k, v) for k, v in headers.fields if not k.lower().startswith(prefix))
        headers["X-Goex-Request-Id"] = flowmeta.request_id(flow)
        d = flowmeta.decision(flow)
        if d is not None:
            headers["X-Goex-Decision"] = d.label

    @fail_closed("scrub")
    def response(self, flow: http.HTTPFlow) -> None:
        """An upstream that echoes a secret (in any spelling) shows the agent the placeholder instead. The whole
        answer is one stream (reason, header names and values, body, trailers: mitmproxy sends none of it before this
        hook), so a secret split between any two of them is caught."""
        if flow.response is None or flowmeta.is_own_response(flow):
            return
        if not flowmeta.headers_scrubbed(flow, flow.response):  # replaced after its headers came (inject retried it)
            self._mark_headers(flow, flow.response)
        if not self.state.scrubber:
            return
        response = flow.response
        problem, content = checked(self.state, flow, response)
        flowmeta.drop_checked(flow)
        if problem is None and content is not None:
            self._clean(response, content)
        else:
            replies.reply(flow, 502, {"error": "goex-proxy: the upstream's answer cannot be checked for secrets, so "
                                               "it is withheld", "reason": problem})

    def _clean(self, response: http.Response, content: bytes) -> None:
        """Scrub the answer (checked) in place as one stream (a range of a body keeps its length)."""
        stream = self.state.scrubber.stream()
        response.data.reason, response.headers.fields = _clean_fields(stream, response.data.reason,
                                                                      response.headers.fields)
        cleaned = stream.feed(content, keep_length=response.status_code == 206)  # a range keeps its length
        if cleaned != content:
            response.content = cleaned  # re-encoded with the response's Content-Encoding
        if response.trailers:
            _, response.trailers.fields = _clean_fields(stream, b"", response.trailers.fields)

    @fail_closed("scrub")
    def error(self, flow: http.HTTPFlow) -> None:
        """mitmproxy's error keeps what a broken upstream sent (an echoed secret, say) for its flow files and dump."""
        if flow.error is not None:
            flow.error.msg = unhooked.scrubbed_text(flow.error.msg)

    @fail_closed("scrub")
    def websocket_message(self, flow: http.HTTPFlow) -> None:
        """Messages from the upstream over an allowed WebSocket are scrubbed as one stream (a secret split across
        messages is caught where it ends, and a possible start of one is withheld at the end of a message)."""
        if flow.websocket is None or not self.state.scrubber:
            return
        message = flow.websocket.messages[-1]
        if not message.from_client:
            message.content = self._stream(flow).feed(message.content)

    @fail_closed("scrub")
    def tcp_message(self, flow: tcp.TCPFlow) -> None:
        """What the upstream sends over a raw stream a rule allows (after an upgrade whose request had a credential
        injected, say) is scrubbed as a WebSocket's messages are: relayed blind, it gave an echoed secret back."""
        message = flow.messages[-1]
        if not message.from_client and self.state.scrubber:
            message.content = self._stream(flow).feed(message.content)

    def _stream(self, flow: http.HTTPFlow | tcp.TCPFlow) -> ScrubStream:
        stream = self._streams.get(flow)
        if stream is None:
            stream = self._streams[flow] = self.state.scrubber.stream()
        return stream


def _clean_fields(stream: ScrubStream, lead: bytes, fields: tuple[tuple[bytes, bytes], ...]
                  ) -> tuple[bytes, tuple[tuple[bytes, bytes], ...]]:
    """A lead (the reason) and header fields fed through the stream in order, or passed over when nothing in them
    could be part of a secret (the quick no that spares most header blocks the stream)."""
    segments = [lead, *(part for field in fields for part in field)]
    if not stream.touches(segments):
        stream.skip(b"".join(segments))
        return lead, fields
    return stream.feed(lead), tuple((stream.feed(k), stream.feed(v)) for k, v in fields)


def withheld(state: ProxyState, flow: http.HTTPFlow) -> str | None:
    """Why the upstream's answer to this flow will not reach the agent (it cannot be checked for secrets), if it will
    not: asked by record for the row's outcome before this stage withholds it."""
    if flow.response is None or flowmeta.is_own_response(flow) or not state.scrubber:
        return None
    return checked(state, flow, flow.response)[0]


def checked(state: ProxyState, flow: http.HTTPFlow, response: http.Response) -> tuple[str | None, bytes | None]:
    """Why this answer cannot be checked for secrets (or None) and its decoded body, worked out once for each answer
    (record asks first, for its row; this stage then acts on it)."""
    kept = flowmeta.checked(flow, response)
    if kept is None:
        kept = _check(state.scrubber, response)
        flowmeta.set_checked(flow, response, kept)
    return kept


def _check(scrub: SecretScrubber, response: http.Response) -> tuple[str | None, bytes | None]:
    problem = unscannable(response)
    if problem is not None:
        return problem, None
    raw, coding = response.raw_content or b"", response.headers.get("content-encoding", "")
    if not raw:  # no body (HEAD, 204, 304 name the coding of one they do not send): nothing to decode or hide
        return None, raw
    try:
        content = bodies.decode(raw, coding)
    except ValueError as exc:  # what we cannot undo could hide a secret: nothing unchecked reaches the agent
        # Our own answer is not scrubbed: it must not quote the upstream's header (a secret's hex, lower-cased),
        # so only a decoder's own message for a coding it knows is shown.
        known = coding.strip().lower() in ("gzip", "x-gzip", "deflate", "br", "zstd")
        why = str(exc) if known else "it is not gzip, deflate, br or zstd"
        return f"its content encoding cannot be undone ({why[:200]})", None
    # The encoded bytes go to the agent as they came unless something is replaced, and a decoder passes over
    # some of them (what follows the end of a deflate stream): a secret there would reach the agent unread.
    if raw is not content and scrub.stream().feed(raw) != raw:  # (identity: decode gives `raw` itself back)
        return "a secret is in its encoded bytes, outside what its content encoding decodes to", None
    for layer in bodies.inner_layers(content):
        if scrub.bytes(layer) != layer:
            return "a secret is inside a compressed layer within the body", None
    return None, content


def unscannable(response: http.Response) -> str | None:
    """Why an answer's bytes could reach the agent in a form the scrubber does not read, if they could: a transfer
    coding other than chunked (the client would undo it), or several byte ranges in one answer."""
    codings = [c.strip().lower() for v in response.headers.get_all("transfer-encoding") for c in v.split(",")]
    if any(c not in ("chunked", "identity", "") for c in codings):
        return f"it has the transfer coding {', '.join(codings)!r}; goex-proxy relays only chunked"
    if response.status_code == 206 and "multipart/byteranges" in response.headers.get("content-type", "").lower():
        return "it holds several byte ranges (multipart/byteranges); ask for one range at a time"
    return None
