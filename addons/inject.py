"""Stage 5, inject: put the real credential bound to this host into the request; the agent only holds a placeholder."""

from __future__ import annotations

import base64
import logging
import weakref
from collections.abc import Awaitable
from dataclasses import dataclass
from urllib.parse import quote, unquote_plus

from mitmproxy import http

from goex_proxy.addons import flowmeta, replies, sendout
from goex_proxy.addons.failclosed import fail_closed
from goex_proxy.addons.state import ProxyState
from goex_proxy.credentials import sigv4
from goex_proxy.credentials.kinds import Credential
from goex_proxy.credentials.oauth import OAuthError
from goex_proxy.credentials.redact import PARTIAL_MIN
from goex_proxy.hostkey import host_key
from goex_proxy.policy.engine import Decision

log = logging.getLogger(__name__)


class CannotInject(Exception):
    """The credential is bound here but cannot be put in: the message says why (for the agent's 403)."""


def field_value(value: str) -> str:
    """`value` as a header value to send upstream; CannotInject when it holds CR, LF or NUL, which mitmproxy writes as
    they are: a secret (stored with `secrets set`, in an environment variable, or an access token a token endpoint
    gave) holding a line break put a header line of its own into the request, after the policy had decided on it."""
    if any(c in value for c in "\r\n\0"):
        raise CannotInject("its secret holds a CR, LF or NUL, which would start a header line of its own upstream")
    return value


def apply(request: http.Request, credential: Credential, secret: str) -> None:
    """Replace whatever the agent sent in the credential's place with the real secret."""
    how = credential.inject
    if how.kind == "header":
        request.headers[how.name] = field_value(how.template.replace("{secret}", secret))
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


#: A request that carries a secret shorter than this goes without `Range`: each range of an answer that reflects the
#: secret may give back PARTIAL_MIN - 1 of its bytes at either end of it (the agent chooses where the ranges cut), so
#: a short secret could be joined whole; from this length on, at least ten of its characters stay hidden.
SHORTEST_RANGED = 2 * (PARTIAL_MIN - 1) + 10


async def inject_into(state: ProxyState, request: http.Request, credential: Credential, own: bool = False) -> None:
    """Put `credential` into `request` (the agent's, or one goex-proxy sends itself); CannotInject says why not."""
    kind = credential.inject.kind
    if kind == "oauth2":
        assert state.tokens is not None
        request.headers["Authorization"] = field_value(f"Bearer {await state.tokens.access_token(credential)}")
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
        if "Range" in request.headers and min(map(len, credential.secret_values(secret)), default=0) < SHORTEST_RANGED:
            del request.headers["Range"]  # the answer comes whole (200) and is scrubbed whole
            request.headers.pop("If-Range", None)


@dataclass(frozen=True)
class Swap:
    """What injecting changed in a request: each header it touched (the agent's values, then the injected ones) and
    the path, if that changed (a query credential)."""

    headers: tuple[tuple[str, tuple[str, ...], tuple[str, ...]], ...]
    path: str | None  # the agent's path

    @classmethod
    def between(cls, agents: http.Headers, agents_path: str, injected: http.Request) -> Swap | None:
        """The difference between what the agent sent and the injected request; None if there is none."""
        before, after = _by_name(agents), _by_name(injected.headers)
        headers = tuple((name, before.get(key, ()), after.get(key, ())) for key, name in _spellings(agents, injected.headers)
                        if before.get(key, ()) != after.get(key, ()))
        path = agents_path if injected.path != agents_path else None
        return cls(headers, path) if headers or path is not None else None

    def injected(self, name: str) -> str:
        """The value injected into header `name` ("" if none was)."""
        return next((values[0] for n, _, values in self.headers if n.lower() == name.lower() and values), "")

    def put_back(self, request: http.Request) -> None:
        """Give `request` the agent's values again wherever injecting changed it (idempotent)."""
        for name, agents, _ in self.headers:
            request.headers.set_all(name, list(agents))
        if self.path is not None:
            request.path = self.path


def _by_name(headers: http.Headers) -> dict[str, tuple[str, ...]]:
    """Each header's values under its lower-case name, in one pass."""
    out: dict[str, list[str]] = {}
    for name, value in headers.items(multi=True):
        out.setdefault(name.lower(), []).append(value)
    return {key: tuple(values) for key, values in out.items()}


def _spellings(*headers: http.Headers) -> list[tuple[str, str]]:
    """Each header name (lower case) with its spelling where it first appears in `headers`, in order."""
    seen: dict[str, str] = {}
    for block in headers:
        for name, _ in block.items(multi=True):
            seen.setdefault(name.lower(), name)
    return list(seen.items())


class Inject:
    """Injects credentials on the hosts, methods and paths they are bound to; a request that needs one it cannot
    have is denied, never forwarded bare. An OAuth2 token the upstream refuses (401) is refreshed and the request
    retried once.

    Once the request is on its way upstream, the request mitmproxy keeps carries the agent's placeholders again: its
    flow files (`-w`), HAR export and flow dump read it after this addon's `responseheaders`, `response`, `error` and
    `done` hooks (mitmproxy calls script addons before its own exporters), and the secret was only ever for the
    upstream."""

    def __init__(self, state: ProxyState) -> None:
        self.state = state
        #: what injecting changed in each flow's request, for as long as the flow lives (not in flow.metadata, which
        #: mitmproxy exports)
        self._swaps: weakref.WeakKeyDictionary[http.HTTPFlow, Swap] = weakref.WeakKeyDictionary()

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
        credential = self.state.credential_for(host_key(req.host), req.method.upper(), path)
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
        agents, agents_path = http.Headers(flow.request.headers.fields), flow.request.path
        try:
            await inject_into(self.state, flow.request, credential, own=flowmeta.undo_of(flow) is not None)
        except (CannotInject, OAuthError, sigv4.SigningError) as exc:
            replies.refuse(flow, Decision("deny", self.state.scrubber.text(
                f"credential '{credential.name}' is bound to this host but cannot be injected: {exc}"), "inject"))
            return
        finally:
            self._remember(flow, agents, agents_path)
        flowmeta.set_credential(flow, credential.name)

    def _remember(self, flow: http.HTTPFlow, agents: http.Headers, agents_path: str) -> None:
        swap = Swap.between(agents, agents_path, flow.request)
        if swap is not None:
            self._swaps[flow] = swap

    def put_back(self, flow: http.HTTPFlow) -> None:
        """The agent's values again in the request mitmproxy keeps: call only once the request was sent (or never
        will be)."""
        swap = self._swaps.get(flow)
        if swap is not None:
            swap.put_back(flow.request)

    @fail_closed("inject")
    def responseheaders(self, flow: http.HTTPFlow) -> None:
        """The first hook after mitmproxy wrote the request upstream (or after a stage answered it instead)."""
        self.put_back(flow)

    @fail_closed("inject")
    def error(self, flow: http.HTTPFlow) -> None:
        self.put_back(flow)

    def done(self) -> None:
        """Flows still in flight at shutdown are written out by mitmproxy's exporters after this."""
        for flow in list(self._swaps.keys()):
            self.put_back(flow)

    @fail_closed("inject")
    def response(self, flow: http.HTTPFlow) -> Awaitable[None] | None:
        """A 401 to an OAuth2 request: refresh the token (unless another request already did) and retry once."""
        self.put_back(flow)
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
        swap = self._swaps.get(flow)
        used = (swap.injected("Authorization") if swap else "").removeprefix("Bearer ")
        try:
            token = await self.state.tokens.access_token(credential, stale=used)
        except OAuthError as exc:
            replies.refuse(flow, Decision("deny", self.state.scrubber.text(
                f"credential '{name}': the upstream refused its access token (401) and {exc}"), "inject"))
            return
        if token == used:  # refreshed moments ago: this 401 is not about an expired token
            return
        retry = flow.request.copy()  # the kept request goes on carrying the placeholder
        try:
            retry.headers["Authorization"] = field_value(f"Bearer {token}")
        except CannotInject as exc:
            replies.refuse(flow, Decision("deny", f"credential '{name}': the refreshed access token cannot be sent: "
                                                  f"{exc}", "inject"))
            return
        flowmeta.mark_retried(flow)
        log.info("%s: %s answered 401; retrying once with a refreshed token of %s", flowmeta.request_id(flow),
                 flow.request.host, name)
        try:
            flow.response = await sendout.send(self.state, retry)
        except Exception as exc:  # httpx's errors, or a reply too large to hold: the upstream saw the first attempt
            replies.reply(flow, 502, {"error": "goex-proxy: retrying with a refreshed OAuth2 token failed "
                                               f"({type(exc).__name__}); the first attempt was refused with 401"})
