"""Stage 5, inject: put the real credential bound to this host into the request; the agent only holds a placeholder."""

from __future__ import annotations

import base64
import logging
from collections.abc import Awaitable
from urllib.parse import quote, unquote_plus

from mitmproxy import http

from goex_proxy import sigv4
from goex_proxy.addons import flowmeta, replies, sendout
from goex_proxy.addons.failclosed import fail_closed
from goex_proxy.addons.state import ProxyState
from goex_proxy.credentials import Credential
from goex_proxy.oauth import OAuthError
from goex_proxy.policy import Decision

log = logging.getLogger(__name__)


class CannotInject(Exception):
    """The credential is bound here but cannot be put in: the message says why (for the agent's 403)."""


def apply(request: http.Request, credential: Credential, secret: str) -> None:
    """Replace whatever the agent sent in the credential's place with the real secret."""
    how = credential.inject
    if how.kind == "header":
        request.headers[how.name] = how.template.replace("{secret}", secret)
    elif how.kind == "basic":
        pair = base64.b64encode(f"{how.username}:{secret}".encode()).decode()
        request.headers["Authorization"] = f"Basic {pair}"
    else:
        _set_query_parameter(request, how.name, secret)


def _set_query_parameter(request: http.Request, name: str, value: str) -> None:
    """Set one parameter in the raw query, leaving every other parameter exactly as the agent encoded it."""
    path, _, query = request.path.partition("?")
    kept = [part for part in query.split("&") if part and unquote_plus(part.partition("=")[0]) != name]
    pair = quote(name, safe="") + "=" + quote(value, safe="")
    request.path = path + "?" + "&".join([*kept, pair])


def _can_resend(flow: http.HTTPFlow) -> bool:
    """Whether a retry outside mitmproxy (HTTP/1.1, no trailers) can say what the agent said; else the 401 stands."""
    req = flow.request
    grpc = req.headers.get("content-type", "").startswith("application/grpc")
    return not (grpc or req.trailers or "trailers" in req.headers.get("te", "").lower())


def resign(req: http.Request, keys: sigv4.AwsKeys, own: bool = False) -> None:
    """Sign the agent's SigV4 request again, with the real keys, for the region and service the agent signed for.

    `own`: a request goex-proxy makes itself (an undo step, a pre-image read), sent unsigned; the endpoint's name
    says what to sign it for."""
    try:
        signed = sigv4.agent_signature({k.lower(): v for k, v in req.headers.items()}, req.path.partition("?")[2])
    except sigv4.SigningError:
        host_signed = sigv4.host_signature(req.host.lower()) if own else None
        if host_signed is None or "authorization" in req.headers:
            raise
        signed = host_signed
    url = f"{req.scheme}://{sendout.authority(req)}{req.path}"
    fields = sigv4.resign(req.method, url, list(req.headers.items(multi=True)), req.raw_content or b"", keys, signed)
    req.headers = http.Headers([(k.encode(), v.encode()) for k, v in fields])


async def inject_into(state: ProxyState, request: http.Request, credential: Credential, own: bool = False) -> None:
    """Put `credential` into `request` (the agent's, or one goex-proxy sends itself); CannotInject says why not."""
    kind = credential.inject.kind
    if kind == "oauth2":
        assert state.tokens is not None
        request.headers["Authorization"] = f"Bearer {await state.tokens.access_token(credential)}"
    elif kind == "aws_sigv4":
        keys = state.aws_keys.get(credential.name)
        if keys is None:
            raise CannotInject(f"its secret ({credential.secret.describe()}) is not set or is not AWS keys")
        resign(request, keys, own)
    else:
        secret = state.secrets.get(credential.name)
        if secret is None:
            raise CannotInject(f"its secret ({credential.secret.describe()}) is not set")
        apply(request, credential, secret)


class Inject:
    """Injects credentials on the hosts, methods and paths they are bound to; a request that needs one it cannot
    have is denied, never forwarded bare. An OAuth2 token the upstream refuses (401) is refreshed and the request
    retried once."""

    def __init__(self, state: ProxyState) -> None:
        self.state = state

    @fail_closed("inject")
    def request(self, flow: http.HTTPFlow) -> Awaitable[None] | None:
        """Sync for the common case (no credential bound): only an injection becomes a coroutine, which mitmproxy
        awaits."""
        if flow.response or flow.error or not flow.live or not self.state.config.credentials:
            return None
        req = flow.request
        path = flowmeta.path(flow)
        if path is None:
            raise RuntimeError("a request reached the inject stage without the path decide matched")
        credential = self.state.credential_for(req.host.lower().rstrip("."), req.method.upper(), path)
        if credential is None:
            return None
        if req.scheme not in credential.schemes:
            replies.refuse(flow, Decision("deny", f"credential '{credential.name}' is only sent over "
                                          f"{', '.join(sorted(credential.schemes))}, and this request is {req.scheme}",
                                          "inject"))
            return None
        return self._inject(credential, flow)

    @fail_closed("inject")
    async def _inject(self, credential: Credential, flow: http.HTTPFlow) -> None:  # flow last: fail_closed answers on it
        try:
            await inject_into(self.state, flow.request, credential, own=flowmeta.undo_of(flow) is not None)
        except (CannotInject, OAuthError, sigv4.SigningError) as exc:
            replies.refuse(flow, Decision("deny", self.state.scrubber.text(
                f"credential '{credential.name}' is bound to this host but cannot be injected: {exc}"), "inject"))
            return
        flowmeta.set_credential(flow, credential.name)

    @fail_closed("inject")
    def response(self, flow: http.HTTPFlow) -> Awaitable[None] | None:
        """A 401 to an OAuth2 request: refresh the token (unless another request already did) and retry once."""
        name = flowmeta.credential(flow)
        if (name is None or flow.response is None or flow.response.status_code != 401 or flowmeta.is_own_response(flow)
                or flowmeta.retried(flow) or self.state.tokens is None):
            return None
        credential = self.state.config.credentials.get(name)
        if credential is None or credential.inject.kind != "oauth2" or not _can_resend(flow):
            return None
        return self._retry(credential, flow)

    @fail_closed("inject")
    async def _retry(self, credential: Credential, flow: http.HTTPFlow) -> None:
        assert self.state.tokens is not None and flow.response is not None
        name = credential.name
        used = flow.request.headers.get("Authorization", "").removeprefix("Bearer ")
        try:
            token = await self.state.tokens.access_token(credential, stale=used)
        except OAuthError as exc:
            replies.refuse(flow, Decision("deny", self.state.scrubber.text(
                f"credential '{name}': the upstream refused its access token (401) and {exc}"), "inject"))
            return
        if token == used:  # refreshed moments ago: this 401 is not about an expired token
            return
        flow.request.headers["Authorization"] = f"Bearer {token}"
        flowmeta.mark_retried(flow)
        log.info("%s: %s answered 401; retrying once with a refreshed token of %s", flowmeta.request_id(flow),
                 flow.request.host, name)
        try:
            flow.response = await sendout.send(self.state, flow.request)
        except Exception as exc:  # httpx's errors, or a reply too large to hold: the upstream saw the first attempt
            replies.reply(flow, 502, {"error": "goex-proxy: retrying with a refreshed OAuth2 token failed "
                                               f"({type(exc).__name__}); the first attempt was refused with 401"})
