"""Stage 4, route: send a host's traffic to the address `upstream.routes` names, keeping the original host for TLS."""

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
        route = self.state.config.route_for(flow.request.host.lower().rstrip("."), flow.request.port)
        if route is not None and route.scheme != flow.request.scheme:
            flow.request.scheme = route.scheme

    @fail_closed("route")
    def server_connect(self, data: server_hooks.ServerConnectionHookData) -> None:
        assert self.state.config is not None and data.server.address is not None
        host, port = data.server.address
        route = self.state.config.route_for(str(host).lower().rstrip("."), port)
        if route is not None:
            # SNI and certificate checks keep using the original name, set before this hook.
            data.server.address = (route.host, route.port)
            self._original[id(data.server)] = (host, port)

    def server_connected(self, data: server_hooks.ServerConnectionHookData) -> None:
        """Put the original address back so mitmproxy reuses the connection for the next request to that host."""
        original = self._original.pop(id(data.server), None)
        if original is not None:
            data.server.address = original

    def server_connect_error(self, data: server_hooks.ServerConnectionHookData) -> None:
        self._original.pop(id(data.server), None)
