"""mitmproxy's HTTP layers held to `limits:` where the bytes arrive: request heads (HTTP/1) and header lists (HTTP/2)
past `max_header_bytes`, bodies past their cap (413 before they are buffered whole), HTTP/2 streams past
`http2_max_streams` and resets past `http2_max_resets`; and a request that fails before it was forwarded says so.
An upstream's interim answers (100 Continue, 103 Early Hints) are passed over, not taken for its final one.

mitmproxy bounds none of these per connection (its HTTP/1 reader says "FIXME: protect against header size DoS"), and
its `body_size_limit` is one number for every request and response. The classes below are small subclasses that
`install()` puts where mitmproxy's HTTP layer looks them up; the `HttpBounds` addon installs them and tells them the
limits of the proxy they run in."""

from __future__ import annotations

import collections
import logging
import re
import time
from collections.abc import Callable, Generator
from typing import Any

import h2.errors
import h2.events
import h2.exceptions
import h11
from mitmproxy import ctx, flow, version
from mitmproxy.connection import ConnectionState
from mitmproxy.net.http import status_codes
from mitmproxy.proxy import commands, events, layer
from mitmproxy.proxy.layers import http as http_layers
from mitmproxy.proxy.layers.http import HttpStream, ReceiveHttp, SendHttp
from mitmproxy.proxy.layers.http._events import RequestHeaders, ResponseData, ResponseProtocolError
from mitmproxy.proxy.layers.http._hooks import HttpErrorHook
from mitmproxy.proxy.layers.http._http1 import Http1Client, Http1Server, make_error_response
from mitmproxy.proxy.layers.http._http2 import Http2Server, StreamState

from goex_proxy.addons import flowmeta
from goex_proxy.addons.state import ProxyState
from goex_proxy.net.clientlimits import ClientLimits, KiB, format_size
from goex_proxy.quietlog import QuietLog

log = logging.getLogger(__name__)
quiet = QuietLog(log)

#: The limits each running proxy's layers enforce, by the identity of that proxy's mitmproxy options (layers see
#: their options, not the addon); a layer of a proxy that published none uses the defaults.
_published: dict[int, ClientLimits] = {}
_DEFAULTS = ClientLimits()
#: What a request's error says when it ended before anything of it was forwarded (the audit row's outcome).
NOT_SENT = "not sent: "
_BLANK_LINE = re.compile(rb"\n\r?\n")
#: The status line of an interim answer: 1xx but 101 (which switches protocols, and is the final answer).
_INTERIM = re.compile(rb"HTTP/1\.[01] 1(?!01)[0-9][0-9][ \r\n]")
#: The most interim answers passed over before an upstream's final one: past it, the answer fails (the agent gets a
#: 502) and the connection closes. The head and body caps bound a final answer only; an upstream sending interim
#: answers without end would hold its request forever and spend the event loop's time parsing each.
MAX_INTERIM = 32
#: The most bytes of an upstream's answer head (its status line and header fields) read before its blank line, as
#: Chrome bounds one: past it, the answer fails (a 502) and the connection closes.
MAX_ANSWER_HEAD = 256 * KiB
#: How much of an unfinished answer head a failure quotes.
QUOTED_HEAD = 200
#: The longest error an upstream's HTTP/1 answer fails with (mitmproxy's parse errors quote the line they refuse).
QUOTED_ERROR = 800
#: Empty lines, as many as there are (mitmproxy drops one a read before a status line).
_EMPTY_LINES = re.compile(rb"(?:\r?\n)*")
#: Streams remembered per HTTP/2 connection whose END_STREAM came in the same read as their reset (see below).
_ENDED_EARLY_KEPT = 1024
#: The attribute a stream sets on the error it sends to the agent when the request is HEAD: its head alone.
_HEAD_ONLY = "goex_head_only"


def _head_only(event: Any) -> bool:
    """Whether `event` is an error answer to a HEAD request that is still to be sent (mitmproxy's 502 page)."""
    return isinstance(event, ResponseProtocolError) and getattr(event, _HEAD_ONLY, False) \
        and event.code != status_codes.NO_RESPONSE


def limits_for(options: Any) -> ClientLimits:
    """The limits published for these mitmproxy options (or the options a body cap overlays)."""
    return _published.get(id(getattr(options, "unwrapped", options)), _DEFAULTS)


def _peer(conn: Any) -> str:
    peer = getattr(conn, "peername", None)
    return f"{peer[0]}:{peer[1]}" if peer else "an unknown peer"


def _shown(text: str, most: int = 200) -> str:
    """Client-sent text as a log line may quote it: cut, with anything unprintable escaped."""
    cut = text[:most] + ("…" if len(text) > most else "")
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in cut)


def _peek(buf: Any, most: int) -> bytes:
    """An h11 receive buffer's first `most` bytes, without copying the rest of it (the whole of it, copied, if h11
    keeps its bytes otherwise than it does now)."""
    data = getattr(buf, "_data", None)
    return bytes(data[:most]) if isinstance(data, bytearray) else bytes(buf)[:most]


def _watched(commands_: Generator[Any, Any, Any], see: Callable[[Any], bool | None]) -> Generator[Any, Any, Any]:
    """`commands_` passed through as they are (replies sent back in), each shown to `see` before it is carried out and
    left out when `see` says False; returns what `commands_` returns."""
    reply = None
    while True:
        try:
            command = commands_.send(reply)
        except StopIteration as stop:
            return stop.value
        if see(command) is False:
            reply = None
            continue
        reply = yield command


class BoundedHttp1Server(Http1Server):
    """An HTTP/1 client connection whose request head, and whatever it pipelines while a request is answered, stays
    within `max_header_bytes`: past it, 431 and the connection is closed."""

    def read_headers(self, event: events.ConnectionEvent) -> layer.CommandGenerator[None]:
        cap = limits_for(self.context.options).max_header_bytes
        if isinstance(event, events.DataReceived) and len(self.buf) > cap:
            end = _BLANK_LINE.search(_peek(self.buf, cap + 3))
            if end is None or end.start() > cap:
                yield from self._refuse_head(cap)
                return
        yield from super().read_headers(event)

    def wait(self, event: events.Event) -> layer.CommandGenerator[None]:
        cap = limits_for(self.context.options).max_header_bytes
        if isinstance(event, events.DataReceived) and len(self.buf) > cap:
            quiet.warning("pipelined", f"closing the connection from {_peer(self.conn)}: it sent more than "
                                       f"{format_size(cap)} ahead while a request was answered (limits.max_header_bytes)")
            yield from super().wait(events.ConnectionClosed(self.conn))  # as if the client had gone: the same cleanup
            self.buf.maybe_extract_at_most(len(self.buf))
            self.state = self.done
            return
        yield from super().wait(event)

    def read_body(self, event: events.Event) -> layer.CommandGenerator[None]:
        if not isinstance(self.body_reader, _TrailersTaken):
            self.body_reader = _TrailersTaken(self.body_reader, refuse=True)  # type: ignore[assignment]
        try:
            yield from super().read_body(event)
        except _TrailersRefused:
            yield from self._refuse(400, "trailers", "the request has trailer fields after its chunked body, which "
                                                     "goex-proxy does not relay")
            return
        # What a read leaves in the buffer is a chunk-size line (with its extensions) or a trailer section not yet
        # ended: h11 looks for their end without bound, no body cap counts them, and the head's bound is behind.
        cap = limits_for(self.context.options).max_header_bytes
        if self.state == self.read_body and len(self.buf) > cap:
            yield from self._refuse(400, "framing", f"the request's chunked framing (a chunk-size line, its extensions "
                                                    f"or trailers) is over {format_size(cap)} without its end "
                                                    "(limits.max_header_bytes)")

    def send(self, event: Any) -> layer.CommandGenerator[None]:
        """mitmproxy's error answer (a 502 page) to a HEAD request goes as its head alone (RFC 9110 9.3.2), then the
        connection closes, as mitmproxy closes it."""
        if _head_only(event) and not self.response and self.conn.state & ConnectionState.CAN_WRITE:
            raw = make_error_response(event.code, event.message)
            yield commands.SendData(self.conn, raw[:raw.index(b"\r\n\r\n") + 4])
            yield commands.CloseConnection(self.conn)
            return
        yield from super().send(event)

    def _refuse_head(self, cap: int) -> layer.CommandGenerator[None]:
        yield from self._refuse(431, "head", f"the request head is over {format_size(cap)} (limits.max_header_bytes)")

    def _refuse(self, status: int, kind: str, why: str) -> layer.CommandGenerator[None]:
        quiet.warning(kind, f"refused a request from {_peer(self.conn)}: {why}; answered {status} and closed")
        yield commands.SendData(self.conn, make_error_response(status, f"goex-proxy: {why}; nothing was forwarded"))
        yield commands.CloseConnection(self.conn)
        self.buf.maybe_extract_at_most(len(self.buf))
        self.state = self.done


class BoundedHttp1Client(Http1Client):
    """An HTTP/1 upstream connection that frames the HTTP/2 requests it relays (`send`), passes over interim answers
    (100 Continue, 102, 103 Early Hints) before the final one, as RFC 9110 has clients do, and reads an answer's head
    and chunked framing only up to MAX_ANSWER_HEAD. mitmproxy's took the first interim answer for the final one (the
    agent got a 103 with no body, its row said 103 for a request the upstream went on to answer, and the real answer
    was dropped as data for no request), and kept every byte of a head that never ended, then quoted all of it in the
    agent's 502 and the row's error."""

    #: The request whose interim answers and empty lines were counted, and how many it had.
    _interim_of: object = None
    _interim_seen = 0
    _empty_seen = 0

    def send(self, event: Any) -> layer.CommandGenerator[None]:
        """An HTTP/2 (or /3) request relayed over HTTP/1.1 is framed: mitmproxy sent its head with neither
        Content-Length nor Transfer-Encoding (HTTP/2 needs neither), so the upstream read no body and took the body's
        bytes as the next request, one no policy saw and no row holds. A body of known length gets its
        Content-Length, a streamed one goes chunked. (Requests with trailer fields are refused before this.)"""
        if isinstance(event, RequestHeaders) and (event.request.is_http2 or event.request.is_http3):
            request = event.request.copy()
            body = request.raw_content
            request.headers.pop("transfer-encoding", None)
            if body is None:
                request.headers.pop("content-length", None)
                request.headers["transfer-encoding"] = "chunked"
            elif body or "content-length" in request.headers:
                request.headers["content-length"] = str(len(body))
            event = RequestHeaders(event.stream_id, request, event.end_stream, event.replay_flow)
        yield from super().send(event)

    def read_headers(self, event: events.ConnectionEvent) -> layer.CommandGenerator[None]:
        if isinstance(event, events.DataReceived) and self.request:
            if self._interim_of is not self.request:
                self._interim_of, self._interim_seen, self._empty_seen = self.request, 0, 0
            while True:
                # Empty lines before a status line, all at once (mitmproxy drops one a read: an answer after two
                # waited for another read, and CRLFs without end were all kept), counted toward the head's bound.
                empty = 0
                if _peek(self.buf, 1) in (b"\r", b"\n"):  # most answers start with their status line: nothing copied
                    lines = _EMPTY_LINES.match(_peek(self.buf, MAX_ANSWER_HEAD + 2))
                    empty = len(lines.group()) if lines else 0
                if empty:
                    self.buf.maybe_extract_at_most(empty)
                    self._empty_seen += empty
                    if self._empty_seen > MAX_ANSWER_HEAD:
                        yield from self._fail(f"the upstream sent over {format_size(MAX_ANSWER_HEAD)} of empty lines "
                                              "before its answer head")
                        return
                interim = self.buf and _INTERIM.match(_peek(self.buf, 16))
                if not (interim and self.buf.maybe_extract_lines() is not None):
                    break
                # a whole interim head, dropped; an incomplete one waits for more bytes, as mitmproxy's does
                self._interim_seen += 1
                if self._interim_seen > MAX_INTERIM:
                    yield from self._fail(f"the upstream sent more than {MAX_INTERIM} interim answers (1xx) before "
                                          "its final one")
                    return
            if len(self.buf) > MAX_ANSWER_HEAD:
                end = _BLANK_LINE.search(_peek(self.buf, MAX_ANSWER_HEAD + 3))
                if end is None or end.start() > MAX_ANSWER_HEAD:
                    yield from self._fail(f"the upstream's answer head is over {format_size(MAX_ANSWER_HEAD)}")
                    return
        elif isinstance(event, events.ConnectionClosed) and self.stream_id and self.buf:
            # mitmproxy's quotes the whole unfinished head in the agent's 502 and the row's error: a part of it
            cut = _peek(self.buf, QUOTED_HEAD)
            if self.conn.state & ConnectionState.CAN_WRITE:
                yield commands.CloseConnection(self.conn)
            yield ReceiveHttp(ResponseProtocolError(
                self.stream_id, f"unexpected server response: {cut!r}"
                + (f" and {len(self.buf) - QUOTED_HEAD} bytes more" if len(self.buf) > QUOTED_HEAD else "")))
            return
        yield from super().read_headers(event)

    def read_body(self, event: events.Event) -> layer.CommandGenerator[None]:
        if not isinstance(self.body_reader, _TrailersTaken):
            self.body_reader = _TrailersTaken(self.body_reader)  # type: ignore[assignment]
        yield from super().read_body(event)
        # What a read leaves in the buffer is a chunk-size line or a trailer section not yet ended (the readers take
        # every byte of body they are given): h11 looks for their end without bound, and no body cap counts them.
        if self.state == self.read_body and self.stream_id is not None and len(self.buf) > MAX_ANSWER_HEAD:
            yield from self._fail(f"the upstream sent over {format_size(MAX_ANSWER_HEAD)} of its answer's chunked "
                                  "framing (a chunk-size line or trailers) without its end")
            self.buf.maybe_extract_at_most(len(self.buf))

    def _fail(self, why: str) -> layer.CommandGenerator[None]:
        """The request's answer fails (the agent gets a 502 saying `why`); the upstream connection is closed."""
        assert self.stream_id is not None
        yield commands.CloseConnection(self.conn)
        yield ReceiveHttp(ResponseProtocolError(self.stream_id, why))


class _TrailersRefused(Exception):
    """A request's body ended with trailer fields."""


class _TrailersTaken:
    """A body reader whose end of message carries no trailer fields, which mitmproxy's HTTP/1 layer raises
    NotImplementedError on (its connection crashed, and the peer waited for a hang-up): an answer's are dropped (RFC
    9112 7.1.2 lets a recipient that removes the chunked coding discard them); a request's raise _TrailersRefused,
    since what an agent sends is relayed whole or not at all."""

    def __init__(self, reader: Any, refuse: bool = False) -> None:
        self.reader, self.refuse = reader, refuse

    def __call__(self, buf: Any) -> Any:
        event = self.reader(buf)
        if isinstance(event, h11.EndOfMessage) and event.headers:
            if self.refuse:
                raise _TrailersRefused
            log.debug("dropped the trailer fields of an upstream's chunked answer (HTTP/1 relays none)")
            return h11.EndOfMessage()
        return event

    def read_eof(self) -> Any:
        return self.reader.read_eof()


class BoundedHttp2Server(Http2Server):
    """An HTTP/2 client connection that advertises, and holds the client to, at most `http2_max_streams` concurrent
    streams and header lists of `max_header_bytes`, and is closed (ENHANCE_YOUR_CALM) once the client resets more than
    `http2_max_resets` streams in `http2_reset_window` seconds."""

    limits: ClientLimits

    def __init__(self, context: Any) -> None:
        super().__init__(context)
        self.limits = limits_for(context.options)
        settings = self.h2_conn.local_settings
        settings.max_concurrent_streams = self.limits.http2_max_streams
        settings.max_header_list_size = self.limits.max_header_bytes
        settings.acknowledge()  # sent in the connection preface (mitmproxy acknowledges its own settings the same way)
        self.h2_conn.decoder.max_header_list_size = self.limits.max_header_bytes
        self.resets: collections.deque[float] = collections.deque()
        self.ended_early: dict[int, None] = {}

    def handle_h2_event(self, event: Any) -> layer.CommandGenerator[bool]:
        if isinstance(event, h2.events.StreamReset) and event.remote_reset:
            if self._too_many_resets():
                return (yield from self._close_for("rapid reset", f"the client reset more than "
                                                   f"{self.limits.http2_max_resets} streams within "
                                                   f"{self.limits.http2_reset_window:g}s (limits.http2_max_resets)"))
            if event.stream_id in self.ended_early:
                # mitmproxy forgot this stream when its END_STREAM arrived in the same read as this reset, and would
                # drop the reset: the request went on as if nothing happened. Let it see the reset.
                del self.ended_early[event.stream_id]
                self.streams[event.stream_id] = StreamState.HEADERS_RECEIVED
        elif isinstance(event, h2.exceptions.TooManyStreamsError):
            return (yield from self._close_for("streams", f"the client opened more than "
                                               f"{self.limits.http2_max_streams} concurrent streams "
                                               "(limits.http2_max_streams)", h2.errors.ErrorCodes.PROTOCOL_ERROR))
        elif isinstance(event, h2.exceptions.DenialOfServiceError):
            return (yield from self._close_for("head", f"a request's header list is over "
                                               f"{format_size(self.limits.max_header_bytes)} "
                                               "(limits.max_header_bytes)"))
        elif isinstance(event, h2.events.StreamEnded) and event.stream_id in self.streams:
            stop: bool = yield from super().handle_h2_event(event)
            if event.stream_id not in self.streams:
                self.ended_early[event.stream_id] = None
                while len(self.ended_early) > _ENDED_EARLY_KEPT:
                    del self.ended_early[next(iter(self.ended_early))]
            return stop
        return bool((yield from super().handle_h2_event(event)))

    def _handle_event(self, event: Any) -> layer.CommandGenerator[None]:
        """mitmproxy's error answer (a 502 page) to a HEAD request goes as its headers alone, which end the stream
        (RFC 9110 9.3.2): its page as DATA was a stream error to the client."""
        if _head_only(event) and self.is_open_for_us(event.stream_id) \
                and not self.h2_conn.streams[event.stream_id].state_machine.headers_sent:
            self.h2_conn.send_headers(event.stream_id, [(b":status", b"%d" % event.code),
                                                        (b"server", version.MITMPROXY.encode()),
                                                        (b"content-type", b"text/html")], end_stream=True)
            yield commands.SendData(self.conn, self.h2_conn.data_to_send())
            return
        yield from super()._handle_event(event)

    def _too_many_resets(self) -> bool:
        now = time.monotonic()
        self.resets.append(now)
        while self.resets and self.resets[0] <= now - self.limits.http2_reset_window:
            self.resets.popleft()
        return len(self.resets) > self.limits.http2_max_resets

    def _close_for(self, kind: str, why: str,
                   code: h2.errors.ErrorCodes = h2.errors.ErrorCodes.ENHANCE_YOUR_CALM) -> layer.CommandGenerator[bool]:
        quiet.warning(f"h2 {kind}", f"closed the HTTP/2 connection from {_peer(self.conn)}: {why}")
        yield from self.protocol_error(f"goex-proxy: {why}", error_code=code)
        return True


class _BodyCapOptions:
    """A stream's view of its proxy's mitmproxy options, with `body_size_limit` (one number in mitmproxy) set to the
    cap of the body it is checking: the request's for its host, or the response's."""

    def __init__(self, options: Any, stream: BoundedHttpStream) -> None:
        self.unwrapped = getattr(options, "unwrapped", options)
        self._stream = stream

    def __getattr__(self, name: str) -> Any:
        if name == "body_size_limit":
            return str(self._stream.body_cap()[0])
        return getattr(self.unwrapped, name)


class BoundedHttpStream(HttpStream):
    """One request and its response, whose bodies are refused past their caps (mitmproxy's own check, with the cap of
    this host and direction: 413 before a request body is buffered whole, 502 for a response), and whose error, when
    it comes before the request was forwarded, starts with "not sent: " (a client that resets or leaves meanwhile).
    The answer to a HEAD request is its head alone (RFC 9110 9.3.2): an answer goex-proxy made (a denial, a 407)
    keeps its body for the row and the live line, but mitmproxy sent it, and a client reading no body for HEAD took
    it for the start of the next answer (over HTTP/2, a stream error)."""

    limits: ClientLimits

    def __init__(self, context: Any, stream_id: int) -> None:
        super().__init__(context, stream_id)
        self.limits = limits_for(context.options)
        self.context.options = _BodyCapOptions(context.options, self)  # type: ignore[assignment]
        self.forwarded = False
        self.checking: bool | None = None  # which body the size check is looking at: True the request's, False the response's
        self.refusal: str | None = None

    def body_cap(self) -> tuple[int, str]:
        host: str = self.flow.request.host if getattr(self, "flow", None) is not None else ""
        return self.limits.response_body_cap(host) if self.checking is False else self.limits.request_body_cap(host)

    def check_body_size(self, request: bool) -> layer.CommandGenerator[bool]:
        self.checking = request
        try:
            refused: bool = yield from super().check_body_size(request)
            return refused
        finally:
            self.checking = None

    def _handle_event(self, event: events.Event) -> layer.CommandGenerator[None]:
        if isinstance(event, ResponseProtocolError) and len(event.message) > QUOTED_ERROR:
            # mitmproxy's parse errors quote the whole line they refuse (up to the head's bound, four times over as
            # escapes), into the agent's 502, the row and the log
            event.message = f"{event.message[:QUOTED_ERROR]}… ({len(event.message) - QUOTED_ERROR} characters more)"
        yield from _watched(super()._handle_event(event), self._see)

    def send_response(self, already_streamed: bool = False) -> layer.CommandGenerator[None]:
        sending = super().send_response(already_streamed)
        if self._asked_head():
            sending = _watched(sending, self._not_body_to_client)
        yield from sending

    def _asked_head(self) -> bool:
        return getattr(self, "flow", None) is not None and self.flow.request.method.upper() == "HEAD"

    def _not_body_to_client(self, command: Any) -> bool:
        return not (isinstance(command, SendHttp) and isinstance(command.event, ResponseData)
                    and command.connection is self.context.client)

    def _see(self, command: Any) -> None:
        if isinstance(command, SendHttp) and isinstance(command.event, RequestHeaders) \
                and command.connection is not self.context.client:
            self.forwarded = True
        elif isinstance(command, HttpErrorHook) and self.checking is not None:
            self.refusal = self._over_cap(self.checking)
            self.flow.error = flow.Error(self.refusal)
            self.flow.response = None  # its head alone: the agent gets a 502, and the audit row says why
        elif isinstance(command, HttpErrorHook) and not self.forwarded and self.flow.error is not None:
            if self.flow.error.msg != flow.Error.KILLED_MESSAGE and not self.flow.error.msg.startswith(NOT_SENT):
                self.flow.error = flow.Error(NOT_SENT + self.flow.error.msg, self.flow.error.timestamp)
        elif isinstance(command, SendHttp) and isinstance(command.event, ResponseProtocolError) \
                and command.connection is self.context.client:
            if self.refusal:
                command.event.message = f"goex-proxy: {self.refusal.removeprefix(NOT_SENT)}"  # what the client reads
            if self._asked_head():
                setattr(command.event, _HEAD_ONLY, True)  # mitmproxy's error page: the client reads no body for HEAD

    def _over_cap(self, request: bool) -> str:
        cap, setting = self.body_cap()
        req = self.flow.request
        who = f"{flowmeta.agent(self.flow) or 'a client without a known agent'} ({_peer(self.flow.client_conn)})"
        if request:
            why = f"the request body is over {format_size(cap)} ({setting})"
            quiet.warning("request body", f"refused {_shown(req.method)} {_shown(req.pretty_url)} from {who}: {why}; "
                                           "answered 413, nothing was forwarded")
            return NOT_SENT + why
        status = self.flow.response.status_code if self.flow.response is not None else "?"
        why = f"the response body is over {format_size(cap)} ({setting})"
        quiet.warning("response body", f"withheld the answer to {_shown(req.method)} {_shown(req.pretty_url)} from "
                                        f"{who}: {why}; answered 502 (the request was sent)")
        return f"the request was sent and answered {status}, but {why}: withheld from the agent"


#: What `install` replaces in mitmproxy's HTTP layer, by the name it looks each class up by, and the methods of
#: mitmproxy's own class the replacement relies on.
_REPLACED: dict[str, tuple[type, type, tuple[str, ...]]] = {
    "Http1Server": (Http1Server, BoundedHttp1Server, ("read_headers", "read_body", "wait", "done", "send")),
    "Http2Server": (Http2Server, BoundedHttp2Server, ("handle_h2_event", "protocol_error", "_handle_event",
                                                      "is_open_for_us")),
    "Http1Client": (Http1Client, BoundedHttp1Client, ("read_headers", "read_body", "send")),
    "HttpStream": (HttpStream, BoundedHttpStream, ("check_body_size", "_handle_event", "send_response")),
}


def install() -> None:
    """Make mitmproxy's HTTP layer (in this process) build the bounded classes; refuse if mitmproxy's own classes lack
    what they rely on."""
    for name, (original, bounded, needs) in _REPLACED.items():
        missing = [m for m in needs if not callable(getattr(original, m, None))]
        if missing:
            raise RuntimeError(f"this mitmproxy's {name} has no {', '.join(missing)}: goex-proxy cannot bound its "
                               "HTTP connections")
        if getattr(http_layers, name) not in (original, bounded):
            raise RuntimeError(f"mitmproxy's HTTP layer builds another {name} than its own")
        setattr(http_layers, name, bounded)


def installed() -> bool:
    return all(getattr(http_layers, name) is bounded for name, (_, bounded, _) in _REPLACED.items())


class HttpBounds:
    """Installs the bounded HTTP layers and publishes this proxy's `limits:` to them; refuses to run without them."""

    def __init__(self, state: ProxyState) -> None:
        self.state = state
        self._options_id: int | None = None

    def load(self, loader: object) -> None:
        try:
            install()
        except RuntimeError as exc:
            log.error("%s", exc)
        self._publish()

    def configure(self, updated: set[str]) -> None:
        self._publish()  # under mitmdump, the config is read when `goex_config` is set

    def running(self) -> None:
        if not installed():
            log.error("goex-proxy's HTTP bounds are not in place (see above); shutting down")
            ctx.master.shutdown()
        self._publish()

    def done(self) -> None:
        if self._options_id is not None:
            _published.pop(self._options_id, None)

    def _publish(self) -> None:
        if self.state.config is not None:
            self._options_id = id(ctx.options)
            _published[self._options_id] = self.state.config.limits
