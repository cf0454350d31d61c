"""Stage 2, decide: turn the flow into a RequestView and ask the pure policy engine; a denial answers 403."""

from __future__ import annotations

import dataclasses
import logging
import time
from urllib.parse import parse_qsl

from mitmproxy import dns, http, tcp, udp
from mitmproxy.flow import Error

from goex_proxy.addons import flowmeta, replies
from goex_proxy.addons.failclosed import fail_closed
from goex_proxy.addons.state import ProxyState
from goex_proxy.policy import Decision, decide
from goex_proxy.requestview import RequestView, aws_unchunked, body_ambiguity, canonical_path, path_ambiguity

log = logging.getLogger(__name__)

#: the Content-Encodings goex-proxy undoes as servers do: `aws-chunked` (S3 streaming uploads) itself, the rest with
#: mitmproxy. Any other (stacked, `compress`, mitmproxy's own `deflateraw` or Python codecs such as `base64`) would
#: have the policy read other bytes than the upstream.
DECODABLE = frozenset({"identity", "gzip", "deflate", "br", "zstd", "aws-chunked"})


def _host_of(authority: str) -> tuple[str, int | None]:
    host, _, port = authority.rpartition(":") if not authority.endswith("]") else (authority, "", "")
    if not host or not port.isdigit():
        host, port = authority, ""
    return host.strip("[]").lower().rstrip("."), int(port) if port else None


def target_problem(flow: http.HTTPFlow, path: str | None) -> str | None:
    """Why the request's parts disagree on where it goes (CONNECT target or URL, Host header, TLS SNI), if they do.

    `path` is the request's canonical path (None when it is ambiguous)."""
    req = flow.request
    host = req.host.lower().rstrip(".")
    if req.host_header:
        named, port = _host_of(req.host_header)
        if named != host or (port is not None and port != req.port):
            return f"the Host header names {req.host_header!r} but the request goes to {host}:{req.port}"
    sni = flow.client_conn.sni
    if sni and sni.lower().rstrip(".") != host:
        return f"the TLS server name {sni!r} does not match the request's host {host!r}"
    if not req.path.startswith("/") and not (req.method.upper() == "OPTIONS" and req.path == "*"):
        return f"the request target {req.path[:100]!r} is not a path starting with '/'"
    if path is None:
        raw = req.path.split("?", 1)[0]
        why = path_ambiguity(raw) or "servers read it differently"
        return f"the path {raw!r} is ambiguous: {why}; send its plain form"
    return None


def read_body(req: http.Request) -> tuple[bytes, str | None]:
    """The body as the upstream will read it (Content-Encoding undone), and why it is refused before policy, if it is.

    A body is refused when its Content-Encoding is not in `DECODABLE` or does not decode (rather than decided on bytes
    the policy cannot read), or when servers could parse it more than one way (`body_ambiguity`)."""
    if not req.raw_content:
        return b"", None
    coding = req.headers.get("content-encoding", "")
    if coding and coding.lower() not in DECODABLE:
        return b"", _undecodable(coding, f"goex-proxy reads only {', '.join(sorted(DECODABLE))}")
    try:
        if coding.lower() == "aws-chunked":
            body = aws_unchunked(req.raw_content)
        else:
            body = req.get_content(strict=True) or b""
    except ValueError as e:  # mitmproxy wraps the decoder's own error, which says what is wrong
        cause = e.__context__ or e
        return b"", _undecodable(coding, f"{type(cause).__name__}: {str(cause)[:100]}")
    return body, body_ambiguity(body)


def _undecodable(coding: str, why: str) -> str:
    return (f"the request body's Content-Encoding {coding[:100]!r} could not be decoded ({why}); it is refused rather "
            "than decided on bytes the policy cannot read")


def header_pairs(headers: http.Headers, keep_case: bool = False) -> tuple[tuple[str, str], ...]:
    """(name, value) pairs in order (names lower-cased unless `keep_case`), read straight from the raw fields:
    mitmproxy's items(multi=True) looks every name up again."""
    pairs = ((k.decode("latin-1"), v.decode("utf-8", "surrogateescape")) for k, v in headers.fields)
    return tuple(pairs) if keep_case else tuple((k.lower(), v) for k, v in pairs)


def request_view(flow: http.HTTPFlow, agent: str | None, path: str, body: bytes | None = None) -> RequestView:
    """What the policy sees of a flow: the host it will connect to, the canonical path, the decoded body.

    `body` is the body `read_body` gave; without it the body is decoded leniently (raw bytes if it does not decode)."""
    req = flow.request
    return RequestView(
        agent=agent,
        method=req.method.upper(),
        scheme=req.scheme,
        host=req.host.lower().rstrip("."),
        port=req.port,
        path=path,
        query=tuple(parse_qsl(query, keep_blank_values=True)) if (query := req.path.partition("?")[2]) else (),
        headers=header_pairs(req.headers),
        body=(req.get_content(strict=False) or b"") if body is None else body,
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
        path = canonical_path(flow.request.path.split("?", 1)[0] or "/")
        problem = target_problem(flow, path)
        if problem is not None or path is None:
            replies.refuse(flow, Decision("deny", f"refused before policy: {problem or 'ambiguous path'}",
                                          "request-target"))
            return
        body, problem = read_body(flow.request)
        if problem is not None:
            replies.refuse(flow, Decision("deny", f"refused before policy: {problem}", "request-body"))
            return
        flowmeta.set_path(flow, path)
        view = request_view(flow, agent, path, body)
        d = decide(view, self.state.policies, now, self.state.limits)
        if "%2F" in path and d.effect == "allow":
            # Servers differ on whether %2F is a '/': the request must be allowed read either way.
            decoded = path.replace("%2F", "/")
            other = decide(dataclasses.replace(view, path=decoded), self.state.policies, now, self.state.limits)
            if other.effect != "allow":
                d = Decision("deny", f"refused before policy: the path {path!r} is ambiguous: servers that decode "
                                     f"%2F read it as {decoded!r}, which policy does not allow ({other.reason})",
                             "request-target")
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
