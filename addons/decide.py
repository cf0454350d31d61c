"""Stage 2, decide: turn the flow into a RequestView and ask the pure policy engine; a denial answers 403."""

from __future__ import annotations

import asyncio
import logging
import re
import time
import weakref
from collections.abc import Awaitable
from typing import Any
from urllib.parse import parse_qsl

from mitmproxy import connection, dns, http, tcp, udp
from mitmproxy.flow import Error

from goex_proxy.addons import flowmeta, replies
from goex_proxy.addons.failclosed import fail_closed
from goex_proxy.addons.state import ProxyState
from goex_proxy.hostkey import host_key
from goex_proxy.inturn import InTurn
from goex_proxy.net import bodies
from goex_proxy.policy.engine import Decision, PolicySet, decide, waiting_as_strictly
from goex_proxy.policy.limits import Charge
from goex_proxy.policy.requestview import (
    NOT_PARSED,
    RequestView,
    aws_unchunked,
    canonical_path,
    checked_json,
    content_type_problem,
    decoded_readings,
    field_problem,
    form_size_problem,
    key_collision,
    path_ambiguity,
    readings,
    token_problem,
    upgrade_protocol,
    with_changes,
    with_json,
)

log = logging.getLogger(__name__)

#: the Content-Encodings goex-proxy undoes as servers do: `aws-chunked` (S3 streaming uploads) itself, the rest with
#: mitmproxy. Any other (stacked, `compress`, mitmproxy's own `deflateraw` or Python codecs such as `base64`) would
#: have the policy read other bytes than the upstream.
DECODABLE = frozenset({"identity", "gzip", "deflate", "br", "zstd", "aws-chunked"})


#: What no request target may hold: a space, a control character or DEL (each would end or split the request line).
_SPACE_OR_CONTROL = re.compile(r"[\x00-\x20\x7f]")


def _host_of(authority: str) -> tuple[str, int | None]:
    host, _, port = authority.rpartition(":") if not authority.endswith("]") else (authority, "", "")
    if not host or not port.isdigit():
        host, port = authority, ""
    return host_key(host.strip("[]")), int(port) if port else None


def target_problem(flow: http.HTTPFlow, path: str | None) -> str | None:
    """Why the request's parts disagree on where it goes (CONNECT target or URL, Host header, TLS SNI), if they do.

    `path` is the request's canonical path (None when it is ambiguous)."""
    req = flow.request
    host = host_key(req.host)
    # The version a request says must be its connection's: an HTTP/1 request line saying `HTTP/2.0` (mitmproxy reads
    # any `HTTP/d.d`) made the request count as HTTP/2, whose host is read from the URL alone, while the Host header
    # the upstream reads once it is relayed as HTTP/1.1 went unchecked.
    over_h2 = flow.client_conn.alpn == b"h2"
    if req.http_version not in (("HTTP/2.0",) if over_h2 else ("HTTP/1.0", "HTTP/1.1")):
        return (f"the request says {req.http_version[:20]!r} over an {'HTTP/2' if over_h2 else 'HTTP/1'} connection; "
                "send the version it is sent with")
    # Every Host field, not only the one `host_header` reads (an HTTP/2 request's `:authority`, which h2 compares with
    # the last `host` field only): relayed over HTTP/1.1, each is a Host header, and servers that take the first serve
    # the host it names.
    fields = req.headers.get_all("host")
    if len(fields) > 1:
        return f"the request has {len(fields)} Host headers ({', '.join(map(repr, fields))[:200]}); send one"
    for value in dict.fromkeys([req.host_header, *fields] if req.host_header else fields):  # HTTP/1's is its field
        named, port = _host_of(value)
        if named != host or (port is not None and port != req.port):
            return f"the Host header names {value[:100]!r} but the request goes to {host}:{req.port}"
    if req.authority and not req.is_http2:
        # HTTP/1 absolute-form: outside a tunnel the URL gave the host (so they agree); inside one, the host is the
        # tunnel's, and a server reading the request line would go where it says instead (RFC 9112 3.2.2).
        named, port = _host_of(req.authority)
        if named != host or (port is not None and port != req.port):
            return f"the request line names {req.authority!r} but the request goes to {host}:{req.port}"
        if flow.client_conn.tls_established:  # mitmproxy rewrites its scheme to https; no client sends this form
            return f"the request line names a full URL ({req.authority!r}) inside a TLS tunnel; send its path only"
    sni = flow.client_conn.sni
    if sni and host_key(sni) != host:
        return f"the TLS server name {sni!r} does not match the request's host {host!r}"
    if not req.path.startswith("/") and not (req.method.upper() == "OPTIONS" and req.path == "*"):
        return f"the request target {req.path[:100]!r} is not a path starting with '/'"
    if _SPACE_OR_CONTROL.search(req.path) or _SPACE_OR_CONTROL.search(req.authority):
        return f"the request target {req.path[:100]!r} holds a space or control character"
    if (why := token_problem(req.method)) is not None:
        return why
    if path is None:
        raw = req.path.split("?", 1)[0]
        why = path_ambiguity(raw) or "servers read it differently"
        return f"the path {raw!r} is ambiguous: {why}; send its plain form"
    return None


def fields_problem(message: http.Message) -> str | None:
    """Why a request's or response's header or trailer fields are refused before anything reads them, if they are (a
    response's fields are named by their place: what an upstream sent is not quoted back unscrubbed)."""
    quote = isinstance(message, http.Request)
    problem = field_problem(message.headers.fields, quote=quote)
    if problem is None and message.trailers is not None:
        problem = field_problem(message.trailers.fields, "trailer", quote=quote)
    return problem


#: The fields a request's Connection header may name: those every hop handles itself (RFC 9110 7.6.1, 9112 9.6).
HOP_BY_HOP = frozenset({"close", "keep-alive", "upgrade", "te"})


def framing_problem(req: http.Request) -> str | None:
    """Why a request's hop-by-hop fields would have the next hop read another request than policy decides on, if they
    would. mitmproxy relays them as the agent sent them: a transfer coding but chunked is left on the body the policy
    reads (an upstream that undoes it runs other bytes), and a field the Connection header names is removed by the
    next intermediary in front of the upstream (a header a condition required never reaches the application)."""
    coding = ",".join(req.headers.get_all("transfer-encoding"))
    if coding and re.sub(r"[\t ]", "", coding).lower() != "chunked":
        return (f"the request's Transfer-Encoding {coding[:100]!r} applies a coding but chunked, which the policy would "
                "not read through; send the body as it is, chunked or with a Content-Length")
    named = {token.strip().lower() for value in req.headers.get_all("connection") for token in value.split(",")}
    removed = named - HOP_BY_HOP - {""}
    if removed:
        return (f"the request's Connection header names {', '.join(sorted(removed))[:100]!r}, which the next hop would "
                "remove before the upstream reads it; send it without")
    return None


def read_body(req: http.Request) -> tuple[bytes, str | None, Any]:
    """The body as the upstream will read it (Content-Encoding undone), why it is refused before policy if it is, and
    the body parsed as JSON if checking it parsed it (else `NOT_PARSED`).

    A body is refused when its Content-Encoding is not in `DECODABLE` or does not decode (rather than decided on bytes
    the policy cannot read), when servers could parse it more than one way (`checked_json`), or when it is a form
    of more fields than the proxy reads (`form_size_problem`)."""
    if not req.raw_content:
        return b"", None, NOT_PARSED
    coding = req.headers.get("content-encoding", "")
    if coding and coding.lower() not in DECODABLE:
        return b"", _undecodable(coding, f"goex-proxy reads only {', '.join(sorted(DECODABLE))}"), NOT_PARSED
    try:
        if coding.lower() == "aws-chunked":
            body = aws_unchunked(req.raw_content)
        else:
            body = bodies.decode(req.raw_content, coding)
    except ValueError as e:  # mitmproxy wraps the decoder's own error, which says what is wrong
        cause = e.__context__ or e
        return b"", _undecodable(coding, f"{type(cause).__name__}: {str(cause)[:100]}"), NOT_PARSED
    if (problem := form_size_problem(body, req.headers.get("content-type", ""))) is not None:
        return b"", problem, NOT_PARSED
    return body, *checked_json(body)


def _undecodable(coding: str, why: str) -> str:
    return (f"the request body's Content-Encoding {coding[:100]!r} could not be decoded ({why}); it is refused rather "
            "than decided on bytes the policy cannot read")


def policy_view(flow: http.HTTPFlow, agent: str | None, path: str, parse: bool = False) -> RequestView | Decision:
    """The view policy decides the request on, its body decoded and checked (`read_body`), or the refusal of a body or
    an Upgrade header policy cannot read. `parse`: the form and the method overrides parsed now too (off the event
    loop, where the view is then read)."""
    body, problem, parsed = read_body(flow.request)
    if problem is not None:
        return Decision("deny", f"refused before policy: {problem}", "request-body")
    try:
        protocol = upgrade_protocol(flow.request.headers.get_all("Upgrade"))
    except ValueError as exc:
        return Decision("deny", f"refused before policy: {exc}", "request-upgrade")
    view = with_json(request_view(flow, agent, path, body, protocol), parsed)
    if parse:
        view.override_methods  # noqa: B018  (cached on the view, with the form it reads)
    return view


def header_pairs(headers: http.Headers, keep_case: bool = False) -> tuple[tuple[str, str], ...]:
    """(name, value) pairs in order (names lower-cased unless `keep_case`), read straight from the raw fields:
    mitmproxy's items(multi=True) looks every name up again."""
    pairs = ((k.decode("latin-1"), v.decode("utf-8", "surrogateescape")) for k, v in headers.fields)
    return tuple(pairs) if keep_case else tuple((k.lower(), v) for k, v in pairs)


def methods_run_as(flow: http.HTTPFlow) -> tuple[str, ...]:
    """The method the request has, then any other a server may run it as (a method override names one)."""
    own = flow.request.method.upper()
    view = flowmeta.view(flow)
    others = sorted(view.override_methods - {own}) if view is not None else []
    return (own, *others)


def request_view(flow: http.HTTPFlow, agent: str | None, path: str, body: bytes | None = None,
                 protocol: str = "http") -> RequestView:
    """What the policy sees of a flow: the host it will connect to, the canonical path, the decoded body.

    `body` is the body `read_body` gave; without it the body is decoded leniently (raw bytes if it does not decode)."""
    req = flow.request
    return RequestView(
        agent=agent,
        method=req.method.upper(),
        scheme=req.scheme,
        host=host_key(req.host),
        port=req.port,
        path=path,
        query=tuple(parse_qsl(query, keep_blank_values=True)) if (query := req.path.partition("?")[2]) else (),
        headers=header_pairs(req.headers),
        body=(req.get_content(strict=False) or b"") if body is None else body,
        protocol=protocol,
    )


#: A body this large (or any compressed one) is decoded and parsed for policy off the event loop: a 32 MiB form of
#: escapes, or JSON of many small values, held every other agent's requests for seconds (bench/body_parse_bench.py).
BODY_OFF_LOOP = 256 * 1024
#: The one thread a proxy process reads large bodies for policy in, one at a time (so that the memory a parse takes is
#: held for one body at most, as on the event loop), agents taking turns (an agent with many bodies waiting delays
#: another's by one body). Its Python gives the event loop turns (the interpreter's switch interval); a stretch of
#: JSON that needs no Python (an array of numbers) does not.
_BODY_THREAD = InTurn("goex-body")


class Decide:
    """Allows or denies each request by policy; counts allowed requests against their rules' limits. What the proxy
    cannot inspect (raw TCP in a tunnel, an HTTP Upgrade to anything but WebSocket) is denied unless a rule with that
    `protocol` allows it."""

    def __init__(self, state: ProxyState) -> None:
        self.state = state
        #: the protocol a policy allowed the last request on a client connection to upgrade to
        self.upgrades: weakref.WeakKeyDictionary[connection.Client, str] = weakref.WeakKeyDictionary()

    @fail_closed("decide")
    def request(self, flow: http.HTTPFlow) -> Awaitable[None] | None:
        if flow.response or flow.error or not flow.live:
            return None
        agent = flowmeta.agent(flow)
        now = time.time()
        problem = fields_problem(flow.request) or framing_problem(flow.request)
        if problem is None and flow.request.trailers:
            # HTTP/2 carries them after the body (HTTP/1's are refused as they are read): neither policy nor the audit
            # row sees them, so they are not relayed, as what an agent sends is relayed whole or not at all
            problem = "the request has trailer fields, which goex-proxy does not relay"
        if problem is not None:
            replies.refuse(flow, Decision("deny", f"refused before policy: {problem}", "request-fields"))
            return None
        path = canonical_path(flow.request.path.split("?", 1)[0] or "/")
        problem = target_problem(flow, path)
        if problem is not None or path is None:
            replies.refuse(flow, Decision("deny", f"refused before policy: {problem or 'ambiguous path'}",
                                          "request-target"))
            return None
        self.upgrades.pop(flow.client_conn, None)
        raw = flow.request.raw_content or b""
        if len(raw) >= BODY_OFF_LOOP or (raw and flow.request.headers.get("content-encoding")):
            return self._decided_off_loop(agent, path, flow)
        self._decide(flow, agent, now, path, policy_view(flow, agent, path))
        return None

    @fail_closed("decide")
    async def _decided_off_loop(self, agent: str | None, path: str, flow: http.HTTPFlow) -> None:
        """`_decide`, its body decoded and parsed in the body thread (`policy_view`): one at a time, the event loop
        going on meanwhile. Decided as of when it is decided (limits, `now` in conditions), not as of when the body
        came: a body that waited behind others would be counted in a window that has moved on since."""
        view = await asyncio.wrap_future(_BODY_THREAD.submit(agent, policy_view, flow, agent, path, True))
        self._decide(flow, agent, time.time(), path, view)

    def _decide(self, flow: http.HTTPFlow, agent: str | None, now: float, path: str,
                view: RequestView | Decision) -> None:
        if isinstance(view, Decision):
            replies.refuse(flow, view)
            return
        protocol = view.protocol
        flowmeta.set_path(flow, path)
        policies = self.state.policies  # one set decides every reading, whatever a reload installs meanwhile
        d = decide(view, policies, now, self.state.limits)
        for how, decoded in decoded_readings(path) if d.effect == "allow" else ():
            # Servers differ on whether %2F is a '/' and on how often they decode: allowed read every way, or not.
            other = None if decoded is None else decide(with_changes(view, path=decoded), policies,
                                                        now, self.state.limits)
            if other is None or other.effect != "allow":
                why = f"{decoded!r}, which policy does not allow ({other.reason})" if other else "an ambiguous path"
                d = Decision("deny", f"refused before policy: the path {path!r} is ambiguous: {how} read it as {why}",
                             "request-target")
                break
            d = waiting_as_strictly(d, other)
        if d.effect == "allow":
            d = self._every_reading(view, d, now, policies)
        flowmeta.set_decision(flow, d)
        if d.effect == "deny":
            replies.denied(flow, d)
            return
        flowmeta.set_view(flow, view)
        self._count(flow, d, agent, now, policies)
        if protocol != "http":
            self.upgrades[flow.client_conn] = protocol

    def _every_reading(self, view: RequestView, allowed: Decision, now: float, policies: PolicySet) -> Decision:
        """An allowed request stays allowed only if every other way servers read it is too (a method override must be
        allowed), and its body says what its Content-Type says. (Keys sent twice and paths as lenient routers read
        them are decided by `decide` itself.)"""
        problem = content_type_problem(view)
        if problem is not None:
            return Decision("deny", f"refused before policy: {problem}; send the body its Content-Type names",
                            "request-body")
        problem = key_collision(view)
        if problem is not None:
            return Decision("deny", f"refused: {problem}; send each parameter under one name", "request-reading")
        for how, other, must_allow in readings(view):
            d = decide(other, policies, now, self.state.limits)
            if d.effect != "allow" and (must_allow or d.rule is not None):
                return Decision("deny", f"refused: read {how}, the request is {other.method} {other.path}, which "
                                        f"policy does not allow ({d.reason})", "request-reading")
            allowed = waiting_as_strictly(allowed, d)
        return allowed

    @fail_closed("decide")
    def response(self, flow: http.HTTPFlow) -> None:
        """A response whose fields could be re-read as others is not relayed; a switch of protocols is relayed only as
        a WebSocket (inspected) or to the protocol policy allowed."""
        resp = flow.response
        if resp is None or flowmeta.is_own_response(flow):
            return
        problem = fields_problem(resp)
        if problem is None and not 100 <= resp.status_code <= 999:  # mitmproxy reads any integer (`-1`, 20 digits)
            problem = "its status code is not three digits"
        elif problem is None and resp.status_code < 200 and resp.status_code != 101:
            # an interim status as the final answer: the interim answers httpbounds passes over are spelled as RFC 9112
            # has them, while mitmproxy reads `HTTP/1.1  100`, `0100` or `HTTP/1.2 103` too (the agent got a 1xx as
            # its answer, then waited for one that never came)
            problem = f"its status {resp.status_code} is an interim one (1xx), sent as the final answer"
        if problem is not None:
            replies.reply(flow, 502, {"error": "goex-proxy: the upstream's answer is malformed; it was not relayed",
                                      "reason": problem}, {"X-Goex-Decision": "error"})
            return
        if resp.status_code != 101 or flow.websocket is not None:
            return
        offered = resp.headers.get("Upgrade", "").strip().lower()
        if offered and self.upgrades.get(flow.client_conn) == offered:
            return
        self.upgrades.pop(flow.client_conn, None)
        replies.reply(flow, 502, {"error": "goex-proxy: the upstream switched protocols, which no policy allows",
                                  "reason": f"the upstream answered 101 Switching Protocols to {offered or '(none)'!r}; "
                                            "goex-proxy relays only WebSocket and upgrades a rule's 'protocol' names"},
                      {"X-Goex-Decision": "error"})

    @fail_closed("decide")
    def tcp_start(self, flow: tcp.TCPFlow) -> None:
        """Raw TCP cannot be inspected: relayed only after an allowed upgrade, or to a host a `protocol: tcp` rule
        allows; anything else is refused before mitmproxy connects upstream."""
        refused = flowmeta.decision(flow)
        if refused is not None and refused.effect == "deny":  # identify refused the tunnel's identity
            refuse_stream(flow, f"raw TCP: {refused.reason}")
            return
        if self.upgrades.pop(flow.client_conn, None) is not None:
            flowmeta.set_decision(flow, Decision("allow", "the upgrade was allowed by policy"))
            return
        agent = flowmeta.agent(flow)
        host, port = flow.server_conn.address or ("", 0)
        view = RequestView(agent, "", "tcp", host_key(str(host)), port, "", protocol="tcp")
        now = time.time()
        policies = self.state.policies
        d = decide(view, policies, now, self.state.limits)
        flowmeta.set_decision(flow, d)
        if d.effect == "allow":
            self._count(flow, d, agent, now, policies)
        else:
            refuse_stream(flow, f"raw TCP to {host}:{port}: {d.reason}")

    def _count(self, flow: http.HTTPFlow | tcp.TCPFlow, d: Decision, agent: str | None, now: float,
               policies: PolicySet) -> None:
        """An allowed request or stream counts against the limits of the rules that allowed it, at the time it was
        decided; the record stage has the audit writer check its caps again against every proxy's hits."""
        if d.count_limits and agent:
            self.state.limits.record(d.count_limits, agent, now)
            flowmeta.set_charge(flow, Charge(agent, d.count_limits, now,
                                             policies.enforced_limits(d.count_limits)))

    def tcp_message(self, flow: tcp.TCPFlow) -> None:
        """Belt and braces: nothing of a stream that was not allowed is passed on."""
        d = flowmeta.decision(flow)
        if d is None or d.effect != "allow":
            flow.messages[-1].content = b""

    def udp_start(self, flow: udp.UDPFlow) -> None:
        """UDP (QUIC, HTTP/3) never reaches a regular proxy; should it ever, it is refused."""
        refuse_stream(flow, f"UDP to {flow.server_conn.address}: goex-proxy relays only what it can inspect")

    def dns_request(self, flow: dns.DNSFlow) -> None:
        """DNS through a tunnel to port 53 would be forwarded by mitmproxy itself: answer SERVFAIL instead."""
        log.warning("refused a DNS query through the proxy to %s", flow.server_conn.address)
        flow.error = Error("goex-proxy does not relay DNS")


def refuse_stream(flow: tcp.TCPFlow | udp.UDPFlow, what: str) -> None:
    """Refuse a stream before mitmproxy connects it upstream (it checks `server_conn.error` first)."""
    log.warning("refused %s", what)
    flow.server_conn.error = f"goex-proxy refuses {what}"
    flow.kill()
