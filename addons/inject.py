"""Stage 3, inject: put the real credential bound to this host into the request; the agent only holds a placeholder."""

from __future__ import annotations

import base64
from urllib.parse import quote, unquote_plus

from mitmproxy import http

from goex_proxy.addons import flowmeta, replies
from goex_proxy.addons.failclosed import fail_closed
from goex_proxy.addons.state import ProxyState
from goex_proxy.credentials import Credential
from goex_proxy.policy import Decision


def apply(flow: http.HTTPFlow, credential: Credential, secret: str) -> None:
    """Replace whatever the agent sent in the credential's place with the real secret."""
    how = credential.inject
    if how.kind == "header":
        flow.request.headers[how.name] = how.template.replace("{secret}", secret)
    elif how.kind == "basic":
        pair = base64.b64encode(f"{how.username}:{secret}".encode()).decode()
        flow.request.headers["Authorization"] = f"Basic {pair}"
    else:
        _set_query_parameter(flow.request, how.name, secret)


def _set_query_parameter(request: http.Request, name: str, value: str) -> None:
    """Set one parameter in the raw query, leaving every other parameter exactly as the agent encoded it."""
    path, _, query = request.path.partition("?")
    kept = [part for part in query.split("&") if part and unquote_plus(part.partition("=")[0]) != name]
    pair = quote(name, safe="") + "=" + quote(value, safe="")
    request.path = path + "?" + "&".join([*kept, pair])


class Inject:
    """Injects credentials on the hosts, methods and paths they are bound to; a request that needs one it cannot
    have is denied, never forwarded bare."""

    def __init__(self, state: ProxyState) -> None:
        self.state = state

    @fail_closed("inject")
    def request(self, flow: http.HTTPFlow) -> None:
        if flow.response or flow.error or not flow.live or not self.state.config.credentials:
            return
        req = flow.request
        path = flowmeta.path(flow)
        if path is None:
            raise RuntimeError("a request reached the inject stage without the path decide matched")
        credential = self.state.credential_for(req.host.lower().rstrip("."), req.method.upper(), path)
        if credential is None:
            return
        if req.scheme not in credential.schemes:
            replies.refuse(flow, Decision("deny", f"credential '{credential.name}' is only sent over "
                                          f"{', '.join(sorted(credential.schemes))}, and this request is {req.scheme}",
                                          "inject"))
            return
        secret = self.state.secrets.get(credential.name)
        if secret is None:
            replies.refuse(flow, Decision("deny", f"credential '{credential.name}' is bound to this host but cannot be "
                                          f"injected: its secret ({credential.secret.describe()}) is not set", "inject"))
            return
        apply(flow, credential, secret)
        flowmeta.set_credential(flow, credential.name)
