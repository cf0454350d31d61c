"""Requests the pipeline sends itself, outside mitmproxy's connections (a retry, a pre-image read): routed and
checked by the SSRF guard like forwarded ones, and carrying exactly the headers given."""

from __future__ import annotations

import time

from mitmproxy import http

from goex_proxy.addons.state import ProxyState
from goex_proxy.hostkey import host_key
from goex_proxy.net import upstream
from goex_proxy.net.egress import literal_address

#: Headers that belong to one connection, not to the request; a request sent anew gets its own.
HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-authorization", "proxy-connection", "te", "trailer",
                        "transfer-encoding", "upgrade", "content-length"})
#: Headers httpx adds to a request unless told otherwise; what goes out must be what was asked for.
_HTTPX_DEFAULTS = frozenset({"accept", "accept-encoding", "connection", "user-agent"})
#: The most a response read this way may hold in memory.
_BODY_LIMIT = 64 * 1024 * 1024


def authority(request: http.Request) -> str:
    """The host (and port, unless the scheme's default) the request is addressed to, as a Host header says it."""
    if request.host_header:
        return request.host_header
    default = 443 if request.scheme == "https" else 80
    return request.host if request.port == default else f"{request.host}:{request.port}"


async def send(state: ProxyState, req: http.Request, keep: int | None = None) -> http.Response:
    """Send `req` outside mitmproxy (its response hook cannot re-send a flow): the same target, headers and body,
    nothing httpx would add by itself; the answer as a mitmproxy Response. With `keep`, reading stops after `keep`
    bytes and one more (the sign that there was more): a pre-image larger than what the audit log keeps is not
    downloaded whole."""
    import httpx

    assert state.config is not None
    headers = [(k, v) for k, v in req.headers.items(multi=True) if k.lower() not in HOP_BY_HOP]
    if not any(k.lower() == "host" for k, _ in headers):
        headers.append(("Host", authority(req)))
    target = httpx.URL(scheme=req.scheme, host=req.host, port=req.port, raw_path=req.path.encode())
    url, _, extensions = upstream.routed(state.config, str(target))
    routed = httpx.URL(url)
    if routed.host != target.host or routed.port != target.port:  # a route: connect there, same path
        target = target.copy_with(scheme=routed.scheme, host=routed.host, port=routed.port)
    else:  # the SSRF guard's checked address (raises Blocked), the name kept for TLS and Host
        address = (await state.pins.addresses(state.config.egress, state.config.resolver, req.host, req.port))[0]
        if literal_address(req.host) is None:
            target = target.copy_with(host=str(address))
            extensions = {"sni_hostname": host_key(req.host)}
    client = state.upstream_client()
    sent = {k.lower() for k, _ in headers}
    request = client.build_request(req.method, target, headers=headers, content=req.raw_content or b"",
                                   extensions=extensions)
    for name in _HTTPX_DEFAULTS - sent:
        request.headers.pop(name, None)
    started = time.time()
    reply = await client.send(request, stream=True)
    try:
        raw = bytearray()
        async for chunk in reply.aiter_raw():
            raw += chunk
            if keep is not None and len(raw) > keep:
                del raw[keep + 1:]
                break
            if len(raw) > _BODY_LIMIT:
                raise ValueError(f"the response is larger than {_BODY_LIMIT} bytes")
    finally:
        await reply.aclose()
    keep_length = req.method.upper() == "HEAD" or reply.status_code in (204, 304)
    dropped = (b"transfer-encoding", b"connection", b"keep-alive") + (() if keep_length else (b"content-length",))
    fields = tuple((k, v) for k, v in reply.headers.raw if k.lower() not in dropped)
    response = http.Response(b"HTTP/1.1", reply.status_code, reply.reason_phrase.encode(), http.Headers(fields),
                             bytes(raw), None, started, time.time())
    if not keep_length:
        response.headers["Content-Length"] = str(len(raw))
    return response
