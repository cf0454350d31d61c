"""Stage 9, route: send a host's traffic to the address `upstream.routes` names, keeping the original host for TLS."""

from __future__ import annotations

from mitmproxy import http
from mitmproxy.proxy import server_hooks

from goex_proxy.addons.failclosed import fail_closed
from goex_proxy.addons.state import ProxyState


class Route:
    """Redirects connections, not requests: policy, credentials and audit keep seeing the original host."""

    def __init__(self, state: ProxyState) -> None:
        self.state = state
        self._original: dict[int, tuple[str, int]] = {}

    @fail_closed("route")
    def request(self, flow: http.HTTPFlow) -> None:
        """A route may change the scheme (an https host served by a plain-http test server, or the reverse)."""
        if flow.response or flow.error or not flow.live:
            return
        assert self.state.config is not None
        route = self.state.config.route_for(flow.request.host, flow.request.port)
        if route is not None:
            flow.request.scheme = route.scheme

    @fail_closed("route")
    def server_connect(self, data: server_hooks.ServerConnectionHookData) -> None:
        assert self.state.config is not None and data.server.address is not None
        host, port = data.server.address
        route = self.state.config.route_for(str(host), port)
        if route is not None:
            # SNI and certificate checks keep using the original name, set before this hook.
            self._original[id(data.server)] = (host, port)
            data.server.address = (route.host, route.port)

    def server_connected(self, data: server_hooks.ServerConnectionHookData) -> None:
        """Give the open connection its original address back, so that mitmproxy reuses it for that host.

        mitmproxy matches connections for reuse by address, and refuses to change the address of an open connection
        (a guard against redirecting it by mistake); here the change only renames what is already connected, so the
        guard is bypassed on purpose. Without this, each routed request would leave one more idle connection, and
        mitmproxy allows five per address before new requests wait forever.
        """
        original = self._original.pop(id(data.server), None)
        if original is not None:
            object.__setattr__(data.server, "address", original)

    def server_connect_error(self, data: server_hooks.ServerConnectionHookData) -> None:
        self._original.pop(id(data.server), None)
